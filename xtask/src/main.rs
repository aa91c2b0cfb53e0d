//! `cargo xtask <command>`: the project's build, fixture, test, demo and bench commands.

mod bench;
mod build_plugins;
mod demo;
mod fixtures;
mod gpu;
mod llama_server;
mod process;
mod report;
mod suite_child;
mod table;
mod test;
mod test_plugins;
mod workspace;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::{path::PathBuf, process::ExitCode};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "llmlocal project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build every in-tree plugin; copy real backends to target/plugins and test plugins to
    /// target/test-plugins.
    BuildPlugins,
    /// Write the fixture models (tiny llama as HF folder and GGUF, the scripted model).
    Fixtures,
    /// Run the conformance suite against every plugin (or only --plugin with its --model).
    TestPlugins {
        /// A plugin library to test instead of the in-tree ones.
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// A model for --plugin (repeatable).
        #[arg(long = "model", requires = "plugin")]
        models: Vec<PathBuf>,
        /// A prompt that ends with EOS for every --model (makes a missing EOS a failure).
        #[arg(long, requires = "plugin")]
        eos_prompt: Option<String>,
        /// Device for --plugin's models (cpu, cuda, cuda:N, metal, auto), passed to the
        /// suite: GPU-only plugins are tested where they run.
        #[arg(long, requires = "plugin")]
        device: Option<String>,
    },
    /// Build the CLI and both backends only, and print the built-in stories260K story through each.
    Demo,
    /// fmt check, clippy, plugins, fixtures, workspace tests, plugin conformance.
    Test,
    /// Build the CUDA plugins and host binaries for the GPU machine into .gpu/ (docs/gpu.md).
    GpuBuild {
        /// A CUDA 13.0 toolkit root (with bin/nvcc); default: fetch NVIDIA's pip wheels.
        #[arg(long)]
        cuda_home: Option<PathBuf>,
        /// Leave out the candle CUDA plugin.
        #[arg(long)]
        no_candle: bool,
    },
    /// Run a benchmark; arguments after `--` go to it. `backend` (default): the bench binary
    /// against target/plugins; `server`: host/tests/server_bench.rs; `vs-llama-server`:
    /// tests/bench vs_llama_server against a llama-server built once; `router`:
    /// host/examples/router_bench.rs; `download`: host/examples/download_bench.rs.
    Bench {
        #[arg(long, value_enum, default_value_t = bench::Suite::Backend)]
        suite: bench::Suite,
        /// router / download: build the example with the release profile (what users run;
        /// the dev profile builds our crates at opt-level 1). The first build takes minutes.
        #[arg(long)]
        release: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The chain of causes, without anyhow's backtrace (RUST_BACKTRACE is often set).
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    let ws = workspace::Workspace::locate()?;
    match command {
        Command::BuildPlugins => build_plugins::command(&ws),
        Command::Fixtures => fixtures::command(&ws).map(|_| ()),
        Command::TestPlugins {
            plugin: Some(plugin),
            models,
            eos_prompt,
            device,
        } => test_plugins::third_party(
            &ws,
            &plugin,
            &models,
            eos_prompt.as_deref(),
            device.as_deref(),
        ),
        Command::TestPlugins { plugin: None, .. } => test_plugins::in_tree(&ws),
        Command::Demo => demo::command(&ws),
        Command::Test => test::command(&ws),
        Command::Bench {
            suite,
            release,
            args,
        } => bench::command(&ws, suite, release, &args),
        Command::GpuBuild {
            cuda_home,
            no_candle,
        } => gpu::command(
            &ws,
            &gpu::Options {
                cuda_home,
                no_candle,
            },
        ),
    }
}
