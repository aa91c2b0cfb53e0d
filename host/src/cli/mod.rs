//! The `llmlocal` command line.

mod adapter_cmd;
mod chat;
mod logging;
mod models_cmd;
mod plugins_cmd;
mod presets_cmd;
mod router_cmd;
mod run_cmd;
mod serve_cmd;
pub(crate) mod table;

use crate::{config::Config, plugins};
use clap::{Parser, Subcommand};
use std::{path::PathBuf, process::ExitCode};

#[derive(Debug, Parser)]
#[command(
    name = "llmlocal",
    version,
    about = "Local LLM inference with pluggable backends"
)]
pub struct Cli {
    /// Config file (default: $LLMLOCAL_CONFIG, else <config dir>/llmlocal/config.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// An extra plugin directory, searched before the configured ones (repeatable).
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    pub plugin_dirs: Vec<PathBuf>,
    /// More log output on stderr (-v info, -vv debug, -vvv trace); $LLMLOCAL_LOG or
    /// $RUST_LOG take a full filter.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Run every plugin in this process or each in a worker process of its own (a crash
    /// then costs only that plugin's requests). Default: in-process for the plugins in
    /// <exe dir>/plugins, process for plugins found anywhere else; config
    /// `[plugins.isolation]` sets it per backend.
    #[arg(long, global = true, value_enum, value_name = "MODE")]
    pub isolation: Option<plugins::Isolation>,
    /// Run this backend in a worker process (repeatable); wins over --isolation and config.
    #[arg(long = "isolate", global = true, value_name = "NAME")]
    pub isolate: Vec<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every backend plugin library found, loaded or refused (with the reason).
    Plugins(plugins_cmd::PluginsArgs),
    /// Load a model file with a backend and stream a completion of PROMPT to stdout; without
    /// PROMPT, chat: each stdin line is a message (/clear resets, /bye ends).
    Run(run_cmd::RunArgs),
    /// Serve the OpenAI- and Ollama-compatible HTTP API.
    // Boxed: its many flags make it far larger than the other variants.
    Serve(Box<serve_cmd::ServeArgs>),
    /// Download a model from the Hugging Face hub into the shared cache (with progress).
    Pull(models_cmd::PullArgs),
    /// List the model presets: short names (`stories`, `qwen3:0.6b`) that `pull`, `run` and
    /// `serve --model` accept.
    Presets(presets_cmd::PresetsArgs),
    /// List the models in the Hugging Face cache.
    List,
    /// Delete a model repo from the cache.
    Rm(models_cmd::RmArgs),
    /// Fetch, list and delete LoRA adapters (GitHub Releases, Hugging Face, local).
    #[command(subcommand)]
    Adapter(adapter_cmd::AdapterCommand),
    /// Put many `llmlocal serve --join` nodes behind one OpenAI/Ollama endpoint.
    Router(router_cmd::RouterArgs),
    /// Internal: serve one plugin library to the host over fd 0 (process isolation).
    #[command(hide = true)]
    PluginWorker(WorkerArgs),
}

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The plugin library.
    library: PathBuf,
    /// Address-space limit (RLIMIT_AS) in bytes.
    #[arg(long)]
    max_memory: Option<u64>,
    /// The host's log level (off, error, warn, info, debug, trace).
    #[arg(long, default_value = "warn")]
    log_level: String,
}

/// Parses the arguments and runs the command; errors are printed to stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::PluginWorker(args) = &cli.command {
        // Its own logging (to the host, over stderr) and no config: the host decided.
        plugins::run_worker(&args.library, args.max_memory, &args.log_level);
    }
    logging::init(cli.verbose);
    crate::plugins::install_fatal_signal_report();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    let dirs = plugin_search_dirs(&cli, &config);
    plugins::set_isolation_policy(isolation_policy(&cli, &config));
    match cli.command {
        Command::Plugins(args) => match &args.action {
            Some(plugins_cmd::PluginsAction::Check(check)) => plugins_cmd::check(check),
            None => plugins_cmd::run(&args, &dirs),
        },
        Command::Run(args) => run_cmd::run(&args, &config, &dirs),
        Command::Serve(args) => serve_cmd::run(*args, &config, &dirs),
        Command::Pull(args) => models_cmd::pull(&args),
        Command::Presets(args) => presets_cmd::run(&args),
        Command::List => models_cmd::list(),
        Command::Rm(args) => models_cmd::rm(&args),
        Command::Adapter(command) => adapter_cmd::run(&command),
        Command::Router(args) => router_cmd::run(args, &config),
        Command::PluginWorker(_) => unreachable!("handled in main"),
    }
}

/// `--isolate` first, then config per backend, then `--isolation` for all, then by location.
fn isolation_policy(cli: &Cli, config: &Config) -> plugins::IsolationPolicy {
    let from_cli = cli
        .isolate
        .iter()
        .map(|name| (name.clone(), plugins::Isolation::Process));
    let from_config = config
        .plugins
        .isolation
        .iter()
        .map(|(name, isolation)| (name.clone(), *isolation));
    let worker = &config.plugins.worker;
    let defaults = plugins::WorkerSettings::default();
    plugins::IsolationPolicy {
        per_plugin: from_cli.chain(from_config).collect(),
        all: cli.isolation,
        trusted_dir: std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("plugins"))),
        worker: plugins::WorkerSettings {
            max_memory_bytes: worker.max_memory_mb.map(|mb| mb.saturating_mul(1 << 20)),
            max_threads: worker.max_threads,
            step_timeout: worker
                .step_timeout_secs
                .map_or(defaults.step_timeout, std::time::Duration::from_secs),
            load_timeout: worker
                .load_timeout_secs
                .map_or(defaults.load_timeout, std::time::Duration::from_secs),
            call_timeout: worker
                .call_timeout_secs
                .map_or(defaults.call_timeout, std::time::Duration::from_secs),
            ..defaults
        },
    }
}

/// `--plugin-dir` directories first, then the configured ones, within the standard order.
fn plugin_search_dirs(cli: &Cli, config: &Config) -> Vec<PathBuf> {
    let extra: Vec<PathBuf> = cli
        .plugin_dirs
        .iter()
        .chain(&config.plugins.dirs)
        .cloned()
        .collect();
    for dir in &cli.plugin_dirs {
        if !dir.is_dir() {
            tracing::warn!("plugin directory {} does not exist", dir.display());
        }
    }
    plugins::search_dirs(&extra)
}
