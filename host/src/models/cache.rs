//! The local cache, in the Hugging Face hub layout shared with Python's `huggingface_hub`:
//!
//! ```text
//! <root>/models--org--name/
//!     blobs/<etag>                      file contents (etag = sha256 for LFS files)
//!     blobs/<etag>.incomplete           a download in progress (resumed with HTTP Range)
//!     snapshots/<commit>/<file>  ->  ../../blobs/<etag>   (relative symlink)
//!     refs/<revision>                   the commit a branch or tag pointed to
//! ```
//!
//! Last-used times live in a small JSON sidecar, `last_used.json` in llmlocal's state folder
//! beside the cache (`state.rs`: `$HF_HOME/llmlocal/hub/` for the standard cache), written when
//! llmlocal resolves or pulls a model (file atimes are unreliable: `noatime`/`relatime` mounts).
//! Repositories that llmlocal never used (downloaded by Python) fall back to the newest
//! modification time of their blobs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hf_hub::{Cache, CacheRepo, Repo, RepoType};
use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};
use super::hub_input::{check_commit, check_etag, check_repo_file, check_revision};
use super::state::{default_state_dir, migrate_legacy_state};

/// Where the cache is: `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`), else
/// `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub` —
/// the same order as Python's `huggingface_hub`. `env` looks up a variable (testable without
/// touching the process environment).
pub fn cache_dir_from(
    env: impl Fn(&str) -> Option<String>,
    home: Option<PathBuf>,
) -> Option<PathBuf> {
    let set = |key: &str| env(key).filter(|v| !v.trim().is_empty()).map(PathBuf::from);
    if let Some(dir) = set("HF_HUB_CACHE").or_else(|| set("HUGGINGFACE_HUB_CACHE")) {
        return Some(dir);
    }
    if let Some(home_dir) = set("HF_HOME") {
        return Some(home_dir.join("hub"));
    }
    if let Some(xdg) = set("XDG_CACHE_HOME") {
        return Some(xdg.join("huggingface").join("hub"));
    }
    home.map(|h| h.join(".cache").join("huggingface").join("hub"))
}

/// The cache folder from the process environment.
pub fn cache_dir_from_env() -> Option<PathBuf> {
    cache_dir_from(|k| std::env::var(k).ok(), dirs::home_dir())
}

/// One repository in the cache.
#[derive(Debug, Clone)]
pub struct CachedRepo {
    pub repo: String,
    pub path: PathBuf,
    /// Snapshots (one per commit) with their files.
    pub revisions: Vec<CachedRevision>,
    /// Bytes of complete blobs (what deleting the repo frees, besides partial downloads).
    pub size_bytes: u64,
    /// Bytes of `.incomplete` partial downloads.
    pub partial_bytes: u64,
    pub last_used: Option<SystemTime>,
}

/// One snapshot of a cached repository.
#[derive(Debug, Clone)]
pub struct CachedRevision {
    pub commit: String,
    /// Branches/tags (`refs/*`) pointing at this commit.
    pub refs: Vec<String>,
    pub files: Vec<CachedFile>,
}

/// One file of a snapshot.
#[derive(Debug, Clone)]
pub struct CachedFile {
    /// Path inside the repository (`/`-separated).
    pub name: String,
    pub size: u64,
    /// The snapshot path (a symlink into `blobs/`).
    pub path: PathBuf,
}

