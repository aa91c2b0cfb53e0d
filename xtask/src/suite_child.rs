//! Runs the `conformance` binary as a child process (one per plugin and model), so a plugin
//! that aborts the process shows as a crashed row instead of ending the whole run.

use crate::report::{ProbeReport, Status, SuiteReport};
use crate::{
    process::{cargo, describe, run, run_logged, tail, Finished},
    table::Row,
    workspace::Workspace,
};
use anyhow::{Context, Result};
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

/// The longest one suite run may take (tiny models take seconds; this only stops hangs).
const SUITE_LIMIT: Duration = Duration::from_secs(600);

/// What a suite run should show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Every check passes or skips.
    Pass,
    /// Loads, but its generations fail with a caught panic (panicking-generation).
    PanickingGenerations,
    /// Loads, and the named check fails with a message containing the text: a test plugin
    /// that breaks one rule of the contract on purpose.
    Catches {
        check: &'static str,
        message: &'static str,
    },
}

/// One suite run to do.
pub struct Plan {
    pub plugin: PathBuf,
    pub model: Option<PathBuf>,
    pub eos_prompt: Option<String>,
    pub expect: Expect,
    /// `--check-timeout` for the suite (seconds); `None` = its default.
    pub check_timeout: Option<u64>,
    /// `--process-isolation`: the plugin in a worker process, every check through it.
    pub in_worker: bool,
}

/// Builds the `conformance` binary once and returns its path; builds `llmlocal` with it,
/// since `--process-isolation` runs its workers (`llmlocal plugin-worker`) from that binary.
pub fn build_conformance(ws: &Workspace) -> Result<PathBuf> {
    let mut build = cargo(&ws.root);
    build.args([
        "build",
        "-p",
        "llmlocal-conformance",
        "--bin",
        "conformance",
        "-p",
        "llmlocal",
        "--bin",
        "llmlocal",
    ]);
    run(&mut build, "building the conformance suite")?;
    let exe = ws
        .debug_dir()
        .join(format!("conformance{}", std::env::consts::EXE_SUFFIX));
    Ok(exe)
}

