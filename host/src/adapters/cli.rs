//! `llmlocal adapter pull|list|rm` as plain functions (clap wiring lives with the CLI).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::base::BaseModel;
use super::error::{io_err, Result};
use super::manager::{check, AdapterManager};
use super::spec::AdapterSpec;

fn out_err(e: std::io::Error) -> super::error::AdapterError {
    io_err("<output>")(e)
}

/// `llmlocal adapter pull SPEC [--base MODEL_PATH]`: downloads (or finds) the adapter; with a
/// base model (a GGUF file or an HF folder) also runs the compatibility check. Returns the
/// adapter's local path.
pub async fn pull(
    manager: &AdapterManager,
    spec: &str,
    base: Option<&Path>,
    out: &mut dyn Write,
) -> Result<PathBuf> {
    let spec = AdapterSpec::parse(spec)?;
    let path = manager.fetch(&spec).await?;
    writeln!(out, "{spec} -> {}", path.display()).map_err(out_err)?;
    if let Some(base) = base {
        let base = BaseModel::from_path(base)?;
        let format = check(&path, &base)?;
        writeln!(out, "compatible with {} ({format:?})", base.name).map_err(out_err)?;
    }
    Ok(path)
}

/// `llmlocal adapter list`: one line per cached adapter (name, size, path); returns the count.
pub fn list(manager: &AdapterManager, out: &mut dyn Write) -> Result<usize> {
    let cached = manager.list()?;
    if cached.is_empty() {
        writeln!(
            out,
            "no cached adapters in {}",
            manager.config().root.display()
        )
        .map_err(out_err)?;
    }
    for c in &cached {
        writeln!(out, "{}\t{}\t{}", c.name, c.size, c.path.display()).map_err(out_err)?;
    }
    Ok(cached.len())
}

/// `llmlocal adapter rm gh:OWNER/REPO[@TAG[/ASSET]]`: removes cached files; returns bytes freed.
pub fn rm(manager: &AdapterManager, what: &str, out: &mut dyn Write) -> Result<u64> {
    let freed = manager.remove(what)?;
    writeln!(out, "removed {what} ({freed} bytes)").map_err(out_err)?;
    Ok(freed)
}
