//! Test plugin: a well-formed backend that claims the name `scripted`, already taken by the
//! scripted test plugin. The host keeps the library named after the backend
//! (libllmlocal_backend_scripted) and refuses this one, though it sorts first.

use llmlocal_plugin_api::Manifest;

fn manifest() -> Manifest {
    llmlocal_scripted_core::manifest_named(
        llmlocal_scripted_core::NAME,
        "test plugin reusing the backend name `scripted`",
    )
}

llmlocal_plugin_api::export_backend! {
    manifest: manifest,
    backend: llmlocal_scripted_core::ScriptedBackend::new,
}
