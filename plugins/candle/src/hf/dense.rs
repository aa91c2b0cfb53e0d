//! A Hugging Face llama folder as our own [`DenseLlama`] with F32 activations: the network
//! CPU generation runs (see [`super::load`]) and embeddings use. F16/BF16 checkpoints keep
//! their matrices as stored on a CPU with the half-weight kernel ([`crate::cpu_f16`]);
//! otherwise every weight is widened to F32.
//!
//! Why not candle's `llama` on the CPU: it grows the KV cache by concatenation (a copy of the
//! whole cache per token), runs separate q/k/v and gate/up matmuls and its one-token
//! matmuls on one thread; [`DenseLlama`] does none of that, with the same F32 arithmetic.
//! Safetensors llamas store q/k in the half-split RoPE layout [`DenseLlama`] applies, so the
//! tensors go in as they are.

use super::config::{Arch, HfConfig};
use super::weights::Weights as Tensors;
use crate::dense_llama::{self, DenseLlama, LayerWeights, Weights};
use crate::error::{Result, ResultExt};
use candle_core::{DType, Device, Tensor};
use llmlocal_plugin_api::PluginError;

/// Why [`build`] cannot hold this folder exactly, if it cannot: not a llama, biases, rope
/// scaling.
pub fn obstacle(config: &HfConfig) -> Option<String> {
    if config.arch != Arch::Llama {
        return Some(format!("architecture {}", config.arch.name()));
    }
    for flag in ["attention_bias", "mlp_bias"] {
        if config.bool_flag(flag) {
            return Some(format!("`{flag}`"));
        }
    }
    if config
        .json
        .get("rope_scaling")
        .is_some_and(|v| !v.is_null())
    {
        return Some("rope scaling".to_string());
    }
    None
}

/// Takes the tensors out of `tensors` (adapters already merged) and builds the network on
/// `device` for `context` positions. `head`: read `lm_head.weight` unless the embeddings are
/// tied (embeddings never read the output layer, so they pass `false` and tie it).
pub fn build(
    config: &HfConfig,
    tensors: &mut Tensors,
    context: usize,
    device: &Device,
    head: bool,
) -> Result<DenseLlama> {
    let matrices = matrix_dtype(tensors, device);
    let activations = dense_llama::activation_dtype(matrices, device);
    let mut take = |name: String| -> Result<Tensor> {
        let t = tensors.remove(&name).ok_or_else(|| {
            PluginError::unsupported_format(format!("the checkpoint has no tensor `{name}`"))
        })?;
        // Norms in the activations' dtype (candle's RMS norm takes one dtype).
        let dtype = if t.rank() >= 2 { matrices } else { activations };
        t.to_dtype(dtype)
            .and_then(|t| t.to_device(device))
            .internal_err(|| format!("putting `{name}` on the device"))
    };
    let layers = (0..config.layers)
        .map(|i| {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            Ok(LayerWeights {
                attn_norm: take(p("input_layernorm"))?,
                q: take(p("self_attn.q_proj"))?,
                k: take(p("self_attn.k_proj"))?,
                v: take(p("self_attn.v_proj"))?,
                o: take(p("self_attn.o_proj"))?,
                ffn_norm: take(p("post_attention_layernorm"))?,
                gate: take(p("mlp.gate_proj"))?,
                up: take(p("mlp.up_proj"))?,
                down: take(p("mlp.down_proj"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // Tied: the output is the embedding itself (same storage, no copy).
    let output = match head && !config.tie_embeddings {
        true => Some(take("lm_head.weight".into())?),
        false => None,
    };
    let w = Weights {
        embed: take("model.embed_tokens.weight".into())?,
        norm: take("model.norm.weight".into())?,
        output,
        layers,
        rope_freqs: None,
    };
    DenseLlama::new(w, shape(config, context), activations, device)
        .internal_err(|| "building the dense llama".to_string())
}

/// The dtype the weight matrices are held in: F16/BF16 as stored when every matrix has that
/// one dtype (a merged adapter may have widened some) and the CPU has the half-weight
/// kernel; F32 otherwise.
fn matrix_dtype(tensors: &Tensors, device: &Device) -> DType {
    let mut dtypes = tensors
        .values()
        .filter(|t| t.rank() >= 2)
        .map(Tensor::dtype);
    let first = dtypes.next();
    let shared = first.filter(|d| dtypes.all(|other| other == *d));
    match shared {
        Some(half @ (DType::F16 | DType::BF16)) if device.is_cpu() && crate::cpu_f16::fast() => {
            half
        }
        _ => DType::F32,
    }
}

/// The network's sizes from config.json (the keys and defaults candle's llama reads).
fn shape(config: &HfConfig, context: usize) -> dense_llama::Shape {
    let float = |key: &str, default: f64| {
        config
            .json
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(default)
    };
    dense_llama::Shape {
        hidden: config.hidden,
        heads: config.heads,
        kv_heads: config.kv_heads,
        head_dim: config.head_dim,
        rms_eps: float("rms_norm_eps", 1e-6) as f32,
        rope_theta: float("rope_theta", 10_000.0) as f32,
        context,
    }
}
