//! Runs check bodies, times them and records their rows. Each body runs on its own thread
//! under a time limit: a plugin that hangs fails that check by name and the suite goes on
//! (the stuck thread is left behind: a thread cannot be killed). A bug in a check body (a
//! panic in the suite's own code) becomes a failed row rather than the end of the run.

use crate::{
    outcome::{Failure, Outcome},
    report::{CheckResult, Status},
};
use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::mpsc,
    time::{Duration, Instant},
};

/// How long one check may take unless the suite is told otherwise. Tiny models take well
/// under a second per check; this only catches hangs.
pub const DEFAULT_CHECK_LIMIT: Duration = Duration::from_secs(120);

pub struct Recorder {
    pub checks: Vec<CheckResult>,
    limit: Duration,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::with_limit(DEFAULT_CHECK_LIMIT)
    }
}

impl Recorder {
    pub fn with_limit(limit: Duration) -> Self {
        Recorder {
            checks: Vec::new(),
            limit,
        }
    }

    /// Runs `body` as the check `name` and returns its status.
    pub fn check(
        &mut self,
        model: Option<&str>,
        name: &str,
        body: impl FnOnce() -> Outcome + Send + 'static,
    ) -> Status {
        self.check_value(model, name, move || body().map(|message| (message, ())))
            .0
    }

    /// Like [`Recorder::check`], for a check whose body also hands a value to later checks.
    pub fn check_value<T: Send + 'static>(
        &mut self,
        model: Option<&str>,
        name: &str,
        body: impl FnOnce() -> Result<(String, T), Failure> + Send + 'static,
    ) -> (Status, Option<T>) {
        let start = Instant::now();
        let (status, message, value) = match self.run(name, body) {
            Ok((message, value)) => (Status::Pass, message, Some(value)),
            Err(Failure::Fail(message)) => (Status::Fail, message, None),
            Err(Failure::Skip(message)) => (Status::Skip, message, None),
        };
        self.checks.push(CheckResult {
            name: name.to_string(),
            model: model.map(str::to_string),
            status,
            message,
            duration_ms: start.elapsed().as_secs_f64() * 1000.0,
        });
        (status, value)
    }

    /// Records a check that could not run because something it needs failed.
    pub fn skip(&mut self, model: Option<&str>, name: &str, why: &str) {
        let why = why.to_string();
        self.check(model, name, move || Err(Failure::Skip(why)));
    }

    fn run<T: Send + 'static>(
        &self,
        name: &str,
        body: impl FnOnce() -> Result<(String, T), Failure> + Send + 'static,
    ) -> Result<(String, T), Failure> {
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("check {name}"))
            .spawn(move || {
                let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
                    Err(Failure::Fail(format!(
                        "the check panicked (a bug in the suite or a panic that escaped the \
                         plugin): {}",
                        panic_text(payload.as_ref())
                    )))
                });
                // The receiver is gone after a timeout; nothing to do then.
                let _ = tx.send(outcome);
            });
        if let Err(err) = spawned {
            return Err(Failure::Fail(format!(
                "cannot start the check's thread: {err}"
            )));
        }
        match rx.recv_timeout(self.limit) {
            Ok(outcome) => outcome,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Failure::Fail(format!(
                "hung: no answer within {} s (the plugin never returned; its thread is left \
                 behind and the suite goes on)",
                self.limit.as_secs()
            ))),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Failure::Fail(
                "the check's thread ended without a result".into(),
            )),
        }
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hanging_check_fails_by_name_and_the_next_one_runs() {
        let mut rec = Recorder::with_limit(Duration::from_millis(200));
        rec.check(None, "hangs", || {
            std::thread::sleep(Duration::from_secs(30));
            Ok(String::new())
        });
        rec.check(None, "after", || Ok("ran".into()));
        assert_eq!(rec.checks[0].status, Status::Fail);
        assert!(
            rec.checks[0].message.contains("hung"),
            "{}",
            rec.checks[0].message
        );
        assert_eq!(rec.checks[1].status, Status::Pass);
    }

    #[test]
    fn a_panicking_check_is_a_failed_row() {
        let mut rec = Recorder::default();
        rec.check(None, "panics", || panic!("boom"));
        assert_eq!(rec.checks[0].status, Status::Fail);
        assert!(rec.checks[0].message.contains("boom"));
    }
}
