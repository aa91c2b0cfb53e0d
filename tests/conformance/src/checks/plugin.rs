//! Plugin-level checks: the library loads, its manifest is sane.

use crate::outcome::{ensure, fail, Outcome};
use llmlocal::{
    api::{Manifest, PLUGIN_API_VERSION},
    plugins::{LoadedBackend, PluginRegistry, PluginStatus},
};
use std::sync::Arc;

/// Check "loads": the loader accepted the library. Returns the backend on success.
pub fn loads(registry: &PluginRegistry, slot: &mut Option<Arc<LoadedBackend>>) -> Outcome {
    let entry = registry
        .entries()
        .first()
        .ok_or_else(|| fail("the loader recorded no entry for the library"))?;
    if let PluginStatus::Refused { reason } = &entry.status {
        return Err(fail(format!("the loader refused the plugin: {reason}")));
    }
    let backend = registry
        .backends()
        .next()
        .ok_or_else(|| fail("the library loaded but no backend was registered"))?;
    *slot = Some(Arc::clone(backend));
    Ok(format!(
        "backend `{}` {} (plugin-api {})",
        backend.manifest.name, backend.manifest.version, backend.manifest.api_version
    ))
}

/// Check "manifest".
pub fn manifest(m: &Manifest) -> Outcome {
    ensure!(!m.name.trim().is_empty(), "the backend name is empty");
    semver::Version::parse(&m.version).map_err(|e| {
        fail(format!(
            "version {:?} is not semver: {e}",
            m.version.as_str()
        ))
    })?;
    api_compatible(&m.api_version)?;
    ensure!(!m.devices.is_empty(), "no devices listed");
    ensure!(
        m.devices.iter().any(|d| d.as_str() == "cpu"),
        "devices {:?} do not include \"cpu\"",
        m.devices.iter().map(|d| d.as_str()).collect::<Vec<_>>()
    );
    ensure!(
        m.capabilities.parallel_generations >= 1,
        "parallel_generations is 0 (must be >= 1)"
    );
    // An empty format list is allowed: such a backend reads its own kind of model file and
    // is only chosen by name, never picked for a GGUF or safetensors model.
    let formats = if m.formats.is_empty() {
        "none (reads no standard model format: selectable by name only)".to_string()
    } else {
        format!(
            "{:?}",
            m.formats.iter().map(|f| f.as_str()).collect::<Vec<_>>()
        )
    };
    let devices: Vec<_> = m.devices.iter().map(|d| d.as_str()).collect();
    Ok(format!(
        "devices {devices:?}, formats {formats}, parallel_generations {}",
        m.capabilities.parallel_generations
    ))
}

/// Same major as this host's plugin-api, minor not newer.
fn api_compatible(api_version: &str) -> Result<(), crate::outcome::Failure> {
    let plugin = semver::Version::parse(api_version)
        .map_err(|e| fail(format!("api_version {api_version:?} is not semver: {e}")))?;
    let host = semver::Version::parse(PLUGIN_API_VERSION)
        .map_err(|e| fail(format!("the host's PLUGIN_API_VERSION is not semver: {e}")))?;
    ensure!(
        plugin.major == host.major && plugin.minor <= host.minor,
        "api_version {plugin} is not compatible with the host's {host}"
    );
    Ok(())
}
