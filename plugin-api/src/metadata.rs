//! What a loaded model is, read from its files.

use crate::extension::Extension;
use abi_stable::{
    std_types::{ROption, RString, RVec},
    StableAbi,
};

#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ModelMetadata {
    /// `llama`, `qwen2`, ... as named by the file.
    pub architecture: RString,
    pub name: RString,
    /// The context length of this load (per sequence).
    pub context_length: u32,
    /// The context length the model was trained with, as the file says.
    pub train_context_length: u32,
    pub vocab_size: u32,
    /// The hidden size: also the dimension of pooled embeddings.
    pub embedding_length: u32,
    pub layer_count: u32,
    pub parameter_count: u64,
    /// Bytes of weights held in memory.
    pub size_bytes: u64,
    pub bos_token: ROption<u32>,
    pub eos_token: ROption<u32>,
    /// Every token that ends a generation (EOS, EOT, `<|im_end|>`, ...).
    pub end_of_generation_tokens: RVec<u32>,
    /// The Jinja chat template stored with the model, if any.
    pub chat_template: ROption<RString>,
    /// The device the model runs on (`cpu`, `cuda:0`, ...).
    pub device: RString,
    /// Wall time the load took, in milliseconds.
    pub load_ms: f64,
    /// The pooling the model's files ask for (`mean`, `cls`, `last`, `none`), empty if none.
    pub pooling: RString,
    pub extensions: RVec<Extension>,
}

/// Extension keys of [`ModelMetadata::extensions`] (since 2.2): what a plugin says about one
/// loaded model beyond the frozen fields. A host older than the key ignores it.
pub mod model_info {
    /// `Bool(false)`: this model keeps no prompt prefix between generations
    /// (`cached_prompt_tokens` is always 0), although the backend declares
    /// [`crate::capability::PREFIX_CACHE`] for the models it can do it for. Absent = the
    /// capability holds for this model.
    pub const PREFIX_CACHE: &str = "prefix-cache";

    /// `Int(bytes)` (since 2.4): host memory the model's prompt caches hold now, beyond its
    /// live sequences (the host-RAM cache's saved states, kept KV caches of finished
    /// generations). They grow up to a cap and are outside the model's memory estimate, so
    /// a host shows the figure; a plugin reporting it returns the current one at every
    /// `metadata()` call. Absent = the plugin does not say (not "0").
    pub const PROMPT_CACHE_BYTES: &str = "prompt-cache-bytes";

    /// The [`PROMPT_CACHE_BYTES`] figure among a model's extensions; `None` when it is absent
    /// or not a non-negative `Int`.
    pub fn prompt_cache_bytes(extensions: &[crate::extension::Extension]) -> Option<u64> {
        extensions
            .iter()
            .find(|e| e.key.as_str() == PROMPT_CACHE_BYTES)
            .and_then(|e| match e.value {
                crate::extension::ExtValue::Int(bytes) => u64::try_from(bytes).ok(),
                _ => None,
            })
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::extension::{ExtValue, Extension};

        fn with(value: ExtValue) -> Vec<Extension> {
            vec![Extension {
                key: PROMPT_CACHE_BYTES.into(),
                value,
            }]
        }

        #[test]
        fn the_prompt_cache_figure_is_read_and_a_bad_one_is_none() {
            assert_eq!(prompt_cache_bytes(&with(ExtValue::Int(4096))), Some(4096));
            assert_eq!(prompt_cache_bytes(&with(ExtValue::Int(-1))), None);
            assert_eq!(
                prompt_cache_bytes(&with(ExtValue::Text("4096".into()))),
                None
            );
            assert_eq!(prompt_cache_bytes(&[]), None);
        }
    }
}
