//! Embeddings (`Model::embed`) for llama models: hidden states after the final norm, from
//! our own [`DenseLlama`], pooled (mean, cls = first token, last, or none = every token)
//! and optionally L2-normalised.
//!
//! candle's `llama` and `quantized_llama`, which run generation for safetensors folders and
//! GGUF files on the CPU, give logits only. So a model not already held as a
//! [`DenseLlama`] gets one for embeddings, built from its files on the first `embed` call
//! and kept: F32 on the model's device, with the load's LoRA adapters merged the same way.
//! That is a second copy of the weights while the model stays loaded (documented in the
//! README); block-quantized GGUF tensors (Q8_0, k-quants) are dequantized for it, so it
//! takes 4 bytes per weight. Mistral and qwen2 folders and llama variants the dense network
//! cannot hold exactly (rope scaling, biases, extra tensors) are refused (`Unsupported`).
//!
//! Every input runs alone in its own session (no padding, no batch effects): the same input
//! gives the same vector whatever else is in the request.

use crate::dense_llama::{self, DenseLlama, LayerWeights, Weights};
use crate::error::{Result, ResultExt};
use crate::files::{HfFiles, ModelFiles};
use crate::hf::{
    config::{Arch, HfConfig},
    weights,
};
use crate::lora::Adapter;
use candle_core::{DType, Device, Tensor};
use llmlocal_plugin_api::{pooling, AdapterRequest, EmbedRequest, PluginError};
use std::sync::{Arc, Mutex};

/// How token vectors become one vector per input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
    Last,
    None,
}

impl Pooling {
    /// The request's pooling; empty = the model's own, which for a llama is mean.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "" | pooling::MEAN => Ok(Pooling::Mean),
            pooling::CLS => Ok(Pooling::Cls),
            pooling::LAST => Ok(Pooling::Last),
            pooling::NONE => Ok(Pooling::None),
            other => Err(PluginError::invalid_request(format!(
                "unknown pooling `{other}`; use mean, cls, last or none (or leave it empty for \
                 the model's own)"
            ))),
        }
    }
}

/// The network embeddings run on: the model's own when it is dense, else one built from the
/// files on first use.
pub struct Embedder {
    files: ModelFiles,
    adapters: Vec<AdapterRequest>,
    context: usize,
    device: Device,
    net: Mutex<Option<Arc<DenseLlama>>>,
}

impl Embedder {
    pub fn new(
        files: ModelFiles,
        adapters: Vec<AdapterRequest>,
        context: usize,
        device: Device,
        dense: Option<Arc<DenseLlama>>,
    ) -> Self {
        Embedder {
            files,
            adapters,
            context,
            device,
            net: Mutex::new(dense),
        }
    }

    pub fn embed(&self, request: &EmbedRequest) -> Result<Vec<Vec<f32>>> {
        let pooling = Pooling::parse(request.pooling.as_str())?;
        for (index, input) in request.inputs.iter().enumerate() {
            if input.is_empty() || input.len() > self.context {
                return Err(PluginError::invalid_request(format!(
                    "embedding input {index} has {} tokens; it must have 1 to {} (the context \
                     length of this load)",
                    input.len(),
                    self.context
                )));
            }
        }
        let net = self.net()?;
        request
            .inputs
            .iter()
            .map(|input| {
                let v = embed_one(&net, input.as_slice(), pooling)
                    .internal_err(|| "computing an embedding".to_string())?;
                Ok(match request.normalize {
                    true => normalized(v, pooling, net.hidden_size()),
                    false => v,
                })
            })
            .collect()
    }

    fn net(&self) -> Result<Arc<DenseLlama>> {
        // Held while building, so concurrent first calls build once.
        let mut slot = self.net.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(net) = slot.as_ref() {
            return Ok(Arc::clone(net));
        }
        let net = self.build()?;
        *slot = Some(Arc::clone(&net));
        Ok(net)
    }

    fn build(&self) -> Result<Arc<DenseLlama>> {
        tracing::info!("candle: building an F32 copy of the network for embeddings");
        match &self.files {
            ModelFiles::Hf(files) => {
                hf_net(files, &self.adapters, self.context, &self.device).map(Arc::new)
            }
            ModelFiles::Gguf(path) => crate::gguf::dense_f32(path, &self.device, self.context),
        }
    }
}

