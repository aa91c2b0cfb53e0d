//! The bytes a loaded model's prompt caches hold now (`model_info::PROMPT_CACHE_BYTES`):
//! the llama-cpp plugin's host-RAM cache, candle's kept KV caches. They grow up to a cap
//! while the model is loaded and are outside the model's memory estimate, so `/api/ps` and
//! `/metrics` show them; the metadata kept from the load has only the figure of that moment,
//! so the live model is asked each time.

use crate::plugins::LoadedModel;
use llmlocal_plugin_api::{model_info, ExtValue, Extension};

/// The figure in a model's metadata extensions; `None` when its backend does not report one.
pub fn reported(extensions: &[Extension]) -> Option<u64> {
    extensions
        .iter()
        .find(|e| e.key.as_str() == model_info::PROMPT_CACHE_BYTES)
        .and_then(|e| match e.value {
            ExtValue::Int(bytes) => u64::try_from(bytes).ok(),
            _ => None,
        })
}

/// The figure of `model` now: 0 when its backend does not report one or the call failed
/// (logged at debug): a listing or a scrape never fails for it. Blocking (a worker call).
pub fn now(name: &str, model: &LoadedModel) -> u64 {
    match model.metadata() {
        Ok(metadata) => reported(&metadata.extensions).unwrap_or(0),
        Err(err) => {
            tracing::debug!("cannot read the prompt cache size of `{name}`: {err}");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: ExtValue) -> Vec<Extension> {
        vec![Extension {
            key: model_info::PROMPT_CACHE_BYTES.into(),
            value,
        }]
    }

    #[test]
    fn the_reported_figure_is_read_and_a_bad_one_is_none() {
        assert_eq!(reported(&with(ExtValue::Int(4096))), Some(4096));
        assert_eq!(reported(&with(ExtValue::Int(-1))), None);
        assert_eq!(reported(&with(ExtValue::Text("4096".into()))), None);
        assert_eq!(reported(&[]), None);
    }
}
