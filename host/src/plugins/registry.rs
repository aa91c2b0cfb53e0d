//! Every plugin library tried in one process, with the backends that loaded.

use super::{
    discover::{backend_name_of_file, discover},
    error::{PluginError, Refusal},
    handles::{Isolation, LoadedBackend},
    load,
    worker::{supervisor, WorkerSettings},
};
use llmlocal_plugin_api::{Manifest, ModelFormat};
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
};

/// One library that was tried.
#[derive(Debug, Clone)]
pub struct PluginEntry {
    pub path: PathBuf,
    /// Present when the manifest could be read, even if the plugin was then refused.
    pub manifest: Option<Manifest>,
    pub status: PluginStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginStatus {
    Loaded,
    Refused { reason: String },
}

/// The backends of this process. Libraries are never unloaded.
#[derive(Debug, Default)]
pub struct PluginRegistry {
    entries: Vec<PluginEntry>,
    backends: Vec<Arc<LoadedBackend>>,
}

impl PluginRegistry {
    /// Discovers the plugin libraries in `dirs` and loads them as the process-wide policy
    /// says ([`set_isolation_policy`]; in-process when none was set).
    pub fn load(dirs: &[PathBuf]) -> PluginRegistry {
        let policy = POLICY
            .get()
            .cloned()
            .unwrap_or_else(IsolationPolicy::in_process);
        Self::load_with(dirs, &policy)
    }

    /// Loads each library on its own; a refusal is recorded (and logged) and the others go on.
    ///
    /// When several libraries claim one backend name, one is kept and the others are refused
    /// as duplicates: the first (in `paths` order) whose file is named after the backend
    /// (`libllmlocal_backend_llama_cpp.so` for `llama-cpp`), else simply the first. So a
    /// renamed copy or a stray plugin that reuses a name does not shadow the real one.
    pub fn load_files(paths: &[PathBuf]) -> PluginRegistry {
        Self::load_files_with(paths, &IsolationPolicy::in_process())
    }

    /// Discovers the plugin libraries in `dirs` and loads each as `policy` says.
    pub fn load_with(dirs: &[PathBuf], policy: &IsolationPolicy) -> PluginRegistry {
        Self::load_files_with(&discover(dirs), policy)
    }

    /// [`Self::load_files`], each library loaded in this process or in a worker process as
    /// `policy` says.
    pub fn load_files_with(paths: &[PathBuf], policy: &IsolationPolicy) -> PluginRegistry {
        let paths = unique(paths);
        // Pass 1: open and check every library (no backend constructor runs yet).
        let opened: Vec<Result<Candidate, Refusal>> = paths
            .iter()
            .map(|path| Candidate::open(path, policy))
            .collect();
        // Pass 2: construct one backend per name, in order of preference.
        let mut constructed: Vec<Option<Constructed>> = opened.iter().map(|_| None).collect();
        for group in name_groups(&paths, &opened) {
            construct_group(&paths, &opened, &group, &mut constructed);
        }
        let mut registry = PluginRegistry::default();
        for ((path, opened), constructed) in paths.into_iter().zip(opened).zip(constructed) {
            let (manifest, result) = match opened {
                Err(refusal) => (None, Err(refusal)),
                Ok(candidate) => (
                    Some(candidate.manifest().clone()),
                    // Every opened library belongs to a name group, so this is always set.
                    constructed.unwrap_or_else(|| {
                        Err(Refusal::RootModule("it was never constructed".to_string()))
                    }),
                ),
            };
            registry.record(path, manifest, result);
        }
        registry
    }

    fn record(&mut self, path: PathBuf, manifest: Option<Manifest>, result: Constructed) {
        let status = match result {
            Ok(backend) => {
                tracing::info!(
                    "loaded backend `{}` {} from {}",
                    backend.name(),
                    backend.manifest.version,
                    path.display()
                );
                self.backends.push(backend);
                PluginStatus::Loaded
            }
            Err(refusal) => {
                tracing::warn!("plugin {} refused: {refusal}", path.display());
                PluginStatus::Refused {
                    reason: refusal.to_string(),
                }
            }
        };
        self.entries.push(PluginEntry {
            path,
            manifest,
            status,
        });
    }

    /// Every library tried, in the order tried, as it was at load time.
    pub fn entries(&self) -> &[PluginEntry] {
        &self.entries
    }

    /// [`Self::entries`] as they stand now: a process-isolated backend refused after its
    /// worker crashed in a loop shows as refused, with that reason.
    pub fn entries_now(&self) -> Vec<PluginEntry> {
        self.entries
            .iter()
            .map(|entry| {
                let refused_later = self
                    .backends
                    .iter()
                    .find(|b| b.path == entry.path)
                    .and_then(|b| b.refused());
                match refused_later {
                    Some(reason) => PluginEntry {
                        status: PluginStatus::Refused { reason },
                        ..entry.clone()
                    },
                    None => entry.clone(),
                }
            })
            .collect()
    }

