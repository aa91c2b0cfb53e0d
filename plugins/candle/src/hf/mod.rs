//! Hugging Face safetensors folders: llama, mistral, qwen2, qwen3 and phi3.
//!
//! Weights are computed in f32 on the CPU whatever the checkpoint stores (f16/bf16 are
//! widened at load: candle's CPU f16/bf16 matmuls are slow and less accurate; the dense
//! llama keeps them half and widens them in registers, see [`dense`]), and in the
//! checkpoint's own dtype on CUDA/Metal. On the CPU a llama (no biases, no rope scaling)
//! runs as our own [`crate::dense_llama::DenseLlama`] ([`dense`]), other models and
//! devices on candle-transformers' models.

pub mod config;
pub mod dense;
pub mod specials;
pub mod weights;

use crate::error::{no_panic, Result};
use crate::files::HfFiles;
use crate::lora::Adapter;
use crate::model::ModelInfo;
use crate::net::Net;
use crate::tokenizer::Vocab;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::{llama, mistral, phi3, qwen2, qwen3};
use config::{Arch, HfConfig};
use llmlocal_plugin_api::{AdapterRequest, PluginError};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The default context when the load does not ask for one: the trained length, capped so
/// the rotary tables of long-context models stay small.
const DEFAULT_CONTEXT_CAP: usize = 4096;

pub struct Loaded {
    pub net: Net,
    pub vocab: Vocab,
    pub info: ModelInfo,
}

pub fn load(
    files: &HfFiles,
    device: &Device,
    context: u32,
    adapters: &[AdapterRequest],
) -> Result<Loaded> {
    if crate::bert::is_bert_folder(&files.config)? {
        return crate::bert::load_hf(files, device, context, adapters);
    }
    let config = HfConfig::read(&files.config)?;
    check_supported(&config)?;
    let mut weights = weights::load(&files.weights)?;
    weights::check_dtypes(&weights)?;
    weights::check_shapes(&config, &weights)?;
    let stored = weights::checkpoint_dtype(&config, &weights)?;
    for adapter in adapters {
        Adapter::open(std::path::Path::new(adapter.path.as_str()))?.merge_into(
            &mut weights,
            config.arch.name(),
            adapter.scale,
        )?;
    }
    let dtype = if device.is_cpu() { DType::F32 } else { stored };
    let context = context_length(&config, context)?;
    let net = match device.is_cpu() && dense::obstacle(&config).is_none() {
        true => {
            let net = no_panic("building the model", || {
                dense::build(&config, &mut weights, context, device, true)
            })?;
            Net::Dense(Arc::new(net))
        }
        false => {
            weights::alias_tied_head(&config, &mut weights);
            let vb = VarBuilder::from_tensors(weights, dtype, device);
            no_panic("building the model", || build(&config, vb, context, dtype))?
        }
    };
    let vocab = specials::load_vocab(files, &config)?;
    let params = weights::parameter_count(&config);
    let info = ModelInfo {
        architecture: config.arch.name().to_string(),
        name: files.name(),
        context_length: context,
        train_context_length: config.max_positions,
        vocab_size: config.vocab,
        embedding_length: config.hidden,
        layer_count: config.layers,
        parameter_count: params,
        size_bytes: match &net {
            // Half-precision matrices may stay half on the CPU (`dense`).
            Net::Dense(model) => model.weight_bytes(),
            _ => params * dtype.size_in_bytes() as u64,
        },
    };
    Ok(Loaded { net, vocab, info })
}

/// The positions a load covers: the asked number, else the trained length (capped). candle's
/// phi3 has no sliding-window mask, so a phi3 load stays within its window, where the window
/// changes nothing.
fn context_length(config: &HfConfig, asked: u32) -> Result<usize> {
    let window = match config.arch {
        Arch::Phi3 => config
            .json
            .get("sliding_window")
            .and_then(Value::as_u64)
            .map(|w| w as usize),
        _ => None,
    };
    let default = config.max_positions.min(DEFAULT_CONTEXT_CAP);
    match (asked, window) {
        (0, Some(w)) => Ok(default.min(w)),
        (0, None) => Ok(default),
        (n, Some(w)) if n as usize > w => Err(PluginError::unsupported_architecture(format!(
            "{} with sliding_window {w}: the candle backend has no sliding-window attention, \
             so it runs contexts of at most {w} tokens (asked for {n})",
            config.arch.name()
        ))),
        (n, _) => Ok(n as usize),
    }
}

