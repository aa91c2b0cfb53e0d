//! `llmlocal plugins`: every library found, loaded or refused with the reason;
//! `llmlocal plugins check`: the conformance suite on one plugin library.

use crate::plugins::{Manifest, PluginEntry, PluginRegistry, PluginStatus};
use anyhow::{bail, Context as _};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct PluginsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: Option<PluginsAction>,
}

#[derive(Debug, clap::Subcommand)]
pub enum PluginsAction {
    /// Run the conformance suite (docs/contract.md) on a plugin library and models: the same
    /// checks `cargo xtask test-plugins` runs on the in-tree plugins.
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The plugin library (libllmlocal_backend_<name>.so / .dylib / .dll).
    pub library: PathBuf,
    /// A model the plugin reads (GGUF file, Hugging Face folder, ...). Repeatable.
    #[arg(long = "model")]
    pub models: Vec<PathBuf>,
    /// A prompt that ends with EOS under greedy decoding for every model given.
    #[arg(long)]
    pub eos_prompt: Option<String>,
    /// cpu, cuda, cuda:N, metal or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Seconds one check may take before it fails as hung.
    #[arg(long, default_value_t = 120)]
    pub check_timeout: u64,
    /// Skipped checks fail too.
    #[arg(long)]
    pub strict: bool,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The suite's executable names, looked for next to this executable, then on PATH.
const SUITE_EXES: [&str; 2] = ["llmlocal-conformance", "conformance"];

/// Runs the conformance binary (the suite lives in its own crate, which depends on this
/// one); its exit status becomes ours.
pub fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let exe = suite_exe().context(
        "the conformance suite is a separate binary and was not found next to llmlocal or on \
         PATH: install it with `cargo install --git https://github.com/llmlocal/llmlocal \
         llmlocal-conformance` (in a checkout: `cargo build -p llmlocal-conformance`, it lands \
         in target/debug/conformance)",
    )?;
    let mut command = std::process::Command::new(&exe);
    command.arg("--plugin").arg(&args.library);
    for model in &args.models {
        command.arg("--model").arg(model);
    }
    if let Some(prompt) = &args.eos_prompt {
        command.args(["--eos-prompt", prompt]);
    }
    command.args(["--device", &args.device]);
    command.args(["--check-timeout", &args.check_timeout.to_string()]);
    if args.strict {
        command.arg("--strict");
    }
    if let Some(json) = &args.json {
        command.arg("--json").arg(json);
    }
    let status = command
        .status()
        .with_context(|| format!("starting {}", exe.display()))?;
    if !status.success() {
        bail!("{} does not conform ({status})", args.library.display());
    }
    Ok(())
}

fn suite_exe() -> Option<PathBuf> {
    let names = SUITE_EXES.map(|n| format!("{n}{}", std::env::consts::EXE_SUFFIX));
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    beside
        .into_iter()
        .chain(path_dirs)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|candidate| candidate.is_file())
}

/// One row, as printed in the table and in JSON.
#[derive(Debug, Serialize)]
struct Row {
    path: PathBuf,
    status: &'static str,
    reason: Option<String>,
    name: Option<String>,
    version: Option<String>,
    api_version: Option<String>,
    description: Option<String>,
    devices: Vec<String>,
    formats: Vec<String>,
    capabilities: Option<Capabilities>,
}

#[derive(Debug, Serialize)]
struct Capabilities {
    /// Capability names as declared (an open set, see the plugin-api `capability` module).
    names: Vec<String>,
    parallel_generations: u32,
}

#[derive(Debug, Serialize)]
struct Listing {
    search_dirs: Vec<PathBuf>,
    plugins: Vec<Row>,
}

pub fn run(args: &PluginsArgs, dirs: &[PathBuf]) -> anyhow::Result<()> {
    let registry = PluginRegistry::load(dirs);
    let listing = Listing {
        search_dirs: dirs.to_vec(),
        plugins: registry.entries_now().iter().map(row).collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
    } else {
        print!("{}", table(&listing));
    }
    Ok(())
}

fn row(entry: &PluginEntry) -> Row {
    let (status, reason) = match &entry.status {
        PluginStatus::Loaded => ("loaded", None),
        PluginStatus::Refused { reason } => ("refused", Some(reason.clone())),
    };
    let m: Option<&Manifest> = entry.manifest.as_ref();
    let text = |f: fn(&Manifest) -> &str| m.map(|m| f(m).to_string());
    Row {
        path: entry.path.clone(),
        status,
        reason,
        name: text(|m| m.name.as_str()),
        version: text(|m| m.version.as_str()),
        api_version: text(|m| m.api_version.as_str()),
        description: text(|m| m.description.as_str()),
        devices: m.map_or_else(Vec::new, |m| {
            m.devices.iter().map(|d| d.to_string()).collect()
        }),
        formats: m.map_or_else(Vec::new, |m| {
            m.formats.iter().map(|f| f.to_string()).collect()
        }),
        capabilities: m.map(|m| Capabilities {
            names: m.capabilities.names.iter().map(|n| n.to_string()).collect(),
            parallel_generations: m.capabilities.parallel_generations,
        }),
    }
}

const HEADERS: [&str; 8] = [
    "STATUS",
    "BACKEND",
    "VERSION",
    "API",
    "DEVICES",
    "FORMATS",
    "CAPABILITIES",
    "FILE",
];

fn table(listing: &Listing) -> String {
    let dirs = listing
        .search_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>();
    let mut out = format!(
        "searched: {}\n",
        if dirs.is_empty() {
            "no existing plugin directory".to_string()
        } else {
            dirs.join(", ")
        }
    );
    if listing.plugins.is_empty() {
        out.push_str("no plugin libraries found (named like libllmlocal_backend_<name>.so)\n");
        return out;
    }
    let cells: Vec<[String; 8]> = listing.plugins.iter().map(cells).collect();
    out.push_str(&super::table::aligned(HEADERS, &cells));
    let refused: Vec<&Row> = listing
        .plugins
        .iter()
        .filter(|r| r.reason.is_some())
        .collect();
    if !refused.is_empty() {
        out.push_str("\nrefused:\n");
        for row in refused {
            let reason = row.reason.as_deref().unwrap_or_default();
            out.push_str(&format!("  {}: {reason}\n", row.path.display()));
        }
    }
    out
}

fn cells(row: &Row) -> [String; 8] {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    [
        row.status.to_string(),
        or_dash(&row.name),
        or_dash(&row.version),
        or_dash(&row.api_version),
        list(row.devices.clone()),
        list(row.formats.clone()),
        row.capabilities
            .as_ref()
            .map_or_else(|| "-".to_string(), capabilities),
        file_name(&row.path),
    ]
}

fn capabilities(c: &Capabilities) -> String {
    let mut parts = c.names.clone();
    parts.push(format!("parallel={}", c.parallel_generations));
    parts.join(",")
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
