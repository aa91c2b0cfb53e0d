//! One running worker process, seen from the host: spawning it, calling it (one request id
//! per call, replies matched by id on a reader thread), forwarding its stderr/stdout to our
//! logger, and learning how it died.

use super::{
    frame,
    wire::{Call, Reply, Request, Response},
    WorkerSettings,
};
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    os::unix::{net::UnixStream, process::CommandExt},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Condvar, Mutex,
    },
    time::Duration,
};

/// Why a call got no answer: the worker is gone (the text names the cause).
#[derive(Debug, Clone)]
pub struct Down(pub String);

struct Calls {
    /// Callers waiting for a reply, by request id.
    waiting: HashMap<u64, mpsc::SyncSender<Reply>>,
    /// Set once, when the worker is gone: why.
    death: Option<String>,
}

/// A running worker. Dropping the last handle kills it.
pub struct WorkerProcess {
    link: Arc<Link>,
}

/// What the caller threads and the reader thread share.
struct Link {
    /// The plugin, for log lines and messages (the library's file stem until the greeting).
    name: String,
    pid: u32,
    out: Mutex<UnixStream>,
    calls: Mutex<Calls>,
    died: Condvar,
    /// Set before we kill a hung worker: the cause to report instead of "killed by SIGKILL".
    kill_reason: Mutex<Option<String>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for WorkerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerProcess")
            .field("name", &self.link.name)
            .field("pid", &self.link.pid)
            .finish_non_exhaustive()
    }
}

impl WorkerProcess {
    /// Starts `llmlocal plugin-worker LIBRARY` and waits for its greeting: the manifest, or
    /// the reason the library was refused.
    pub fn spawn(
        library: &Path,
        name: &str,
        settings: &WorkerSettings,
    ) -> Result<(Arc<WorkerProcess>, Reply), Down> {
        let (host_end, child_end) =
            UnixStream::pair().map_err(|e| Down(format!("cannot create a socket pair: {e}")))?;
        let mut command = worker_command(library, settings);
        command
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(child_end)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_from_keeper(command).map_err(|e| {
            Down(format!(
                "could not be started ({}: {e}; set ${} to the llmlocal binary)",
                settings.executable.display(),
                super::WORKER_EXE_ENV
            ))
        })?;
        let out = host_end
            .try_clone()
            .map_err(|e| Down(format!("cannot clone the worker socket: {e}")))?;
        let link = Arc::new(Link {
            name: name.to_string(),
            pid: child.id(),
            out: Mutex::new(out),
            calls: Mutex::new(Calls {
                waiting: HashMap::new(),
                death: None,
            }),
            died: Condvar::new(),
            kill_reason: Mutex::new(None),
            next_id: AtomicU64::new(1),
        });
        forward_output(name, child.stdout.take());
        forward_output(name, child.stderr.take());
        // The greeting has id 0: register for it before the reader can see it.
        let (tx, rx) = mpsc::sync_channel(1);
        lock(&link.calls).waiting.insert(0, tx);
        let reader = Arc::clone(&link);
        std::thread::Builder::new()
            .name(format!("worker-{name}"))
            .spawn(move || reader.read_replies(host_end, child))
            .map_err(|e| Down(format!("cannot start the worker reader thread: {e}")))?;
        let worker = Arc::new(WorkerProcess { link });
        // Opening the library runs its static initialisers: a hang there is watched too.
        match rx.recv_timeout(settings.load_timeout) {
            Ok(greeting) => Ok((worker, greeting)),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                worker.link.kill(format!(
                    "hung: no greeting within {:.1} s, killed",
                    settings.load_timeout.as_secs_f64()
                ));
                Err(Down(worker.link.wait_death()))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Down(worker.link.wait_death())),
        }
    }

    pub fn pid(&self) -> u32 {
        self.link.pid
    }

    pub fn is_dead(&self) -> bool {
        self.link.is_dead()
    }

    /// Sends `call` and waits for its reply; a worker silent past the deadline of that call
    /// ([`WorkerSettings::deadline`]) is killed as hung.
    pub fn call(&self, call: Call, settings: &WorkerSettings) -> Result<Reply, Down> {
        let deadline = settings.deadline(&call);
        self.link.call(call, deadline)
    }

    /// Sends a call that gets no reply (drops); a dead worker has nothing to drop.
    pub fn send(&self, call: Call) {
        let _ = self.link.write(&Request { id: 0, call });
    }
}

