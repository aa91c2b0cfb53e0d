//! Process-isolated plugins: a plugin library loaded in a worker process of its own
//! (`llmlocal plugin-worker LIB`, this same binary) and called over a Unix socket, so that a
//! crash in native plugin code costs that plugin's requests, never the host.
//!
//! - [`wire`]/[`frame`]: the messages (serde mirrors of the plugin-api types) and their
//!   length-prefixed postcard frames;
//! - [`serve`]: the worker's side;
//! - [`process`]: one worker seen from the host (calls matched by id, logs forwarded, cause
//!   of death);
//! - [`supervisor`]: restarts with backoff, crash-loop refusal;
//! - [`remote`]: the model and generation handles over a worker.

mod frame;
mod process;
pub(crate) mod remote;
mod serve;
pub(crate) mod supervisor;
mod wire;

use std::{path::PathBuf, time::Duration};

/// How workers are started and watched.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSettings {
    /// The `llmlocal` binary that runs `plugin-worker` (the current one by default).
    pub executable: PathBuf,
    /// RLIMIT_AS of each worker, in bytes: an allocation past it fails inside the worker.
    pub max_memory_bytes: Option<u64>,
    /// Compute threads of each worker: set as the worker's OpenMP thread limit (llama.cpp's
    /// CPU threads) and rayon/candle pool sizes. Linux has no per-process thread rlimit, so
    /// this caps the pools that do the work, not the worker's few I/O threads.
    pub max_threads: Option<std::num::NonZeroU32>,
    /// A worker owing a step (`next`, `generate`, `logits`, `embed`: calls that run the
    /// model) that stays silent this long is killed as hung.
    pub step_timeout: Duration,
    /// The same for the constructor and `load` (and the greeting): generous, since a large
    /// model read from a slow disk takes minutes.
    pub load_timeout: Duration,
    /// The same for the quick calls (`tokenize`, `detokenize`, `metadata`, `stats`): short,
    /// since they do no model compute and a request waits on them.
    pub call_timeout: Duration,
}

/// The environment variable naming the `llmlocal` binary to run workers with, for programs
/// other than `llmlocal` itself that load plugins (the conformance suite, tests).
pub const WORKER_EXE_ENV: &str = "LLMLOCAL_WORKER_EXE";

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            executable: default_executable(),
            max_memory_bytes: None,
            max_threads: None,
            step_timeout: Duration::from_secs(120),
            load_timeout: Duration::from_secs(600),
            call_timeout: Duration::from_secs(30),
        }
    }
}

impl WorkerSettings {
    /// How long the worker may stay silent while it owes the reply to `call` before it is
    /// killed as hung (and treated like a crash). One place, so no call goes unwatched.
    pub(crate) fn deadline(&self, call: &wire::Call) -> Duration {
        use wire::Call;
        match call {
            Call::Construct | Call::Load(_) => self.load_timeout,
            Call::Generate { .. }
            | Call::Next { .. }
            | Call::Logits { .. }
            | Call::Embed { .. } => self.step_timeout,
            Call::Metadata { .. }
            | Call::Tokenize { .. }
            | Call::Detokenize { .. }
            | Call::Stats { .. }
            | Call::DropModel { .. }
            | Call::DropGeneration { .. } => self.call_timeout,
        }
    }
}

/// `$LLMLOCAL_WORKER_EXE`, else this program when it is `llmlocal`, else `llmlocal` next to it.
fn default_executable() -> PathBuf {
    if let Some(exe) = std::env::var_os(WORKER_EXE_ENV) {
        return PathBuf::from(exe);
    }
    let current = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("llmlocal"));
    let is_llmlocal = current.file_stem().is_some_and(|stem| stem == "llmlocal");
    if is_llmlocal {
        return current;
    }
    // A test binary lives in target/<profile>/deps, next to nothing; the conformance binary
    // in target/<profile>, next to llmlocal.
    let beside =
        |dir: &std::path::Path| dir.join(format!("llmlocal{}", std::env::consts::EXE_SUFFIX));
    current
        .parent()
        .into_iter()
        .flat_map(|dir| [beside(dir), dir.parent().map(beside).unwrap_or_default()])
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("llmlocal"))
}

/// The worker process's `main`: applies the limits, routes its log to stderr (the host
/// forwards it), and serves the host. Never returns.
pub fn run_worker(library: &std::path::Path, max_memory_bytes: Option<u64>, log_level: &str) -> ! {
    init_logging(log_level);
    crate::plugins::install_fatal_signal_report();
    if let Some(bytes) = max_memory_bytes {
        let limit =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, bytes, bytes);
        if let Err(err) = limit {
            tracing::error!("cannot limit the address space to {bytes} bytes: {err}");
            std::process::exit(2);
        }
    }
    serve::serve(library)
}

/// One line per event, level first, no time and no colour: the host parses the level.
fn init_logging(level: &str) {
    let level: tracing::level_filters::LevelFilter = level
        .parse()
        .unwrap_or(tracing::level_filters::LevelFilter::WARN);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .without_time()
        .with_ansi(false)
        .with_target(false)
        .with_max_level(level)
        .try_init();
}
