//! What the loader makes of a set of libraries: loaded, or refused and why. Used by
//! `cargo xtask test-plugins` on the broken test plugins, in a child process.

use crate::report::{ProbeEntry, ProbeReport};
use llmlocal::plugins::{discover, PluginRegistry, PluginStatus};
use std::path::{Path, PathBuf};

/// Every plugin library found in `dir`, in the loader's discovery order.
pub fn probe_dir(dir: &Path) -> ProbeReport {
    probe_files(&discover(&[dir.to_path_buf()]))
}

/// Loads `paths` in this order into one registry (so the first of two libraries claiming
/// the same backend name keeps it) and reports each.
pub fn probe_files(paths: &[PathBuf]) -> ProbeReport {
    let registry = PluginRegistry::load_files(paths);
    let entries = registry
        .entries()
        .iter()
        .map(|entry| {
            let (loaded, reason) = match &entry.status {
                PluginStatus::Loaded => (true, None),
                PluginStatus::Refused { reason } => (false, Some(reason.clone())),
            };
            ProbeEntry {
                path: entry.path.clone(),
                backend: entry.manifest.as_ref().map(|m| m.name.to_string()),
                version: entry.manifest.as_ref().map(|m| m.version.to_string()),
                loaded,
                reason,
            }
        })
        .collect();
    ProbeReport { entries }
}
