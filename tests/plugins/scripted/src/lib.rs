//! The `scripted` test plugin: a deterministic test backend for the llmlocal host's plugin
//! plumbing, not a model. The backend lives in `llmlocal-scripted-core` (shared with the
//! broken test plugins); this crate exports it. See that crate for the script format.

pub use llmlocal_scripted_core::*;

llmlocal_plugin_api::export_backend! {
    manifest: llmlocal_scripted_core::manifest,
    backend: llmlocal_scripted_core::ScriptedBackend::new,
}
