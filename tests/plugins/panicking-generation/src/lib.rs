//! Test plugin: a scripted backend whose generations panic at the 3rd token. The host must
//! get an `Internal` error and survive.

use llmlocal_plugin_api::{Manifest, PluginError};
use llmlocal_scripted_core::{Behaviour, ScriptedBackend};

/// The token (1-based) at which `next()` panics.
pub const PANIC_AT_TOKEN: u32 = 3;

fn manifest() -> Manifest {
    llmlocal_scripted_core::manifest_named(
        "panicking-generation",
        "test plugin: scripted, but every generation panics at the 3rd token",
    )
}

fn new_backend() -> Result<ScriptedBackend, PluginError> {
    Ok(ScriptedBackend::with_behaviour(Behaviour {
        panic_at_token: Some(PANIC_AT_TOKEN),
        ..Behaviour::default()
    }))
}

llmlocal_plugin_api::export_backend! { manifest: manifest, backend: new_backend }
