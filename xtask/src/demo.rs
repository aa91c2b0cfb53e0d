//! `cargo xtask demo`: a short generation through the `llmlocal` CLI with the llama.cpp
//! plugin (fixture model, then stories260K when present); the scripted plugin stands in,
//! loudly, while the llama.cpp plugin does not build.

use crate::{
    build_plugins, fixtures,
    process::{cargo, run},
    workspace::{find, Workspace},
};
use anyhow::{Context, Result};
use std::{fs, path::Path, process::Command};

/// The fixture model continues "w" with "xyz{|}~" and then ends.
const FIXTURE_PROMPT: &str = "uvw";
const STORY_PROMPT: &str = "Once upon a time";

pub fn command(ws: &Workspace) -> Result<()> {
    let built = build_plugins::build(ws)?;
    let fx = fixtures::command(ws)?;
    run(
        cargo(&ws.root).args(["build", "-p", "llmlocal", "--bin", "llmlocal"]),
        "building the llmlocal CLI",
    )?;
    let host = ws
        .debug_dir()
        .join(format!("llmlocal{}", std::env::consts::EXE_SUFFIX));
    if find(&built.real, "llama_cpp").is_some() {
        let dir = ws.plugins_dir();
        generate(&host, &dir, "llama-cpp", &fx.paths.gguf_f32, FIXTURE_PROMPT)?;
        let stories = ws
            .shared_models()
            .join("stories260K")
            .join("stories260K.gguf");
        if stories.exists() {
            generate(&host, &dir, "llama-cpp", &stories, STORY_PROMPT)?;
        } else {
            println!(
                "SKIP: {} not found (set LLMLOCAL_SHARED_MODELS)",
                stories.display()
            );
        }
        return Ok(());
    }
    let scripted = find(&built.test, "scripted")
        .context("neither the llama-cpp plugin nor the scripted test plugin was built")?;
    println!();
    println!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    println!("!!  THE LLAMA-CPP PLUGIN IS NOT BUILT: this demo uses the SCRIPTED      !!");
    println!("!!  TEST PLUGIN instead, which replays a text file. It is NOT a model.  !!");
    println!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    println!();
    // Only the scripted plugin: the other test plugins are broken on purpose.
    let dir = ws.target.join("demo-plugins");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = scripted
        .file_name()
        .context("plugin path has no file name")?;
    fs::copy(scripted, dir.join(name)).context("copying the scripted plugin")?;
    generate(&host, &dir, "scripted", &fx.scripted_model, STORY_PROMPT)
}

fn generate(
    host: &Path,
    plugin_dir: &Path,
    backend: &str,
    model: &Path,
    prompt: &str,
) -> Result<()> {
    let mut command = Command::new(host);
    command
        .arg("--plugin-dir")
        .arg(plugin_dir)
        .args(["run", "--backend", backend])
        .arg(model)
        .arg(prompt);
    run(&mut command, &format!("`llmlocal run` with {backend}"))
}
