//! Test plugin: a scripted backend whose `next()` never returns at the 2nd token. The
//! conformance suite must fail the checks that generate, by name, within its time limit, and
//! go on with the others.

use llmlocal_plugin_api::{Manifest, PluginError};
use llmlocal_scripted_core::{Behaviour, ScriptedBackend};

fn manifest() -> Manifest {
    llmlocal_scripted_core::manifest_named(
        "hanging-next",
        "test plugin: scripted, but next() never returns at the 2nd token",
    )
}

fn new_backend() -> Result<ScriptedBackend, PluginError> {
    Ok(ScriptedBackend::with_behaviour(Behaviour {
        hang_at_token: Some(2),
        ..Behaviour::default()
    }))
}

llmlocal_plugin_api::export_backend! { manifest: manifest, backend: new_backend }
