//! Backend comparison (issue #4): prompt-processing and generation tokens/s of another backend
//! plugin (candle) against the llama-cpp plugin, both through the llmlocal host, on the same
//! model file and thread count, as ratios.
//!
//! Threads: llama.cpp takes `LoadRequest::threads`; candle ignores it and runs its CPU ops on
//! rayon's global pool (`RAYON_NUM_THREADS`) and its quantized matmuls on its own pool
//! (`CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`); the `bench` binary sets both to the same
//! count before anything starts.

use crate::{plugin, Setup, Speed};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The backend every other one is compared with.
pub const BASELINE: &str = "llama-cpp";

/// One model file measured on both backends.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What the file stores, e.g. `F32` or `Q8_0`.
    pub label: String,
    pub setup: Setup,
    pub baseline: Speed,
    pub backend: Speed,
    /// backend / baseline.
    pub prompt_ratio: f64,
    pub gen_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub baseline: String,
    pub backend: String,
    /// `RAYON_NUM_THREADS` and `CANDLE_NUM_THREADS` as the process saw them (candle's threads).
    pub rayon_num_threads: Option<String>,
    pub candle_num_threads: Option<String>,
    pub rows: Vec<Row>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Measures one model on the baseline and on `backend`, loading one plugin at a time so the
/// two never compete for the cores. The prompt is tokenized by the baseline and reused.
fn measure(dir: &Path, backend: &str, label: &str, setup: &Setup) -> anyhow::Result<Row> {
    eprintln!("{label}: {BASELINE} ...");
    let model = plugin::load(dir, BASELINE, setup, 1)?;
    let prompt = plugin::prompt_tokens(&model, setup.prompt_tokens)?;
    let baseline = plugin::run(&model, setup, &prompt)?;
    drop(model);
    eprintln!("{label}: {backend} ...");
    let model = plugin::load(dir, backend, setup, 1)?;
    let other = plugin::run(&model, setup, &prompt)?;
    drop(model);
    Ok(Row {
        label: label.into(),
        setup: setup.clone(),
        prompt_ratio: ratio(other.prompt_tps, baseline.prompt_tps),
        gen_ratio: ratio(other.gen_tps, baseline.gen_tps),
        baseline,
        backend: other,
    })
}

/// Runs the comparison on every `(label, model file)`; `setup.model` is replaced by each file.
pub fn run(
    dir: &Path,
    backend: &str,
    setup: &Setup,
    models: &[(String, PathBuf)],
) -> anyhow::Result<Comparison> {
    let rows = models
        .iter()
        .map(|(label, path)| {
            let setup = Setup {
                model: path.clone(),
                ..setup.clone()
            };
            measure(dir, backend, label, &setup)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Comparison {
        baseline: BASELINE.into(),
        backend: backend.into(),
        rayon_num_threads: std::env::var("RAYON_NUM_THREADS").ok(),
        candle_num_threads: std::env::var("CANDLE_NUM_THREADS").ok(),
        rows,
    })
}

impl Comparison {
    pub fn table(&self) -> String {
        let mut out = String::new();
        if let Some(first) = self.rows.first() {
            let s = &first.setup;
            out += &format!(
                "threads {} (RAYON_NUM_THREADS={}, CANDLE_NUM_THREADS={}) | batch {} | prompt {} tokens | generate {} \
                 tokens | best of {}\n\n",
                s.threads,
                self.rayon_num_threads.as_deref().unwrap_or("unset"),
                self.candle_num_threads.as_deref().unwrap_or("unset"),
                s.batch_size,
                s.prompt_tokens,
                s.gen_tokens,
                s.repeat
            );
        }
        let (b, o) = (&self.baseline, &self.backend);
        out += &format!(
            "{:<6} {:>14} {:>14} {:>14} {:>14} {:>10} {:>10}\n",
            "model",
            format!("{b} pp"),
            format!("{o} pp"),
            format!("{b} tg"),
            format!("{o} tg"),
            "pp ratio",
            "tg ratio"
        );
        for r in &self.rows {
            out += &format!(
                "{:<6} {:>14.1} {:>14.1} {:>14.1} {:>14.1} {:>10.3} {:>10.3}\n",
                r.label,
                r.baseline.prompt_tps,
                r.backend.prompt_tps,
                r.baseline.gen_tps,
                r.backend.gen_tps,
                r.prompt_ratio,
                r.gen_ratio
            );
        }
        out += &format!("\npp/tg = prompt/generation tokens per second; ratio = {o} / {b}\n");
        for r in &self.rows {
            out += &format!("{}: {}\n", r.label, r.setup.model.display());
        }
        out
    }
}
