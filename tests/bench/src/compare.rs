//! Backend comparison (issues #4, #23): prompt-processing and generation tokens/s of another
//! backend plugin (candle) against the llama-cpp plugin, both through the llmlocal host, on
//! the same model file, prompt tokens and thread count, as ratios.
//!
//! Each backend runs in a fresh child process per round ([`crate::child`]), rounds
//! interleaved. Both in one process disturbed each other: llama.cpp's OpenMP threads stay
//! behind (spinning, pinned) while candle runs, and candle's rayon and matmul pools while
//! llama.cpp runs. The first baseline child tokenizes the prompt; every later child is given
//! those tokens, so both backends process the very same ones.
//!
//! Threads: llama.cpp takes `LoadRequest::threads`; candle ignores it and runs its CPU ops on
//! rayon's global pool (`RAYON_NUM_THREADS`) and its quantized matmuls on its own pool
//! (`CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`); every child gets both, and
//! `OMP_NUM_THREADS`, set to the thread count ([`child::thread_env`]).
//!
//! Tokens are counted from what the backend reports (its generation stats): prompt tokens it
//! processed (not reused from a cache) and tokens it generated, the latter checked against the
//! tokens received.

use crate::{
    child::{self, Job, Measured, Outcome, Spec, Spread},
    plugin::{self, Kind},
    Setup, Speed,
};
use anyhow::{anyhow, bail};
use llmlocal::plugins::LoadedModel;
use serde::Serialize;
use std::{
    path::{Path, PathBuf},
    time::Instant,
};

/// The backend every other one is compared with.
pub const BASELINE: &str = "llama-cpp";

