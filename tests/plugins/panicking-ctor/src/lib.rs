//! Test plugin: its constructor panics; the host must refuse it and go on.

use llmlocal_plugin_api::{Manifest, PluginError};
use llmlocal_scripted_core::ScriptedBackend;

fn manifest() -> Manifest {
    llmlocal_scripted_core::manifest_named("panicking-ctor", "test plugin whose constructor panics")
}

fn new_backend() -> Result<ScriptedBackend, PluginError> {
    panic!("deliberate test panic in the panicking-ctor constructor")
}

llmlocal_plugin_api::export_backend! { manifest: manifest, backend: new_backend }
