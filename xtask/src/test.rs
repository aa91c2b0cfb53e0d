//! `cargo xtask test`: every check the project has, in order, stopping at the first failure.

use crate::{
    build_plugins, fixtures,
    process::{cargo, run},
    test_plugins,
    workspace::Workspace,
};
use anyhow::{Context, Result};

pub fn command(ws: &Workspace) -> Result<()> {
    step("format", || {
        run(
            cargo(&ws.root).args(["fmt", "--all", "--", "--check"]),
            "cargo fmt --check",
        )
    })?;
    step("clippy", || {
        run(
            cargo(&ws.root).args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
            "cargo clippy",
        )
    })?;
    step("build-plugins", || build_plugins::command(ws))?;
    step("fixtures", || fixtures::command(ws).map(|_| ()))?;
    step("workspace tests", || workspace_tests(ws))?;
    step("test-plugins", || test_plugins::in_tree(ws))?;
    println!("==> all steps passed");
    Ok(())
}

fn step(name: &str, body: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("==> {name}");
    body().with_context(|| format!("step `{name}` failed; later steps were not run"))
}

/// nextest when installed, else cargo test; the tests find the built plugins through env.
fn workspace_tests(ws: &Workspace) -> Result<()> {
    let nextest = cargo(&ws.root)
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    let mut command = cargo(&ws.root);
    if nextest {
        // Every failure in one run: a CI log that stops at the first hides the others.
        command.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        command.args(["test", "--workspace", "--no-fail-fast"]);
    }
    command
        .env("LLMLOCAL_TEST_PLUGIN_DIR", ws.test_plugins_dir())
        .env("LLMLOCAL_PLUGIN_DIR_BUILT", ws.plugins_dir())
        // llama.cpp computes with OpenMP, whose threads spin at every barrier while they wait.
        // Tests run side by side, each with llama.cpp threads for all cores, so on a 2-core
        // machine a spinning thread holds the core its partner needs: the reload tests of
        // plugins/llama-cpp took 75-130 s each instead of 0.2-1 s, near nextest's 300 s limit.
        // Waiting threads that sleep (`passive`) keep them at ~1 s side by side. A caller's own
        // setting wins.
        .env(
            "OMP_WAIT_POLICY",
            std::env::var_os("OMP_WAIT_POLICY").unwrap_or_else(|| "passive".into()),
        );
    run(&mut command, "the workspace tests")
}
