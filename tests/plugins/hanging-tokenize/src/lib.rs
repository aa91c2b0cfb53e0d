//! Test plugin: a scripted backend whose `tokenize` never returns for a text containing
//! `HANG` (other texts tokenize). A host running it in a worker must kill the worker after
//! its call deadline, fail that request, and serve the next one from a restarted worker.

use llmlocal_plugin_api::{Manifest, PluginError};
use llmlocal_scripted_core::{Behaviour, ScriptedBackend};

fn manifest() -> Manifest {
    llmlocal_scripted_core::manifest_named(
        "hanging-tokenize",
        "test plugin: scripted, but tokenize() never returns for a text containing HANG",
    )
}

fn new_backend() -> Result<ScriptedBackend, PluginError> {
    Ok(ScriptedBackend::with_behaviour(Behaviour {
        hang_in_tokenize: true,
        ..Behaviour::default()
    }))
}

llmlocal_plugin_api::export_backend! { manifest: manifest, backend: new_backend }