    /// The backends that loaded, in load order.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<LoadedBackend>> {
        self.backends.iter()
    }

    /// Backends refused since they loaded (a worker crash loop): `{"name", "reason"}` each.
    pub fn refused_now(&self) -> Vec<serde_json::Value> {
        self.backends
            .iter()
            .filter_map(|b| {
                b.refused()
                    .map(|reason| serde_json::json!({"name": b.name(), "reason": reason}))
            })
            .collect()
    }

    /// The names of the loaded backends, in load order.
    pub fn backend_names(&self) -> Vec<String> {
        self.backends.iter().map(|b| b.name().to_string()).collect()
    }

    /// The loaded backend called `name`.
    pub fn backend(&self, name: &str) -> Result<&Arc<LoadedBackend>, PluginError> {
        if let Some(backend) = self.backends.iter().find(|b| b.name() == name) {
            return Ok(backend);
        }
        let refused = self.entries.iter().find_map(|entry| match &entry.status {
            PluginStatus::Refused { reason }
                if entry
                    .manifest
                    .as_ref()
                    .is_some_and(|m| m.name.as_str() == name) =>
            {
                Some((entry.path.clone(), reason.clone()))
            }
            _ => None,
        });
        match refused {
            Some((path, reason)) => Err(PluginError::BackendRefused {
                name: name.to_string(),
                path,
                reason,
            }),
            None if self.backends.is_empty() => Err(PluginError::NoBackends),
            None => Err(PluginError::NoSuchBackend {
                name: name.to_string(),
                available: self.backend_names(),
            }),
        }
    }

    /// The backend for a model: the one `requested` (request or CLI), else the configured
    /// `default`, else the first loaded backend that reads `format` (or simply the first
    /// loaded one when the format is unknown).
    pub fn choose(
        &self,
        requested: Option<&str>,
        default: Option<&str>,
        format: Option<ModelFormat>,
    ) -> Result<&Arc<LoadedBackend>, PluginError> {
        if let Some(name) = requested.or(default) {
            return self.backend(name);
        }
        let mut candidates = self.backends.iter();
        let chosen = match format {
            Some(format) => candidates.find(|b| b.manifest.reads(format.as_str())),
            None => candidates.next(),
        };
        match (chosen, format) {
            (Some(backend), _) => Ok(backend),
            _ if self.backends.is_empty() => Err(PluginError::NoBackends),
            (None, Some(format)) => Err(PluginError::NoBackendForFormat {
                format,
                available: self.backend_names(),
            }),
            (None, None) => Err(PluginError::NoBackends),
        }
    }
}

/// A backend, or why an opened library was refused at construction.
type Constructed = Result<Arc<LoadedBackend>, Refusal>;

/// The isolation policy of this process: decided once, from config and command line, before
/// any plugin loads; global so that every command that loads plugins follows it without
/// threading it through each one.
static POLICY: std::sync::OnceLock<IsolationPolicy> = std::sync::OnceLock::new();

/// Sets the policy [`PluginRegistry::load`] uses; the first call wins.
pub fn set_isolation_policy(policy: IsolationPolicy) {
    let _ = POLICY.set(policy);
}

/// Which plugins run in a worker process (see [`Isolation`]).
#[derive(Debug, Clone, Default)]
pub struct IsolationPolicy {
    /// Per backend name (`-` and `_` alike), from config or command line.
    pub per_plugin: Vec<(String, Isolation)>,
    /// For every plugin without an entry of its own.
    pub all: Option<Isolation>,
    /// Plugins in this directory (the install's own) default to in-process, any other to
    /// process. `None`: everything defaults to in-process.
    pub trusted_dir: Option<PathBuf>,
    pub worker: WorkerSettings,
}

impl IsolationPolicy {
    /// Everything in this process (the library default).
    pub fn in_process() -> Self {
        IsolationPolicy {
            all: Some(Isolation::InProcess),
            ..IsolationPolicy::default()
        }
    }

    /// Everything in worker processes.
    pub fn process(worker: WorkerSettings) -> Self {
        IsolationPolicy {
            all: Some(Isolation::Process),
            worker,
            ..IsolationPolicy::default()
        }
    }

    /// How the library at `path` runs: its name's entry, else `all`, else by where it is.
    pub fn for_library(&self, path: &Path) -> Isolation {
        let key = |name: &str| name.replace('_', "-");
        let name = path
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(backend_name_of_file)
            .map(key);
        let own = self
            .per_plugin
            .iter()
            .find(|(n, _)| Some(key(n)) == name)
            .map(|(_, isolation)| *isolation);
        own.or(self.all).unwrap_or_else(|| {
            let trusted = self.trusted_dir.as_ref().is_some_and(|dir| {
                let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
                path.parent().map(canonical) == Some(canonical(dir))
            });
            if trusted || self.trusted_dir.is_none() {
                Isolation::InProcess
            } else {
                Isolation::Process
            }
        })
    }
}

