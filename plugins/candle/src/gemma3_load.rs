//! Building [`crate::gemma3::Gemma3`] from a Hugging Face `gemma3_text` folder or a GGUF
//! `gemma3` file, with every option the network does not compute refused as
//! `UnsupportedArchitecture` (attention soft-capping, activations other than GELU-tanh, rope
//! scaling other than linear, extra tensors such as EmbeddingGemma's dense layers).
//!
//! Numbers follow what each format's reference engine does: transformers for safetensors
//! (`query_pre_attn_scalar`, `layer_types` / `sliding_window_pattern`), llama.cpp for GGUF
//! (`1/sqrt(head_dim)`, except `n_embd / n_head` for the 62-layer 27B; pattern 6 unless
//! `attention.sliding_window_pattern` says otherwise; sliding rope base
//! `rope.freq_base_swa`, default 10000).

use crate::error::{no_panic, Result};
use crate::gemma3::{Config, Gemma3, Layer, Weights};
use crate::gguf::Loaded;
use crate::gguf_meta::{self as meta, Metadata};
use crate::hf::config::HfConfig;
use crate::model::ModelInfo;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QMatMul;
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use llmlocal_plugin_api::PluginError;
use serde_json::Value as Json;
use std::path::Path;

/// Gemma 3's pattern: every 6th layer is global.
const DEFAULT_PATTERN: usize = 6;
/// Rope base of sliding layers when nothing says otherwise (Gemma 3's, llama.cpp's default).
const DEFAULT_LOCAL_BASE: f64 = 10_000.0;
/// Default context of a load that asks for none: the trained length, capped so the rope
/// tables of 128K-context models stay small.
const DEFAULT_CONTEXT_CAP: usize = 4096;
/// llama.cpp scales Gemma 3 27B's queries by `n_embd / n_head` instead of the head size.
const LAYERS_27B: usize = 62;

fn unsupported(what: impl std::fmt::Display) -> PluginError {
    PluginError::unsupported_architecture(format!(
        "Gemma 3 with {what} is not supported by the candle backend; use the llama-cpp backend"
    ))
}

fn build_err(e: candle_core::Error) -> PluginError {
    PluginError::unsupported_format(format!("building the Gemma 3 network: {e}"))
}

/// Layer `il` slides under a pattern of `n` (`n - 1` sliding layers, then a global one).
fn pattern_slides(il: usize, n: usize) -> bool {
    n == 0 || !(il + 1).is_multiple_of(n)
}

/// The context a load covers.
pub fn context_length(train: usize, asked: u32) -> usize {
    match asked {
        0 => train.min(DEFAULT_CONTEXT_CAP),
        n => n as usize,
    }
}

// ---------------------------------------------------------------- safetensors

fn json_f64(json: &serde_json::Map<String, Json>, key: &str) -> Option<f64> {
    json.get(key).and_then(Json::as_f64)
}

/// The per-layer sliding flags of config.json: `layer_types` (newer transformers), else
/// `sliding_window_pattern`.
fn hf_sliding(config: &HfConfig) -> Result<Vec<bool>> {
    if let Some(types) = config.json.get("layer_types").and_then(Json::as_array) {
        if types.len() != config.layers {
            return Err(PluginError::unsupported_format(format!(
                "config.json: `layer_types` has {} entries for {} layers",
                types.len(),
                config.layers
            )));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(unsupported(format!("layer type {t}"))),
            })
            .collect();
    }
    let pattern = config
        .json
        .get("sliding_window_pattern")
        .and_then(Json::as_u64)
        .map_or(DEFAULT_PATTERN, |n| n as usize);
    Ok((0..config.layers)
        .map(|il| pattern_slides(il, pattern))
        .collect())
}

