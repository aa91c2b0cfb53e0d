//! Process isolation (issue #25): the same backend plugin loaded in-process and in a worker
//! process (`llmlocal plugin-worker`), same model file and settings. Each mode runs in a
//! fresh child process of the bench per round ([`crate::child`]), rounds interleaved, so
//! that neither mode's threads run while the other is measured and drift on a shared
//! machine hits both alike. Reports medians and spreads of generation tokens/s and time to
//! first token as the caller sees them (from `generate` to the first token received), the
//! per-round ratio and delta, and the idle RSS of a worker.

use crate::{
    child::{self, Job, Measured, Outcome, Spec, Spread},
    plugin, Setup,
};
use anyhow::{anyhow, bail, Context as _};
use llmlocal::plugins::{
    IsolationPolicy, LoadedBackend, LoadedModel, PluginRegistry, WorkerSettings,
};
use serde::Serialize;
use std::{path::Path, sync::Arc};

#[derive(Debug, Clone, Serialize)]
pub struct IsolationReport {
    pub backend: String,
    pub setup: Setup,
    /// Recorded runs of each kind per child (its median is the round's value).
    pub runs_per_child: usize,
    pub in_process: Measured,
    pub process: Measured,
    /// process / in-process generation tokens/s, per round (target >= 0.97).
    pub gen_ratio: Spread,
    /// process - in-process time to first token, ms, per round (target <= 1).
    pub ttft_delta_ms: Spread,
    /// VmRSS of a worker with the backend constructed and no model loaded, KiB (median).
    pub worker_idle_rss_kib: Option<u64>,
}

impl IsolationReport {
    pub fn table(&self) -> String {
        let row = |name: &str, m: &Measured| {
            format!(
                "{name:<12} {:>26} {:>26} {:>22}\n",
                m.tg.show(1),
                m.pp.show(1),
                m.ttft_ms.show(2)
            )
        };
        let rss = self
            .worker_idle_rss_kib
            .map_or("unknown".to_string(), |kib| {
                format!("{:.1} MiB", kib as f64 / 1024.0)
            });
        format!(
            "{} ({} threads, prompt {} tokens, {} generated (counted: {}..={}), {} interleaved \
             rounds, each mode in a fresh process, {} runs per process; median [min–max] over \
             rounds)\n{:<12} {:>26} {:>26} {:>22}\n{}{}\
             gen ratio process/in-process, per round: {}\n\
             time to first token, process - in-process, per round: {} ms\n\
             worker idle RSS: {rss}\n",
            self.backend,
            self.setup.threads,
            self.setup.prompt_tokens,
            self.setup.gen_tokens,
            self.process.tg_tokens.0.min(self.in_process.tg_tokens.0),
            self.process.tg_tokens.1.max(self.in_process.tg_tokens.1),
            self.setup.repeat,
            self.runs_per_child,
            "mode",
            "gen tok/s",
            "prompt tok/s",
            "TTFT ms",
            row("in-process", &self.in_process),
            row("process", &self.process),
            self.gen_ratio.show(3),
            self.ttft_delta_ms.show(2),
        )
    }
}

/// Measures `backend` from `dir` both ways, `setup.repeat` interleaved rounds, each mode in
/// a child (`exe --child`).
pub fn run(
    exe: &Path,
    dir: &Path,
    backend: &str,
    setup: &Setup,
    runs_per_child: usize,
) -> anyhow::Result<IsolationReport> {
    let library = plugin::library_path(dir, backend);
    if !library.is_file() {
        bail!(
            "plugin library {} not found (pass --plugin-dir)",
            library.display()
        );
    }
    let spec = |job| Spec {
        job,
        setup: setup.clone(),
        plugin_dir: dir.to_path_buf(),
        backend: backend.to_string(),
        runs: runs_per_child,
        prompt: None,
    };
    let jobs = [Job::Plugin, Job::Worker];
    let [local, worker]: [Vec<Outcome>; 2] = child::interleaved(exe, &jobs, setup.repeat, spec)?
        .try_into()
        .map_err(|_| anyhow!("expected the outcomes of two modes"))?;
    let rss: Vec<f64> = worker
        .iter()
        .filter_map(|o| o.worker_idle_rss_kib.map(|kib| kib as f64))
        .collect();
    let in_process = Measured::of(local);
    let process = Measured::of(worker);
    Ok(IsolationReport {
        backend: backend.to_string(),
        setup: setup.clone(),
        runs_per_child,
        gen_ratio: in_process.ratio_to(&process, |o| &o.tg_runs),
        ttft_delta_ms: in_process.delta_to(&process, |o| &o.ttft_runs),
        worker_idle_rss_kib: (!rss.is_empty()).then(|| Spread::of(&rss).median as u64),
        in_process,
        process,
    })
}

/// The child's side of [`Job::Plugin`] and [`Job::Worker`]: loads the backend in this
/// process or in a worker, then measures it ([`plugin::measure`]).
pub fn measure(spec: &Spec) -> anyhow::Result<Outcome> {
    let library = plugin::library_path(&spec.plugin_dir, &spec.backend);
    let policy = match spec.job {
        Job::Worker => IsolationPolicy::process(WorkerSettings::default()),
        _ => IsolationPolicy::in_process(),
    };
    let registry = PluginRegistry::load_files_with(std::slice::from_ref(&library), &policy);
    let backend = pick(&registry, &spec.backend)?;
    let worker_idle_rss_kib = backend.worker_pid().and_then(rss_kib);
    let model = load(&backend, &spec.setup)?;
    let prompt = plugin::prompt_tokens(&model, spec.setup.prompt_tokens)?;
    let outcome = plugin::measure(&model, &spec.setup, &prompt, spec.runs)?;
    Ok(Outcome {
        worker_idle_rss_kib,
        ..outcome
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

/// VmRSS of `pid` from /proc (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
