//! The loaded networks and their per-generation state.
//!
//! candle's models differ in where the KV cache lives: `llama::Llama` takes a separate
//! `llama::Cache`, while `mistral`, `qwen2` and `quantized_llama` keep it inside the model
//! (`forward(&mut self, ..)`). Their weights are `Arc`-backed tensors, so cloning a model
//! copies only pointers: every generation gets its own clone (or its own `Cache`), and
//! several generations run at once without sharing any mutable state.

use crate::dense_llama::{self, DenseLlama};
use crate::error::Result;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{
    llama, mistral, phi3, quantized_llama, quantized_phi3, quantized_qwen3, qwen2, qwen3,
};
use llmlocal_plugin_api::PluginError;
use std::sync::Arc;

/// A loaded network, shared by all generations of one model.
#[derive(Clone)]
pub enum Net {
    Llama {
        model: Arc<llama::Llama>,
        config: Arc<llama::Config>,
        dtype: DType,
    },
    Mistral(mistral::Model),
    Qwen2(qwen2::ModelForCausalLM),
    Qwen3(qwen3::ModelForCausalLM),
    Phi3(phi3::Model),
    Gguf(quantized_llama::ModelWeights),
    GgufQwen3(quantized_qwen3::ModelWeights),
    /// Never run itself (quantized_phi3 cannot clear its cache): sessions are clones of a
    /// model with an empty cache.
    GgufPhi3(quantized_phi3::ModelWeights),
    /// A GGUF file's dense half-precision weights (see [`crate::dense_llama`]).
    Dense(Arc<DenseLlama>),
    /// Gemma 3 from safetensors or GGUF (see [`crate::gemma3`]).
    Gemma3(Arc<crate::gemma3::Gemma3>),
    /// An encoder-only model (BERT, [`crate::bert`]): embeddings only, no sessions.
    Encoder(Arc<crate::bert::Bert>),
}

/// The state of one sequence: its own KV cache.
pub enum Session {
    Llama {
        model: Arc<llama::Llama>,
        cache: Box<llama::Cache>,
    },
    Mistral(Box<mistral::Model>),
    Qwen2(Box<qwen2::ModelForCausalLM>),
    Qwen3(Box<qwen3::ModelForCausalLM>),
    Phi3(Box<phi3::Model>),
    Gguf(Box<quantized_llama::ModelWeights>),
    GgufQwen3(Box<quantized_qwen3::ModelWeights>),
    GgufPhi3(Box<quantized_phi3::ModelWeights>),
    Dense(Box<dense_llama::Session>),
    Gemma3(Box<crate::gemma3::Session>),
}

impl Net {
    /// Whether this network's sessions can go to the prompt cache (`prefix::Kv::can_keep`):
    /// quantized_qwen3 keeps prompt chunks and decoded tokens apart, quantized_phi3 writes
    /// its cache in place and cannot cut it.
    pub fn keeps_prefixes(&self) -> bool {
        !matches!(self, Net::GgufQwen3(_) | Net::GgufPhi3(_))
    }

    /// A fresh, empty sequence.
    pub fn session(&self, device: &Device) -> Result<Session> {
        Ok(match self {
            Net::Llama {
                model,
                config,
                dtype,
            } => {
                Session::Llama {
                    model: model.clone(),
                    cache: Box::new(llama::Cache::new(true, *dtype, config, device).map_err(
                        |e| PluginError::internal(format!("cannot create the KV cache: {e}")),
                    )?),
                }
            }
            Net::Mistral(m) => {
                let mut m = m.clone();
                m.clear_kv_cache();
                Session::Mistral(Box::new(m))
            }
            Net::Qwen2(m) => {
                let mut m = m.clone();
                m.clear_kv_cache();
                Session::Qwen2(Box::new(m))
            }
            Net::Qwen3(m) => {
                let mut m = m.clone();
                m.clear_kv_cache();
                Session::Qwen3(Box::new(m))
            }
            Net::Phi3(m) => {
                let mut m = m.clone();
                m.clear_kv_cache();
                Session::Phi3(Box::new(m))
            }
            Net::Gguf(m) => {
                let mut m = m.clone();
                m.clear_kv_cache();
                Session::Gguf(Box::new(m))
            }
            Net::GgufQwen3(m) => {
                let mut m = m.clone();
                m.clear_kv_cache();
                Session::GgufQwen3(Box::new(m))
            }
            Net::GgufPhi3(m) => Session::GgufPhi3(Box::new(m.clone())),
            Net::Dense(m) => Session::Dense(Box::new(m.session())),
            Net::Gemma3(m) => Session::Gemma3(Box::new(m.session())),
            Net::Encoder(_) => return Err(crate::bert::cannot_generate()),
        })
    }
}

impl Session {
    /// Feeds `tokens` at positions `pos..` and returns the next-token logits (f32) after
    /// the last of them.
    pub fn forward(&mut self, tokens: &[u32], pos: usize, device: &Device) -> Result<Vec<f32>> {
        self.forward_inner(tokens, pos, device)
            .map_err(|e| forward_failed(pos, e))
    }

    /// Like [`Session::forward`], but returns the greedy choice (the highest logit, lowest id
    /// on ties) picked on the device, where the network can (a dense llama on the fused CUDA
    /// kernels): 4 bytes come back instead of the vocabulary's logits. `None`, with nothing
    /// run, where it cannot.
    pub fn forward_argmax(&mut self, tokens: &[u32], pos: usize) -> Result<Option<u32>> {
        let Session::Dense(session) = self else {
            return Ok(None);
        };
        if !session.argmax_on_device() {
            return Ok(None);
        }
        session
            .forward_argmax(tokens, pos)
            .map(Some)
            .map_err(|e| forward_failed(pos, e))
    }

    fn forward_inner(
        &mut self,
        tokens: &[u32],
        pos: usize,
        device: &Device,
    ) -> candle_core::Result<Vec<f32>> {
        let input = || Tensor::new(tokens, device)?.unsqueeze(0);
        let logits = match self {
            Session::Llama { model, cache } => model.forward(&input()?, pos, cache)?,
            Session::Mistral(m) => m.forward(&input()?, pos)?,
            Session::Qwen2(m) => m.forward(&input()?, pos)?,
            Session::Qwen3(m) => m.forward(&input()?, pos)?,
            Session::Phi3(m) => m.forward(&input()?, pos)?,
            Session::Gguf(m) => m.forward(&input()?, pos)?,
            Session::GgufQwen3(m) => m.forward(&input()?, pos)?,
            Session::GgufPhi3(m) => m.forward(&input()?, pos)?,
            Session::Dense(session) => session.forward(tokens, pos)?,
            Session::Gemma3(session) => session.forward(tokens, pos)?,
        };
        logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
    }
}

/// A failed forward pass, as the plugin reports it.
fn forward_failed(pos: usize, e: candle_core::Error) -> PluginError {
    PluginError::internal(format!("forward pass at position {pos}: {e}"))
}
