//! [`ModelManager`]: turns a [`ModelSpec`] into local paths, downloading what is missing.
//!
//! `resolve` is cache-first: a model whose files are *all* cached for the revision is used
//! without touching the network (a local engine should start offline); a snapshot that lacks a
//! file is completed from the hub, or, offline, named in the error. `pull` asks the hub for the
//! revision's current commit and fetches what changed; when it cannot ask (offline mode, or the
//! hub unreachable) a fully cached model is used as it is, and a missing file is named.

use std::path::PathBuf;

use llmlocal_plugin_api::ModelFormat;
use tokio_util::sync::CancellationToken;

use super::cache::{CachedRepo, HubCache};
use super::cached::{cache_state, wanted, CacheState, PickLimits};
use super::config::ManagerConfig;
use super::disk::{check_free_space, tidy_after_failure};
use super::download::{fetch_file, present_bytes, FileJob};
use super::error::{ModelError, Result};
use super::progress::{ProgressSender, Tracker};
use super::quant::{self, PickedQuant, QuantCandidate};
use super::remote::{FileMeta, Hub, RepoInfo, Sibling};
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
    /// Set when every file came from the cache without asking the hub, saying why: a
    /// cache-first resolve, offline mode, or the hub could not be reached.
    pub cache_only: Option<String>,
}

impl ResolvedModel {
    /// The Hugging Face model `spec` at `commit`: `files` (names in the repo) lie at `paths`
    /// in `cache`; nothing downloaded, not marked cache-only.
    pub(super) fn from_hub(
        cache: &HubCache,
        spec: &ModelSpec,
        hf: &HfSource,
        commit: String,
        files: &[String],
        paths: Vec<PathBuf>,
        picked: Option<PickedQuant>,
    ) -> ResolvedModel {
        let format = detect_format(spec, files);
        ResolvedModel {
            name: spec.name.clone(),
            format,
            path: model_path(cache, hf, &commit, format, &paths),
            files: paths,
            repo: Some(hf.repo.clone()),
            revision: Some(hf.revision.clone()),
            commit: Some(commit),
            picked,
            downloaded_bytes: 0,
            backend: spec.backend.clone(),
            context_length: spec.context_length,
            cache_only: None,
        }
    }
}

