//! Helpers for the Anthropic and OpenAI Responses tests: named Server-Sent Events, and the
//! official Python clients (pip-installed when missing) driven against a loopback server.
#![allow(dead_code)] // each test binary uses a different subset

use std::process::Command;

/// The events of an SSE body with `event:` names: `(name, JSON data)` in order. Every event
/// must have both lines, and the name must match the data's `type`, as both APIs send them.
pub fn parse_named_sse(body: &str) -> Vec<(String, serde_json::Value)> {
    let mut events = Vec::new();
    for block in body.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut lines = block.lines();
        let name = lines
            .next()
            .and_then(|l| l.strip_prefix("event: "))
            .unwrap_or_else(|| panic!("an SSE event without `event:` first: {block:?}"));
        let data = lines
            .next()
            .and_then(|l| l.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("an SSE event without `data:`: {block:?}"));
        assert!(lines.next().is_none(), "one data line per event: {block:?}");
        let value: serde_json::Value = serde_json::from_str(data).expect("SSE data is JSON");
        assert_eq!(value["type"], name, "the event name is its data's type");
        events.push((name.to_string(), value));
    }
    events
}

/// Makes sure python3 can import each `(module, pip package)`, pip-installing the missing
/// ones; fails the test with pip's output when that fails.
pub fn ensure_python_packages(packages: &[(&str, &str)]) {
    let imports = |modules: &[&str]| {
        Command::new("python3")
            .args(["-c", &format!("import {}", modules.join(", "))])
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(imports(&["sys"]), "python3 is needed for the client tests");
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(module, _)| !imports(&[module]))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return;
    }
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet"])
        .args(&missing)
        .output()
        .expect("run pip");
    let modules: Vec<&str> = packages.iter().map(|(m, _)| *m).collect();
    assert!(
        out.status.success() && imports(&modules),
        "FAIL: cannot pip-install {missing:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a Python script with `env`; returns its stdout, failing the test with both outputs
/// when it fails. Blocking: call it from `spawn_blocking` next to an in-process server.
pub fn run_python(script: &str, env: &[(&str, String)]) -> String {
    let mut command = Command::new("python3");
    command.args(["-c", script]);
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
