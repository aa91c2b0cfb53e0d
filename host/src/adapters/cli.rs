//! `llmlocal adapter pull|list|rm` as plain functions (clap wiring lives with the CLI).

use std::io::Write;
use std::path::{Path, PathBuf};

use llmlocal_plugin_api::AdapterRequest;

use super::base::BaseModel;
use super::error::{io_err, Result};
use super::manager::{check, AdapterConfig, AdapterFormat, AdapterManager};
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

/// `llmlocal adapter convert PEFT --base MODEL --out FILE`: writes the GGUF LoRA conversion
/// of a PEFT folder (checked against the base model first).
pub fn convert(peft: &Path, base: &Path, out_file: &Path, out: &mut dyn Write) -> Result<()> {
    let base = BaseModel::from_path(base)?;
    check(peft, &base)?;
    super::convert::convert_to(peft, &base, out_file)?;
    writeln!(out, "{} -> {}", peft.display(), out_file.display()).map_err(out_err)?;
    Ok(())
}

/// `llmlocal run MODEL --adapter SPEC[:scale]...`: fetches each adapter, checks it against the
/// model at `model_path` and returns it in a format `backend` reads (converting PEFT to GGUF
/// for llama.cpp), ready for `LoadRequest::adapters`.
pub async fn load_requests(
    manager: &AdapterManager,
    specs: &[String],
    model_path: &Path,
    backend: &str,
) -> Result<Vec<AdapterRequest>> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let base = BaseModel::from_path(model_path)?;
    let mut requests = Vec::with_capacity(specs.len());
    for text in specs {
        let spec = AdapterSpec::parse(text)?;
        let resolved = manager
            .resolve(&spec, &base, AdapterFormat::read_by(backend))
            .await?;
        requests.push(resolved.request());
    }
    Ok(requests)
}

/// [`load_requests`] for synchronous callers, with the adapter manager of the environment
/// (`LLMLOCAL_ADAPTERS_DIR`, `GITHUB_TOKEN`, ...); no runtime is started without adapters.
pub fn load_requests_blocking(
    specs: &[String],
    model_path: &Path,
    backend: &str,
) -> Result<Vec<AdapterRequest>> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let manager = AdapterManager::new(AdapterConfig::from_env())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("<async runtime>"))?;
    runtime.block_on(load_requests(&manager, specs, model_path, backend))
}
