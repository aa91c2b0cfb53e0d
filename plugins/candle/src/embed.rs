//! Embeddings (`Model::embed`) for llama and BERT models: hidden states after the final norm, from
//! our own [`DenseLlama`], pooled (mean, cls = first token, last, or none = every token)
//! and optionally L2-normalised.
//!
//! A model whose generation already runs on a [`DenseLlama`] (llama safetensors folders,
//! F32/F16/BF16 GGUF files on the CPU and Q8_0 ones on x86 CPUs, half-precision GGUF on a
//! GPU) embeds with that same
//! network. candle's `llama` and `quantized_llama`, which run generation otherwise, give
//! logits only. So a model not already held as a
//! [`DenseLlama`] gets one for embeddings, built from its files on the first `embed` call
//! and kept: F32 on the model's device, with the load's LoRA adapters merged the same way.
//! That is a second copy of the weights while the model stays loaded (documented in the
//! README); block-quantized GGUF tensors (Q8_0, k-quants) are dequantized for it, so it
//! takes 4 bytes per weight. Mistral and qwen2 folders and llama variants the dense network
//! cannot hold exactly (rope scaling, biases, extra tensors) are refused (`Unsupported`).
//!
//! Encoder-only models (BERT, [`crate::bert`]) embed with their own network and their own
//! pooling (the file's), the llama path is not used for them.
//!
//! Every input runs alone in its own session (no padding, no batch effects): the same input
//! gives the same vector whatever else is in the request.

use crate::bert::Bert;
use crate::dense_llama::DenseLlama;
use crate::error::{Result, ResultExt};
use crate::files::{HfFiles, ModelFiles};
use crate::hf::{config::HfConfig, dense, weights};
use crate::lora::Adapter;
use candle_core::{Device, Tensor};
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
    /// The request's pooling; empty = the model's own (`own`: mean for a llama).
    pub fn parse(name: &str, own: Pooling) -> Result<Self> {
        match name {
            "" => Ok(own),
            pooling::MEAN => Ok(Pooling::Mean),
            pooling::CLS => Ok(Pooling::Cls),
            pooling::LAST => Ok(Pooling::Last),
            pooling::NONE => Ok(Pooling::None),
            other => Err(PluginError::invalid_request(format!(
                "unknown pooling `{other}`; use mean, cls, last or none (or leave it empty for \
                 the model's own)"
            ))),
        }
    }

    /// The contract's name of this pooling (`ModelMetadata::pooling`).
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => pooling::MEAN,
            Pooling::Cls => pooling::CLS,
            Pooling::Last => pooling::LAST,
            Pooling::None => pooling::NONE,
        }
    }
}

/// The network embeddings run on: an encoder's own, the model's own dense llama, else one
/// built from the files on first use.
pub struct Embedder {
    files: ModelFiles,
    adapters: Vec<AdapterRequest>,
    context: usize,
    device: Device,
    net: Mutex<Option<Arc<DenseLlama>>>,
    /// An encoder-only model: every embedding runs on it, with its pooling.
    encoder: Option<Arc<Bert>>,
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
            encoder: None,
        }
    }

    /// Embeds with `encoder` (an encoder-only model) instead of a llama.
    pub fn with_encoder(mut self, encoder: Option<Arc<Bert>>) -> Self {
        self.encoder = encoder;
        self
    }

    /// The pooling the model's files ask for: an encoder's own, else none named.
    pub fn own_pooling(&self) -> Option<Pooling> {
        self.encoder.as_ref().map(|e| e.pooling())
    }

    pub fn embed(&self, request: &EmbedRequest) -> Result<Vec<Vec<f32>>> {
        let own = self.own_pooling().unwrap_or(Pooling::Mean);
        let pooling = Pooling::parse(request.pooling.as_str(), own)?;
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
        let inputs = request.inputs.iter().map(|input| input.as_slice());
        let (vectors, width) = match &self.encoder {
            Some(encoder) => (
                inputs
                    .map(|tokens| pool(&encoder.hidden(tokens)?, pooling))
                    .collect::<candle_core::Result<Vec<_>>>(),
                encoder.hidden_size(),
            ),
            None => {
                let net = self.net()?;
                // Each input in a fresh session of its own.
                let vectors = inputs
                    .map(|tokens| pool(&net.session().hidden(tokens, 0)?, pooling))
                    .collect();
                (vectors, net.hidden_size())
            }
        };
        let vectors = vectors.internal_err(|| "computing an embedding".to_string())?;
        Ok(vectors
            .into_iter()
            .map(|v| match request.normalize {
                true => normalized(v, pooling, width),
                false => v,
            })
            .collect())
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

/// One input's token vectors (`[tokens, hidden]`), pooled.
fn pool(hidden: &Tensor, pooling: Pooling) -> candle_core::Result<Vec<f32>> {
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
    if let Some(reason) = dense::obstacle(&config) {
        return Err(PluginError::unsupported(format!(
            "the candle backend computes embeddings of llama models without biases or rope              scaling only, not one with {reason}; use the llama-cpp backend"
        )));
    }
    let mut tensors = weights::load(&files.weights)?;
    for adapter in adapters {
        Adapter::open(std::path::Path::new(adapter.path.as_str()))?.merge_into(
            &mut tensors,
            config.arch.name(),
            adapter.scale,
        )?;
    }
    dense::build(&config, &mut tensors, context, device, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poolings_parse_or_are_refused() {
        assert_eq!(Pooling::parse("", Pooling::Mean).unwrap(), Pooling::Mean);
        assert_eq!(Pooling::parse("", Pooling::Cls).unwrap(), Pooling::Cls);
        assert_eq!(Pooling::parse("none", Pooling::Cls).unwrap(), Pooling::None);
        assert!(Pooling::parse("max", Pooling::Mean).is_err());
    }

    #[test]
    fn normalizing_is_per_token_for_none() {
        let v = normalized(vec![3.0, 4.0, 0.0, 2.0], Pooling::None, 2);
        assert_eq!(v, [0.6, 0.8, 0.0, 1.0]);
        let v = normalized(vec![3.0, 4.0], Pooling::Mean, 2);
        assert_eq!(v, [0.6, 0.8]);
    }
}