/// What a pull fetches: files, their metadata, the quant picked, the commit.
struct Plan {
    files: Vec<String>,
    metas: Vec<FileMeta>,
    picked: Option<PickedQuant>,
    commit: String,
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
        let mut cache = HubCache::new(config.cache_dir.clone());
        if let Some(dir) = &config.state_dir {
            cache = cache.with_state_dir(dir);
        }
        cache.migrate_legacy_state();
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
        match self.cache_state(spec, hf) {
            CacheState::Complete(mut found) => {
                self.cache.touch(&hf.repo);
                found.cache_only = Some("resolve uses the cache first".into());
                Ok(*found)
            }
            CacheState::Missing(missing) if self.config.offline => {
                Err(self.offline_miss(hf, &missing))
            }
            CacheState::Missing(_) => self.pull(spec, None, CancellationToken::new()).await,
        }
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
        let cached = self.cache_state(spec, hf);
        if self.config.offline {
            return self.answer_from_cache(
                hf,
                cached,
                "offline mode: HF_HUB_OFFLINE is set".into(),
            );
        }
        // With everything cached the hub is only asked whether the revision moved: one try,
        // not the full backoff, before answering from the cache (as huggingface_hub does).
        let probe = if cached.is_complete() {
            self.hub.with_retries(0)
        } else {
            self.hub.clone()
        };
        let plan = match self.plan(&probe, spec, hf).await {
            Ok(plan) => plan,
            Err(ModelError::Network { url, reason, .. }) => {
                return self.unreachable(hf, cached, &url, &reason)
            }
            Err(e) => return Err(e),
        };
        self.download(spec, hf, plan, progress, cancel).await
    }

    /// Fetches the planned files (what is already cached is not downloaded again).
    async fn download(
        &self,
        spec: &ModelSpec,
        hf: &HfSource,
        plan: Plan,
        progress: Option<ProgressSender>,
        cancel: CancellationToken,
    ) -> Result<ResolvedModel> {
        let Plan {
            files,
            metas,
            picked,
            commit,
        } = plan;
        check_free_space(
            &hf.repo,
            self.cache.root(),
            self.missing_bytes(&hf.repo, &metas),
        )?;
        let total: u64 = metas.iter().map(|m| m.size).sum();
        let mut tracker = Tracker::new(progress, total, files.len());
        let created = !self.cache.repo_dir(&hf.repo).exists();
        let fetched = self
            .fetch_all(hf, &files, &metas, &commit, &mut tracker, &cancel)
            .await;
        let (paths, downloaded) = match fetched {
            Ok(done) => done,
            Err(e) => {
                tidy_after_failure(&self.cache, &hf.repo, created);
                return Err(e);
            }
        };
        self.cache.touch(&hf.repo);
        tracker.finish();
        if let Some(p) = &picked {
            tracing::info!(repo = %hf.repo, quant = ?p.quant, file = %p.files[0], size = p.size, budget = ?p.budget, "picked a quantization");
        }
        Ok(ResolvedModel {
            downloaded_bytes: downloaded,
            ..ResolvedModel::from_hub(&self.cache, spec, hf, commit, &files, paths, picked)
        })
    }

    /// Fetches each file and writes the ref; returns the snapshot paths and bytes received.
    async fn fetch_all(
        &self,
        hf: &HfSource,
        files: &[String],
        metas: &[FileMeta],
        commit: &str,
        tracker: &mut Tracker,
        cancel: &CancellationToken,
    ) -> Result<(Vec<PathBuf>, u64)> {
        let mut paths = Vec::with_capacity(files.len());
        let mut downloaded = 0;
        for (file, meta) in files.iter().zip(metas) {
            let job = FileJob {
                repo: &hf.repo,
                revision: &hf.revision,
                file,
                meta,
            };
            let (path, bytes) = fetch_file(&self.hub, &self.cache, &job, tracker, cancel).await?;
            paths.push(path);
            downloaded += bytes;
        }
        self.cache.write_ref(&hf.repo, &hf.revision, commit)?;
        Ok((paths, downloaded))
    }

    /// Bytes still to download for `metas` (each blob once; partial data counts as present).
    fn missing_bytes(&self, repo: &str, metas: &[FileMeta]) -> u64 {
        let mut seen = std::collections::BTreeSet::new();
        metas
            .iter()
            .filter(|m| seen.insert(m.etag.as_str()))
            .map(|m| m.size.saturating_sub(present_bytes(&self.cache, repo, m)))
            .sum()
    }

    /// The answer when the hub is not asked: the cached model, or an error naming what is missing.
    fn answer_from_cache(
        &self,
        hf: &HfSource,
        cached: CacheState,
        why: String,
    ) -> Result<ResolvedModel> {
        match cached {
            CacheState::Complete(mut model) => {
                tracing::info!(repo = %hf.repo, %why, "using the cached copy");
                self.cache.touch(&hf.repo);
                model.cache_only = Some(why);
                Ok(*model)
            }
            CacheState::Missing(missing) => Err(self.offline_miss(hf, &missing)),
        }
    }

    /// The hub could not be reached: a fully cached model is used, else the missing files are named.
    fn unreachable(
        &self,
        hf: &HfSource,
        cached: CacheState,
        url: &str,
        reason: &str,
    ) -> Result<ResolvedModel> {
        match cached {
            CacheState::Complete(_) => {
                let why = format!("the hub could not be reached ({reason})");
                tracing::warn!(repo = %hf.repo, url, %reason, "hub unreachable; using the cached copy");
                self.answer_from_cache(hf, cached, why)
            }
            CacheState::Missing(missing) => Err(ModelError::HubUnreachable {
                repo: hf.repo.clone(),
                revision: hf.revision.clone(),
                file: missing.join(", "),
                endpoint: self.config.endpoint.clone(),
                reason: reason.to_string(),
            }),
        }
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
            ModelSource::HuggingFace(hf) => self.cache_state(spec, hf).is_complete(),
        }
    }

    /// The files of a Hugging Face `spec` if the cache holds all of them (no network, no
    /// last-used update): what a listing describes without downloading.
    pub fn cached(&self, spec: &ModelSpec) -> Option<ResolvedModel> {
        match &spec.source {
            ModelSource::Local(_) => None,
            ModelSource::HuggingFace(hf) => match self.cache_state(spec, hf) {
                CacheState::Complete(found) => Some(*found),
                CacheState::Missing(_) => None,
            },
        }
    }

    fn context_length(&self, spec: &ModelSpec) -> u32 {
        spec.context_length
            .unwrap_or(self.config.default_context_length)
    }

    fn memory_budget(&self) -> Option<u64> {
        self.config.memory_limit.or_else(quant::available_memory)
    }

    /// Which files to fetch (with their metadata), the quant picked, and the commit.
    async fn plan(&self, hub: &Hub, spec: &ModelSpec, hf: &HfSource) -> Result<Plan> {
        let (files, picked, commit) = match &hf.selector {
            FileSelector::File(file) => (vec![file.clone()], None, None),
            _ => {
                let info = hub.repo_info(&hf.repo, &hf.revision).await?;
                let (files, picked) = self.select_remote(spec, hf, &info)?;
                self.cache
                    .write_manifest(&hf.repo, &info.sha, &info.siblings);
                (files, picked, Some(info.sha))
            }
        };
        let metas = self.file_metas(hub, hf, commit.as_deref(), &files).await?;
        let commit = metas
            .first()
            .map(|m| m.commit.clone())
            .or(commit)
            .unwrap_or_default();
        Ok(Plan {
            files,
            metas,
            picked,
            commit,
        })
    }

    fn select_remote(
        &self,
        spec: &ModelSpec,
        hf: &HfSource,
        info: &RepoInfo,
    ) -> Result<(Vec<String>, Option<PickedQuant>)> {
        let names: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
        select_files(
            &hf.repo,
            &hf.revision,
            &hf.selector,
            &info.siblings,
            &names,
            self.memory_budget(),
            self.context_length(spec),
        )
    }

    /// HEAD every file (pinned to the commit when known, so all files come from one snapshot).
    async fn file_metas(
        &self,
        hub: &Hub,
        hf: &HfSource,
        commit: Option<&str>,
        files: &[String],
    ) -> Result<Vec<FileMeta>> {
        let revision = commit.unwrap_or(&hf.revision);
        let mut metas = Vec::with_capacity(files.len());
        for file in files {
            let mut meta = hub.file_meta(&hf.repo, revision, file).await?;
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

    /// Whether the cache holds every file `spec` needs.
    fn cache_state(&self, spec: &ModelSpec, hf: &HfSource) -> CacheState {
        let limits = PickLimits {
            budget: self.memory_budget(),
            context_length: self.context_length(spec),
        };
        cache_state(&self.cache, spec, hf, &limits)
    }

    fn offline_miss(&self, hf: &HfSource, missing: &[String]) -> ModelError {
        let file = if missing.is_empty() {
            wanted(&hf.selector)
        } else {
            missing.join(", ")
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
pub(super) fn select_files(
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

pub(super) fn snapshot_files(repo: &str, revision: &str, names: &[&str]) -> Result<Vec<String>> {
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

pub(super) fn detect_format(spec: &ModelSpec, files: &[String]) -> ModelFormat {
    spec.format.unwrap_or_else(|| {
        if !files.is_empty() && files.iter().all(|f| f.ends_with(".gguf")) {
            ModelFormat::Gguf
        } else {
            ModelFormat::Safetensors
        }
    })
}

pub(super) fn model_path(
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
        cache_only: None,
    })
}
