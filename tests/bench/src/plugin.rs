//! The same work through the llmlocal host: a backend plugin library (llama-cpp, candle, ...)
//! loaded at run time, every call crossing the stable ABI.

use crate::{best, Setup, Speed};
use anyhow::{anyhow, bail, Context as _};
use llmlocal::plugins::{LoadedModel, PluginRegistry, RunningGeneration};
use llmlocal_plugin_api::{GenerateRequest, LoadRequest, Step};
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The library file of the plugin of `backend` in `dir` (backend `llama-cpp` is
/// `libllmlocal_backend_llama_cpp.so` on Linux).
pub fn library_path(dir: &Path, backend: &str) -> PathBuf {
    dir.join(format!(
        "{}llmlocal_backend_{}{}",
        std::env::consts::DLL_PREFIX,
        backend.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    ))
}

/// Loads the plugin of `backend` from the folder `dir` and the model with `parallel` sequences
/// on the CPU.
pub fn load(
    dir: &Path,
    backend: &str,
    setup: &Setup,
    parallel: u32,
) -> anyhow::Result<LoadedModel> {
    load_on(dir, backend, setup, parallel, "cpu")
}

/// [`load`] on `device` (`cpu`, `cuda`, `cuda:N`, ...), all layers offloaded to it.
pub fn load_on(
    dir: &Path,
    backend: &str,
    setup: &Setup,
    parallel: u32,
    device: &str,
) -> anyhow::Result<LoadedModel> {
    let plugin = library_path(dir, backend);
    if !plugin.is_file() {
        bail!(
            "plugin library {} not found: build it with `cargo build -p llmlocal-backend-{backend}` \
             or pass --plugin-dir",
            plugin.display()
        );
    }
    let registry = PluginRegistry::load_files(std::slice::from_ref(&plugin));
    let handle = registry
        .backend(backend)
        .map_err(|e| anyhow!("the {backend} plugin did not load: {e}"))?;
    let mut request = LoadRequest::new(setup.model.to_string_lossy());
    request.device = device.into();
    request.gpu_layers = -1;
    request.threads = setup.threads;
    request.batch_size = setup.batch_size;
    request.context_length = setup.context_length;
    request.parallel = parallel;
    handle
        .load_model(request)
        .with_context(|| format!("load {} through the plugin", setup.model.display()))
}

pub fn request(prompt: &[u32], max_tokens: usize) -> GenerateRequest {
    let mut request = GenerateRequest::greedy(
        prompt.to_vec(),
        u32::try_from(max_tokens).unwrap_or(u32::MAX),
    );
    request.ignore_eos = true;
    // Every run pays its whole prompt: with prefix reuse (on by default) a repeated prompt
    // would skip the prompt pass and pp would time one token.
    request.cache_prompt = false;
    request
}

/// Receipt time of every token until the end.
pub fn token_times(generation: &mut RunningGeneration) -> anyhow::Result<Vec<Instant>> {
    let mut times = Vec::new();
    loop {
        match generation.next()? {
            Step::Token(_) => times.push(Instant::now()),
            Step::Finished(_) => return Ok(times),
        }
    }
}

/// A prompt of exactly `n` tokens made with the model's own tokenizer: BOS, then a story
/// repeated as needed.
pub fn prompt_tokens(model: &LoadedModel, n: usize) -> anyhow::Result<Vec<u32>> {
    let text = "Once upon a time, there was a little girl named Lily. She loved to play \
                outside in the park with her friends and her big red ball. ";
    let mut ids = model.tokenize("", true, false)?;
    let story = model.tokenize(text, false, false)?;
    if story.is_empty() {
        bail!("the tokenizer produced no tokens for the prompt text");
    }
    while ids.len() < n {
        ids.extend_from_slice(&story);
    }
    ids.truncate(n);
    Ok(ids)
}

/// The prompt pass of one generation of `prompt` that stops after its first token, on the
/// plugin's own stats clock (generation start to first token): the clock behind the
/// server's `timings.prompt_ms`.
pub fn prompt_ms(model: &LoadedModel, prompt: &[u32]) -> anyhow::Result<f64> {
    let mut generation = model.generate(request(prompt, 1))?;
    if token_times(&mut generation)?.is_empty() {
        bail!("the plugin generated no tokens");
    }
    Ok(generation.stats()?.time_to_first_token_ms)
}

/// How many generations the plugin of `backend` in `dir` runs at once per model when the load
/// request does not say: what `llmlocal serve` loads models with unless `--parallel` is given.
pub fn default_parallel(dir: &Path, backend: &str) -> anyhow::Result<u32> {
    let registry = PluginRegistry::load_files(&[library_path(dir, backend)]);
    let handle = registry
        .backend(backend)
        .map_err(|e| anyhow!("the {backend} plugin did not load: {e}"))?;
    Ok(handle.manifest.capabilities.parallel_generations.max(1))
}

/// What one run measures, as llama-bench does: pp from a prompt-only run, tg from the
/// generation of a run of prompt + generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Prompt,
    Generation,
}

