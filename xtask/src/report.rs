//! The JSON the `conformance` binary writes (`--json`), read back here. Mirrors
//! `llmlocal_conformance::report` field by field; kept separate so xtask builds (and
//! `cargo xtask build-plugins` works) even while the host crate does not compile.

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

#[derive(Deserialize, Debug, Clone)]
pub struct CheckResult {
    pub name: String,
    pub status: Status,
    pub message: String,
    pub duration_ms: f64,
}

#[derive(Deserialize, Debug, Clone)]
pub struct SuiteReport {
    pub backend: Option<String>,
    pub version: Option<String>,
    pub checks: Vec<CheckResult>,
}

impl SuiteReport {
    /// (passed, failed, skipped)
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |s| self.checks.iter().filter(|c| c.status == s).count();
        (
            count(Status::Pass),
            count(Status::Fail),
            count(Status::Skip),
        )
    }

    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }
}

#[derive(Deserialize, Debug, Clone)]
pub struct ProbeReport {
    pub entries: Vec<ProbeEntry>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ProbeEntry {
    pub path: PathBuf,
    pub version: Option<String>,
    pub loaded: bool,
    pub reason: Option<String>,
}
