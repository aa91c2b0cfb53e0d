//! One process-isolated plugin over time: its current worker, restarts with backoff after a
//! crash, and the crash-loop refusal.

use super::{
    process::{Down, WorkerProcess},
    wire::{Call, Reply},
    WorkerSettings,
};
use crate::plugins::error::{BackendError, Refusal};
use llmlocal_plugin_api::{Manifest, PluginError};
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// This many crashes within [`CRASH_WINDOW`] stop the restarts: the backend is refused.
pub const CRASH_LIMIT: usize = 5;
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// The worker of one plugin and its history.
pub struct Supervisor {
    library: PathBuf,
    name: String,
    settings: WorkerSettings,
    state: Mutex<State>,
}

struct State {
    worker: Arc<WorkerProcess>,
    /// Bumped at every restart: model handles loaded on an older worker reload.
    epoch: u64,
    /// When each recent crash was noticed (oldest first).
    crashes: VecDeque<Instant>,
    /// Set once crashes looped: the reason, and no more restarts.
    refused: Option<String>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("name", &self.name)
            .field("library", &self.library)
            .finish_non_exhaustive()
    }
}

/// A worker that has greeted but whose backend is not constructed yet: the registry decides
/// (duplicate names) before running the constructor, as for in-process plugins.
pub struct Opened {
    library: PathBuf,
    settings: WorkerSettings,
    worker: Arc<WorkerProcess>,
    pub manifest: Manifest,
}

impl Opened {
    /// Starts a worker for `library` and reads its greeting.
    pub fn open(library: &Path, settings: &WorkerSettings) -> Result<Opened, Refusal> {
        let stem = library
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(crate::plugins::backend_name_of_file)
            .unwrap_or("plugin")
            .replace('_', "-");
        let (worker, greeting) = WorkerProcess::spawn(library, &stem, settings)
            .map_err(|Down(cause)| Refusal::Worker(format!("its worker process {cause}")))?;
        match greeting {
            Reply::Opened(manifest) => Ok(Opened {
                library: library.to_path_buf(),
                settings: settings.clone(),
                worker,
                manifest: manifest.into(),
            }),
            Reply::Refused(reason) => Err(Refusal::Worker(reason)),
            other => Err(Refusal::Worker(format!(
                "its worker process sent {other:?} instead of a greeting"
            ))),
        }
    }

    /// Runs the plugin's constructor in the worker.
    pub fn construct(&self) -> Result<Supervisor, Refusal> {
        construct(&self.worker, &self.settings)?;
        Ok(Supervisor {
            library: self.library.clone(),
            name: self.manifest.name.to_string(),
            settings: self.settings.clone(),
            state: Mutex::new(State {
                worker: Arc::clone(&self.worker),
                epoch: 0,
                crashes: VecDeque::new(),
                refused: None,
            }),
        })
    }
}

fn construct(worker: &WorkerProcess, settings: &WorkerSettings) -> Result<(), Refusal> {
    match worker.call(Call::Construct, settings) {
        Ok(Reply::Done) => Ok(()),
        Ok(Reply::Refused(reason)) => Err(Refusal::Worker(reason)),
        Ok(other) => Err(Refusal::Worker(format!(
            "its worker answered {other:?} to the constructor"
        ))),
        Err(Down(cause)) => Err(Refusal::Worker(format!(
            "its worker process {cause} in the constructor"
        ))),
    }
}

impl Supervisor {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn settings(&self) -> &WorkerSettings {
        &self.settings
    }

    /// Why the backend was refused after a crash loop, if it was.
    pub fn refused(&self) -> Option<String> {
        lock(&self.state).refused.clone()
    }

    /// The pid of the current worker (tests, `/health`).
    pub fn pid(&self) -> u32 {
        lock(&self.state).worker.pid()
    }

    /// The current worker and its epoch when it is alive; never restarts.
    pub fn current_if_alive(&self) -> Result<(Arc<WorkerProcess>, u64), ()> {
        let state = lock(&self.state);
        if state.worker.is_dead() {
            return Err(());
        }
        Ok((Arc::clone(&state.worker), state.epoch))
    }

    /// The live worker and its epoch, restarting a dead one (after its backoff) unless the
    /// crashes looped.
    pub fn current(&self) -> Result<(Arc<WorkerProcess>, u64), BackendError> {
        let mut state = lock(&self.state);
        if let Some(reason) = &state.refused {
            return Err(self.unavailable(reason.clone()));
        }
        if !state.worker.is_dead() {
            return Ok((Arc::clone(&state.worker), state.epoch));
        }
        self.restart(&mut state)?;
        Ok((Arc::clone(&state.worker), state.epoch))
    }

    fn restart(&self, state: &mut State) -> Result<(), BackendError> {
        let now = Instant::now();
        state.crashes.push_back(now);
        while state
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            state.crashes.pop_front();
        }
        if state.crashes.len() >= CRASH_LIMIT {
            let reason = format!(
                "its worker process crashed {} times within {} s; not restarted again \
                 until llmlocal restarts",
                state.crashes.len(),
                CRASH_WINDOW.as_secs()
            );
            tracing::error!("backend `{}` refused: {reason}", self.name);
            state.refused = Some(reason.clone());
            return Err(self.unavailable(reason));
        }
        // Backoff: none after a first crash (a fast recovery), then doubling.
        let backoff = match state.crashes.len() {
            0 | 1 => Duration::ZERO,
            n => Duration::from_millis(100 << (n - 2)).min(Duration::from_secs(5)),
        };
        std::thread::sleep(backoff);
        tracing::warn!("restarting the worker process of backend `{}`", self.name);
        let opened = Opened::open(&self.library, &self.settings)
            .and_then(|opened| construct(&opened.worker, &self.settings).map(|()| opened))
            .map_err(|refusal| self.unavailable(format!("its restart failed: {refusal}")))?;
        state.worker = opened.worker;
        state.epoch += 1;
        Ok(())
    }

    /// `Unavailable` naming the backend.
    pub fn unavailable(&self, message: String) -> BackendError {
        BackendError {
            backend: self.name.clone(),
            source: PluginError::unavailable(message),
        }
    }

    /// The error for a call the worker did not answer.
    pub fn down(&self, call: &str, Down(cause): Down) -> BackendError {
        self.unavailable(format!(
            "the worker process of plugin `{}` died ({cause}) during `{call}`; it restarts on \
             the next request",
            self.name
        ))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
