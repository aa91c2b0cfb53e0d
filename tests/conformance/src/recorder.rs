//! Runs check bodies, times them and records their rows. A bug in a check body (a panic in
//! the suite's own code) becomes a failed row rather than the end of the run.

use crate::{
    outcome::{Failure, Outcome},
    report::{CheckResult, Status},
};
use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    time::Instant,
};

#[derive(Default)]
pub struct Recorder {
    pub checks: Vec<CheckResult>,
}

impl Recorder {
    /// Runs `body` as the check `name` and returns its status.
    pub fn check(
        &mut self,
        model: Option<&str>,
        name: &str,
        body: impl FnOnce() -> Outcome,
    ) -> Status {
        let start = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
            Err(Failure::Fail(format!(
                "the check panicked (a bug in the suite or a panic that escaped the plugin): {}",
                panic_text(payload.as_ref())
            )))
        });
        let (status, message) = match outcome {
            Ok(message) => (Status::Pass, message),
            Err(Failure::Fail(message)) => (Status::Fail, message),
            Err(Failure::Skip(message)) => (Status::Skip, message),
        };
        self.checks.push(CheckResult {
            name: name.to_string(),
            model: model.map(str::to_string),
            status,
            message,
            duration_ms: start.elapsed().as_secs_f64() * 1000.0,
        });
        status
    }

    /// Records a check that could not run because something it needs failed.
    pub fn skip(&mut self, model: Option<&str>, name: &str, why: &str) {
        self.check(model, name, || Err(Failure::Skip(why.to_string())));
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