/// Linear rope scaling of global layers (`rope_scaling: {rope_type: linear, factor}`): the
/// position multiplier.
fn hf_rope_scale(config: &HfConfig) -> Result<f64> {
    let Some(scaling) = config.json.get("rope_scaling").filter(|v| !v.is_null()) else {
        return Ok(1.0);
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("default");
    match (kind, scaling.get("factor").and_then(Json::as_f64)) {
        ("default", _) => Ok(1.0),
        ("linear", Some(f)) if f > 0.0 => Ok(1.0 / f),
        _ => Err(unsupported(format!("rope_scaling {scaling}"))),
    }
}

fn hf_config(config: &HfConfig, context: usize) -> Result<Config> {
    let j = &config.json;
    if j.get("attn_logit_softcapping")
        .is_some_and(|v| !v.is_null())
    {
        return Err(unsupported("attn_logit_softcapping"));
    }
    if j.get("attention_bias").and_then(Json::as_bool) == Some(true) {
        return Err(unsupported("attention_bias"));
    }
    let act = j
        .get("hidden_activation")
        .or_else(|| j.get("hidden_act"))
        .and_then(Json::as_str)
        .unwrap_or("gelu_pytorch_tanh");
    if act != "gelu_pytorch_tanh" {
        return Err(unsupported(format!("hidden_activation `{act}`")));
    }
    let window = j
        .get("sliding_window")
        .and_then(Json::as_u64)
        .filter(|&w| w > 0)
        .map(|w| w as usize);
    let scalar = j
        .get("query_pre_attn_scalar")
        .and_then(Json::as_f64)
        .unwrap_or(config.head_dim as f64);
    Ok(Config {
        hidden: config.hidden,
        heads: config.heads,
        kv_heads: config.kv_heads,
        head_dim: config.head_dim,
        eps: json_f64(j, "rms_norm_eps").unwrap_or(1e-6) as f32,
        rope_global: (
            json_f64(j, "rope_theta").unwrap_or(1_000_000.0),
            hf_rope_scale(config)?,
        ),
        rope_local: json_f64(j, "rope_local_base_freq").unwrap_or(DEFAULT_LOCAL_BASE),
        window,
        sliding: hf_sliding(config)?,
        attn_scale: 1.0 / scalar.sqrt(),
        final_softcap: json_f64(j, "final_logit_softcapping"),
        context,
    })
}

fn hf_weights(config: &HfConfig, vb: &VarBuilder) -> candle_core::Result<Weights> {
    let (h, d, f) = (config.hidden, config.head_dim, config.intermediate);
    let (q, kv) = (config.heads * d, config.kv_heads * d);
    // Gemma's RMSNorm multiplies by `1 + weight`.
    let norm = |name: &str, n: usize| -> candle_core::Result<Tensor> { vb.get(n, name)? + 1.0 };
    let mat = |name: &str, shape: (usize, usize)| -> candle_core::Result<QMatMul> {
        Ok(QMatMul::Tensor(vb.get(shape, name)?))
    };
    let layers = (0..config.layers)
        .map(|il| {
            let p = format!("model.layers.{il}");
            Ok(Layer {
                attn_norm: norm(&format!("{p}.input_layernorm.weight"), h)?,
                q: mat(&format!("{p}.self_attn.q_proj.weight"), (q, h))?,
                k: mat(&format!("{p}.self_attn.k_proj.weight"), (kv, h))?,
                v: mat(&format!("{p}.self_attn.v_proj.weight"), (kv, h))?,
                o: mat(&format!("{p}.self_attn.o_proj.weight"), (h, q))?,
                q_norm: norm(&format!("{p}.self_attn.q_norm.weight"), d)?,
                k_norm: norm(&format!("{p}.self_attn.k_norm.weight"), d)?,
                post_attn_norm: norm(&format!("{p}.post_attention_layernorm.weight"), h)?,
                ffn_norm: norm(&format!("{p}.pre_feedforward_layernorm.weight"), h)?,
                gate: mat(&format!("{p}.mlp.gate_proj.weight"), (f, h))?,
                up: mat(&format!("{p}.mlp.up_proj.weight"), (f, h))?,
                down: mat(&format!("{p}.mlp.down_proj.weight"), (h, f))?,
                post_ffn_norm: norm(&format!("{p}.post_feedforward_layernorm.weight"), h)?,
            })
        })
        .collect::<candle_core::Result<Vec<Layer>>>()?;
    let embed = vb.get((config.vocab, h), "model.embed_tokens.weight")?;
    let output = match config.tie_embeddings {
        true => QMatMul::Tensor(embed.clone()),
        false => mat("lm_head.weight", (config.vocab, h))?,
    };
    Ok(Weights {
        embed,
        output,
        norm: norm("model.norm.weight", h)?,
        layers,
    })
}

/// The Gemma 3 network of a safetensors folder (tensors already checked against config.json).
pub fn from_hf(config: &HfConfig, vb: &VarBuilder, context: usize) -> Result<Gemma3> {
    let cfg = hf_config(config, context)?;
    let weights = hf_weights(config, vb).map_err(build_err)?;
    Gemma3::new(weights, cfg).map_err(build_err)
}

// ---------------------------------------------------------------- GGUF

struct GgufDims {
    heads: usize,
    kv_heads: usize,
    hidden: usize,
    head_dim: usize,
    layers: usize,
    ff: usize,
    train_context: usize,
}

fn required(md: &Metadata, key: &str) -> Result<usize> {
    meta::uint(md, &format!("gemma3.{key}"))
        .map(|n| n as usize)
        .ok_or_else(|| {
            PluginError::unsupported_format(format!(
                "the GGUF is missing the integer metadata key `gemma3.{key}`"
            ))
        })
}

fn gguf_dims(md: &Metadata) -> Result<GgufDims> {
    let (heads, kv_heads, hidden) = (
        required(md, "attention.head_count")?,
        required(md, "attention.head_count_kv")?,
        required(md, "embedding_length")?,
    );
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(PluginError::unsupported_format(format!(
            "GGUF head counts do not fit: heads {heads}, kv heads {kv_heads}"
        )));
    }
    let head_dim = match meta::uint(md, "gemma3.attention.key_length") {
        Some(n) => n as usize,
        None => hidden / heads,
    };
    let value_dim = meta::uint(md, "gemma3.attention.value_length").map(|n| n as usize);
    if head_dim == 0 || head_dim % 2 != 0 || value_dim.is_some_and(|v| v != head_dim) {
        return Err(unsupported(format!(
            "key size {head_dim} and value size {value_dim:?}"
        )));
    }
    Ok(GgufDims {
        heads,
        kv_heads,
        hidden,
        head_dim,
        layers: required(md, "block_count")?,
        ff: required(md, "feed_forward_length")?,
        train_context: required(md, "context_length")?,
    })
}

