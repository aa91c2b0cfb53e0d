//! The bytes a loaded model's prompt caches hold now (`model_info::PROMPT_CACHE_BYTES`):
//! the llama-cpp plugin's host-RAM cache, candle's kept KV caches. They grow up to a cap
//! while the model is loaded and are outside the model's memory estimate, so `/api/ps` and
//! `/metrics` show them; the metadata kept from the load has only the figure of that moment,
//! so the live model is asked each time.

use crate::plugins::LoadedModel;
use llmlocal_plugin_api::model_info;

/// The figure of `model` now: 0 when its backend does not report one or the call failed
/// (logged at debug): a listing or a scrape never fails for it. Blocking (a worker call).
pub fn now(name: &str, model: &LoadedModel) -> u64 {
    match model.metadata() {
        Ok(metadata) => model_info::prompt_cache_bytes(&metadata.extensions).unwrap_or(0),
        Err(err) => {
            tracing::debug!("cannot read the prompt cache size of `{name}`: {err}");
            0
        }
    }
}
