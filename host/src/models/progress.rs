//! Download progress as an async stream of [`Progress`] events on a tokio channel.
//!
//! Events are throttled (at most one per [`EMIT_EVERY`], plus one at every file start and end),
//! so an unbounded channel stays small even when nobody reads it quickly. The overall fraction
//! never goes backwards (a server that ignores a Range request makes a file restart from zero;
//! the fraction then holds until the bytes catch up) and the last event is exactly 1.0.

use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

/// One progress report.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Overall, 0.0 ..= 1.0, never decreasing; exactly 1.0 at the end.
    pub fraction: f64,
    /// Bytes of all files present (cached before, resumed, or downloaded now).
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// The file being worked on (path inside the repository).
    pub file: String,
    pub file_bytes_done: u64,
    pub file_bytes_total: u64,
    /// Files complete so far, of how many.
    pub files_done: usize,
    pub files_total: usize,
}

/// Where progress events go.
pub type ProgressSender = UnboundedSender<Progress>;

/// Minimum time between two events for the same file.
pub const EMIT_EVERY: Duration = Duration::from_millis(100);

/// Keeps the totals of one pull and sends throttled, monotonic events.
pub(crate) struct Tracker {
    sender: Option<ProgressSender>,
    bytes_total: u64,
    files_total: usize,
    files_done: usize,
    /// Bytes of finished files.
    done_before: u64,
    file: String,
    file_done: u64,
    file_total: u64,
    last_fraction: f64,
    last_emit: Option<Instant>,
}

impl Tracker {
    pub fn new(sender: Option<ProgressSender>, bytes_total: u64, files_total: usize) -> Self {
        Tracker {
            sender,
            bytes_total,
            files_total,
            files_done: 0,
            done_before: 0,
            file: String::new(),
            file_done: 0,
            file_total: 0,
            last_fraction: 0.0,
            last_emit: None,
        }
    }

    /// A file starts, with `already` bytes present (a resumed partial download).
    pub fn start_file(&mut self, file: &str, total: u64, already: u64) {
        self.file = file.to_string();
        self.file_total = total;
        self.file_done = already.min(total);
        self.emit(true);
    }

    /// The current file now has `done` bytes.
    pub fn set_file_done(&mut self, done: u64) {
        self.file_done = done.min(self.file_total);
        self.emit(false);
    }

    /// The current file is complete and verified.
    pub fn finish_file(&mut self) {
        self.done_before += self.file_total;
        self.file_done = 0;
        self.files_done += 1;
        self.emit(true);
    }

    /// Everything is done: the final event, fraction exactly 1.0.
    pub fn finish(&mut self) {
        self.last_fraction = 1.0;
        self.send(1.0);
    }

    pub fn bytes_done(&self) -> u64 {
        self.done_before + self.file_done
    }

    fn emit(&mut self, force: bool) {
        let now = Instant::now();
        let due = self
            .last_emit
            .is_none_or(|t| now.duration_since(t) >= EMIT_EVERY);
        if !(force || due) {
            return;
        }
        self.last_emit = Some(now);
        let raw = if self.bytes_total == 0 {
            0.0
        } else {
            (self.bytes_done() as f64 / self.bytes_total as f64).min(1.0)
        };
        // 1.0 is reserved for `finish`, after every file is verified and linked.
        let fraction = raw.min(0.999_999).max(self.last_fraction);
        self.last_fraction = fraction;
        self.send(fraction);
    }

    fn send(&self, fraction: f64) {
        if let Some(sender) = &self.sender {
            // A receiver that went away just stops listening; the download goes on.
            let _ = sender.send(Progress {
                fraction,
                bytes_done: self.bytes_done().min(self.bytes_total),
                bytes_total: self.bytes_total,
                file: self.file.clone(),
                file_bytes_done: self.file_done,
                file_bytes_total: self.file_total,
                files_done: self.files_done,
                files_total: self.files_total,
            });
        }
    }
}