/// Per-layer sliding flags as llama.cpp reads them (`load_swa_pattern(ml, 6)`).
fn gguf_sliding(md: &Metadata, layers: usize) -> Result<Vec<bool>> {
    match md.get("gemma3.attention.sliding_window_pattern") {
        None => Ok((0..layers)
            .map(|il| pattern_slides(il, DEFAULT_PATTERN))
            .collect()),
        Some(Value::Array(flags)) if flags.len() == layers => flags
            .iter()
            .map(|f| match f {
                Value::Bool(b) => Ok(*b),
                _ => Err(unsupported("a non-boolean sliding_window_pattern array")),
            })
            .collect(),
        Some(v) => match v.to_u32() {
            Ok(n) => Ok((0..layers)
                .map(|il| pattern_slides(il, n as usize))
                .collect()),
            Err(_) => Err(unsupported(
                "an unreadable attention.sliding_window_pattern",
            )),
        },
    }
}

fn gguf_config(md: &Metadata, d: &GgufDims, context: usize) -> Result<Config> {
    if let Some(r) = meta::uint(md, "gemma3.rope.dimension_count") {
        if r as usize != d.head_dim {
            return Err(unsupported(format!("partial rotary embeddings ({r})")));
        }
    }
    let scale = match meta::string(md, "gemma3.rope.scaling.type") {
        None | Some("none") => 1.0,
        Some("linear") => match meta::float(md, "gemma3.rope.scaling.factor") {
            Some(f) if f > 0.0 => 1.0 / f,
            _ => return Err(unsupported("linear rope scaling without a factor")),
        },
        Some(kind) => return Err(unsupported(format!("rope scaling `{kind}`"))),
    };
    let eps = meta::float(md, "gemma3.attention.layer_norm_rms_epsilon").ok_or_else(|| {
        PluginError::unsupported_format(
            "the GGUF is missing `gemma3.attention.layer_norm_rms_epsilon`",
        )
    })?;
    let window = meta::uint(md, "gemma3.attention.sliding_window")
        .filter(|&w| w > 0)
        .map(|w| w as usize);
    let scaled_by = match d.layers {
        LAYERS_27B => d.hidden / d.heads,
        _ => d.head_dim,
    };
    Ok(Config {
        hidden: d.hidden,
        heads: d.heads,
        kv_heads: d.kv_heads,
        head_dim: d.head_dim,
        eps: eps as f32,
        rope_global: (
            meta::float(md, "gemma3.rope.freq_base").unwrap_or(DEFAULT_LOCAL_BASE),
            scale,
        ),
        rope_local: meta::float(md, "gemma3.rope.freq_base_swa").unwrap_or(DEFAULT_LOCAL_BASE),
        window,
        sliding: gguf_sliding(md, d.layers)?,
        attn_scale: 1.0 / (scaled_by as f64).sqrt(),
        final_softcap: meta::float(md, "gemma3.final_logit_softcapping").filter(|&c| c > 0.0),
        context,
    })
}

