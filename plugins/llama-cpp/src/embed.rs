//! Embeddings (`Model::embed`): hidden states after the final norm, pooled by llama.cpp.
//!
//! Each call creates its own llama.cpp context on the shared model, with embeddings on and
//! the pooling asked for, and drops it at the end. Why not keep one: a `LlamaContext`
//! borrows the model, and a context kept outside the decode thread would have to hold the
//! model's read lock for its whole life, which would block the decode thread for good when
//! it needs the write lock (reading a LoRA adapter, reloading). A call holds the read lock
//! only while it computes, never touches the decode thread's generation context, and any
//! number of calls may run at once (each has its own context; the model's weights are
//! read-only). Creating a context costs a few milliseconds plus the KV cache of the tokens
//! of one batch.
//!
//! One `llama_decode` per input, all in the call's context (its KV cache cleared in
//! between), rather than several inputs as sequences of one decode: llama.cpp picks its
//! matmul kernels by the number of rows in a micro-batch, so an input's vector changed with
//! what else was in the batch (measured on a Q8_0 model: 1e-6 below ~64 rows in all, 3e-2
//! absolute above), and the contract promises the same vector whatever else is in the batch.
//! A decode holds the whole input in one micro-batch (`n_ubatch = n_batch`): llama.cpp
//! asserts (aborting the process) that non-causal models such as BERT see the whole input
//! at once, and pooling needs every token's output anyway.

use crate::model::SharedModel;
use llama_cpp_2::{
    context::{
        params::{LlamaContextParams, LlamaPoolingType},
        LlamaContext,
    },
    llama_batch::LlamaBatch,
    model::LlamaModel,
    token::LlamaToken,
};
use llmlocal_plugin_api::{pooling, EmbedRequest, PluginError};
use std::num::NonZeroU32;

/// What an embedding call needs from the load.
#[derive(Debug, Clone)]
pub struct Embedder {
    pub model: SharedModel,
    /// The longest input: the load's context length per sequence.
    pub context_length: u32,
    pub threads: i32,
    /// The model's own pooling (`ModelMetadata::pooling`), empty when the file names none.
    pub model_pooling: String,
    /// Whether LoRA adapters were given at load: they live in the decode thread's context,
    /// so an embedding context would run without them.
    pub has_adapters: bool,
}

impl Embedder {
    pub fn embed(&self, request: &EmbedRequest) -> Result<Vec<Vec<f32>>, PluginError> {
        if self.has_adapters {
            return Err(PluginError::unsupported(
                "the llama-cpp backend cannot compute embeddings of a model loaded with LoRA \
                 adapters yet; load the model without adapters for embeddings",
            ));
        }
        let pooling = resolve_pooling(request.pooling.as_str(), &self.model_pooling)?;
        let inputs = self.check_inputs(request)?;
        let longest = inputs.iter().map(Vec::len).max().unwrap_or(1);
        let model = crate::model::read(&self.model)?;
        let mut context = self.context(&model, pooling, longest)?;
        let mut out = Vec::with_capacity(inputs.len());
        for input in &inputs {
            out.push(run_input(&mut context, input, pooling)?);
        }
        if request.normalize {
            let width = usize::try_from(model.n_embd_out()).unwrap_or(1).max(1);
            for vector in &mut out {
                vector.chunks_mut(width).for_each(normalize);
            }
        }
        Ok(out)
    }

