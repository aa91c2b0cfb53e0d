//! `cargo xtask bench [--suite backend|server|router|download] [-- args]`: the backend
//! benchmark binary against target/plugins, the server measurements (host/tests/
//! server_bench.rs), or the router / download benchmark examples of the host.

use crate::{
    build_plugins, fixtures,
    process::{cargo, run},
    workspace::Workspace,
};
use anyhow::{bail, Result};

/// Which benchmark `cargo xtask bench` runs.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Suite {
    /// llama.cpp direct vs through the plugin host, parallel generations, `--compare candle`.
    Backend,
    /// `llmlocal serve`: HTTP vs engine API (TTFT, tokens/s), aggregate tokens/s at 1, 4 and
    /// 16 streams, cached model load time, idle RSS, per-token cost of SSE.
    Server,
    /// Latency the router adds (p50/p99) and requests/s, router and node in their own processes.
    Router,
    /// Download throughput from a loopback hub vs curl, and peak memory.
    Download,
}

pub fn command(ws: &Workspace, suite: Suite, release: bool, args: &[String]) -> Result<()> {
    let example = match suite {
        Suite::Backend | Suite::Server if release => {
            bail!("--release applies to the router and download suites")
        }
        Suite::Backend => return backend(ws, args),
        Suite::Server => return server(ws, args),
        Suite::Router => "router_bench",
        Suite::Download => "download_bench",
    };
    let mut command = cargo(&ws.root);
    command.args(["run", "-p", "llmlocal", "--example", example]);
    if release {
        command.arg("--release");
    }
    command.arg("--").args(args);
    run(&mut command, "the benchmark")
}

/// The server measurements are tests (they share the end-to-end tests' support code); one
/// at a time, so they do not time each other.
fn server(ws: &Workspace, args: &[String]) -> Result<()> {
    let built = build_plugins::build(ws)?;
    if !built.failed.is_empty() {
        bail!("plugins did not build: {}", built.failed.join(", "));
    }
    fixtures::command(ws)?;
    let mut command = cargo(&ws.root);
    command
        .args(["test", "-p", "llmlocal", "--test", "server_bench", "--"])
        .args(["--nocapture", "--test-threads", "1"])
        .args(args);
    run(&mut command, "the server benchmark")
}

fn backend(ws: &Workspace, args: &[String]) -> Result<()> {
    if !ws.has_bin("llmlocal-bench", "bench") {
        bail!(
            "the bench binary does not exist yet: package llmlocal-bench (tests/bench) has no \
             `bench` bin target"
        );
    }
    let built = build_plugins::build(ws)?;
    if !built.failed.is_empty() {
        println!(
            "note: these plugins did not build and are not benchmarked: {}",
            built.failed.join(", ")
        );
    }
    fixtures::command(ws)?;
    let mut command = cargo(&ws.root);
    command
        .args([
            "run",
            "-p",
            "llmlocal-bench",
            "--bin",
            "bench",
            "--",
            "--plugin-dir",
        ])
        .arg(ws.plugins_dir())
        .args(args);
    run(&mut command, "the benchmark")
}
