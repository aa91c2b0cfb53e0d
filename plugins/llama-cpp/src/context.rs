//! Creating the llama.cpp context the decode thread runs.

use crate::engine::EngineConfig;
use llama_cpp_2::{
    context::{params::LlamaContextParams, LlamaContext},
    model::LlamaModel,
};
use llmlocal_plugin_api::PluginError;
use std::num::NonZeroU32;

/// llama.cpp's largest physical batch; larger logical batches are split into these.
const MAX_UBATCH: u32 = 512;

/// One context with `parallel` sequences of `context_per_sequence` cells each.
///
/// `kv_unified` is off: llama.cpp then gives every sequence its own KV stream of
/// `n_ctx / n_seq_max` cells, so a long generation cannot starve the others of cells and a
/// sequence's limit is exactly the per-sequence context length the plugin reports.
pub fn create<'m>(
    model: &'m LlamaModel,
    config: &EngineConfig,
) -> Result<LlamaContext<'m>, PluginError> {
    let total = config
        .context_per_sequence
        .checked_mul(config.parallel)
        .and_then(NonZeroU32::new)
        .ok_or_else(|| {
            PluginError::invalid_request(format!(
                "context length {} x {} parallel sequences does not fit llama.cpp's 32-bit \
                 context size",
                config.context_per_sequence, config.parallel
            ))
        })?;
    let params = LlamaContextParams::default()
        .with_n_ctx(Some(total))
        .with_n_seq_max(config.parallel)
        .with_kv_unified(false)
        .with_n_batch(config.batch_size)
        .with_n_ubatch(config.batch_size.min(MAX_UBATCH))
        .with_n_threads(config.threads)
        .with_n_threads_batch(config.threads)
        .with_type_k(config.kv.type_k.ggml)
        .with_type_v(config.kv.type_v.ggml)
        .with_flash_attention_policy(config.kv.flash_attn.policy())
        .with_embeddings(false);
    model
        .new_context(crate::runtime::backend()?, params)
        .map_err(|e| {
            PluginError::out_of_memory(format!(
                "llama.cpp could not create a context of {total} tokens ({} per sequence x {} \
                 sequences, K cache {}, V cache {}, flash attention {:?}): {e}; lower \
                 context_length or parallel, or check the KV cache types",
                config.context_per_sequence,
                config.parallel,
                config.kv.type_k.name,
                config.kv.type_v.name,
                config.kv.flash_attn
            ))
        })
}