    /// Token ids as llama.cpp takes them; an input longer than the context is refused.
    fn check_inputs(&self, request: &EmbedRequest) -> Result<Vec<Vec<LlamaToken>>, PluginError> {
        let limit = self.context_length as usize;
        request
            .inputs
            .iter()
            .enumerate()
            .map(|(index, input)| {
                if input.is_empty() {
                    return Err(PluginError::invalid_request(format!(
                        "embedding input {index} is empty"
                    )));
                }
                if input.len() > limit {
                    return Err(PluginError::invalid_request(format!(
                        "embedding input {index} has {} tokens but the context holds {limit}; \
                         shorten it or load the model with a longer context_length",
                        input.len()
                    )));
                }
                input
                    .iter()
                    .map(|&id| {
                        i32::try_from(id).map(LlamaToken::new).map_err(|_| {
                            PluginError::invalid_request(format!("token id {id} is out of range"))
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// One context big enough for the longest input.
    fn context<'m>(
        &self,
        model: &'m LlamaModel,
        pooling: LlamaPoolingType,
        longest: usize,
    ) -> Result<LlamaContext<'m>, PluginError> {
        let tokens = u32::try_from(longest.max(1)).unwrap_or(u32::MAX);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(tokens))
            .with_n_batch(tokens)
            .with_n_ubatch(tokens)
            .with_n_seq_max(1)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads)
            .with_embeddings(true)
            .with_pooling_type(pooling);
        model
            .new_context(crate::runtime::backend()?, params)
            .map_err(|e| {
                PluginError::out_of_memory(format!(
                    "llama.cpp could not create an embedding context of {tokens} tokens: {e}; \
                     send shorter inputs"
                ))
            })
    }
}

/// One decode of one input (sequence 0 of a cleared context); its vector.
fn run_input(
    context: &mut LlamaContext<'_>,
    input: &[LlamaToken],
    pooling: LlamaPoolingType,
) -> Result<Vec<f32>, PluginError> {
    context.clear_kv_cache();
    // One sequence id per token.
    let mut batch = LlamaBatch::new(input.len(), 1);
    for (pos, &token) in input.iter().enumerate() {
        let pos = i32::try_from(pos).unwrap_or(i32::MAX);
        // Every token is an output: pooling reads them all, `none` returns them all.
        batch
            .add(token, pos, &[0], true)
            .map_err(|e| PluginError::internal(format!("building the embedding batch: {e}")))?;
    }
    context
        .decode(&mut batch)
        .map_err(|e| PluginError::internal(format!("llama.cpp could not run the input: {e}")))?;
    if pooling != LlamaPoolingType::None {
        return context
            .embeddings_seq_ith(0)
            .map(<[f32]>::to_vec)
            .map_err(|e| {
                PluginError::internal(format!("llama.cpp gave no pooled embedding: {e}"))
            });
    }
    // Pooling `none`: every token's vector, concatenated.
    let mut vector = Vec::new();
    for index in 0..batch.n_tokens() {
        let token = context.embeddings_ith(index).map_err(|e| {
            PluginError::internal(format!("llama.cpp gave no token embedding: {e}"))
        })?;
        vector.extend_from_slice(token);
    }
    Ok(vector)
}

/// The pooling a request asks for: its own, else the model's, else mean (a generative model
/// names none; mean is what `candle` does too and what the contract says).
pub fn resolve_pooling(asked: &str, model: &str) -> Result<LlamaPoolingType, PluginError> {
    let name = match (asked, model) {
        ("", "") => pooling::MEAN,
        ("", model) => model,
        (asked, _) => asked,
    };
    match name {
        pooling::MEAN => Ok(LlamaPoolingType::Mean),
        pooling::CLS => Ok(LlamaPoolingType::Cls),
        pooling::LAST => Ok(LlamaPoolingType::Last),
        pooling::NONE => Ok(LlamaPoolingType::None),
        other => Err(PluginError::invalid_request(format!(
            "unknown pooling `{other}`; use mean, cls, last or none (or leave it empty for the \
             model's own)"
        ))),
    }
}

/// Scales `v` to unit L2 norm (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter_mut()
            .for_each(|x| *x = (f64::from(*x) / norm) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_names_resolve_or_are_refused() {
        assert_eq!(resolve_pooling("", "").unwrap(), LlamaPoolingType::Mean);
        assert_eq!(resolve_pooling("", "cls").unwrap(), LlamaPoolingType::Cls);
        assert_eq!(
            resolve_pooling("last", "cls").unwrap(),
            LlamaPoolingType::Last
        );
        assert_eq!(resolve_pooling("none", "").unwrap(), LlamaPoolingType::None);
        assert!(resolve_pooling("max", "").is_err());
    }

    #[test]
    fn normalize_gives_unit_norm_and_keeps_zero() {
        let mut v = [3.0, 4.0];
        normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut z = [0.0, 0.0];
        normalize(&mut z);
        assert_eq!(z, [0.0, 0.0]);
    }
}
