//! Test plugin: a scripted backend that declares `logit-bias` and ignores it. The
//! conformance suite's "logit_bias" check must catch it.

use llmlocal_plugin_api::{capability, Manifest, PluginError};
use llmlocal_scripted_core::ScriptedBackend;

fn manifest() -> Manifest {
    let mut manifest = llmlocal_scripted_core::manifest_named(
        "ignores-logit-bias",
        "test plugin: scripted, declares logit-bias but ignores it",
    );
    manifest.capabilities.insert(capability::LOGIT_BIAS);
    manifest
}

fn new_backend() -> Result<ScriptedBackend, PluginError> {
    ScriptedBackend::new()
}

llmlocal_plugin_api::export_backend! { manifest: manifest, backend: new_backend }
