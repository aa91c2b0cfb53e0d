//! `cargo xtask bench [--suite backend|server|vs-llama-server|router|download] [-- args]`:
//! the backend benchmark binary against target/plugins, the server measurements (host/tests/
//! server_bench.rs), `llmlocal serve` against llama-server (tests/bench vs_llama_server), or
//! the router / download benchmark examples of the host.

use crate::{
    build_plugins, fixtures, llama_server,
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
    /// `llmlocal serve` vs llama-server (built once from a pinned llama.cpp), same GGUF and
    /// threads, interleaved: single-stream and 4-stream tokens/s, chat turn-2 TTFT.
    VsLlamaServer,
    /// Latency the router adds (p50/p99) and requests/s, router and node in their own processes.
    Router,
    /// Download throughput from a loopback hub vs curl, and peak memory.
    Download,
}

pub fn command(ws: &Workspace, suite: Suite, release: bool, args: &[String]) -> Result<()> {
    let example = match suite {
        Suite::Backend | Suite::Server | Suite::VsLlamaServer if release => {
            bail!("--release applies to the router and download suites")
        }
        Suite::Backend => return backend(ws, args),
        Suite::Server => return server(ws, args),
        Suite::VsLlamaServer => return vs_llama_server(ws, args),
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

/// The bench model `cargo xtask bench` writes (a random 85M-parameter F16 llama).
const BENCH_MODEL: &str = "random-llama-85m-f16.gguf";

/// Both servers on the same model: llama-server built once, our binary and plugins fresh.
fn vs_llama_server(ws: &Workspace, args: &[String]) -> Result<()> {
    let llama_server = llama_server::ensure(ws)?;
    let built = build_plugins::build(ws)?;
    if built.failed.iter().any(|p| p.contains("llama")) {
        bail!("the llama-cpp plugin did not build");
    }
    let mut build = cargo(&ws.root);
    build.args([
        "build",
        "-p",
        "llmlocal",
        "--bin",
        "llmlocal",
        "-p",
        "llmlocal-bench",
        "--bin",
        "vs_llama_server",
    ]);
    run(&mut build, "building llmlocal and the benchmark")?;
    let mut command = std::process::Command::new(ws.debug_dir().join("vs_llama_server"));
    command
        .arg("--llmlocal")
        .arg(ws.debug_dir().join("llmlocal"))
        .arg("--plugin-dir")
        .arg(ws.plugins_dir())
        .arg("--llama-server")
        .arg(&llama_server);
    if !args.iter().any(|a| a == "--model") {
        let model = ws.target.join("bench").join(BENCH_MODEL);
        if !model.is_file() {
            bail!(
                "{} does not exist: run `cargo xtask bench` once (it writes it), or pass \
                 `-- --model PATH`",
                model.display()
            );
        }
        command.arg("--model").arg(model);
    }
    command.args(args);
    run(&mut command, "the llmlocal vs llama-server benchmark")
}
