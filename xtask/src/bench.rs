//! `cargo xtask bench [--suite backend|router|download] [-- args]`: the backend benchmark
//! binary against target/plugins, or the router / download benchmark examples of the host.

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
    /// Latency the router adds (p50/p99) and requests/s, router and node in their own processes.
    Router,
    /// Download throughput from a loopback hub vs curl, and peak memory.
    Download,
}

pub fn command(ws: &Workspace, suite: Suite, args: &[String]) -> Result<()> {
    let example = match suite {
        Suite::Backend => return backend(ws, args),
        Suite::Router => "router_bench",
        Suite::Download => "download_bench",
    };
    let mut command = cargo(&ws.root);
    command
        .args(["run", "-p", "llmlocal", "--example", example, "--"])
        .args(args);
    run(&mut command, "the benchmark")
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