impl Link {
    fn is_dead(&self) -> bool {
        lock(&self.calls).death.is_some()
    }

    fn call(&self, call: Call, deadline: Duration) -> Result<Reply, Down> {
        let what = call.name();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut calls = lock(&self.calls);
            if let Some(death) = &calls.death {
                return Err(Down(death.clone()));
            }
            calls.waiting.insert(id, tx);
        }
        if self.write(&Request { id, call }).is_err() {
            lock(&self.calls).waiting.remove(&id);
            return Err(Down(self.wait_death()));
        }
        let reply = match rx.recv_timeout(deadline) {
            Ok(reply) => Some(reply),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.kill(format!(
                    "hung: no reply to `{what}` within {:.1} s, killed",
                    deadline.as_secs_f64()
                ));
                None
            }
        };
        reply.ok_or_else(|| Down(self.wait_death()))
    }

    fn write(&self, request: &Request) -> std::io::Result<()> {
        frame::write(&mut *lock(&self.out), request)
    }

    fn kill(&self, reason: String) {
        lock(&self.kill_reason).get_or_insert(reason);
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        // Only while it has not been reaped: the reader thread reaps it after its socket
        // closes, and a reaped pid may be reused by another process.
        let calls = lock(&self.calls);
        if calls.death.is_none() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Blocks until the worker is gone; returns why.
    fn wait_death(&self) -> String {
        let mut calls = lock(&self.calls);
        loop {
            if let Some(death) = &calls.death {
                return death.clone();
            }
            calls = self
                .died
                .wait(calls)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// The reader thread: hands each reply to its caller; at the end of the stream reaps the
    /// child and fails every waiting call with the cause.
    fn read_replies(self: Arc<Self>, mut socket: UnixStream, mut child: Child) {
        loop {
            match frame::read::<_, Response>(&mut socket) {
                Ok(Some(response)) => {
                    let waiter = lock(&self.calls).waiting.remove(&response.id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(response.reply);
                    }
                }
                Ok(None) => break,
                // The worker died with requests unread (a crash, a kill): an end, not a lie.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(err) => {
                    tracing::error!(
                        "plugin `{}`: unreadable message from its worker ({err}); killing it",
                        self.name
                    );
                    self.kill(format!("sent an unreadable message ({err}), killed"));
                    break;
                }
            }
        }
        // The socket closed: the worker exited or is about to. Make sure, then reap it.
        let status = match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            _ => {
                // It closed the socket but lives on (or never will exit by itself): end it.
                std::thread::sleep(Duration::from_millis(20));
                if let Ok(None) = child.try_wait() {
                    let _ = child.kill();
                }
                child.wait()
            }
        };
        let cause = lock(&self.kill_reason)
            .clone()
            .unwrap_or_else(|| describe_exit(status));
        let mut calls = lock(&self.calls);
        calls.death = Some(cause);
        // Dropping the senders wakes every waiting caller with `Disconnected`.
        calls.waiting.clear();
        self.died.notify_all();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // No handle left: nothing will call it again.
        self.link.kill("shut down by the host".to_string());
    }
}

/// What sizes a worker's compute threads: OpenMP's hard limit and default (llama.cpp's CPU
/// backend runs on OpenMP and follows the limit), rayon's global pool and candle's pool.
const COMPUTE_THREAD_VARS: [&str; 4] = [
    "OMP_THREAD_LIMIT",
    "OMP_NUM_THREADS",
    "RAYON_NUM_THREADS",
    "CANDLE_NUM_THREADS",
];

