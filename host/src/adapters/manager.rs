//! The adapter manager: fetch (GitHub release, Hugging Face, local), cache, check against the
//! base model, convert to the format a backend reads.
//!
//! Cache layout under the adapters root (default `<data dir>/llmlocal/adapters`):
//! - `github/<owner>/<repo>/<tag>/<asset>` — one folder per tag, so versions sit side by side
//!   and a config pins one by naming its tag;
//! - `converted/<sha256>.gguf` — PEFT -> GGUF conversions;
//! - `stacked/<sha256>.gguf` — several GGUF LoRAs with their scales stacked into one;
//! - Hugging Face adapters live in the model manager's hub cache (same download layer).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use llmlocal_plugin_api::AdapterRequest;

use super::base::BaseModel;
use super::compat;
use super::convert;
use super::error::{io_err, AdapterError, Result};
use super::gguf;
use super::github::{GitHub, GitHubConfig};
use super::peft::{is_peft_dir, PeftAdapter};
use super::spec::{AdapterSource, AdapterSpec, GitHubAsset};
use crate::models::{FileSelector, ModelManager, ModelSpec};

/// Where adapters are kept and how GitHub is reached.
#[derive(Debug, Clone)]
pub struct AdapterConfig {
    pub root: PathBuf,
    pub github: GitHubConfig,
}

impl AdapterConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        AdapterConfig {
            root: root.into(),
            github: GitHubConfig::default(),
        }
    }

    /// `LLMLOCAL_ADAPTERS_DIR` (else `<data dir>/llmlocal/adapters`), plus
    /// [`GitHubConfig::from_env`].
    pub fn from_env() -> Self {
        let root = std::env::var_os("LLMLOCAL_ADAPTERS_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| dirs::data_dir().map(|d| d.join("llmlocal").join("adapters")))
            .unwrap_or_else(|| PathBuf::from(".llmlocal-adapters"));
        AdapterConfig {
            root,
            github: GitHubConfig::from_env(),
        }
    }
}

/// The two adapter formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterFormat {
    /// A folder with adapter_config.json + adapter_model.safetensors (candle reads it).
    Peft,
    /// A GGUF LoRA file (llama.cpp reads it).
    Gguf,
}

impl AdapterFormat {
    /// The formats a backend reads: candle merges PEFT folders; llama.cpp (and, by default,
    /// any other backend) reads GGUF LoRA files.
    pub fn read_by(backend: &str) -> &'static [AdapterFormat] {
        match backend {
            "candle" => &[AdapterFormat::Peft],
            _ => &[AdapterFormat::Gguf],
        }
    }

    /// The format of a local adapter path.
    pub fn of_path(path: &Path) -> Option<Self> {
        if is_peft_dir(path) {
            Some(AdapterFormat::Peft)
        } else if path.is_file() {
            Some(AdapterFormat::Gguf)
        } else {
            None
        }
    }
}

/// An adapter on local disk, checked against a base model, in a format the backend reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedAdapter {
    pub spec: AdapterSpec,
    pub path: PathBuf,
    pub format: AdapterFormat,
}

impl ResolvedAdapter {
    /// What the plugin contract takes.
    pub fn request(&self) -> AdapterRequest {
        AdapterRequest {
            path: self.path.to_string_lossy().into_owned().into(),
            scale: self.spec.scale,
        }
    }
}

/// One cached adapter file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedAdapter {
    /// The spec string that names it (`gh:owner/repo@tag/asset`), or `converted:<key>` /
    /// `stacked:<key>`.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

/// The adapter manager.
pub struct AdapterManager {
    config: AdapterConfig,
    github: GitHub,
    models: Option<Arc<ModelManager>>,
}

impl AdapterManager {
    pub fn new(config: AdapterConfig) -> Result<Self> {
        let github = GitHub::new(config.github.clone())?;
        Ok(AdapterManager {
            config,
            github,
            models: None,
        })
    }

    /// Uses `models` (its hub cache and download layer) for `hf:` adapters.
    pub fn with_model_manager(self, models: ModelManager) -> Self {
        self.with_shared_model_manager(Arc::new(models))
    }

    /// [`AdapterManager::with_model_manager`] with a manager shared with others (the engine's).
    pub fn with_shared_model_manager(mut self, models: Arc<ModelManager>) -> Self {
        self.models = Some(models);
        self
    }

    pub fn config(&self) -> &AdapterConfig {
        &self.config
    }

    fn github_dir(&self) -> PathBuf {
        self.config.root.join("github")
    }

    fn converted_dir(&self) -> PathBuf {
        self.config.root.join("converted")
    }

