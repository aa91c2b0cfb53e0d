//! `conformance`: runs the plugin conformance suite against one plugin library, or (with
//! `--probe-dir`) reports what the loader makes of every library in a folder.
//! Exit status: 0 all checks passed (or skipped), 1 a check failed, 2 bad usage or I/O.

use anyhow::{Context, Result};
use clap::Parser;
use llmlocal::plugins::{IsolationPolicy, WorkerSettings};
use llmlocal_conformance::{
    probe_dir, probe_files, run_suite_isolated, ModelUnderTest, ProbeReport,
};
use std::{path::PathBuf, process::ExitCode, time::Duration};

#[derive(Parser, Debug)]
#[command(about = "Run the llmlocal plugin conformance suite against one backend plugin")]
struct Args {
    /// The plugin library file (libllmlocal_backend_<name>.so / .dylib / .dll).
    #[arg(
        long,
        required_unless_present_any = ["probe_dir", "probe"],
        conflicts_with_all = ["probe_dir", "probe"]
    )]
    plugin: Option<PathBuf>,
    /// A model to test: a GGUF file, a Hugging Face folder, or any file the backend reads.
    /// Repeatable.
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// A prompt known to end with EOS under greedy decoding for every --model given; a
    /// missing EOS then fails instead of being skipped.
    #[arg(long)]
    eos_prompt: Option<String>,
    /// Device to load the models on: cpu, cuda, cuda:N, metal or auto. A device the plugin
    /// cannot use fails the "model loads" check with the plugin's reason.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Instead of the suite: load every plugin in this folder and report loaded/refused.
    #[arg(long, conflicts_with = "probe")]
    probe_dir: Option<PathBuf>,
    /// Instead of the suite: load these libraries, in this order, into one registry and
    /// report loaded/refused. Repeatable.
    #[arg(long)]
    probe: Vec<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seconds one check may take; a check that takes longer fails as hung and the suite
    /// goes on with the next.
    #[arg(long, default_value_t = 120)]
    check_timeout: u64,
    /// Fail when a check is skipped too (a capability not declared, a prerequisite failed).
    #[arg(long)]
    strict: bool,
    /// Load the plugin in a worker process (`llmlocal plugin-worker`, found beside this
    /// binary or at $LLMLOCAL_WORKER_EXE) and run every check through it.
    #[arg(long)]
    process_isolation: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("conformance: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Returns whether everything passed.
fn run(args: Args) -> Result<bool> {
    let probe = match &args.probe_dir {
        Some(dir) => Some(probe_dir(dir)),
        None if !args.probe.is_empty() => Some(probe_files(&args.probe)),
        None => None,
    };
    if let Some(report) = probe {
        print_probe(&report);
        write_json(args.json.as_ref(), &report)?;
        return Ok(true);
    }
    let plugin = args.plugin.context("--plugin is required")?;
    let models: Vec<_> = args
        .models
        .iter()
        .map(|path| ModelUnderTest {
            path: path.clone(),
            eos_prompt: args.eos_prompt.clone(),
            device: args.device.clone(),
        })
        .collect();
    let policy = if args.process_isolation {
        IsolationPolicy::process(WorkerSettings::default())
    } else {
        IsolationPolicy::in_process()
    };
    let limit = Duration::from_secs(args.check_timeout);
    let report = run_suite_isolated(&plugin, &models, limit, &policy);
    print!("{}", report.to_text());
    write_json(args.json.as_ref(), &report)?;
    let skipped = report.counts().skipped;
    if args.strict && skipped > 0 {
        println!("--strict: {skipped} check(s) skipped");
        return Ok(false);
    }
    Ok(report.passed())
}

fn print_probe(report: &ProbeReport) {
    for e in &report.entries {
        let what = match &e.reason {
            None => "loaded".to_string(),
            Some(reason) => format!("refused: {reason}"),
        };
        println!("{}  {what}", e.path.display());
    }
}

fn write_json(path: Option<&PathBuf>, value: &impl serde::Serialize) -> Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
