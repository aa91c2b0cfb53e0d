//! `cargo xtask fixtures`: the fixture models (llmlocal-fixtures) and the scripted model.

use crate::workspace::Workspace;
use anyhow::{Context, Result};
use std::{fs, path::PathBuf};

/// The first line of a scripted model file (the scripted test plugin's format).
const SCRIPTED_HEADER: &str = "llmlocal-scripted-model v1";
/// What the scripted model replays: ASCII, punctuation and multi-byte UTF-8, well under
/// the conformance suite's 256-token end-of-generation window (one token per byte).
const SCRIPT: &str = "Once upon a time, a scripted model said: \"héllo wörld ✓\". The end.";

/// Where `cargo xtask fixtures` put things.
pub struct Fixtures {
    pub paths: llmlocal_fixtures::FixturePaths,
    pub scripted_model: PathBuf,
}

pub fn command(_ws: &Workspace) -> Result<Fixtures> {
    let paths = llmlocal_fixtures::ensure_default().context("writing the fixture models")?;
    let scripted_model = paths.dir.join("scripted-model.txt");
    let content = format!("{SCRIPTED_HEADER}\n{SCRIPT}");
    if fs::read_to_string(&scripted_model).ok().as_deref() != Some(content.as_str()) {
        fs::write(&scripted_model, content)
            .with_context(|| format!("writing {}", scripted_model.display()))?;
    }
    println!("fixtures in {}:", paths.dir.display());
    for path in [
        &paths.hf_dir,
        &paths.gguf_f32,
        &paths.gguf_q8_0,
        &scripted_model,
    ] {
        println!("  {}", path.display());
    }
    Ok(Fixtures {
        paths,
        scripted_model,
    })
}
