//! The suite against the test plugins: the scripted plugin passes every check; the plugin
//! whose generations panic fails the generation checks with the panic in the message, and
//! the suite (this process) survives it.
//!
//! The plugins are found in `$LLMLOCAL_TEST_PLUGIN_DIR` (set by `cargo xtask test`; a
//! missing library is then a failure) or else in target/debug (a missing library skips with
//! a note: build it with `cargo xtask build-plugins`).

use llmlocal::plugins::{IsolationPolicy, WorkerSettings};
use llmlocal_conformance::{run_suite, run_suite_isolated, ModelUnderTest, Status, SuiteReport};
use std::{
    env::consts::{DLL_PREFIX, DLL_SUFFIX},
    path::{Path, PathBuf},
};

const SCRIPT: &str = "Once upon a time, a scripted model said: \"héllo wörld ✓\". The end.";

fn library(backend: &str) -> Option<PathBuf> {
    let file = format!("{DLL_PREFIX}llmlocal_backend_{backend}{DLL_SUFFIX}");
    if let Some(dir) = std::env::var_os("LLMLOCAL_TEST_PLUGIN_DIR") {
        let path = PathBuf::from(dir).join(&file);
        assert!(
            path.exists(),
            "{} is missing from $LLMLOCAL_TEST_PLUGIN_DIR",
            path.display()
        );
        return Some(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/debug")
        .join(&file);
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIP: {} not built (run `cargo xtask build-plugins`)",
            path.display()
        );
        None
    }
}

fn scripted_model(dir: &Path) -> PathBuf {
    let path = dir.join("scripted-model.txt");
    std::fs::write(&path, format!("llmlocal-scripted-model v1\n{SCRIPT}"))
        .expect("write the scripted model");
    path
}

fn check<'a>(report: &'a SuiteReport, name: &str) -> &'a llmlocal_conformance::CheckResult {
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check named {name:?} in\n{}", report.to_text()))
}

/// The `llmlocal` binary that runs plugin workers: `$LLMLOCAL_WORKER_EXE`, else the one
/// cargo built next to this test (target/<profile>/llmlocal; `cargo test --workspace` builds
/// it). Missing: a failure under `$LLMLOCAL_TEST_PLUGIN_DIR` (the full suite), else a skip.
fn worker_settings() -> Option<WorkerSettings> {
    let settings = WorkerSettings::default();
    if settings.executable.is_file() {
        return Some(settings);
    }
    assert!(
        std::env::var_os("LLMLOCAL_TEST_PLUGIN_DIR").is_none(),
        "the llmlocal binary for plugin workers is missing ({}): build it or set \
         $LLMLOCAL_WORKER_EXE",
        settings.executable.display()
    );
    eprintln!("SKIP: no llmlocal binary to run plugin workers (cargo build -p llmlocal)");
    None
}

#[test]
fn scripted_plugin_passes_every_check_through_a_worker_process() {
    let Some(plugin) = library("scripted") else {
        return;
    };
    let Some(settings) = worker_settings() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let model = ModelUnderTest {
        path: scripted_model(dir.path()),
        eos_prompt: Some("Once upon a time".into()),
        device: "cpu".into(),
    };
    let limit = std::time::Duration::from_secs(120);
    let policy = IsolationPolicy::process(settings);
    let report = run_suite_isolated(&plugin, &[model], limit, &policy);
    println!("{}", report.to_text());
    let counts = report.counts();
    assert_eq!(counts.failed, 0, "{}", report.to_text());
    assert!(counts.passed >= 20, "{}", report.to_text());
}

#[test]
fn scripted_plugin_passes_every_check() {
    let Some(plugin) = library("scripted") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let model = ModelUnderTest {
        path: scripted_model(dir.path()),
        eos_prompt: Some("Once upon a time".into()),
        device: "cpu".into(),
    };
    let report = run_suite(&plugin, &[model]);
    println!("{}", report.to_text());
    let counts = report.counts();
    assert_eq!(counts.failed, 0, "{}", report.to_text());
    // scripted declares no capability: exactly the checks of capabilities are skipped.
    let skipped: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.status == llmlocal_conformance::Status::Skip)
        .map(|c| c.message.as_str())
        .collect();
    // 5 capability checks + 4 prefix-cache checks + 5 embeddings checks.
    assert_eq!(skipped.len(), 14, "{}", report.to_text());
    assert!(
        skipped.iter().all(|m| m.contains("does not declare")),
        "{skipped:?}"
    );
    // 2 plugin checks (loads, manifest) + 19 per model ran and passed.
    assert_eq!(counts.passed, 21, "{}", report.to_text());
    assert_eq!(report.backend.as_deref(), Some("scripted"));
}

#[test]
fn panicking_generation_fails_its_generation_checks_and_the_suite_survives() {
    let Some(plugin) = library("panicking_generation") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let report = run_suite(&plugin, &[ModelUnderTest::new(scripted_model(dir.path()))]);
    println!("{}", report.to_text());
    assert_eq!(check(&report, "loads").status, Status::Pass);
    assert_eq!(check(&report, "model loads").status, Status::Pass);
    for name in ["greedy deterministic", "max_tokens"] {
        let c = check(&report, name);
        assert_eq!(c.status, Status::Fail, "{name}: {}", c.message);
        assert!(c.message.contains("panicked"), "{name}: {}", c.message);
    }
}

#[test]
fn a_missing_library_is_a_failed_loads_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir
        .path()
        .join(format!("{DLL_PREFIX}llmlocal_backend_absent{DLL_SUFFIX}"));
    let report = run_suite(&path, &[ModelUnderTest::new(dir.path().join("m.gguf"))]);
    assert_eq!(report.checks.len(), 1, "{}", report.to_text());
    assert_eq!(report.checks[0].name, "loads");
    assert_eq!(report.checks[0].status, Status::Fail);
    assert!(!report.passed());
}

#[test]
fn a_garbage_library_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir
        .path()
        .join(format!("{DLL_PREFIX}llmlocal_backend_garbage{DLL_SUFFIX}"));
    std::fs::write(&path, b"this is not a shared library").expect("write garbage");
    let report = run_suite(&path, &[]);
    let loads = check(&report, "loads");
    assert_eq!(loads.status, Status::Fail);
    assert!(loads.message.contains("refused"), "{}", loads.message);
}
