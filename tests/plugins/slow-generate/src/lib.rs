//! Test plugin: a scripted backend whose `Model::generate` blocks before it returns, as a
//! backend that runs the prompt inside `generate` would. The host must keep serving other
//! requests meanwhile.

use llmlocal_plugin_api::{Manifest, PluginError};
use llmlocal_scripted_core::{Behaviour, ScriptedBackend};
use std::time::Duration;

/// How long each `generate` call blocks.
pub const GENERATE_DELAY: Duration = Duration::from_secs(3);

fn manifest() -> Manifest {
    llmlocal_scripted_core::manifest_named(
        "slow-generate",
        "test plugin: scripted, but every generate call blocks for 3 s",
    )
}

fn new_backend() -> Result<ScriptedBackend, PluginError> {
    Ok(ScriptedBackend::with_behaviour(Behaviour {
        generate_delay: Some(GENERATE_DELAY),
        ..Behaviour::default()
    }))
}

llmlocal_plugin_api::export_backend! { manifest: manifest, backend: new_backend }
