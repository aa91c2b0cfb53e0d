//! Where plugin libraries are looked for, and which files count as plugins.

use llmlocal_plugin_api::LIBRARY_PREFIX;
use std::{
    collections::HashSet,
    env::consts::{DLL_PREFIX, DLL_SUFFIX},
    path::{Path, PathBuf},
};

/// The environment variable holding extra plugin directories (a path list).
pub const PLUGIN_PATH_ENV: &str = "LLMLOCAL_PLUGIN_PATH";

/// The directories searched, in order: `$LLMLOCAL_PLUGIN_PATH`, `config_dirs`,
/// `<exe dir>/plugins`, `<user data dir>/llmlocal/plugins`. Directories that do not exist
/// are left out, and each directory appears once.
pub fn search_dirs(config_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let from_env = std::env::var_os(PLUGIN_PATH_ENV)
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("plugins")));
    let data_dir = dirs::data_dir().map(|dir| dir.join("llmlocal").join("plugins"));
    let candidates = from_env
        .into_iter()
        .chain(config_dirs.iter().cloned())
        .chain(exe_dir)
        .chain(data_dir);
    let mut seen = HashSet::new();
    candidates
        .filter(|dir| !dir.as_os_str().is_empty() && dir.is_dir())
        .filter(|dir| seen.insert(canonical(dir)))
        .collect()
}

/// The plugin libraries in `dirs`: directory by directory in the given order (an earlier
/// directory wins a backend-name clash between equally named files), sorted by file name
/// within each, each file once.
pub fn discover(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for dir in dirs {
        let mut in_dir = plugin_files(dir);
        in_dir.sort();
        found.extend(
            in_dir
                .into_iter()
                .filter(|path| seen.insert(canonical(path))),
        );
    }
    found
}

fn plugin_files(dir: &Path) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            tracing::debug!("cannot list plugin directory {}: {err}", dir.display());
            return Vec::new();
        }
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .and_then(backend_name_of_file)
                .is_some()
        })
        .collect()
}

/// The backend name a library file is named after: `libllmlocal_backend_<name>.so` -> `<name>`
/// (per-OS prefix and suffix), or `None` if the file is not named like a plugin.
pub fn backend_name_of_file(file_name: &str) -> Option<&str> {
    let name = file_name
        .strip_prefix(DLL_PREFIX)?
        .strip_prefix(LIBRARY_PREFIX)?
        .strip_suffix(DLL_SUFFIX)?;
    (!name.is_empty()).then_some(name)
}

/// The file name a plugin for `name` has on this OS.
pub fn library_file_name(name: &str) -> String {
    format!("{DLL_PREFIX}{LIBRARY_PREFIX}{name}{DLL_SUFFIX}")
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_the_os_convention() {
        let file = library_file_name("llama_cpp");
        assert_eq!(backend_name_of_file(&file), Some("llama_cpp"));
        assert_eq!(backend_name_of_file(&library_file_name("")), None);
        assert_eq!(backend_name_of_file("llmlocal_backend_x.txt"), None);
        assert_eq!(
            backend_name_of_file(&format!("{DLL_PREFIX}other_x{DLL_SUFFIX}")),
            None
        );
    }

    #[test]
    fn discover_sorts_within_a_dir_keeps_dir_order_and_dedups() {
        let make = || tempfile::tempdir().expect("temp dir");
        let (a, b) = (make(), make());
        for (dir, name) in [(&a, "zeta"), (&a, "alpha"), (&b, "beta")] {
            std::fs::write(dir.path().join(library_file_name(name)), b"x").expect("write");
        }
        std::fs::write(a.path().join("README.txt"), b"x").expect("write");
        let dirs = [
            b.path().to_path_buf(),
            a.path().to_path_buf(),
            b.path().to_path_buf(),
        ];
        let names: Vec<String> = discover(&dirs)
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        let expected: Vec<String> = ["beta", "alpha", "zeta"]
            .iter()
            .map(|n| library_file_name(n))
            .collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn search_dirs_keeps_existing_config_dirs_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing");
        let dirs = search_dirs(&[
            dir.path().to_path_buf(),
            missing.clone(),
            dir.path().join("."),
        ]);
        assert_eq!(dirs.iter().filter(|d| d.starts_with(dir.path())).count(), 1);
        assert!(!dirs.contains(&missing));
    }
}
