//! The checks, one file per group. Each check body returns an [`crate::outcome::Outcome`].

pub mod concurrency;
pub mod embeddings;
pub mod errors;
pub mod generation;
pub mod model;
pub mod plugin;
pub mod prefix;
pub mod sampling;

use llmlocal::{
    api::{LoadRequest, Manifest, ModelMetadata},
    plugins::LoadedModel,
};
use std::path::Path;

/// The prompt every generation check uses, unless a check needs a specific one.
pub const PROMPT: &str = "Once upon a time";

/// The most generations the suite asks a model to run at once (keeps memory small for
/// backends that announce many slots).
const MAX_SLOTS: u32 = 8;

/// A loaded model and what the checks keep reusing.
pub struct ModelCtx {
    pub model: LoadedModel,
    pub meta: ModelMetadata,
    /// [`PROMPT`] tokenized with `add_special = true`.
    pub prompt: Vec<u32>,
    /// How many generations this load was asked to run at once.
    pub slots: u32,
    /// The device the model was asked to load on (`cpu`, `cuda`, `auto`, ...).
    pub device: String,
}

/// Generations at once the suite loads models for: what the manifest announces, capped.
pub fn slots(manifest: &Manifest) -> u32 {
    manifest
        .capabilities
        .parallel_generations
        .clamp(1, MAX_SLOTS)
}

/// A load of `path` on `device` with room for `slots` generations at once.
pub fn load_request(path: &Path, slots: u32, device: &str) -> LoadRequest {
    let mut request = LoadRequest::new(path.to_string_lossy());
    request.device = device.into();
    request.parallel = slots;
    request
}

/// Equal, or equal after dropping one leading space from one side: SentencePiece tokenizers
/// add a space in front of the first word, and some decoders strip it again.
pub fn same_modulo_leading_space(a: &str, b: &str) -> bool {
    a == b || a.strip_prefix(' ') == Some(b) || b.strip_prefix(' ') == Some(a)
}

#[cfg(test)]
mod tests {
    use super::same_modulo_leading_space;

    #[test]
    fn one_leading_space_is_forgiven_either_way() {
        assert!(same_modulo_leading_space("hello", "hello"));
        assert!(same_modulo_leading_space(" hello", "hello"));
        assert!(same_modulo_leading_space("hello", " hello"));
    }

    #[test]
    fn anything_else_differs() {
        assert!(!same_modulo_leading_space("  hello", "hello"));
        assert!(!same_modulo_leading_space("hello ", "hello"));
        assert!(!same_modulo_leading_space("héllo", "hello"));
    }
}
