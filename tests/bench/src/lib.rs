//! Benchmark of the llama-cpp backend: llama.cpp driven directly through llama-cpp-2 versus the
//! same model, threads and batch size through the llmlocal plugin host (the cdylib loaded at
//! run time), and aggregate generation throughput with one versus several parallel
//! generations (continuous batching).
//!
//! Each path runs in a process of its own ([`child`]): measured in one process, the paths
//! disturbed each other.
//!
//! [`compare`] measures another backend plugin (candle) against the llama-cpp plugin.
//!
//! Tiny models exaggerate per-token overheads (channels, thread hand-offs, FFI): the default
//! model is therefore a random-weight llama of ~110M parameters written by [`random_gguf`].

pub mod child;
pub mod compare;
pub mod constrained;
pub mod direct;
pub mod gpu;
pub mod isolation;
pub mod plugin;
pub mod random_gguf;
pub mod report;

/// What one benchmark run is measured on.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Setup {
    pub model: std::path::PathBuf,
    pub threads: u32,
    pub batch_size: u32,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub parallel: u32,
    pub repeat: usize,
    /// Per-sequence context length used by both paths.
    pub context_length: u32,
}

/// Prompt processing and generation speed of one path: the best and the median of its runs,
/// and the runs themselves (in the order they ran).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Speed {
    /// Prompt tokens per second (one batch of `prompt_tokens`), best run.
    pub prompt_tps: f64,
    /// Generated tokens per second (single sequence), best run.
    pub gen_tps: f64,
    /// Median of `prompt_runs`.
    pub prompt_tps_median: f64,
    /// Median of `gen_runs`.
    pub gen_tps_median: f64,
    pub prompt_runs: Vec<f64>,
    pub gen_runs: Vec<f64>,
}

impl Speed {
    /// The best and the median of each series of runs (0 for an empty one).
    pub fn of(prompt_runs: Vec<f64>, gen_runs: Vec<f64>) -> Speed {
        Speed {
            prompt_tps: best(&prompt_runs),
            gen_tps: best(&gen_runs),
            prompt_tps_median: median(&prompt_runs).unwrap_or(0.0),
            gen_tps_median: median(&gen_runs).unwrap_or(0.0),
            prompt_runs,
            gen_runs,
        }
    }
}

/// Best (highest) of several measurements: the least disturbed by other load on the machine.
pub fn best(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

/// The middle value (the mean of the two middle ones for an even count); `None` when empty.
/// Unlike the best, it does not move with one lucky run.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Logs to stderr at `warn` (or `$LLMLOCAL_LOG`), as the `llmlocal` binary does.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LLMLOCAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_keeps_the_runs_with_their_best_and_median() {
        let speed = Speed::of(vec![10.0, 30.0, 20.0], vec![4.0, 1.0, 3.0, 2.0]);
        assert_eq!((speed.prompt_tps, speed.prompt_tps_median), (30.0, 20.0));
        assert_eq!((speed.gen_tps, speed.gen_tps_median), (4.0, 2.5));
        assert_eq!(speed.prompt_runs, [10.0, 30.0, 20.0]);
        assert_eq!(speed.gen_runs, [4.0, 1.0, 3.0, 2.0]);
        let none = Speed::of(Vec::new(), Vec::new());
        assert_eq!((none.prompt_tps, none.prompt_tps_median), (0.0, 0.0));
    }
}
