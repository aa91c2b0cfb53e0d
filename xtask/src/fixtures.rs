//! `cargo xtask fixtures`: the fixture models (llmlocal-fixtures), the fixture LoRA's GGUF
//! conversion and the scripted model.

use crate::{process, workspace::Workspace};
use anyhow::{Context, Result};
use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

/// The first line of a scripted model file (the scripted test plugin's format).
const SCRIPTED_HEADER: &str = "llmlocal-scripted-model v1";
/// What the scripted model replays: ASCII, punctuation and multi-byte UTF-8, well under
/// the conformance suite's 256-token end-of-generation window (one token per byte).
const SCRIPT: &str = "Once upon a time, a scripted model said: \"héllo wörld ✓\". The end.";

/// Where `cargo xtask fixtures` put things.
pub struct Fixtures {
    pub paths: llmlocal_fixtures::FixturePaths,
    pub scripted_model: PathBuf,
    /// The qwen3 family (a second architecture for the conformance suite).
    pub qwen3: llmlocal_fixtures::FamilyPaths,
}

pub fn command(ws: &Workspace) -> Result<Fixtures> {
    let paths = llmlocal_fixtures::ensure_default().context("writing the fixture models")?;
    convert_lora(ws, &paths)?;
    let scripted_model = paths.dir.join("scripted-model.txt");
    let content = format!("{SCRIPTED_HEADER}\n{SCRIPT}");
    if fs::read_to_string(&scripted_model).ok().as_deref() != Some(content.as_str()) {
        fs::write(&scripted_model, content)
            .with_context(|| format!("writing {}", scripted_model.display()))?;
    }
    let mut families =
        llmlocal_fixtures::ensure_families(&paths.dir).context("writing the family fixtures")?;
    let qwen3 = families
        .remove(&llmlocal_fixtures::Family::Qwen3)
        .context("the qwen3 family fixture")?;
    println!("fixtures in {}:", paths.dir.display());
    for path in [
        &paths.hf_dir,
        &paths.gguf_f32,
        &paths.gguf_q8_0,
        &paths.lora_dir,
        &paths.lora_gguf,
        &scripted_model,
        &qwen3.hf_f32,
        &qwen3.gguf(llmlocal_fixtures::GgufFormat::Q8_0),
    ] {
        println!("  {}", path.display());
    }
    Ok(Fixtures {
        paths,
        scripted_model,
        qwen3,
    })
}

/// Writes `tiny-llama-lora.gguf`, the fixture LoRA converted by the host's own converter
/// (`llmlocal adapter convert`, so xtask need not link the host crate), unless it is newer
/// than the PEFT folder it comes from.
fn convert_lora(ws: &Workspace, paths: &llmlocal_fixtures::FixturePaths) -> Result<()> {
    let source = paths.lora_dir.join("adapter_model.safetensors");
    if modified(&paths.lora_gguf).is_some_and(|gguf| Some(gguf) >= modified(&source)) {
        return Ok(());
    }
    let mut command = process::cargo(&ws.root);
    command
        .args([
            "run", "--quiet", "-p", "llmlocal", "--", "adapter", "convert",
        ])
        .arg(&paths.lora_dir)
        .arg("--base")
        .arg(&paths.hf_dir)
        .arg("--out")
        .arg(&paths.lora_gguf);
    process::run(&mut command, "converting the fixture LoRA to GGUF")
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}
