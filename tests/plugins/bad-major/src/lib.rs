//! Test plugin: claims plugin API 3.0.0, so the host (2.x) must refuse it before calling it.

use llmlocal_plugin_api::Manifest;

fn manifest() -> Manifest {
    llmlocal_scripted_core::manifest_named("bad-major", "test plugin claiming plugin API 3.0.0")
}

llmlocal_plugin_api::__export_backend_with_api_version!(
    "3.0.0",
    manifest,
    llmlocal_scripted_core::ScriptedBackend::new
);
