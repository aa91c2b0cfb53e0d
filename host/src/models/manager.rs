//! [`ModelManager`]: turns a [`ModelSpec`] into local paths, downloading what is missing.
//!
//! `resolve` is cache-first: a model whose files are cached for the revision is used without
//! touching the network (a local engine should start offline); `pull` always asks the hub for
//! the revision's current commit and fetches what changed.

use std::path::PathBuf;

use llmlocal_plugin_api::ModelFormat;
use tokio_util::sync::CancellationToken;

use super::cache::{CachedFile, CachedRepo, HubCache};
use super::config::ManagerConfig;
use super::download::{fetch_file, present_bytes, FileJob};
use super::error::{ModelError, Result};
use super::progress::{ProgressSender, Tracker};
use super::quant::{self, PickedQuant, QuantCandidate};
use super::remote::{FileMeta, Hub, Sibling};
use super::spec::{format_of_path, FileSelector, HfSource, ModelSource, ModelSpec};

/// A model ready to load: where its files are on disk.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub name: String,
    pub format: ModelFormat,
    /// The `.gguf` file (the first part of a split file) or the safetensors folder.
    pub path: PathBuf,
    /// Every file of the model.
    pub files: Vec<PathBuf>,
    /// Hugging Face repo, revision and commit (None for a local path).
    pub repo: Option<String>,
    pub revision: Option<String>,
    pub commit: Option<String>,
    /// The quantization picked when the spec named none.
    pub picked: Option<PickedQuant>,
    /// Bytes transferred from the network for this call (0 when all came from the cache).
    pub downloaded_bytes: u64,
    pub backend: Option<String>,
    pub context_length: Option<u32>,
}

/// The model manager facade: cache + hub.
pub struct ModelManager {
    config: ManagerConfig,
    cache: HubCache,
    hub: Hub,
}

impl ModelManager {
    pub fn new(config: ManagerConfig) -> Result<Self> {
        let hub = Hub::new(&config)?;
        let cache = HubCache::new(config.cache_dir.clone());
        Ok(ModelManager { config, cache, hub })
    }