/// Options candle's implementations do not have.
fn check_supported(config: &HfConfig) -> Result<()> {
    let arch = config.arch.name();
    for flag in ["attention_bias", "mlp_bias"] {
        if config.arch == Arch::Llama && config.bool_flag(flag) {
            return Err(PluginError::unsupported_architecture(format!(
                "{arch} with `{flag}: true` is not supported by candle's llama"
            )));
        }
    }
    if config.arch == Arch::Qwen3 && config.bool_flag("use_sliding_window") {
        return Err(PluginError::unsupported_architecture(
            "qwen3 with `use_sliding_window: true` is not supported by candle's qwen3",
        ));
    }
    if let Some(f) = config
        .json
        .get("partial_rotary_factor")
        .and_then(Value::as_f64)
    {
        if f != 1.0 {
            return Err(PluginError::unsupported_architecture(format!(
                "{arch} with partial_rotary_factor {f} is not supported by the candle backend"
            )));
        }
    }
    if let Some(scaling) = config.json.get("rope_scaling").filter(|v| !v.is_null()) {
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        // Gemma 3 4B+ scales its global layers linearly ([`crate::gemma3_load`]).
        let ok = kind == "default"
            || (config.arch == Arch::Llama && kind == "llama3")
            || (config.arch == Arch::Gemma3 && kind == "linear");
        if !ok {
            return Err(PluginError::unsupported_architecture(format!(
                "{arch} with rope_scaling `{kind}` is not supported by the candle backend"
            )));
        }
    }
    Ok(())
}

/// config.json with the context length and the defaults candle's config structs insist on.
fn candle_json(config: &HfConfig, context: usize) -> Value {
    let mut map: Map<String, Value> = config.json.clone();
    let defaults = [
        ("num_key_value_heads", json!(config.kv_heads)),
        ("rope_theta", json!(10_000.0)),
        ("hidden_act", json!("silu")),
    ];
    let qwen2_defaults = [
        ("sliding_window", json!(context + 1)),
        ("max_window_layers", json!(config.layers)),
        ("use_sliding_window", json!(false)),
    ];
    let qwen3_defaults = [
        ("head_dim", json!(config.head_dim)),
        ("attention_bias", json!(false)),
        ("max_window_layers", json!(config.layers)),
        ("use_sliding_window", json!(false)),
    ];
    let defaults = defaults
        .into_iter()
        .chain(
            qwen2_defaults
                .into_iter()
                .filter(|_| config.arch == Arch::Qwen2),
        )
        .chain(
            qwen3_defaults
                .into_iter()
                .filter(|_| config.arch == Arch::Qwen3),
        );
    for (key, value) in defaults {
        if map.get(key).is_none_or(Value::is_null) {
            map.insert(key.to_string(), value);
        }
    }
    map.insert("tie_word_embeddings".into(), json!(config.tie_embeddings));
    // The rotary tables are sized by max_position_embeddings: size them to this load.
    map.insert("max_position_embeddings".into(), json!(context));
    // candle's qwen2 always applies `sliding_window`; Qwen2 configs switch it off with
    // `use_sliding_window: false`, so widen the window past the context then.
    if config.arch == Arch::Qwen2 && !config.bool_flag("use_sliding_window") {
        map.insert("sliding_window".into(), json!(context + 1));
    }
    Value::Object(map)
}

fn parse<T: serde::de::DeserializeOwned>(config: &HfConfig, value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| {
        PluginError::unsupported_format(format!("config.json ({}): {e}", config.arch.name()))
    })
}

fn build(config: &HfConfig, vb: VarBuilder, context: usize, dtype: DType) -> Result<Net> {
    let value = candle_json(config, context);
    let device = vb.device().clone();
    let err = |e: candle_core::Error| {
        PluginError::unsupported_format(format!("building the {} model: {e}", config.arch.name()))
    };
    Ok(match config.arch {
        Arch::Llama => {
            let cfg: llama::LlamaConfig = parse(config, value)?;
            let cfg = cfg.into_config(false);
            let model = llama::Llama::load(vb, &cfg).map_err(err)?;
            // Check now that a cache can be built (rope tables) rather than per generation.
            llama::Cache::new(true, dtype, &cfg, &device).map_err(err)?;
            Net::Llama {
                model: Arc::new(model),
                config: Arc::new(cfg),
                dtype,
            }
        }
        Arch::Mistral => {
            let cfg: mistral::Config = parse(config, value)?;
            Net::Mistral(mistral::Model::new(&cfg, vb).map_err(err)?)
        }
        Arch::Qwen2 => {
            let cfg: qwen2::Config = parse(config, value)?;
            Net::Qwen2(qwen2::ModelForCausalLM::new(&cfg, vb).map_err(err)?)
        }
        Arch::Qwen3 => {
            let cfg: qwen3::Config = parse(config, value)?;
            Net::Qwen3(qwen3::ModelForCausalLM::new(&cfg, vb).map_err(err)?)
        }
        Arch::Phi3 => {
            let cfg: phi3::Config = parse(config, value)?;
            Net::Phi3(phi3::Model::new(&cfg, vb).map_err(err)?)
        }
        Arch::Gemma3 => Net::Gemma3(Arc::new(crate::gemma3_load::from_hf(config, &vb, context)?)),
    })
}
