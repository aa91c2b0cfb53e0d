//! Test plugin: a scripted backend whose generations call `abort()` at the 3rd token
//! (SIGABRT, as a failed C++ assertion or a Rust double panic would). Under process
//! isolation only its worker dies.

use llmlocal_plugin_api::{Manifest, PluginError};
use llmlocal_scripted_core::{Behaviour, ScriptedBackend};

fn manifest() -> Manifest {
    llmlocal_scripted_core::manifest_named(
        "aborting-generation",
        "test plugin: scripted, but every generation aborts at the 3rd token",
    )
}

fn new_backend() -> Result<ScriptedBackend, PluginError> {
    Ok(ScriptedBackend::with_behaviour(Behaviour {
        abort_at_token: Some(3),
        ..Behaviour::default()
    }))
}

llmlocal_plugin_api::export_backend! { manifest: manifest, backend: new_backend }
