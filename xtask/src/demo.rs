//! `cargo xtask demo`: builds only what the demo runs (the `llmlocal` binary and the two real
//! backends) and prints the greedy story of stories260K — the real tiny model built into the
//! binary (`models/stories260K`) — through each backend, then says how to get a real model.
//! No network, no files beside the checkout.

use crate::{
    process::{cargo, run},
    workspace::Workspace,
};
use anyhow::{bail, Context, Result};
use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

const PROMPT: &str = "Once upon a time";
/// Plenty for the story's first paragraphs; stories260K was trained on 512-token windows.
const MAX_TOKENS: &str = "160";

/// (cargo package, library name, backend name) of the backends the demo runs.
const BACKENDS: [(&str, &str, &str); 2] = [
    (
        "llmlocal-backend-llama-cpp",
        "llmlocal_backend_llama_cpp",
        "llama-cpp",
    ),
    (
        "llmlocal-backend-candle",
        "llmlocal_backend_candle",
        "candle",
    ),
];

pub fn command(ws: &Workspace) -> Result<()> {
    let started = Instant::now();
    let host = build_host(ws)?;
    let plugins = build_backends(ws)?;
    println!(
        "\nbuilt in {:.0} s; stories260K (Karpathy, MIT, 1.1 MB, built into llmlocal), greedy:",
        started.elapsed().as_secs_f64()
    );
    for backend in &plugins.backends {
        tell_story(&host, &plugins.dir, backend)?;
    }
    print_next_steps(&host);
    println!("demo finished in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn build_host(ws: &Workspace) -> Result<PathBuf> {
    run(
        cargo(&ws.root).args(["build", "-p", "llmlocal", "--bin", "llmlocal"]),
        "building the llmlocal CLI",
    )?;
    Ok(ws
        .debug_dir()
        .join(format!("llmlocal{}", std::env::consts::EXE_SUFFIX)))
}

/// The backends that built, copied alone into target/demo-plugins (the demo loads nothing else).
struct DemoPlugins {
    dir: PathBuf,
    backends: Vec<&'static str>,
}

fn build_backends(ws: &Workspace) -> Result<DemoPlugins> {
    let dir = ws.target.join("demo-plugins");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut backends = Vec::new();
    for (package, lib, backend) in BACKENDS {
        let file = format!(
            "{}{lib}{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        );
        let copy = dir.join(&file);
        // A stale copy must not stand in for a backend that no longer builds.
        let _ = fs::remove_file(&copy);
        if let Err(err) = run(
            cargo(&ws.root).args(["build", "-p", package]),
            &format!("building the {backend} backend"),
        ) {
            println!("SKIPPING the {backend} backend: {err:#}");
            continue;
        }
        let built = ws.debug_dir().join(&file);
        fs::copy(&built, &copy)
            .with_context(|| format!("copying {} to {}", built.display(), copy.display()))?;
        backends.push(backend);
    }
    if backends.is_empty() {
        bail!(
            "no backend built; llama.cpp needs `apt-get install -y --no-install-recommends cmake libclang-dev` (see README)"
        );
    }
    Ok(DemoPlugins { dir, backends })
}

fn tell_story(host: &Path, plugin_dir: &Path, backend: &str) -> Result<()> {
    print!("\n--- {backend} ---\n{PROMPT}");
    std::io::stdout().flush()?;
    let status = Command::new(host)
        .arg("--plugin-dir")
        .arg(plugin_dir)
        .args(["run", "--backend", backend, "stories", PROMPT])
        .args(["--temperature", "0", "--max-tokens", MAX_TOKENS])
        .status()
        .with_context(|| format!("starting {}", host.display()))?;
    if !status.success() {
        bail!("`llmlocal run stories` with {backend} failed ({status})");
    }
    Ok(())
}

fn print_next_steps(host: &Path) {
    let host = host.display();
    println!(
        "\nNext: a real chat model (downloads once into the Hugging Face cache):
  {host} presets                      # the curated short names
  {host} pull qwen3:0.6b              # Qwen3 0.6B, 639 MB
  {host} run qwen3:0.6b               # chat in the terminal (/bye ends)
  {host} serve --model stories --model qwen3:0.6b
                                      # OpenAI/Ollama API on http://127.0.0.1:11435
"
    );
}
