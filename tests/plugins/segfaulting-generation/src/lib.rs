//! Test plugin: a scripted backend whose generations write to an unmapped address at the 3rd
//! token. No in-process host survives that; `llmlocal` must say which plugin crashed and die
//! of the signal (a non-zero exit a supervisor acts on).

use llmlocal_plugin_api::{Manifest, PluginError};
use llmlocal_scripted_core::{Behaviour, ScriptedBackend};

fn manifest() -> Manifest {
    llmlocal_scripted_core::manifest_named(
        "segfaulting-generation",
        "test plugin: scripted, but every generation segfaults at the 3rd token",
    )
}

fn new_backend() -> Result<ScriptedBackend, PluginError> {
    Ok(ScriptedBackend::with_behaviour(Behaviour {
        segfault_at_token: Some(3),
        ..Behaviour::default()
    }))
}

llmlocal_plugin_api::export_backend! { manifest: manifest, backend: new_backend }
