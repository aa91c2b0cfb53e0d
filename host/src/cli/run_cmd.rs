//! `llmlocal run`: load one model file with a backend and stream a completion to stdout.

use crate::{
    config::Config,
    models::{ModelManager, ModelSource, ModelSpec},
    plugins::{
        FinishReason, GenerateRequest, GenerationStats, LoadRequest, ModelFormat, PluginRegistry,
        RunningGeneration, Sampling, Step,
    },
};
use anyhow::Context as _;
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Instant,
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The backend to use (default: the config's default_backend, else the first loaded
    /// backend that reads the model's format).
    #[arg(long)]
    pub backend: Option<String>,
    /// A model file (.gguf), a Hugging Face model folder, a preset name (`stories`,
    /// `qwen3:0.6b`; `llmlocal presets` lists them) or a Hugging Face spec (`org/repo:Q4_K_M`,
    /// downloaded into the cache first).
    #[arg(value_name = "MODEL")]
    pub model_path: PathBuf,
    /// The prompt; without one, an interactive chat reads messages from stdin.
    pub prompt: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    /// 0 = greedy.
    #[arg(long, default_value_t = Sampling::default().temperature)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A LoRA adapter (gh:OWNER/REPO@TAG/ASSET, hf:ORG/REPO[@REV][/FILE] or a local GGUF file
    /// or PEFT folder), optionally followed by :SCALE; repeat for several.
    #[arg(long = "adapter", value_name = "SPEC[:SCALE]")]
    pub adapters: Vec<String>,
}

pub fn run(args: &RunArgs, config: &Config, dirs: &[PathBuf]) -> anyhow::Result<()> {
    let Some(prompt) = args.prompt.as_deref() else {
        return super::chat::run(args, config, dirs);
    };
    let (model_path, preferred) = resolve_model(&args.model_path)?;
    let registry = PluginRegistry::load(dirs);
    let backend = registry.choose(
        args.backend.as_deref(),
        config.default_backend.as_deref().or(preferred.as_deref()),
        format_of(&model_path),
    )?;
    let path = model_path.to_string_lossy().into_owned();
    let started = Instant::now();
    let mut load = LoadRequest::new(path);
    let adapters = &args.adapters;
    load.adapters =
        crate::adapters::cli::load_requests_blocking(adapters, &model_path, backend.name())?.into();
    let model = backend.load_model(load)?;
    tracing::info!(
        "loaded {} with `{}` in {:.0} ms",
        model_path.display(),
        backend.name(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    let prompt_tokens = model.tokenize(prompt, true, false)?;
    let request = GenerateRequest {
        sampling: Sampling {
            temperature: args.temperature,
            seed: Some(args.seed).into(),
            ..Sampling::default()
        },
        ..GenerateRequest::greedy(prompt_tokens, args.max_tokens)
    };
    let mut generation = model.generate(request)?;
    let reason = stream(&mut generation)?;
    print_stats(&generation.stats()?, reason);
    Ok(())
}

/// The file to load for MODEL and the backend its preset prefers: an existing path as it is;
/// otherwise a model spec (a preset, or a Hugging Face repo fetched into the cache).
fn resolve_model(model: &Path) -> anyhow::Result<(PathBuf, Option<String>)> {
    if model.exists() {
        return Ok((model.to_path_buf(), None));
    }
    let text = model.to_string_lossy();
    let spec = ModelSpec::parse(&text)?;
    if let ModelSource::Local(path) = &spec.source {
        return Ok((path.clone(), spec.backend.clone()));
    }
    let manager = ModelManager::from_env()?;
    if !manager.is_cached(&spec) {
        eprintln!("fetching {text} from the hub (`llmlocal pull {text}` shows progress)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let resolved = runtime.block_on(manager.resolve(&spec))?;
    Ok((resolved.path, spec.backend.clone()))
}

/// Prints each piece of text as it comes; returns why the generation ended.
fn stream(generation: &mut RunningGeneration) -> anyhow::Result<FinishReason> {
    let mut stdout = std::io::stdout().lock();
    loop {
        match generation.next()? {
            Step::Token(token) => {
                stdout.write_all(token.text.as_bytes())?;
                stdout.flush().context("cannot write to stdout")?;
            }
            Step::Finished(end) => {
                writeln!(stdout, "{}", end.text)?;
                return Ok(end.reason);
            }
        }
    }
}

fn print_stats(stats: &GenerationStats, reason: FinishReason) {
    eprintln!(
        "[{} prompt tokens, {} generated, {:.1} tok/s, time to first token {:.1} ms, finished: {}]",
        stats.prompt_tokens,
        stats.generated_tokens,
        stats.tokens_per_second,
        stats.time_to_first_token_ms,
        reason.as_str()
    );
}

/// The format a path looks like, to pick a backend that reads it.
fn format_of(path: &Path) -> Option<ModelFormat> {
    if path.is_dir() {
        return path
            .join("config.json")
            .is_file()
            .then_some(ModelFormat::Safetensors);
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("gguf") => Some(ModelFormat::Gguf),
        Some(ext) if ext.eq_ignore_ascii_case("safetensors") => Some(ModelFormat::Safetensors),
        _ => None,
    }
}
