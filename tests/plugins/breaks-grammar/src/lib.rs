//! Test plugin: a scripted backend that declares `grammar` and ignores the constraint (and
//! accepts any grammar). The conformance suite's "grammar output parses" check must catch it.

use llmlocal_plugin_api::{capability, Manifest, PluginError};
use llmlocal_scripted_core::ScriptedBackend;

fn manifest() -> Manifest {
    let mut manifest = llmlocal_scripted_core::manifest_named(
        "breaks-grammar",
        "test plugin: scripted, declares grammar but ignores it",
    );
    manifest.capabilities.insert(capability::GRAMMAR);
    manifest
}

fn new_backend() -> Result<ScriptedBackend, PluginError> {
    ScriptedBackend::new()
}

llmlocal_plugin_api::export_backend! { manifest: manifest, backend: new_backend }
