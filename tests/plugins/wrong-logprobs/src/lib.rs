//! Test plugin: a scripted backend that declares `logprobs` and reports probabilities where
//! log-probabilities belong. The conformance suite's "logprobs match logits" check must
//! catch it.

use llmlocal_plugin_api::{capability, Manifest, PluginError};
use llmlocal_scripted_core::{Behaviour, ScriptedBackend};

fn manifest() -> Manifest {
    let mut manifest = llmlocal_scripted_core::manifest_named(
        "wrong-logprobs",
        "test plugin: scripted, declares logprobs but reports probabilities",
    );
    manifest.capabilities.insert(capability::LOGPROBS);
    manifest
}

fn new_backend() -> Result<ScriptedBackend, PluginError> {
    Ok(ScriptedBackend::with_behaviour(Behaviour {
        wrong_logprobs: true,
        ..Behaviour::default()
    }))
}

llmlocal_plugin_api::export_backend! { manifest: manifest, backend: new_backend }
