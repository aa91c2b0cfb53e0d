//! Safetensors weights: loading the shards, checking dtypes and every tensor's shape against
//! config.json (candle's model constructors would otherwise panic or fail obscurely).

use super::config::{Arch, HfConfig};
use crate::error::{read_file, Result, ResultExt};
use candle_core::{DType, Device, Tensor};
use llmlocal_plugin_api::PluginError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub type Weights = HashMap<String, Tensor>;

/// Loads every shard onto the CPU, as stored.
pub fn load(files: &[PathBuf]) -> Result<Weights> {
    let mut weights = Weights::new();
    for file in files {
        let bytes = read_file(file)?;
        let shard = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .format_err(|| format!("{} is not a valid safetensors file", file.display()))?;
        weights.extend(shard);
    }
    if weights.is_empty() {
        return Err(PluginError::unsupported_format(
            "the safetensors files hold no tensors",
        ));
    }
    Ok(weights)
}

/// The shards a `model.safetensors.index.json` names, relative to its folder.
pub fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    let bytes = read_file(index)?;
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .format_err(|| format!("{} is not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| {
            PluginError::unsupported_format(format!("{} has no `weight_map`", index.display()))
        })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|v| v.as_str())
        .map(|name| dir.join(name))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// The dtype the checkpoint is stored in: config.json's `torch_dtype`, else the embedding's.
pub fn checkpoint_dtype(config: &HfConfig, weights: &Weights) -> Result<DType> {
    if let Some(name) = config.torch_dtype() {
        return match name {
            "float32" => Ok(DType::F32),
            "float16" => Ok(DType::F16),
            "bfloat16" => Ok(DType::BF16),
            other => Err(PluginError::unsupported_format(format!(
                "config.json torch_dtype `{other}` is not supported (float32, float16, bfloat16)"
            ))),
        };
    }
    weights
        .get("model.embed_tokens.weight")
        .map(Tensor::dtype)
        .ok_or_else(|| {
            PluginError::unsupported_format("missing tensor `model.embed_tokens.weight`")
        })
}

/// Every weight must be a float type candle computes with.
pub fn check_dtypes(weights: &Weights) -> Result<()> {
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    for name in names {
        let dtype = weights[name].dtype();
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(PluginError::unsupported_format(format!(
                "tensor `{name}` has dtype {dtype:?}; the candle backend reads F32, F16 and BF16 safetensors"
            )));
        }
    }
    Ok(())
}

/// The tensors an architecture reads, with the shapes config.json implies.
pub fn expected_shapes(config: &HfConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, v) = (config.hidden, config.intermediate, config.vocab);
    let q = config.heads * config.head_dim;
    let kv = config.kv_heads * config.head_dim;
    let mut shapes = vec![
        ("model.embed_tokens.weight".to_string(), vec![v, h]),
        ("model.norm.weight".to_string(), vec![h]),
    ];
    for layer in 0..config.layers {
        let p = format!("model.layers.{layer}");
        if config.arch == Arch::Phi3 {
            // Phi-3 fuses q, k, v and gate, up into single matrices.
            shapes.extend([
                (
                    format!("{p}.self_attn.qkv_proj.weight"),
                    vec![q + 2 * kv, h],
                ),
                (format!("{p}.self_attn.o_proj.weight"), vec![h, q]),
                (format!("{p}.mlp.gate_up_proj.weight"), vec![2 * i, h]),
            ]);
        } else {
            shapes.extend([
                (format!("{p}.self_attn.q_proj.weight"), vec![q, h]),
                (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.o_proj.weight"), vec![h, q]),
                (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
                (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
            ]);
        }
        shapes.extend([
            (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
        ]);
        if config.arch == Arch::Gemma3 {
            shapes.extend([
                (format!("{p}.pre_feedforward_layernorm.weight"), vec![h]),
                (format!("{p}.post_feedforward_layernorm.weight"), vec![h]),
            ]);
        }
        if matches!(config.arch, Arch::Qwen3 | Arch::Gemma3) {
            let d = config.head_dim;
            shapes.extend([
                (format!("{p}.self_attn.q_norm.weight"), vec![d]),
                (format!("{p}.self_attn.k_norm.weight"), vec![d]),
            ]);
        }
        if config.arch == Arch::Qwen2 {
            shapes.extend([
                (format!("{p}.self_attn.q_proj.bias"), vec![q]),
                (format!("{p}.self_attn.k_proj.bias"), vec![kv]),
                (format!("{p}.self_attn.v_proj.bias"), vec![kv]),
            ]);
        }
    }
    if !config.tie_embeddings {
        shapes.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    shapes
}

/// Checks that every tensor the model reads is present with the right shape.
pub fn check_shapes(config: &HfConfig, weights: &Weights) -> Result<()> {
    for (name, shape) in expected_shapes(config) {
        let tensor = weights.get(&name).ok_or_else(|| {
            PluginError::unsupported_format(format!(
                "missing tensor `{name}` ({} with {} layers)",
                config.arch.name(),
                config.layers
            ))
        })?;
        if tensor.dims() != shape.as_slice() {
            return Err(PluginError::unsupported_format(format!(
                "tensor `{name}` has shape {:?} but config.json implies {shape:?}",
                tensor.dims()
            )));
        }
    }
    Ok(())
}

/// Candle's mistral always reads `lm_head.weight`: give tied checkpoints one.
pub fn alias_tied_head(config: &HfConfig, weights: &mut Weights) {
    if config.tie_embeddings && !weights.contains_key("lm_head.weight") {
        if let Some(embed) = weights.get("model.embed_tokens.weight").cloned() {
            weights.insert("lm_head.weight".to_string(), embed);
        }
    }
}

/// Parameters the model reads (tied weights counted once).
pub fn parameter_count(config: &HfConfig) -> u64 {
    expected_shapes(config)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum()
}