fn scratch(ws: &Workspace) -> Result<PathBuf> {
    let dir = ws.target.join("xtask");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn stem(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// A model path as the table shows it: relative to the fixtures or shared models folder
/// (so `stories260K/hf` stays distinguishable from the fixture folders), else its name.
fn model_label(ws: &Workspace, model: &Path) -> String {
    let fixtures = ws.target.join("fixtures");
    [fixtures, ws.shared_models()]
        .iter()
        .find_map(|base| model.strip_prefix(base).ok())
        .map(|rel| rel.display().to_string())
        .unwrap_or_else(|| stem(model))
}

/// Runs one plan and turns the outcome into a row (printing details when it is not ok).
pub fn run_plan(ws: &Workspace, exe: &Path, plan: &Plan, index: usize) -> Result<Row> {
    let dir = scratch(ws)?;
    let json = dir.join(format!("conformance-{index}.json"));
    let log = dir.join(format!("conformance-{index}.log"));
    let _ = fs::remove_file(&json);
    let mut command = Command::new(exe);
    command
        .arg("--plugin")
        .arg(&plan.plugin)
        .arg("--json")
        .arg(&json);
    if let Some(model) = &plan.model {
        command.arg("--model").arg(model);
    }
    if let Some(prompt) = &plan.eos_prompt {
        command.args(["--eos-prompt", prompt]);
    }
    if let Some(seconds) = plan.check_timeout {
        command.args(["--check-timeout", &seconds.to_string()]);
    }
    if plan.in_worker {
        // The worker binary of this build, not whatever $LLMLOCAL_WORKER_EXE names.
        let worker = ws
            .debug_dir()
            .join(format!("llmlocal{}", std::env::consts::EXE_SUFFIX));
        command
            .arg("--process-isolation")
            .env("LLMLOCAL_WORKER_EXE", worker);
    }
    println!("$ {}", crate::process::shown(&command));
    let finished = run_logged(&mut command, &log, SUITE_LIMIT)?;
    let mut row = Row {
        plugin: stem(&plan.plugin),
        version: "?".into(),
        model: plan
            .model
            .as_deref()
            .map(|m| model_label(ws, m))
            .unwrap_or_else(|| "-".into())
            + if plan.in_worker { " (in a worker)" } else { "" },
        counts: None,
        seconds: None,
        result: String::new(),
        ok: false,
    };
    let report = fs::read_to_string(&json)
        .ok()
        .and_then(|text| serde_json::from_str::<SuiteReport>(&text).ok());
    match (finished, report) {
        (Finished::TimedOut, _) => {
            row.result = format!("HUNG (killed after {} s)", SUITE_LIMIT.as_secs());
        }
        (Finished::Exited(status), None) => {
            row.result = format!("CRASHED ({})", describe(status));
        }
        (Finished::Exited(_), Some(report)) => judge(&mut row, &report, plan.expect),
    }
    if !row.ok {
        println!("--- {} with {}: {}", row.plugin, row.model, row.result);
        println!("{}", tail(&log, 40));
        println!("--- full log: {}", log.display());
    }
    Ok(row)
}

fn judge(row: &mut Row, report: &SuiteReport, expect: Expect) {
    if let Some(name) = &report.backend {
        row.plugin = name.clone();
    }
    row.version = report.version.clone().unwrap_or_else(|| "?".into());
    row.counts = Some(report.counts());
    let ms: f64 = report.checks.iter().map(|c| c.duration_ms).sum();
    row.seconds = Some(ms / 1000.0);
    match expect {
        Expect::Pass => {
            row.ok = report.passed();
            row.result = if row.ok { "ok".into() } else { "FAIL".into() };
        }
        Expect::PanickingGenerations => {
            let loads = report
                .checks
                .iter()
                .any(|c| c.name == "loads" && c.status == Status::Pass);
            let caught = report.failures().any(|c| c.message.contains("panick"));
            row.ok = loads && caught;
            row.result = if row.ok {
                "expected: generation checks fail with the caught panic".into()
            } else {
                "UNEXPECTED: no failed check reports the plugin's panic".into()
            };
        }
        Expect::Catches { check, message } => {
            let loads = report
                .checks
                .iter()
                .any(|c| c.name == "loads" && c.status == Status::Pass);
            let caught = report
                .failures()
                .any(|c| c.name == check && c.message.contains(message));
            row.ok = loads && caught;
            row.result = if row.ok {
                format!("expected: caught by \"{check}\"")
            } else {
                format!("UNEXPECTED: \"{check}\" did not fail with \"{message}\"")
            };
        }
    }
}

/// Runs the loader on `libraries` (in this order) in a child process.
pub fn probe(ws: &Workspace, exe: &Path, libraries: &[PathBuf]) -> Result<ProbeReport> {
    let dir = scratch(ws)?;
    let json = dir.join("probe.json");
    let log = dir.join("probe.log");
    let _ = fs::remove_file(&json);
    let mut command = Command::new(exe);
    for library in libraries {
        command.arg("--probe").arg(library);
    }
    command.arg("--json").arg(&json);
    let finished = run_logged(&mut command, &log, SUITE_LIMIT)?;
    let text = fs::read_to_string(&json).ok();
    match (finished, text) {
        (Finished::Exited(_), Some(text)) => {
            serde_json::from_str(&text).context("reading the probe report")
        }
        (Finished::Exited(status), None) => anyhow::bail!(
            "the loader probe crashed ({}):\n{}",
            describe(status),
            tail(&log, 40)
        ),
        (Finished::TimedOut, _) => anyhow::bail!("the loader probe hung:\n{}", tail(&log, 40)),
    }
}
