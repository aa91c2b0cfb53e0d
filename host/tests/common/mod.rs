//! Shared helpers for the host's integration tests: the built test plugins and script models.
#![allow(dead_code)] // each test binary uses a different subset

use llmlocal::plugins::library_file_name;
use std::path::{Path, PathBuf};

/// The environment variable that points the tests at the built test plugins.
pub const TEST_PLUGIN_DIR_ENV: &str = "LLMLOCAL_TEST_PLUGIN_DIR";

/// Where `cargo build -p llmlocal-backend-<name>` put the test plugins: `$LLMLOCAL_TEST_PLUGIN_DIR`,
/// else the profile directory this test binary runs from (`target/debug`).
pub fn built_plugins_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(TEST_PLUGIN_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    // The test binary is target/<profile>/deps/<name>-<hash>.
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"))
}

/// The library file of the test plugin crate `tests/plugins/<crate_dir>`.
pub fn library_of(crate_dir: &str) -> String {
    library_file_name(&crate_dir.replace('-', "_"))
}

/// Copies the named test plugins (crate dir names, e.g. `bad-major`) into `dir`; fails the
/// test with a clear message when one was not built.
pub fn copy_plugins(dir: &Path, crates: &[&str]) -> Vec<PathBuf> {
    let built = built_plugins_dir();
    crates
        .iter()
        .map(|name| {
            let file = library_of(name);
            let from = built.join(&file);
            assert!(
                from.is_file(),
                "test plugin {} is missing: build the test plugins first: cargo xtask \
                 build-plugins (or cargo build -p llmlocal-backend-{name}), or point ${} at them",
                from.display(),
                TEST_PLUGIN_DIR_ENV
            );
            let to = dir.join(&file);
            std::fs::copy(&from, &to).expect("copy a test plugin");
            to
        })
        .collect()
}

/// A temp dir holding copies of the named test plugins.
pub fn plugin_dir(crates: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_plugins(dir.path(), crates);
    dir
}

/// The first line of a scripted model file.
pub const SCRIPT_HEADER: &str = "llmlocal-scripted-model v1";

/// Writes a scripted model whose script is `script`.
pub fn write_script(dir: &Path, file: &str, script: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, format!("{SCRIPT_HEADER}\n{script}")).expect("write script model");
    path
}