/// The hub-layout cache at one root folder.
#[derive(Debug, Clone)]
pub struct HubCache {
    root: PathBuf,
    /// llmlocal's own records about this cache (see `state.rs`).
    state: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UsageFile {
    /// repo id -> seconds since the Unix epoch.
    last_used: BTreeMap<String, u64>,
}

impl HubCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let state = default_state_dir(&root);
        HubCache { root, state }
    }

    /// The same cache with llmlocal's records kept in `dir` instead of the default.
    pub fn with_state_dir(self, dir: impl Into<PathBuf>) -> Self {
        HubCache {
            state: dir.into(),
            ..self
        }
    }

    /// Where llmlocal keeps its own records about this cache (outside the cache root).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Moves records an older version kept in `<root>/.llmlocal` to [`Self::state_dir`].
    pub fn migrate_legacy_state(&self) {
        migrate_legacy_state(&self.root, &self.state);
    }

    /// The cache at the standard location (see [`cache_dir_from`]).
    pub fn from_env() -> Result<Self> {
        cache_dir_from_env()
            .map(HubCache::new)
            .ok_or(ModelError::NoCacheDir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn hf_repo(repo: &str, revision: &str) -> Repo {
        Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string())
    }

    /// hf-hub's handle on this repository (layout paths, refs).
    pub(crate) fn cache_repo(&self, repo: &str, revision: &str) -> CacheRepo {
        Cache::new(self.root.clone()).repo(Self::hf_repo(repo, revision))
    }

    /// `<root>/models--org--name`.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root.join(Self::hf_repo(repo, "main").folder_name())
    }

    pub fn blob_path(&self, repo: &str, etag: &str) -> PathBuf {
        self.cache_repo(repo, "main").blob_path(etag)
    }

    /// Where a download of `etag` is written until it is verified (same name as huggingface_hub).
    pub fn incomplete_path(&self, repo: &str, etag: &str) -> PathBuf {
        self.repo_dir(repo)
            .join("blobs")
            .join(format!("{etag}.incomplete"))
    }

    /// The lock file guarding the download of `etag`: `<root>/.locks/models--org--name/<etag>.lock`,
    /// the path huggingface_hub locks (with `filelock`, i.e. flock) for the same purpose.
    pub fn lock_path(&self, repo: &str, etag: &str) -> PathBuf {
        let folder = self
            .repo_dir(repo)
            .file_name()
            .map(|f| f.to_os_string())
            .unwrap_or_default();
        self.root
            .join(".locks")
            .join(folder)
            .join(format!("{etag}.lock"))
    }

    pub fn snapshot_dir(&self, repo: &str, commit: &str) -> PathBuf {
        self.cache_repo(repo, "main").pointer_path(commit)
    }

    /// The commit a revision names: `refs/<revision>`, or the revision itself when it is a
    /// commit with a snapshot. A revision or a ref's content that could name a path outside
    /// the repo folder (a hand-edited or hostile `refs/` file) counts as not cached.
    pub fn resolve_commit(&self, repo: &str, revision: &str) -> Option<String> {
        if let Err(why) = check_revision(revision) {
            tracing::warn!(repo, revision, %why, "ignoring an unsafe revision");
            return None;
        }
        let ref_path = self.repo_dir(repo).join("refs").join(revision);
        if let Ok(commit) = std::fs::read_to_string(&ref_path) {
            let commit = commit.trim();
            match check_commit(commit) {
                Ok(()) => return Some(commit.to_string()),
                Err(why) if !commit.is_empty() => {
                    tracing::warn!(path = %ref_path.display(), %why, "ignoring a ref that does not hold a commit hash");
                    return None;
                }
                Err(_) => {}
            }
        }
        (check_commit(revision).is_ok() && self.snapshot_dir(repo, revision).is_dir())
            .then(|| revision.to_string())
    }

    /// The snapshot path of `file` if it is cached for `revision` (and its blob is there,
    /// inside this repo folder).
    pub fn cached_file(&self, repo: &str, revision: &str, file: &str) -> Option<PathBuf> {
        check_repo_file(file).ok()?;
        let commit = self.resolve_commit(repo, revision)?;
        let path = self.snapshot_dir(repo, &commit).join(file);
        // `exists` follows the symlink: a dangling link to a deleted blob is not cached.
        (path.exists() && self.contained(repo, &commit, &path)).then_some(path)
    }

    /// Whether the revision is cached: one file, or (with `None`) any snapshot at all.
    pub fn is_cached(&self, repo: &str, revision: &str, file: Option<&str>) -> bool {
        match file {
            Some(f) => self.cached_file(repo, revision, f).is_some(),
            None => self
                .resolve_commit(repo, revision)
                .map(|c| self.snapshot_dir(repo, &c).is_dir())
                .unwrap_or(false),
        }
    }

    /// Files of the cached snapshot for `revision` (names inside the repo), sorted.
    pub fn snapshot_files(&self, repo: &str, revision: &str) -> Option<(String, Vec<CachedFile>)> {
        let commit = self.resolve_commit(repo, revision)?;
        let dir = self.snapshot_dir(repo, &commit);
        let mut files = Vec::new();
        walk_files(&dir, &dir, &mut files);
        files.retain(|f| self.contained(repo, &commit, &f.path));
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Some((commit, files))
    }

    /// Writes `refs/<revision>` = commit (skipped when the revision is the commit itself).
    pub fn write_ref(&self, repo: &str, revision: &str, commit: &str) -> Result<()> {
        let origin = || format!("the ref of `{repo}`");
        check_revision(revision)
            .map_err(|why| ModelError::unsafe_value("revision", revision, origin(), why))?;
        check_commit(commit)
            .map_err(|why| ModelError::unsafe_value("commit", commit, origin(), why))?;
        if revision == commit {
            return Ok(());
        }
        self.cache_repo(repo, revision)
            .create_ref(commit)
            .map_err(|e| ModelError::io("writing a ref in", self.repo_dir(repo), e))
    }

    /// Points `snapshots/<commit>/<file>` at `blobs/<etag>` with a relative symlink, as
    /// huggingface_hub does (a copy where symlinks are unavailable).
    pub fn link_snapshot(
        &self,
        repo: &str,
        commit: &str,
        file: &str,
        etag: &str,
    ) -> Result<PathBuf> {
        // Checked here too, whoever the caller: with these three valid, the link is inside
        // `snapshots/<commit>/` and its target inside `blobs/` by construction.
        let origin = || format!("a snapshot link of `{repo}`");
        check_commit(commit)
            .map_err(|why| ModelError::unsafe_value("commit", commit, origin(), why))?;
        check_repo_file(file)
            .map_err(|why| ModelError::unsafe_value("file name", file, origin(), why))?;
        check_etag(etag).map_err(|why| ModelError::unsafe_value("etag", etag, origin(), why))?;
        let link = self.snapshot_dir(repo, commit).join(file);
        let parent = link.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| ModelError::io("creating", &parent, e))?;
        // From snapshots/<commit>/<dirs..>/file back up to the repo folder.
        let depth = 2 + file.matches('/').count();
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).map_err(|e| ModelError::io("replacing", &link, e))?;
        }
        make_link(&target, &self.blob_path(repo, etag), &link)?;
        Ok(link)
    }

    /// Whether a snapshot file really lies in this repo: a symlink must lead into `blobs/`
    /// (as huggingface_hub's links do), a plain file (a copy where symlinks are unavailable)
    /// must be inside the snapshot. Anything else (a link to `/etc/passwd`, to another
    /// repo) is not taken as cached.
    fn contained(&self, repo: &str, commit: &str, path: &Path) -> bool {
        let Ok(real) = std::fs::canonicalize(path) else {
            return false;
        };
        let repo_dir = self.repo_dir(repo);
        let inside = |dir: PathBuf| std::fs::canonicalize(dir).is_ok_and(|d| real.starts_with(d));
        let ok = inside(repo_dir.join("blobs")) || inside(self.snapshot_dir(repo, commit));
        if !ok {
            tracing::warn!(path = %path.display(), target = %real.display(), "ignoring a snapshot file that points outside the repo's blobs");
        }
        ok
    }

    /// Every cached model repository, sorted by id.
    pub fn list(&self) -> Result<Vec<CachedRepo>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ModelError::io("reading the cache", &self.root, e)),
        };
        let usage = self.read_usage();
        let mut repos: Vec<CachedRepo> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let repo = repo_id_from_folder(&name)?;
                Some(self.scan_repo(&repo, entry.path(), &usage))
            })
            .collect();
        repos.sort_by(|a, b| a.repo.cmp(&b.repo));
        Ok(repos)
    }

    /// One repository's entry, if cached.
    pub fn get(&self, repo: &str) -> Option<CachedRepo> {
        let dir = self.repo_dir(repo);
        dir.is_dir()
            .then(|| self.scan_repo(repo, dir, &self.read_usage()))
    }

    /// Bytes used by all cached model repositories (complete and partial blobs).
    pub fn total_size(&self) -> Result<u64> {
        Ok(self
            .list()?
            .iter()
            .map(|r| r.size_bytes + r.partial_bytes)
            .sum())
    }

    /// Deletes one repository; returns the bytes freed.
    pub fn remove(&self, repo: &str) -> Result<u64> {
        let entry = self.get(repo).ok_or_else(|| ModelError::NotInCache {
            repo: repo.to_string(),
            cache: self.root.clone(),
        })?;
        std::fs::remove_dir_all(&entry.path)
            .map_err(|e| ModelError::io("deleting", &entry.path, e))?;
        self.update_usage(|u| {
            u.last_used.remove(repo);
        });
        self.remove_manifests(repo);
        tracing::info!(
            repo,
            bytes = entry.size_bytes + entry.partial_bytes,
            "removed from the cache"
        );
        Ok(entry.size_bytes + entry.partial_bytes)
    }

    /// Deletes every cached model repository (not datasets or spaces); returns the bytes freed.
    pub fn clear(&self) -> Result<u64> {
        let mut freed = 0;
        for entry in self.list()? {
            freed += self.remove(&entry.repo)?;
        }
        Ok(freed)
    }

    /// Deletes least-recently-used repositories until the cache holds at most `budget` bytes;
    /// returns the ids deleted, oldest first.
    pub fn evict_to(&self, budget: u64) -> Result<Vec<String>> {
        let mut repos = self.list()?;
        let mut total: u64 = repos.iter().map(|r| r.size_bytes + r.partial_bytes).sum();
        repos.sort_by_key(|r| r.last_used.unwrap_or(UNIX_EPOCH));
        let mut evicted = Vec::new();
        for repo in repos {
            if total <= budget {
                break;
            }
            total = total.saturating_sub(self.remove(&repo.repo)?);
            evicted.push(repo.repo);
        }
        Ok(evicted)
    }

    /// Records that `repo` was used now.
    pub fn touch(&self, repo: &str) {
        self.touch_at(repo, SystemTime::now());
    }

    /// Records a last-used time (tests use it to set up an LRU order).
    pub fn touch_at(&self, repo: &str, when: SystemTime) {
        let secs = when
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.update_usage(|u| {
            u.last_used.insert(repo.to_string(), secs);
        });
    }

    fn usage_path(&self) -> PathBuf {
        self.state.join("last_used.json")
    }

    fn read_usage(&self) -> UsageFile {
        std::fs::read(self.usage_path())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Read-modify-write with an atomic rename; a failure only loses a last-used time, so it
    /// is logged, not returned.
    fn update_usage(&self, change: impl FnOnce(&mut UsageFile)) {
        let mut usage = self.read_usage();
        change(&mut usage);
        let path = self.usage_path();
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let result = path
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|_| serde_json::to_vec_pretty(&usage).map_err(std::io::Error::other))
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "could not record last-used time");
        }
    }

    fn scan_repo(&self, repo: &str, path: PathBuf, usage: &UsageFile) -> CachedRepo {
        let (size_bytes, partial_bytes, newest_blob) = scan_blobs(&path.join("blobs"));
        let refs = read_refs(&path.join("refs"));
        let mut revisions = Vec::new();
        if let Ok(entries) = std::fs::read_dir(path.join("snapshots")) {
            for entry in entries.flatten() {
                let commit = entry.file_name().to_string_lossy().into_owned();
                let mut files = Vec::new();
                walk_files(&entry.path(), &entry.path(), &mut files);
                files.sort_by(|a, b| a.name.cmp(&b.name));
                let names = refs
                    .iter()
                    .filter(|(_, c)| **c == commit)
                    .map(|(r, _)| r.clone())
                    .collect();
                revisions.push(CachedRevision {
                    commit,
                    refs: names,
                    files,
                });
            }
        }
        revisions.sort_by(|a, b| a.commit.cmp(&b.commit));
        let last_used = usage
            .last_used
            .get(repo)
            .map(|s| UNIX_EPOCH + Duration::from_secs(*s))
            .or(newest_blob);
        CachedRepo {
            repo: repo.to_string(),
            path,
            revisions,
            size_bytes,
            partial_bytes,
            last_used,
        }
    }
}

