//! `cargo xtask bench [-- args]`: the benchmark binary against target/plugins.

use crate::{
    build_plugins, fixtures,
    process::{cargo, run},
    workspace::Workspace,
};
use anyhow::{bail, Result};

pub fn command(ws: &Workspace, args: &[String]) -> Result<()> {
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