impl Kind {
    /// Tokens a run of this kind asks for: one for a prompt-only run; for a generation run
    /// the first token (which ends the prompt) and `gen_tokens` timed ones after it.
    pub fn max_tokens(self, gen_tokens: usize) -> usize {
        match self {
            Kind::Prompt => 1,
            Kind::Generation => gen_tokens + 1,
        }
    }
}

/// Unmeasured prompt passes before the measured ones: after a generation, the next prompt
/// passes ran up to 2x slower on the H100 (the first one or two of them).
pub const WARM_UP: Duration = Duration::from_millis(200);

/// The runs of one path as llama-bench makes them: prompt passes for [`WARM_UP`], `n`
/// prompt-only runs back to back, one unmeasured run of prompt + generation, then `n` more
/// (only their generation counts). `run(kind, record)` makes one run and keeps it when
/// `record`. scripts/gpu/direct_bench.c times its runs the same way.
pub fn schedule(
    n: usize,
    mut run: impl FnMut(Kind, bool) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let warm_until = Instant::now() + WARM_UP;
    while Instant::now() < warm_until {
        run(Kind::Prompt, false)?;
    }
    for _ in 0..n {
        run(Kind::Prompt, true)?;
    }
    run(Kind::Generation, false)?;
    for _ in 0..n {
        run(Kind::Generation, true)?;
    }
    Ok(())
}

/// Prompt processing (time to the first token) and single-sequence generation speed from
/// `setup.repeat` runs of each kind, made as [`schedule`] says.
pub fn run(model: &LoadedModel, setup: &Setup, prompt: &[u32]) -> anyhow::Result<Speed> {
    let mut runs = Runs::default();
    schedule(setup.repeat, |kind, record| {
        let tps = speed(model, setup, prompt, kind)?;
        if record {
            runs.push(kind, tps);
        }
        Ok(())
    })?;
    Ok(runs.speed())
}

/// Tokens/s of the prompt-only runs and of the generation runs of one path.
#[derive(Debug, Default)]
pub struct Runs {
    pp: Vec<f64>,
    tg: Vec<f64>,
}

impl Runs {
    pub fn push(&mut self, kind: Kind, tps: f64) {
        match kind {
            Kind::Prompt => self.pp.push(tps),
            Kind::Generation => self.tg.push(tps),
        }
    }

    pub fn speed(self) -> Speed {
        Speed::of(self.pp, self.tg)
    }
}

/// Tokens/s of one run of `kind`.
pub fn speed(
    model: &LoadedModel,
    setup: &Setup,
    prompt: &[u32],
    kind: Kind,
) -> anyhow::Result<f64> {
    match kind {
        Kind::Prompt => prompt_speed(model, setup, prompt),
        Kind::Generation => generation_speed(model, setup, prompt),
    }
}

/// Prompt tokens/s of one prompt-only run: from asking for the generation to its one token.
fn prompt_speed(model: &LoadedModel, setup: &Setup, prompt: &[u32]) -> anyhow::Result<f64> {
    let max_tokens = Kind::Prompt.max_tokens(setup.gen_tokens);
    let started = Instant::now();
    let mut generation = model.generate(request(prompt, max_tokens))?;
    let Some(first) = token_times(&mut generation)?.first().copied() else {
        bail!("the plugin generated no tokens");
    };
    Ok(prompt.len() as f64 / (first - started).as_secs_f64())
}

/// Generated tokens/s of one run of `setup.gen_tokens` tokens after the first.
fn generation_speed(model: &LoadedModel, setup: &Setup, prompt: &[u32]) -> anyhow::Result<f64> {
    let max_tokens = Kind::Generation.max_tokens(setup.gen_tokens);
    let mut generation = model.generate(request(prompt, max_tokens))?;
    let times = token_times(&mut generation)?;
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        bail!("the plugin generated no tokens");
    };
    Ok((times.len() - 1) as f64 / (*last - *first).as_secs_f64())
}

/// Aggregate generation speed of `n` generations started together, each consumed on its own
/// thread: tokens received after every generation has its first token (the prompts are
/// done), over the time from then to the last token.
pub fn aggregate(
    model: &LoadedModel,
    setup: &Setup,
    prompt: &[u32],
    n: usize,
) -> anyhow::Result<f64> {
    let mut results = Vec::new();
    for _ in 0..setup.repeat {
        let mut generations = (0..n)
            .map(|_| model.generate(request(prompt, setup.gen_tokens + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        let all: Vec<Vec<Instant>> = std::thread::scope(|s| {
            let handles: Vec<_> = generations
                .iter_mut()
                .map(|g| s.spawn(move || token_times(g)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow!("a consumer thread panicked"))?
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        let start = all.iter().filter_map(|t| t.first()).max().copied();
        let end = all.iter().filter_map(|t| t.last()).max().copied();
        let (Some(start), Some(end)) = (start, end) else {
            bail!("the plugin generated no tokens");
        };
        let tokens: usize = all
            .iter()
            .map(|t| t.iter().filter(|&&x| x > start).count())
            .sum();
        results.push(tokens as f64 / (end - start).as_secs_f64());
    }
    Ok(best(&results))
}