fn worker_command(library: &Path, settings: &WorkerSettings) -> Command {
    let mut command = Command::new(&settings.executable);
    command.arg("plugin-worker").arg(library);
    if let Some(bytes) = settings.max_memory_bytes {
        command.arg("--max-memory").arg(bytes.to_string());
    }
    if let Some(threads) = settings.max_threads {
        for var in COMPUTE_THREAD_VARS {
            command.env(var, threads.to_string());
        }
    }
    command.arg("--log-level").arg(
        tracing::level_filters::LevelFilter::current()
            .to_string()
            .to_lowercase(),
    );
    #[cfg(target_os = "linux")]
    // SAFETY: between fork and exec only async-signal-safe calls: prctl(2).
    unsafe {
        command.pre_exec(|| {
            // The worker dies with the thread that forked it (the keeper thread, which lives
            // as long as the host process).
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    command
}

/// Spawns `command` from one long-lived thread. PR_SET_PDEATHSIG fires when the *thread*
/// that forked the child exits, and callers run on pool threads that come and go: forking
/// from a thread that lives as long as the process ties the worker's life to the host's.
fn spawn_from_keeper(command: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::SyncSender<std::io::Result<Child>>);
    static KEEPER: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);
    let mut keeper = lock(&KEEPER);
    if keeper.is_none() {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("worker-keeper".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })?;
        *keeper = Some(tx);
    }
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let sent = keeper
        .as_ref()
        .is_some_and(|tx| tx.send((command, reply_tx)).is_ok());
    if !sent {
        return Err(std::io::Error::other("the worker keeper thread is gone"));
    }
    drop(keeper);
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the worker keeper thread is gone"))?
}

/// "exited with status 3", "killed by SIGSEGV (core dumped)", ...
fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    let status = match status {
        Ok(status) => status,
        Err(err) => return format!("ended; its exit status is unknown ({err})"),
    };
    if let Some(signal) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(signal)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| format!("signal {signal}"));
        let core = if status.core_dumped() {
            " (core dumped)"
        } else {
            ""
        };
        return format!("killed by {name}{core}");
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "ended".to_string(),
    }
}

/// Re-emits each line the worker writes (its own log lines start with the level) under
/// the plugin log target, prefixed with the plugin name.
fn forward_output(name: &str, stream: Option<impl Read + Send + 'static>) {
    let Some(stream) = stream else { return };
    let name = name.to_string();
    let _ = std::thread::Builder::new()
        .name(format!("worker-log-{name}"))
        .spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                emit_line(&name, &line);
            }
        });
}

fn emit_line(plugin: &str, line: &str) {
    use crate::plugins::PLUGIN_LOG_TARGET as T;
    let trimmed = line.trim_start();
    let (level, rest) = trimmed.split_once(' ').unwrap_or(("", trimmed));
    let rest = rest.trim_start();
    match level {
        "ERROR" => tracing::error!(target: T, plugin, "[{plugin}] {rest}"),
        "WARN" => tracing::warn!(target: T, plugin, "[{plugin}] {rest}"),
        "INFO" => tracing::info!(target: T, plugin, "[{plugin}] {rest}"),
        "DEBUG" => tracing::debug!(target: T, plugin, "[{plugin}] {rest}"),
        "TRACE" => tracing::trace!(target: T, plugin, "[{plugin}] {rest}"),
        // Anything else (a native library printing, a crash report) matters: warn.
        _ => tracing::warn!(target: T, plugin, "[{plugin}] {line}"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(command: &Command, var: &str) -> Option<String> {
        command
            .get_envs()
            .find(|(k, _)| *k == var)
            .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
    }

    #[test]
    fn max_threads_caps_every_compute_pool_of_the_worker() {
        let settings = WorkerSettings {
            max_threads: std::num::NonZeroU32::new(2),
            ..WorkerSettings::default()
        };
        let command = worker_command(Path::new("libx.so"), &settings);
        for var in COMPUTE_THREAD_VARS {
            assert_eq!(env_of(&command, var).as_deref(), Some("2"), "{var}");
        }
        let unlimited = worker_command(Path::new("libx.so"), &WorkerSettings::default());
        assert!(COMPUTE_THREAD_VARS
            .iter()
            .all(|var| env_of(&unlimited, var).is_none()));
    }
}