/// Every tensor with its shape (candle order); the vocabulary size.
fn check_tensors(content: &Content, d: &GgufDims) -> Result<usize> {
    let shape = |name: &str| {
        content
            .tensor_infos
            .get(name)
            .map(|i| i.shape.dims().to_vec())
    };
    let vocab = shape("token_embd.weight")
        .and_then(|s| s.first().copied())
        .ok_or_else(|| PluginError::unsupported_format("the GGUF has no `token_embd.weight`"))?;
    let (h, q, kv, f, hd) = (
        d.hidden,
        d.heads * d.head_dim,
        d.kv_heads * d.head_dim,
        d.ff,
        d.head_dim,
    );
    let mut want: Vec<(String, Vec<usize>)> = vec![
        ("token_embd.weight".into(), vec![vocab, h]),
        ("output_norm.weight".into(), vec![h]),
    ];
    if content.tensor_infos.contains_key("output.weight") {
        want.push(("output.weight".into(), vec![vocab, h]));
    }
    for il in 0..d.layers {
        for (suffix, s) in [
            ("attn_norm", vec![h]),
            ("attn_q", vec![q, h]),
            ("attn_k", vec![kv, h]),
            ("attn_v", vec![kv, h]),
            ("attn_output", vec![h, q]),
            ("attn_q_norm", vec![hd]),
            ("attn_k_norm", vec![hd]),
            ("post_attention_norm", vec![h]),
            ("ffn_norm", vec![h]),
            ("ffn_gate", vec![f, h]),
            ("ffn_up", vec![f, h]),
            ("ffn_down", vec![h, f]),
            ("post_ffw_norm", vec![h]),
        ] {
            want.push((format!("blk.{il}.{suffix}.weight"), s));
        }
    }
    for (name, s) in &want {
        match shape(name) {
            None => {
                return Err(PluginError::unsupported_format(format!(
                    "the GGUF has no tensor `{name}`"
                )))
            }
            Some(got) if &got != s => {
                return Err(PluginError::unsupported_format(format!(
                    "GGUF tensor `{name}` has shape {got:?}, the metadata implies {s:?}"
                )))
            }
            Some(_) => {}
        }
    }
    // A tensor the network would not read (EmbeddingGemma's dense layers, biases) changes
    // what the model computes.
    if let Some(extra) = content
        .tensor_infos
        .keys()
        .find(|n| !want.iter().any(|(w, _)| w == *n))
    {
        return Err(unsupported(format!("the tensor `{extra}`")));
    }
    Ok(vocab)
}

