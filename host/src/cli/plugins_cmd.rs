//! `llmlocal plugins`: every library found, loaded or refused with the reason.

use crate::plugins::{Manifest, PluginEntry, PluginRegistry, PluginStatus};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct PluginsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
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
    formats: Vec<&'static str>,
    capabilities: Option<Capabilities>,
}

#[derive(Debug, Serialize)]
struct Capabilities {
    lora: bool,
    lora_per_generation: bool,
    embeddings: bool,
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
        plugins: registry.entries().iter().map(row).collect(),
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
        formats: m.map_or_else(Vec::new, |m| m.formats.iter().map(|f| f.as_str()).collect()),
        capabilities: m.map(|m| Capabilities {
            lora: m.capabilities.lora,
            lora_per_generation: m.capabilities.lora_per_generation,
            embeddings: m.capabilities.embeddings,
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
    let mut widths = HEADERS.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    out.push_str(&line(&HEADERS.map(str::to_string), &widths));
    for row in &cells {
        out.push_str(&line(row, &widths));
    }
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
        list(row.formats.iter().map(|f| f.to_string()).collect()),
        row.capabilities
            .as_ref()
            .map_or_else(|| "-".to_string(), capabilities),
        file_name(&row.path),
    ]
}

fn capabilities(c: &Capabilities) -> String {
    let mut parts = Vec::new();
    if c.lora {
        parts.push("lora".to_string());
    }
    if c.lora_per_generation {
        parts.push("lora-per-generation".to_string());
    }
    if c.embeddings {
        parts.push("embeddings".to_string());
    }
    parts.push(format!("parallel={}", c.parallel_generations));
    parts.join(",")
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn line(cells: &[String; 8], widths: &[usize; 8]) -> String {
    let mut out = String::new();
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if i + 1 == cells.len() {
            out.push_str(cell);
        } else {
            out.push_str(&format!("{cell:<width$}  "));
        }
    }
    out.push('\n');
    out
}
