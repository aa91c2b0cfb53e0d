//! Test plugin: a scripted backend that declares `prefix-cache` but never keeps anything, so
//! it reports 0 cached prompt tokens on a repeated prompt. The conformance suite's "prefix
//! reuse" check must catch it.

use llmlocal_plugin_api::{capability, Manifest, PluginError};
use llmlocal_scripted_core::ScriptedBackend;

fn manifest() -> Manifest {
    let mut manifest = llmlocal_scripted_core::manifest_named(
        "claims-prefix-cache",
        "test plugin: scripted, declares prefix-cache but never reuses a prefix",
    );
    manifest.capabilities.insert(capability::PREFIX_CACHE);
    manifest
}

fn new_backend() -> Result<ScriptedBackend, PluginError> {
    ScriptedBackend::new()
}

llmlocal_plugin_api::export_backend! { manifest: manifest, backend: new_backend }
