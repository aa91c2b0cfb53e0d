//! Where things are: the workspace root, the target dir, the plugin packages (from `cargo
//! metadata`), the shared test models.

use crate::process::cargo;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::{
    env,
    path::{Path, PathBuf},
};

/// Whether a plugin package is a real backend (plugins/*) or a test plugin (tests/plugins/*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    Real,
    Test,
}

/// A workspace package that builds a plugin library.
#[derive(Debug, Clone)]
pub struct PluginPackage {
    pub package: String,
    /// The library target name (`llmlocal_backend_<name>`).
    pub lib: String,
    pub kind: PluginKind,
}

impl PluginPackage {
    /// The library file name on this OS.
    pub fn file_name(&self) -> String {
        format!(
            "{}{}{}",
            env::consts::DLL_PREFIX,
            self.lib,
            env::consts::DLL_SUFFIX
        )
    }
}

pub struct Workspace {
    pub root: PathBuf,
    pub target: PathBuf,
    metadata: Value,
}

impl Workspace {
    pub fn locate() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent folder")?
            .to_path_buf();
        let output = cargo(&root)
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .output()
            .context("running `cargo metadata`")?;
        if !output.status.success() {
            bail!(
                "`cargo metadata` failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let metadata: Value =
            serde_json::from_slice(&output.stdout).context("parsing `cargo metadata`")?;
        let target = metadata["target_directory"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        Ok(Workspace {
            root,
            target,
            metadata,
        })
    }

    /// target/debug: the one profile we use everywhere.
    pub fn debug_dir(&self) -> PathBuf {
        self.target.join("debug")
    }

    pub fn release_dir(&self) -> PathBuf {
        self.target.join("release")
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.target.join("plugins")
    }

    pub fn test_plugins_dir(&self) -> PathBuf {
        self.target.join("test-plugins")
    }

    /// Every package under plugins/ or tests/plugins/ with a cdylib target.
    pub fn plugin_packages(&self) -> Vec<PluginPackage> {
        let real = self.root.join("plugins");
        let test = self.root.join("tests").join("plugins");
        let packages = self.metadata["packages"].as_array().cloned();
        let mut found: Vec<_> = packages
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                let manifest = PathBuf::from(p["manifest_path"].as_str()?);
                let kind = if manifest.starts_with(&real) {
                    PluginKind::Real
                } else if manifest.starts_with(&test) {
                    PluginKind::Test
                } else {
                    return None;
                };
                let lib = cdylib_name(p)?;
                Some(PluginPackage {
                    package: p["name"].as_str()?.to_string(),
                    lib,
                    kind,
                })
            })
            .collect();
        found.sort_by(|a, b| a.package.cmp(&b.package));
        found
    }

    /// Whether `package` has a binary target named `bin`.
    pub fn has_bin(&self, package: &str, bin: &str) -> bool {
        self.metadata["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"] == package)
            .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
            .any(|t| t["name"] == bin && kinds(&t).any(|k| k == "bin"))
    }

    /// `$LLMLOCAL_SHARED_MODELS`, else `<workspace>/../shared/models`.
    pub fn shared_models(&self) -> PathBuf {
        match env::var_os("LLMLOCAL_SHARED_MODELS") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => self.root.join("..").join("shared").join("models"),
        }
    }
}

fn kinds(target: &Value) -> impl Iterator<Item = &str> {
    target["kind"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn cdylib_name(package: &Value) -> Option<String> {
    package["targets"]
        .as_array()?
        .iter()
        .find(|t| kinds(t).any(|k| k == "cdylib"))
        .and_then(|t| t["name"].as_str())
        .map(str::to_string)
}

/// The backend name a library is named after (`libllmlocal_backend_<name>.so` -> `<name>`).
pub fn backend_of(lib: &Path) -> String {
    let name = lib
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name.strip_prefix(env::consts::DLL_PREFIX).unwrap_or(&name);
    let name = name.strip_prefix("llmlocal_backend_").unwrap_or(name);
    name.strip_suffix(env::consts::DLL_SUFFIX)
        .unwrap_or(name)
        .to_string()
}

/// The library of `backend` among `libs`.
pub fn find<'a>(libs: &'a [PathBuf], backend: &str) -> Option<&'a PathBuf> {
    libs.iter().find(|lib| backend_of(lib) == backend)
}