/// One model file measured on both backends.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What the file stores, e.g. `F32` or `Q8_0`.
    pub label: String,
    pub setup: Setup,
    /// Per round, the median of that child's runs: `*_runs` are these values in round order,
    /// `*_tps` the best round, `*_tps_median` the median over rounds.
    pub baseline: Speed,
    pub backend: Speed,
    /// backend / baseline, of the medians over rounds.
    pub prompt_ratio: f64,
    pub gen_ratio: f64,
    /// backend / baseline per round (each pair ran back to back): median and min–max.
    pub prompt_ratio_spread: Spread,
    pub gen_ratio_spread: Spread,
    /// Every round of each backend: medians and min–max over rounds, token counts, the runs.
    pub baseline_rounds: Measured,
    pub backend_rounds: Measured,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub baseline: String,
    pub backend: String,
    /// The thread variables every child was started with (candle's pools; OpenMP's default).
    pub rayon_num_threads: Option<String>,
    pub candle_num_threads: Option<String>,
    pub omp_num_threads: Option<String>,
    /// Recorded runs of each kind per child (their median is the round's value).
    pub runs_per_child: usize,
    pub rows: Vec<Row>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Per-round values of one backend as a [`Speed`] (its fields, kept for the JSON's readers).
fn speed(measured: &Measured) -> Speed {
    let per_round = |f: fn(&Outcome) -> &Vec<f64>| -> Vec<f64> {
        measured
            .rounds
            .iter()
            .map(|o| Outcome::value(f(o)))
            .collect()
    };
    Speed::of(per_round(|o| &o.pp_runs), per_round(|o| &o.tg_runs))
}

/// Measures one model on the baseline and on `backend`: `setup.repeat` interleaved rounds,
/// each backend in a fresh child per round, one child at a time.
fn measure_row(
    exe: &Path,
    dir: &Path,
    backend: &str,
    label: &str,
    setup: &Setup,
    runs: usize,
) -> anyhow::Result<Row> {
    let backends = [BASELINE, backend];
    let spec = |index: usize, done: &[Vec<Outcome>]| Spec {
        job: Job::Backend,
        setup: setup.clone(),
        plugin_dir: dir.to_path_buf(),
        backend: backends[index].to_string(),
        runs,
        // The baseline runs first in round 1 and tokenizes; everyone after runs its tokens.
        prompt: done.iter().flatten().next().map(|o| o.prompt.clone()),
    };
    eprintln!("{label}: {}", setup.model.display());
    let [base, other]: [Vec<Outcome>; 2] = child::rotate(exe, 2, setup.repeat, spec)?
        .try_into()
        .map_err(|_| anyhow!("expected the outcomes of two backends"))?;
    let (base, other) = (Measured::of(base), Measured::of(other));
    let (baseline, backend) = (speed(&base), speed(&other));
    Ok(Row {
        label: label.into(),
        setup: setup.clone(),
        prompt_ratio: ratio(other.pp.median, base.pp.median),
        gen_ratio: ratio(other.tg.median, base.tg.median),
        prompt_ratio_spread: base.ratio_to(&other, |o| &o.pp_runs),
        gen_ratio_spread: base.ratio_to(&other, |o| &o.tg_runs),
        baseline,
        backend,
        baseline_rounds: base,
        backend_rounds: other,
    })
}

/// Runs the comparison on every `(label, model file)`; `setup.model` is replaced by each file.
/// `exe` is the bench binary (re-run with `--child`), `runs` the recorded runs per child.
pub fn run(
    exe: &Path,
    dir: &Path,
    backend: &str,
    setup: &Setup,
    runs: usize,
    models: &[(String, PathBuf)],
) -> anyhow::Result<Comparison> {
    for name in [BASELINE, backend] {
        let library = plugin::library_path(dir, name);
        if !library.is_file() {
            bail!(
                "plugin library {} not found: build it with `cargo build -p \
                 llmlocal-backend-{name}` or pass --plugin-dir",
                library.display()
            );
        }
    }
    let rows = models
        .iter()
        .map(|(label, path)| {
            let setup = Setup {
                model: path.clone(),
                ..setup.clone()
            };
            measure_row(exe, dir, backend, label, &setup, runs)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let [rayon, candle, omp] = child::thread_env(setup.threads).map(|(_, value)| Some(value));
    Ok(Comparison {
        baseline: BASELINE.into(),
        backend: backend.into(),
        rayon_num_threads: rayon,
        candle_num_threads: candle,
        omp_num_threads: omp,
        runs_per_child: runs,
        rows,
    })
}

/// The child's side of [`Job::Backend`]: loads `spec.backend` in this process and runs
/// `spec.prompt` (or a prompt of its own tokenizer) in [`plugin::schedule`].
pub fn measure(spec: &Spec) -> anyhow::Result<Outcome> {
    let setup = &spec.setup;
    let model = plugin::load(&spec.plugin_dir, &spec.backend, setup, 1)?;
    let prompt = match &spec.prompt {
        Some(tokens) => tokens.clone(),
        None => plugin::prompt_tokens(&model, setup.prompt_tokens)?,
    };
    let mut outcome = Outcome {
        prompt: prompt.clone(),
        ..Outcome::default()
    };
    plugin::schedule(spec.runs, |kind, record| {
        let run = counted_run(&model, setup, &prompt, kind)?;
        if record {
            run.record(kind, &mut outcome);
        }
        Ok(())
    })?;
    Ok(outcome)
}

/// One run as the caller sees it, with the token counts the backend reported.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counted {
    /// Prompt tokens the backend processed (reported minus reused from a cache).
    prompt_tokens: usize,
    /// Ms from asking for the generation to its first token.
    ttft_ms: f64,
    /// Tokens generated after the first one (reported, checked against those received).
    after_first: usize,
    /// Ms from the first token to the last.
    after_first_ms: f64,
}

impl Counted {
    fn record(&self, kind: Kind, outcome: &mut Outcome) {
        match kind {
            Kind::Prompt => {
                outcome
                    .pp_runs
                    .push(self.prompt_tokens as f64 * 1000.0 / self.ttft_ms);
                outcome.pp_tokens.push(self.prompt_tokens);
            }
            Kind::Generation => {
                outcome
                    .tg_runs
                    .push(self.after_first as f64 * 1000.0 / self.after_first_ms);
                outcome.tg_tokens.push(self.after_first);
                outcome.ttft_runs.push(self.ttft_ms);
            }
        }
    }
}

/// One run of `kind` (a prompt-only run asks for one token; a generation run for
/// `setup.gen_tokens` after the first), timed on receipt of the tokens.
fn counted_run(
    model: &LoadedModel,
    setup: &Setup,
    prompt: &[u32],
    kind: Kind,
) -> anyhow::Result<Counted> {
    let started = Instant::now();
    let mut generation =
        model.generate(plugin::request(prompt, kind.max_tokens(setup.gen_tokens)))?;
    let times = plugin::token_times(&mut generation)?;
    let stats = generation.stats()?;
    let backend = generation.backend_name().to_string();
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        bail!("the {backend} plugin generated no tokens");
    };
    count(&backend, &stats, times.len(), kind).map(|(prompt_tokens, after_first)| Counted {
        prompt_tokens,
        ttft_ms: (*first - started).as_secs_f64() * 1000.0,
        after_first,
        after_first_ms: (*last - *first).as_secs_f64() * 1000.0,
    })
}

/// (prompt tokens processed, tokens generated after the first) as the backend's stats report
/// them; an error when they cannot be the run's (a miscount would make the speed wrong).
fn count(
    backend: &str,
    stats: &llmlocal_plugin_api::GenerationStats,
    received: usize,
    kind: Kind,
) -> anyhow::Result<(usize, usize)> {
    let generated = stats.generated_tokens as usize;
    if generated != received {
        bail!(
            "the {backend} plugin reported {generated} generated tokens but returned {received}: \
             its stats cannot be used to count"
        );
    }
    let processed = stats
        .prompt_tokens
        .saturating_sub(stats.cached_prompt_tokens) as usize;
    if processed == 0 {
        bail!("the {backend} plugin reported no prompt tokens processed");
    }
    let after_first = generated.saturating_sub(1);
    if kind == Kind::Generation && after_first == 0 {
        bail!("the {backend} plugin generated only one token: nothing to time after it");
    }
    Ok((processed, after_first))
}

impl Comparison {
    pub fn table(&self) -> String {
        let mut out = String::new();
        if let Some(first) = self.rows.first() {
            let s = &first.setup;
            out += &format!(
                "threads {} (every child: RAYON_NUM_THREADS={}, CANDLE_NUM_THREADS={}, \
                 OMP_NUM_THREADS={}) | batch {} | prompt {} tokens | generate {} tokens | {} \
                 interleaved rounds, each backend in a fresh process, {} runs per process | \
                 median [min–max] over rounds\n\n",
                s.threads,
                self.rayon_num_threads.as_deref().unwrap_or("unset"),
                self.candle_num_threads.as_deref().unwrap_or("unset"),
                self.omp_num_threads.as_deref().unwrap_or("unset"),
                s.batch_size,
                s.prompt_tokens,
                s.gen_tokens,
                s.repeat,
                self.runs_per_child
            );
        }
        let (b, o) = (&self.baseline, &self.backend);
        let ratio_name = format!("{o} / {b}");
        let line = |model: &str, name: &str, pp: String, tg: String| {
            format!("{model:<6} {name:<22} {pp:>26} {tg:>26}\n")
        };
        out += &line(
            "model",
            "backend",
            "prompt tok/s".into(),
            "gen tok/s".into(),
        );
        for r in &self.rows {
            let (base, other) = (&r.baseline_rounds, &r.backend_rounds);
            out += &line(&r.label, b, base.pp.show(1), base.tg.show(1));
            out += &line(&r.label, o, other.pp.show(1), other.tg.show(1));
            let cell = |of_medians: f64, per_round: &Spread| {
                format!(
                    "{of_medians:.3} [{:.3}–{:.3}]",
                    per_round.min, per_round.max
                )
            };
            out += &line(
                &r.label,
                &ratio_name,
                cell(r.prompt_ratio, &r.prompt_ratio_spread),
                cell(r.gen_ratio, &r.gen_ratio_spread),
            );
        }
        out += "\npp/tg = prompt/generation tokens per second; ratio = of the medians, \
                [min–max] of the per-round ratios\n";
        for r in &self.rows {
            out += &format!(
                "{}: {} (tokens as the backends reported them: prompt {}, generated after the \
                 first {})\n",
                r.label,
                r.setup.model.display(),
                counts(r.baseline_rounds.pp_tokens, r.backend_rounds.pp_tokens),
                counts(r.baseline_rounds.tg_tokens, r.backend_rounds.tg_tokens),
            );
        }
        out
    }
}

/// `a..=b` over both backends' (fewest, most).
fn counts(a: (usize, usize), b: (usize, usize)) -> String {
    format!("{}..={}", a.0.min(b.0), a.1.max(b.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlocal_plugin_api::GenerationStats;

    fn stats(prompt: u32, cached: u32, generated: u32) -> GenerationStats {
        GenerationStats {
            prompt_tokens: prompt,
            cached_prompt_tokens: cached,
            generated_tokens: generated,
            ..GenerationStats::default()
        }
    }

    #[test]
    fn tokens_are_counted_from_the_backends_stats() {
        let counted = count("candle", &stats(128, 28, 9), 9, Kind::Generation);
        assert_eq!(counted.expect("counts"), (100, 8));
        assert_eq!(
            count("candle", &stats(16, 0, 1), 1, Kind::Prompt).expect("counts"),
            (16, 0)
        );
    }

    #[test]
    fn stats_that_cannot_be_the_runs_are_refused() {
        let err = count("candle", &stats(16, 0, 9), 8, Kind::Generation).expect_err("miscount");
        assert!(err.to_string().contains("reported 9 generated"), "{err}");
        let err = count("candle", &stats(16, 16, 2), 2, Kind::Prompt).expect_err("no prompt");
        assert!(err.to_string().contains("no prompt tokens"), "{err}");
        let err = count("candle", &stats(16, 0, 1), 1, Kind::Generation).expect_err("one token");
        assert!(err.to_string().contains("only one token"), "{err}");
    }

    #[test]
    fn a_generation_run_records_its_counted_speed() {
        let run = Counted {
            prompt_tokens: 100,
            ttft_ms: 250.0,
            after_first: 50,
            after_first_ms: 500.0,
        };
        let mut outcome = Outcome::default();
        run.record(Kind::Prompt, &mut outcome);
        run.record(Kind::Generation, &mut outcome);
        assert_eq!(outcome.pp_runs, [400.0]);
        assert_eq!(outcome.pp_tokens, [100]);
        assert_eq!(outcome.tg_runs, [100.0]);
        assert_eq!(outcome.tg_tokens, [50]);
        assert_eq!(outcome.ttft_runs, [250.0]);
    }
}
