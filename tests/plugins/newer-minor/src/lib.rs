//! Test plugin: claims plugin API 2.99.0, a newer minor than the host, which must refuse it.

use llmlocal_plugin_api::Manifest;

fn manifest() -> Manifest {
    llmlocal_scripted_core::manifest_named("newer-minor", "test plugin claiming plugin API 2.99.0")
}

llmlocal_plugin_api::__export_backend_with_api_version!(
    "2.99.0",
    manifest,
    llmlocal_scripted_core::ScriptedBackend::new
);
