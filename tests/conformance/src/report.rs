//! What the suite found: one row per check, serialisable so `cargo xtask test-plugins` can read
//! the report a child process wrote.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// One named check, for the plugin as a whole (`model: None`) or for one model.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub name: String,
    pub model: Option<String>,
    pub status: Status,
    pub message: String,
    pub duration_ms: f64,
}

/// Passed / failed / skipped counts.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SuiteReport {
    pub plugin_path: PathBuf,
    /// The backend name and plugin version from the manifest, when the library loaded.
    pub backend: Option<String>,
    pub version: Option<String>,
    pub checks: Vec<CheckResult>,
}

impl SuiteReport {
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for check in &self.checks {
            match check.status {
                Status::Pass => counts.passed += 1,
                Status::Fail => counts.failed += 1,
                Status::Skip => counts.skipped += 1,
            }
        }
        counts
    }

    /// True when no check failed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }

    /// One line per check, for people.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "plugin {} ({} {})\n",
            self.plugin_path.display(),
            self.backend.as_deref().unwrap_or("?"),
            self.version.as_deref().unwrap_or("?"),
        );
        for c in &self.checks {
            let model = c.model.as_deref().unwrap_or("-");
            out.push_str(&format!(
                "{:4}  {:<22} {:<28} {:>7.0} ms  {}\n",
                c.status.as_str(),
                c.name,
                short(model),
                c.duration_ms,
                c.message
            ));
        }
        let n = self.counts();
        out.push_str(&format!(
            "{} passed, {} failed, {} skipped\n",
            n.passed, n.failed, n.skipped
        ));
        out
    }
}

/// The last path component: model paths are long and the table is for reading.
fn short(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}

/// What the loader did with a set of libraries (`conformance --probe`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProbeReport {
    pub entries: Vec<ProbeEntry>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProbeEntry {
    pub path: PathBuf,
    pub backend: Option<String>,
    pub version: Option<String>,
    pub loaded: bool,
    /// Why the loader refused it.
    pub reason: Option<String>,
}