/// Reads the GGUF tensors: matrices stay as stored (Q8_0 runs quantized, as in llama.cpp;
/// F16/F32 are widened to F32 by `QMatMul`), norms and the input embedding as F32.
fn gguf_weights(
    content: &Content,
    file: &mut std::fs::File,
    d: &GgufDims,
    dev: &Device,
) -> candle_core::Result<Weights> {
    let mut read = |name: &str| content.tensor(file, name, dev);
    let mut layers = Vec::with_capacity(d.layers);
    for il in 0..d.layers {
        let name = |s: &str| format!("blk.{il}.{s}.weight");
        let mut mat = |s: &str| QMatMul::from_qtensor(read(&name(s))?);
        let (q, k, v, o) = (
            mat("attn_q")?,
            mat("attn_k")?,
            mat("attn_v")?,
            mat("attn_output")?,
        );
        let (gate, up, down) = (mat("ffn_gate")?, mat("ffn_up")?, mat("ffn_down")?);
        let mut norm = |s: &str| read(&name(s))?.dequantize(dev);
        layers.push(Layer {
            attn_norm: norm("attn_norm")?,
            q,
            k,
            v,
            o,
            q_norm: norm("attn_q_norm")?,
            k_norm: norm("attn_k_norm")?,
            post_attn_norm: norm("post_attention_norm")?,
            ffn_norm: norm("ffn_norm")?,
            gate,
            up,
            down,
            post_ffn_norm: norm("post_ffw_norm")?,
        });
    }
    let embed_q = read("token_embd.weight")?;
    let embed = embed_q.dequantize(dev)?;
    let output = match content.tensor_infos.contains_key("output.weight") {
        true => QMatMul::from_qtensor(read("output.weight")?)?,
        // Tied: the output matmul runs on the embedding as stored (quantized like llama.cpp's).
        false => QMatMul::from_qtensor(embed_q)?,
    };
    let norm = read("output_norm.weight")?.dequantize(dev)?;
    Ok(Weights {
        embed,
        output,
        norm,
        layers,
    })
}

/// Loads a GGUF `gemma3` file.
pub fn load_gguf(
    content: Content,
    file: &mut std::fs::File,
    path: &Path,
    device: &Device,
    context: u32,
) -> Result<Loaded> {
    let md = &content.metadata;
    let d = gguf_dims(md)?;
    let vocab_size = check_tensors(&content, &d)?;
    let context = context_length(d.train_context, context);
    let cfg = gguf_config(md, &d, context)?;
    let vocab = crate::gguf::load_vocab(path, md)?;
    let (params, size) = crate::gguf::sizes(&content);
    let name = meta::string(md, "general.name")
        .map(str::to_string)
        .unwrap_or_else(|| crate::gguf::file_stem(path));
    let net = no_panic("reading the GGUF tensors", || {
        let weights = gguf_weights(&content, file, &d, device).map_err(|e| {
            PluginError::unsupported_format(format!(
                "cannot read the tensors of {}: {e}",
                path.display()
            ))
        })?;
        Gemma3::new(weights, cfg).map_err(build_err)
    })?;
    let info = ModelInfo {
        architecture: "gemma3".to_string(),
        name,
        context_length: context,
        train_context_length: d.train_context,
        vocab_size,
        embedding_length: d.hidden,
        layer_count: d.layers,
        parameter_count: params,
        size_bytes: size,
    };
    Ok(Loaded {
        net: crate::net::Net::Gemma3(std::sync::Arc::new(net)),
        vocab,
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_six_makes_every_sixth_layer_global() {
        let flags: Vec<bool> = (0..12).map(|il| pattern_slides(il, 6)).collect();
        assert_eq!(flags.iter().filter(|s| !**s).count(), 2);
        assert!(!flags[5] && !flags[11] && flags[0] && flags[6]);
    }
}