    fn stacked_dir(&self) -> PathBuf {
        self.config.root.join("stacked")
    }

    /// One GGUF LoRA equal to the GGUF LoRAs at `adapters` with their scales, to apply at
    /// scale 1.0 ([`super::stack`]; cached).
    pub fn stack(&self, adapters: &[(PathBuf, f32)]) -> Result<PathBuf> {
        super::stack::stack_cached(adapters, &self.stacked_dir())
    }

    /// Where a GitHub asset is cached (one folder per tag).
    pub fn github_path(&self, a: &GitHubAsset) -> PathBuf {
        self.github_dir()
            .join(&a.owner)
            .join(&a.repo)
            .join(&a.tag)
            .join(&a.asset)
    }

    /// The adapter's local path, downloading it when it is not cached.
    pub async fn fetch(&self, spec: &AdapterSpec) -> Result<PathBuf> {
        match &spec.source {
            AdapterSource::Local(path) => {
                if path.exists() {
                    Ok(path.clone())
                } else {
                    Err(io_err(path)(std::io::ErrorKind::NotFound.into()))
                }
            }
            AdapterSource::GitHub(a) => {
                let dest = self.github_path(a);
                if dest.is_file() {
                    return Ok(dest);
                }
                let asset = self.github.find_asset(a).await?;
                let bytes = self.github.download(&asset, &dest).await?;
                tracing::info!(spec = %spec, bytes, path = %dest.display(), "downloaded adapter");
                Ok(dest)
            }
            AdapterSource::HuggingFace {
                repo,
                revision,
                file,
            } => {
                let from_env;
                let models = match &self.models {
                    Some(m) => m.as_ref(),
                    None => {
                        from_env = ModelManager::from_env()?;
                        &from_env
                    }
                };
                let selector = file
                    .clone()
                    .map_or(FileSelector::Snapshot, FileSelector::File);
                let model_spec = ModelSpec::hugging_face(repo, revision.as_deref(), selector)?;
                Ok(models.resolve(&model_spec).await?.path)
            }
        }
    }

    /// Fetches `spec`, checks it against `base`, and returns it in one of `accepted` formats
    /// (converting PEFT to GGUF when only GGUF is accepted; the conversion is cached).
    pub async fn resolve(
        &self,
        spec: &AdapterSpec,
        base: &BaseModel,
        accepted: &[AdapterFormat],
    ) -> Result<ResolvedAdapter> {
        let path = self.fetch(spec).await?;
        self.prepare(spec, &path, base, accepted)
    }

    /// [`AdapterManager::resolve`] for an adapter already on disk at `path`.
    pub fn prepare(
        &self,
        spec: &AdapterSpec,
        path: &Path,
        base: &BaseModel,
        accepted: &[AdapterFormat],
    ) -> Result<ResolvedAdapter> {
        let format = check(path, base)?;
        if let Some(base_model) = &spec.base_model {
            tracing::debug!(adapter = %spec, meant_for = %base_model, base = %base.name, "adapter base model");
        }
        let done = |path: PathBuf, format| ResolvedAdapter {
            spec: spec.clone(),
            path,
            format,
        };
        if accepted.contains(&format) {
            return Ok(done(path.to_path_buf(), format));
        }
        match format {
            AdapterFormat::Peft if accepted.contains(&AdapterFormat::Gguf) => {
                let out = convert::convert_cached(path, base, &self.converted_dir())?;
                Ok(done(out, AdapterFormat::Gguf))
            }
            _ => Err(AdapterError::Incompatible {
                adapter: spec.to_string(),
                base: base.name.clone(),
                reasons: vec![format!(
                    "format: the adapter is {format:?} and the backend reads {accepted:?} (GGUF LoRA cannot be turned back into PEFT)"
                )],
            }),
        }
    }

