//! Test plugin: a scripted backend whose `load` never returns for a script containing
//! `HANG` (other scripts load). A host running it in a worker must kill the worker after its
//! load deadline, fail that request, and serve the next one from a restarted worker.

use llmlocal_plugin_api::{Manifest, PluginError};
use llmlocal_scripted_core::{Behaviour, ScriptedBackend};

fn manifest() -> Manifest {
    llmlocal_scripted_core::manifest_named(
        "hanging-load",
        "test plugin: scripted, but load() never returns for a script containing HANG",
    )
}

fn new_backend() -> Result<ScriptedBackend, PluginError> {
    Ok(ScriptedBackend::with_behaviour(Behaviour {
        hang_in_load: true,
        ..Behaviour::default()
    }))
}

llmlocal_plugin_api::export_backend! { manifest: manifest, backend: new_backend }