/// One input through a fresh session, pooled.
fn embed_one(
    net: &Arc<DenseLlama>,
    tokens: &[u32],
    pooling: Pooling,
) -> candle_core::Result<Vec<f32>> {
    let mut session = net.session();
    let hidden = session.hidden(tokens, 0)?;
    let t = hidden.dim(0)?;
    let pooled = match pooling {
        Pooling::Mean => hidden.mean(0)?,
        Pooling::Cls => hidden.get(0)?,
        Pooling::Last => hidden.get(t - 1)?,
        Pooling::None => hidden.flatten_all()?,
    };
    pooled.to_vec1::<f32>()
}

/// Each `width`-value vector of `v` scaled to unit L2 norm (per token for pooling `none`).
fn normalized(mut v: Vec<f32>, pooling: Pooling, width: usize) -> Vec<f32> {
    let width = match pooling {
        Pooling::None => width.max(1),
        _ => v.len().max(1),
    };
    for chunk in v.chunks_mut(width) {
        let norm = chunk
            .iter()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            chunk
                .iter_mut()
                .for_each(|x| *x = (f64::from(*x) / norm) as f32);
        }
    }
    v
}

/// A Hugging Face llama folder as a [`DenseLlama`] in F32, adapters merged.
fn hf_net(
    files: &HfFiles,
    adapters: &[AdapterRequest],
    context: usize,
    device: &Device,
) -> Result<DenseLlama> {
    let config = HfConfig::read(&files.config)?;
    if config.arch != Arch::Llama {
        return Err(PluginError::unsupported(format!(
            "the candle backend computes embeddings for llama models only, not {}; use the \
             llama-cpp backend",
            config.arch.name()
        )));
    }
    for flag in ["attention_bias", "mlp_bias"] {
        if config.bool_flag(flag) {
            return Err(PluginError::unsupported(format!(
                "the candle backend cannot compute embeddings of a llama with `{flag}`"
            )));
        }
    }
    if config
        .json
        .get("rope_scaling")
        .is_some_and(|v| !v.is_null())
    {
        return Err(PluginError::unsupported(
            "the candle backend cannot compute embeddings of a llama with rope scaling; use \
             the llama-cpp backend",
        ));
    }
    let mut tensors = weights::load(&files.weights)?;
    for adapter in adapters {
        Adapter::open(std::path::Path::new(adapter.path.as_str()))?.merge_into(
            &mut tensors,
            config.arch.name(),
            adapter.scale,
        )?;
    }
    let mut take = |name: String| -> Result<Tensor> {
        let t = tensors.remove(&name).ok_or_else(|| {
            PluginError::unsupported_format(format!("the checkpoint has no tensor `{name}`"))
        })?;
        t.to_dtype(DType::F32)
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
    let w = Weights {
        embed: take("model.embed_tokens.weight".into())?,
        norm: take("model.norm.weight".into())?,
        // Embeddings never read the output layer; tie it to the embedding (no copy).
        output: None,
        layers,
        rope_freqs: None,
    };
    let float = |key: &str, default: f64| {
        config
            .json
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(default)
    };
    let shape = dense_llama::Shape {
        hidden: config.hidden,
        heads: config.heads,
        kv_heads: config.kv_heads,
        head_dim: config.head_dim,
        rms_eps: float("rms_norm_eps", 1e-6) as f32,
        rope_theta: float("rope_theta", 10_000.0) as f32,
        context,
    };
    DenseLlama::new(w, shape, DType::F32, device)
        .internal_err(|| "building the embedding network".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poolings_parse_or_are_refused() {
        assert_eq!(Pooling::parse("").unwrap(), Pooling::Mean);
        assert_eq!(Pooling::parse("none").unwrap(), Pooling::None);
        assert!(Pooling::parse("max").is_err());
    }

    #[test]
    fn normalizing_is_per_token_for_none() {
        let v = normalized(vec![3.0, 4.0, 0.0, 2.0], Pooling::None, 2);
        assert_eq!(v, [0.6, 0.8, 0.0, 1.0]);
        let v = normalized(vec![3.0, 4.0], Pooling::Mean, 2);
        assert_eq!(v, [0.6, 0.8]);
    }
}