    /// Cached GitHub assets and conversions.
    pub fn list(&self) -> Result<Vec<CachedAdapter>> {
        let mut out = Vec::new();
        let gh = self.github_dir();
        for owner in read_dirs(&gh)? {
            for repo in read_dirs(&owner)? {
                for tag in read_dirs(&repo)? {
                    for file in read_files(&tag)? {
                        let name = format!(
                            "gh:{}/{}@{}/{}",
                            file_name(&owner),
                            file_name(&repo),
                            file_name(&tag),
                            file_name(&file)
                        );
                        out.push(cached(name, file)?);
                    }
                }
            }
        }
        for (kind, dir) in [
            ("converted", self.converted_dir()),
            ("stacked", self.stacked_dir()),
        ] {
            for file in read_files(&dir)? {
                let name = format!("{kind}:{}", file_name(&file));
                out.push(cached(name, file)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes cached adapters: `gh:owner/repo@tag/asset` (one file), `gh:owner/repo@tag`
    /// (one version) or `gh:owner/repo` (every version); returns the bytes freed.
    pub fn remove(&self, what: &str) -> Result<u64> {
        let not_cached = || AdapterError::NotCached(what.to_string());
        let rest = what.trim().strip_prefix("gh:").ok_or_else(|| AdapterError::InvalidSpec {
            input: what.to_string(),
            reason: "`rm` takes gh:OWNER/REPO[@TAG[/ASSET]] (Hugging Face adapters are removed with the model cache commands)".into(),
        })?;
        let (repo_part, version) = match rest.split_once('@') {
            Some((r, v)) => (r, Some(v)),
            None => (rest, None),
        };
        let (owner, repo) = repo_part.split_once('/').ok_or_else(not_cached)?;
        let mut target = self.github_dir().join(owner).join(repo);
        for part in version.into_iter().flat_map(|v| v.splitn(2, '/')) {
            if part.is_empty() || part == ".." || part == "." {
                return Err(not_cached());
            }
            target.push(part);
        }
        if [owner, repo]
            .iter()
            .any(|p| p.is_empty() || p.contains(".."))
            || !target.exists()
        {
            return Err(not_cached());
        }
        let freed = disk_usage(&target);
        let removed = if target.is_dir() {
            std::fs::remove_dir_all(&target)
        } else {
            std::fs::remove_file(&target)
        };
        removed.map_err(io_err(&target))?;
        prune_empty(&target, &self.github_dir());
        Ok(freed)
    }
}

/// Checks the adapter at `path` against `base`; returns its format.
pub fn check(path: &Path, base: &BaseModel) -> Result<AdapterFormat> {
    match AdapterFormat::of_path(path) {
        Some(AdapterFormat::Peft) => {
            compat::check_peft(&PeftAdapter::open(path)?, base)?;
            Ok(AdapterFormat::Peft)
        }
        Some(AdapterFormat::Gguf) => {
            let info = gguf::read_info(path).map_err(not_an_adapter)?;
            compat::check_gguf(&path.display().to_string(), &info, base)?;
            Ok(AdapterFormat::Gguf)
        }
        None => Err(super::error::format_err(
            path,
            "not an adapter: expected a GGUF LoRA file or a PEFT folder with adapter_config.json",
        )),
    }
}

/// A file offered as an adapter that does not even read as GGUF: say that it is the adapter
/// that is bad (the bare GGUF reader's message could be taken for the base model's).
fn not_an_adapter(err: AdapterError) -> AdapterError {
    match err {
        AdapterError::Format { path, reason } => super::error::format_err(
            path,
            format!(
                "this file given as a LoRA adapter is not one ({reason}); an adapter is a GGUF \
                 LoRA file or a PEFT folder with adapter_config.json"
            ),
        ),
        other => other,
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn cached(name: String, path: PathBuf) -> Result<CachedAdapter> {
    let size = std::fs::metadata(&path).map_err(io_err(&path))?.len();
    Ok(CachedAdapter { name, path, size })
}

fn entries(dir: &Path, dirs: bool) -> Result<Vec<PathBuf>> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        // temporary `.name.part` files are not adapters
        .filter(|p| !file_name(p).starts_with('.'))
        .filter(|p| p.is_dir() == dirs)
        .collect();
    out.sort();
    Ok(out)
}

fn read_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    entries(dir, true)
}

fn read_files(dir: &Path) -> Result<Vec<PathBuf>> {
    entries(dir, false)
}

fn disk_usage(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| disk_usage(&e.path()))
                    .sum()
            })
            .unwrap_or(0)
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

/// Removes now-empty parent folders up to (not including) `stop`.
fn prune_empty(removed: &Path, stop: &Path) {
    let mut dir = removed.parent();
    while let Some(d) = dir {
        if d == stop || !d.starts_with(stop) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_file_is_named_as_a_bad_adapter() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notes.bin");
        std::fs::write(&path, b"these bytes are not a GGUF file at all").expect("write");
        let base = BaseModel {
            name: "base".into(),
            architecture: "llama".into(),
            hidden_size: 64,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 4,
            head_dim: 16,
            intermediate_size: 128,
        };
        let message = check(&path, &base).expect_err("not an adapter").to_string();
        assert!(
            message.contains("notes.bin") && message.contains("LoRA adapter is not one"),
            "{message}"
        );
    }
}