    /// From the standard environment variables (see [`ManagerConfig::from_env`]).
    pub fn from_env() -> Result<Self> {
        ModelManager::new(ManagerConfig::from_env()?)
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    pub fn cache(&self) -> &HubCache {
        &self.cache
    }

    /// Local paths for `spec`: from the cache when present, else downloaded (unless offline).
    pub async fn resolve(&self, spec: &ModelSpec) -> Result<ResolvedModel> {
        let hf = match &spec.source {
            ModelSource::Local(path) => return resolve_local(spec, path),
            ModelSource::HuggingFace(hf) => hf,
        };
        if let Some(found) = self.cached_model(spec, hf)? {
            self.cache.touch(&hf.repo);
            return Ok(found);
        }
        if self.config.offline {
            return Err(self.offline_miss(hf));
        }
        self.pull(spec, None, CancellationToken::new()).await
    }

    /// Fetches `spec` from the hub (what is already cached is not downloaded again), sending
    /// progress events and stopping when `cancel` fires (partial data is kept for resume).
    pub async fn pull(
        &self,
        spec: &ModelSpec,
        progress: Option<ProgressSender>,
        cancel: CancellationToken,
    ) -> Result<ResolvedModel> {
        let hf = match &spec.source {
            ModelSource::Local(path) => return resolve_local(spec, path),
            ModelSource::HuggingFace(hf) => hf,
        };
        if self.config.offline {
            return self
                .cached_model(spec, hf)?
                .ok_or_else(|| self.offline_miss(hf));
        }
        let (files, picked, commit) = self.plan(spec, hf).await?;
        let metas = self.file_metas(hf, commit.as_deref(), &files).await?;
        let commit = metas
            .first()
            .map(|m| m.commit.clone())
            .or(commit)
            .unwrap_or_default();
        let total: u64 = metas.iter().map(|m| m.size).sum();
        let mut tracker = Tracker::new(progress, total, files.len());
        let mut paths = Vec::with_capacity(files.len());
        let mut downloaded = 0;
        for (file, meta) in files.iter().zip(&metas) {
            let job = FileJob {
                repo: &hf.repo,
                revision: &hf.revision,
                file,
                meta,
            };
            let (path, bytes) =
                fetch_file(&self.hub, &self.cache, &job, &mut tracker, &cancel).await?;
            paths.push(path);
            downloaded += bytes;
        }
        self.cache.write_ref(&hf.repo, &hf.revision, &commit)?;
        self.cache.touch(&hf.repo);
        tracker.finish();
        if let Some(p) = &picked {
            tracing::info!(repo = %hf.repo, quant = ?p.quant, file = %p.files[0], size = p.size, budget = ?p.budget, "picked a quantization");
        }
        let format = detect_format(spec, &files);
        let path = model_path(&self.cache, hf, &commit, format, &paths);
        Ok(ResolvedModel {
            name: spec.name.clone(),
            format,
            path,
            files: paths,
            repo: Some(hf.repo.clone()),
            revision: Some(hf.revision.clone()),
            commit: Some(commit),
            picked,
            downloaded_bytes: downloaded,
            backend: spec.backend.clone(),
            context_length: spec.context_length,
        })
    }

    /// Cached model repositories.
    pub fn list(&self) -> Result<Vec<CachedRepo>> {
        self.cache.list()
    }

    /// Deletes one repository from the cache; returns the bytes freed.
    pub fn remove(&self, repo: &str) -> Result<u64> {
        self.cache.remove(repo)
    }

    /// Deletes every cached model; returns the bytes freed.
    pub fn clear(&self) -> Result<u64> {
        self.cache.clear()
    }

    /// Evicts least-recently-used repositories down to `budget` bytes; returns those deleted.
    pub fn evict_to(&self, budget: u64) -> Result<Vec<String>> {
        self.cache.evict_to(budget)
    }

    /// Whether `spec` resolves from the cache alone.
    pub fn is_cached(&self, spec: &ModelSpec) -> bool {
        match &spec.source {
            ModelSource::Local(path) => path.exists(),
            ModelSource::HuggingFace(hf) => matches!(self.cached_model(spec, hf), Ok(Some(_))),
        }
    }

    fn context_length(&self, spec: &ModelSpec) -> u32 {
        spec.context_length
            .unwrap_or(self.config.default_context_length)
    }

    fn memory_budget(&self) -> Option<u64> {
        self.config.memory_limit.or_else(quant::available_memory)
    }

    /// Which files to fetch, the quant picked, and the commit if the repo info was read.
    async fn plan(
        &self,
        spec: &ModelSpec,
        hf: &HfSource,
    ) -> Result<(Vec<String>, Option<PickedQuant>, Option<String>)> {
        if let FileSelector::File(file) = &hf.selector {
            return Ok((vec![file.clone()], None, None));
        }
        let info = self.hub.repo_info(&hf.repo, &hf.revision).await?;
        let names: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
        let (files, picked) = select_files(
            &hf.repo,
            &hf.revision,
            &hf.selector,
            &info.siblings,
            &names,
            self.memory_budget(),
            self.context_length(spec),
        )?;
        Ok((files, picked, Some(info.sha)))
    }

    /// HEAD every file (pinned to the commit when known, so all files come from one snapshot).
    async fn file_metas(
        &self,
        hf: &HfSource,
        commit: Option<&str>,
        files: &[String],
    ) -> Result<Vec<FileMeta>> {
        let revision = commit.unwrap_or(&hf.revision);
        let mut metas = Vec::with_capacity(files.len());
        for file in files {
            let mut meta = self.hub.file_meta(&hf.repo, revision, file).await?;
            if let Some(c) = commit {
                meta.commit = c.to_string();
            }
            tracing::debug!(
                file,
                size = meta.size,
                present = present_bytes(&self.cache, &hf.repo, &meta),
                "planned"
            );
            metas.push(meta);
        }
        Ok(metas)
    }

    /// Resolves from the cache alone; `Ok(None)` when something is missing.
    fn cached_model(&self, spec: &ModelSpec, hf: &HfSource) -> Result<Option<ResolvedModel>> {
        let Some((commit, cached)) = self.cache.snapshot_files(&hf.repo, &hf.revision) else {
            return Ok(None);
        };
        let names: Vec<&str> = cached.iter().map(|f| f.name.as_str()).collect();
        let siblings: Vec<Sibling> = cached
            .iter()
            .map(|f| Sibling {
                rfilename: f.name.clone(),
                size: Some(f.size),
                lfs: None,
            })
            .collect();
        let selected = match &hf.selector {
            FileSelector::File(f) => names.contains(&f.as_str()).then(|| (vec![f.clone()], None)),
            FileSelector::Quant(_) | FileSelector::Auto | FileSelector::Snapshot => select_files(
                &hf.repo,
                &hf.revision,
                &hf.selector,
                &siblings,
                &names,
                self.memory_budget(),
                self.context_length(spec),
            )
            .ok(),
        };
        let Some((files, picked)) = selected else {
            return Ok(None);
        };
        let paths: Vec<PathBuf> = files
            .iter()
            .filter_map(|f| {
                cached
                    .iter()
                    .find(|c| &c.name == f)
                    .map(|c: &CachedFile| c.path.clone())
            })
            .collect();
        if paths.len() != files.len() {
            return Ok(None);
        }
        let format = detect_format(spec, &files);
        let path = model_path(&self.cache, hf, &commit, format, &paths);
        Ok(Some(ResolvedModel {
            name: spec.name.clone(),
            format,
            path,
            files: paths,
            repo: Some(hf.repo.clone()),
            revision: Some(hf.revision.clone()),
            commit: Some(commit),
            picked,
            downloaded_bytes: 0,
            backend: spec.backend.clone(),
            context_length: spec.context_length,
        }))
    }

    fn offline_miss(&self, hf: &HfSource) -> ModelError {
        let file = match &hf.selector {
            FileSelector::File(f) => f.clone(),
            FileSelector::Quant(q) => format!("a {q} .gguf file"),
            FileSelector::Auto => "a .gguf or .safetensors model file".into(),
            FileSelector::Snapshot => "the safetensors snapshot".into(),
        };
        ModelError::NotCachedOffline {
            repo: hf.repo.clone(),
            revision: hf.revision.clone(),
            file,
            cache: self.cache.root().to_path_buf(),
        }
    }
}

/// Files for a selector, from the repository's (or the snapshot's) file list.
fn select_files(
    repo: &str,
    revision: &str,
    selector: &FileSelector,
    siblings: &[Sibling],
    names: &[&str],
    budget: Option<u64>,
    context_length: u32,
) -> Result<(Vec<String>, Option<PickedQuant>)> {
    let cands = quant::candidates(siblings);
    match selector {
        FileSelector::File(f) => Ok((vec![f.clone()], None)),
        FileSelector::Quant(q) => quant_files(repo, revision, q, &cands).map(|f| (f, None)),
        FileSelector::Snapshot => snapshot_files(repo, revision, names).map(|f| (f, None)),
        FileSelector::Auto if !cands.is_empty() => {
            let picked = quant::pick(&cands, budget, context_length).map_err(|reason| {
                ModelError::NothingFits {
                    repo: repo.into(),
                    reason,
                }
            })?;
            Ok((picked.files.clone(), Some(picked)))
        }
        FileSelector::Auto => snapshot_files(repo, revision, names).map(|f| (f, None)),
    }
}

fn quant_files(
    repo: &str,
    revision: &str,
    quant: &str,
    cands: &[QuantCandidate],
) -> Result<Vec<String>> {
    let wanted = quant.to_ascii_uppercase();
    if let Some(c) = cands
        .iter()
        .find(|c| c.quant.as_deref() == Some(wanted.as_str()))
    {
        return Ok(c.files.clone());
    }
    let available: Vec<String> = cands.iter().filter_map(|c| c.quant.clone()).collect();
    Err(ModelError::FileNotFound {
        repo: repo.into(),
        revision: revision.into(),
        file: format!(
            "a {wanted} .gguf file (available quantizations: {})",
            if available.is_empty() {
                "none".into()
            } else {
                available.join(", ")
            }
        ),
    })
}

/// Weight files in formats other than safetensors are left out when safetensors are present.
const OTHER_WEIGHTS: &[&str] = &[
    ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".gguf", ".ot", ".tflite", ".ckpt",
];

fn snapshot_files(repo: &str, revision: &str, names: &[&str]) -> Result<Vec<String>> {
    if !names.iter().any(|n| n.ends_with(".safetensors")) {
        return Err(ModelError::NoModelFiles {
            repo: repo.into(),
            revision: revision.into(),
        });
    }
    Ok(names
        .iter()
        .filter(|n| !OTHER_WEIGHTS.iter().any(|ext| n.ends_with(ext)))
        .filter(|n| !n.starts_with('.'))
        .map(|n| n.to_string())
        .collect())
}

fn detect_format(spec: &ModelSpec, files: &[String]) -> ModelFormat {
    spec.format.unwrap_or_else(|| {
        if !files.is_empty() && files.iter().all(|f| f.ends_with(".gguf")) {
            ModelFormat::Gguf
        } else {
            ModelFormat::Safetensors
        }
    })
}

fn model_path(
    cache: &HubCache,
    hf: &HfSource,
    commit: &str,
    format: ModelFormat,
    paths: &[PathBuf],
) -> PathBuf {
    match format {
        ModelFormat::Gguf => paths.first().cloned().unwrap_or_default(),
        _ if matches!(hf.selector, FileSelector::File(_)) => {
            paths.first().cloned().unwrap_or_default()
        }
        _ => cache.snapshot_dir(&hf.repo, commit),
    }
}

fn resolve_local(spec: &ModelSpec, path: &std::path::Path) -> Result<ResolvedModel> {
    let meta = std::fs::metadata(path).map_err(|e| ModelError::LocalPath {
        path: path.to_path_buf(),
        reason: format!("cannot be read: {e}"),
    })?;
    let format = spec
        .format
        .or_else(|| format_of_path(path))
        .ok_or_else(|| ModelError::LocalPath {
            path: path.to_path_buf(),
            reason: "is neither a .gguf file nor a folder of .safetensors files".into(),
        })?;
    let files = if meta.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| ModelError::io("reading", path, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        if !v
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "safetensors"))
        {
            return Err(ModelError::LocalPath {
                path: path.to_path_buf(),
                reason: "is a folder without .safetensors files".into(),
            });
        }
        v
    } else {
        vec![path.to_path_buf()]
    };
    Ok(ResolvedModel {
        name: spec.name.clone(),
        format,
        path: path.to_path_buf(),
        files,
        repo: None,
        revision: None,
        commit: None,
        picked: None,
        downloaded_bytes: 0,
        backend: spec.backend.clone(),
        context_length: spec.context_length,
    })
}