/// `models--org--name` -> `org/name`.
fn repo_id_from_folder(name: &str) -> Option<String> {
    name.strip_prefix("models--")
        .map(|rest| rest.replace("--", "/"))
}

/// (complete bytes, partial bytes, newest modification time) of a blobs folder.
fn scan_blobs(dir: &Path) -> (u64, u64, Option<SystemTime>) {
    let (mut complete, mut partial, mut newest) = (0, 0, None::<SystemTime>);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if entry.file_name().to_string_lossy().ends_with(".incomplete") {
            partial += meta.len();
            continue;
        }
        complete += meta.len();
        if let Ok(modified) = meta.modified() {
            newest = Some(newest.map_or(modified, |n| n.max(modified)));
        }
    }
    (complete, partial, newest)
}

/// refs/<name> (names may contain `/`, e.g. `refs/pr/1`) -> commit.
fn read_refs(dir: &Path) -> BTreeMap<String, String> {
    let mut files = Vec::new();
    walk_files(dir, dir, &mut files);
    files
        .into_iter()
        .filter_map(|f| {
            let commit = std::fs::read_to_string(&f.path).ok()?;
            Some((f.name, commit.trim().to_string()))
        })
        .collect()
}

/// Collects regular files (following symlinks) under `dir`, named relative to `base`.
fn walk_files(base: &Path, dir: &Path, out: &mut Vec<CachedFile>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // dangling symlink: the blob is gone, the file is not cached
        };
        if meta.is_dir() {
            // A symlinked folder is never part of the layout: not followed (it could lead
            // anywhere, even in a cycle).
            if !entry.file_type().is_ok_and(|t| t.is_symlink()) {
                walk_files(base, &path, out);
            }
        } else if let Ok(rel) = path.strip_prefix(base) {
            let name = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push(CachedFile {
                name,
                size: meta.len(),
                path,
            });
        }
    }
}

#[cfg(unix)]
fn make_link(relative_target: &Path, _blob: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(relative_target, link)
        .map_err(|e| ModelError::io("linking", link, e))
}

#[cfg(not(unix))]
fn make_link(relative_target: &Path, blob: &Path, link: &Path) -> Result<()> {
    // Windows without developer mode cannot create symlinks; huggingface_hub copies then too.
    match std::os::windows::fs::symlink_file(relative_target, link) {
        Ok(()) => Ok(()),
        Err(_) => std::fs::copy(blob, link)
            .map(|_| ())
            .map_err(|e| ModelError::io("copying into", link, e)),
    }
}
