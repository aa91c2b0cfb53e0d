//! Test plugin: a scripted backend whose generations allocate memory without end at the 3rd
//! token. Under a worker memory limit (RLIMIT_AS) the allocation fails and the worker
//! aborts; without one, the kernel's OOM killer would end it.

use llmlocal_plugin_api::{Manifest, PluginError};
use llmlocal_scripted_core::{Behaviour, ScriptedBackend};

fn manifest() -> Manifest {
    llmlocal_scripted_core::manifest_named(
        "oom-generation",
        "test plugin: scripted, but every generation allocates without end at the 3rd token",
    )
}

fn new_backend() -> Result<ScriptedBackend, PluginError> {
    Ok(ScriptedBackend::with_behaviour(Behaviour {
        allocate_at_token: Some(3),
        ..Behaviour::default()
    }))
}

llmlocal_plugin_api::export_backend! { manifest: manifest, backend: new_backend }