/// A library that passed every check up to its manifest, in this process or in a worker.
enum Candidate {
    InProcess(load::Candidate),
    Worker(supervisor::Opened),
}

impl Candidate {
    fn open(path: &Path, policy: &IsolationPolicy) -> Result<Candidate, Refusal> {
        match policy.for_library(path) {
            Isolation::InProcess => load::open(path).map(Candidate::InProcess),
            Isolation::Process => {
                supervisor::Opened::open(path, &policy.worker).map(Candidate::Worker)
            }
        }
    }

    fn manifest(&self) -> &Manifest {
        match self {
            Candidate::InProcess(c) => &c.manifest,
            Candidate::Worker(w) => &w.manifest,
        }
    }

    fn construct(&self, path: &Path) -> Result<LoadedBackend, Refusal> {
        let manifest = self.manifest().clone();
        match self {
            Candidate::InProcess(c) => c
                .construct()
                .map(|backend| LoadedBackend::new(path.to_path_buf(), manifest, backend)),
            Candidate::Worker(w) => w.construct().map(|supervisor| {
                LoadedBackend::in_worker(path.to_path_buf(), manifest, supervisor)
            }),
        }
    }
}

/// `paths` without repeats of the same file.
fn unique(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    paths
        .iter()
        .filter(|path| {
            let first = seen.insert(path.canonicalize().unwrap_or_else(|_| path.to_path_buf()));
            if !first {
                tracing::debug!("{} is listed twice; loading it once", path.display());
            }
            first
        })
        .cloned()
        .collect()
}

/// The opened libraries grouped by backend name (groups in order of first appearance), each
/// group in order of preference: libraries named after the backend first, then path order.
fn name_groups(paths: &[PathBuf], opened: &[Result<Candidate, Refusal>]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (index, candidate) in opened.iter().enumerate() {
        let Ok(candidate) = candidate else {
            continue;
        };
        let name = candidate.manifest().name.as_str();
        match groups.iter_mut().find(|(n, _)| *n == name) {
            Some((_, members)) => members.push(index),
            None => groups.push((name, vec![index])),
        }
    }
    groups
        .into_iter()
        .map(|(name, mut members)| {
            members.sort_by_key(|&i| (!named_after(&paths[i], name), i));
            members
        })
        .collect()
}

/// Whether the library's file name is the one for backend `name` (`-` and `_` alike).
fn named_after(path: &Path, name: &str) -> bool {
    path.file_name()
        .and_then(|f| f.to_str())
        .and_then(backend_name_of_file)
        .is_some_and(|file_name| file_name.replace('-', "_") == name.replace('-', "_"))
}

/// Constructs the first library of `group` whose constructor succeeds; the ones after it
/// are refused as duplicates of that one.
fn construct_group(
    paths: &[PathBuf],
    opened: &[Result<Candidate, Refusal>],
    group: &[usize],
    constructed: &mut [Option<Constructed>],
) {
    let mut winner: Option<&PathBuf> = None;
    for &index in group {
        let Ok(candidate) = &opened[index] else {
            continue;
        };
        let path = &paths[index];
        let result = match winner {
            Some(by) => Err(Refusal::DuplicateName {
                name: candidate.manifest().name.to_string(),
                by: by.clone(),
            }),
            None => candidate.construct(path).map(|backend| {
                winner = Some(path);
                Arc::new(backend)
            }),
        };
        constructed[index] = Some(result);
    }
}

#[cfg(test)]
mod isolation_tests {
    use super::*;

    #[test]
    fn plugins_outside_the_install_dir_default_to_a_worker_and_overrides_win() {
        let install = tempfile::tempdir().expect("temp dir");
        let elsewhere = tempfile::tempdir().expect("temp dir");
        let own = install.path().join("libllmlocal_backend_llama_cpp.so");
        let third = elsewhere.path().join("libllmlocal_backend_third_party.so");
        let mut policy = IsolationPolicy {
            trusted_dir: Some(install.path().to_path_buf()),
            ..IsolationPolicy::default()
        };
        assert_eq!(policy.for_library(&own), Isolation::InProcess);
        assert_eq!(policy.for_library(&third), Isolation::Process);
        // Per backend name, `-` and `_` alike, wins over the location and over `all`.
        policy.all = Some(Isolation::Process);
        policy.per_plugin = vec![("llama-cpp".into(), Isolation::InProcess)];
        assert_eq!(policy.for_library(&own), Isolation::InProcess);
        policy.per_plugin = vec![("third_party".into(), Isolation::InProcess)];
        assert_eq!(policy.for_library(&third), Isolation::InProcess);
        assert_eq!(policy.for_library(&own), Isolation::Process);
        // The library API's default: everything in this process.
        assert_eq!(
            IsolationPolicy::in_process().for_library(&third),
            Isolation::InProcess
        );
    }
}
