//! Process isolation (issue #25): the same backend plugin in this process and in a worker
//! process (`llmlocal plugin-worker`), same model file and settings, interleaved rounds
//! (in-process, process, in-process, ...) so that drift on a shared machine hits both alike.
//! Reports the medians of generation tokens/s and time to first token as the caller sees
//! them (from `generate` to the first token received), and the idle RSS of a worker.

use crate::{median, plugin, Setup};
use anyhow::{anyhow, bail, Context as _};
use llmlocal::plugins::{
    IsolationPolicy, LoadedBackend, LoadedModel, PluginRegistry, Step, WorkerSettings,
};
use serde::Serialize;
use std::{path::Path, sync::Arc, time::Instant};

#[derive(Debug, Clone, Serialize)]
pub struct Mode {
    /// Median over the rounds.
    pub gen_tps: f64,
    pub ttft_ms: f64,
    pub gen_runs: Vec<f64>,
    pub ttft_runs: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IsolationReport {
    pub backend: String,
    pub setup: Setup,
    pub in_process: Mode,
    pub process: Mode,
    /// process / in-process generation tokens/s (target >= 0.97).
    pub gen_ratio: f64,
    /// process - in-process time to first token, ms (target <= 1).
    pub ttft_delta_ms: f64,
    /// VmRSS of the worker with the backend constructed and no model loaded, KiB.
    pub worker_idle_rss_kib: Option<u64>,
}

impl IsolationReport {
    pub fn table(&self) -> String {
        let row =
            |name: &str, m: &Mode| format!("{name:<12} {:>10.1} {:>10.2}\n", m.gen_tps, m.ttft_ms);
        let rss = self
            .worker_idle_rss_kib
            .map_or("unknown".to_string(), |kib| {
                format!("{:.1} MiB", kib as f64 / 1024.0)
            });
        format!(
            "{} ({} threads, prompt {} tokens, {} generated, {} interleaved rounds, medians)\n\
             {:<12} {:>10} {:>10}\n{}{}gen ratio process/in-process: {:.3}\n\
             time to first token, process - in-process: {:+.2} ms\nworker idle RSS: {rss}\n",
            self.backend,
            self.setup.threads,
            self.setup.prompt_tokens,
            self.setup.gen_tokens,
            self.setup.repeat,
            "mode",
            "gen tok/s",
            "TTFT ms",
            row("in-process", &self.in_process),
            row("process", &self.process),
            self.gen_ratio,
            self.ttft_delta_ms,
        )
    }
}

/// Loads `backend` from `dir` both ways and measures them in interleaved rounds.
pub fn run(dir: &Path, backend: &str, setup: &Setup) -> anyhow::Result<IsolationReport> {
    let library = plugin::library_path(dir, backend);
    if !library.is_file() {
        bail!(
            "plugin library {} not found (pass --plugin-dir)",
            library.display()
        );
    }
    let local = PluginRegistry::load_files(std::slice::from_ref(&library));
    let policy = IsolationPolicy::process(WorkerSettings::default());
    let isolated = PluginRegistry::load_files_with(std::slice::from_ref(&library), &policy);
    let worker_backend = pick(&isolated, backend)?;
    let worker_idle_rss_kib = worker_backend.worker_pid().and_then(rss_kib);
    let models = [
        load(&*pick(&local, backend)?, setup)?,
        load(&worker_backend, setup)?,
    ];
    let prompt = plugin::prompt_tokens(&models[0], setup.prompt_tokens)?;
    let mut runs: [(Vec<f64>, Vec<f64>); 2] = Default::default();
    for round in 0..setup.repeat {
        for (i, model) in models.iter().enumerate() {
            eprintln!(
                "round {}/{}: {} ...",
                round + 1,
                setup.repeat,
                ["in-process", "process"][i]
            );
            let (tps, ttft) = one_generation(model, &prompt, setup.gen_tokens)?;
            runs[i].0.push(tps);
            runs[i].1.push(ttft);
        }
    }
    let [local_runs, process_runs] = runs;
    let in_process = mode(local_runs);
    let process = mode(process_runs);
    Ok(IsolationReport {
        backend: backend.to_string(),
        setup: setup.clone(),
        gen_ratio: if in_process.gen_tps > 0.0 {
            process.gen_tps / in_process.gen_tps
        } else {
            0.0
        },
        ttft_delta_ms: process.ttft_ms - in_process.ttft_ms,
        in_process,
        process,
        worker_idle_rss_kib,
    })
}

fn pick(registry: &PluginRegistry, backend: &str) -> anyhow::Result<Arc<LoadedBackend>> {
    registry
        .backend(backend)
        .cloned()
        .map_err(|e| anyhow!("the {backend} plugin did not load: {e}"))
}

fn load(backend: &LoadedBackend, setup: &Setup) -> anyhow::Result<LoadedModel> {
    let mut request = llmlocal::plugins::LoadRequest::new(setup.model.to_string_lossy());
    request.device = "cpu".into();
    request.threads = setup.threads;
    request.batch_size = setup.batch_size;
    request.context_length = setup.context_length;
    request.parallel = 1;
    backend
        .load_model(request)
        .with_context(|| format!("load {}", setup.model.display()))
}

/// One greedy generation without prefix reuse: (generation tokens/s after the first token,
/// ms from `generate` to the first token received).
fn one_generation(
    model: &LoadedModel,
    prompt: &[u32],
    tokens: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut request = plugin::request(prompt, tokens);
    // Every round pays the full prompt: the same work in both modes.
    request.cache_prompt = false;
    let started = Instant::now();
    let mut generation = model.generate(request)?;
    let mut times = Vec::with_capacity(tokens);
    while let Step::Token(_) = generation.next()? {
        times.push(Instant::now());
    }
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        bail!("the plugin generated no tokens");
    };
    let decode = last.duration_since(*first).as_secs_f64();
    let tps = if decode > 0.0 {
        (times.len() - 1) as f64 / decode
    } else {
        0.0
    };
    Ok((tps, first.duration_since(started).as_secs_f64() * 1000.0))
}

fn mode((gen_runs, ttft_runs): (Vec<f64>, Vec<f64>)) -> Mode {
    Mode {
        gen_tps: median(&gen_runs).unwrap_or(0.0),
        ttft_ms: median(&ttft_runs).unwrap_or(0.0),
        gen_runs,
        ttft_runs,
    }
}

/// VmRSS of `pid` from /proc (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
