//! Benchmark of the llama-cpp backend: llama.cpp driven directly through llama-cpp-2 versus the
//! same model, threads and batch size through the llmlocal plugin host (the cdylib loaded at
//! run time), and aggregate generation throughput with one versus several parallel
//! generations (continuous batching).
//!
//! [`compare`] measures another backend plugin (candle) against the llama-cpp plugin.
//!
//! Tiny models exaggerate per-token overheads (channels, thread hand-offs, FFI): the default
//! model is therefore a random-weight llama of ~110M parameters written by [`random_gguf`].

pub mod compare;
pub mod direct;
pub mod gpu;
pub mod plugin;
pub mod random_gguf;
pub mod report;

/// What one benchmark run is measured on.
#[derive(Debug, Clone, serde::Serialize)]
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

/// Prompt processing and generation speed of one path.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Speed {
    /// Prompt tokens per second (one batch of `prompt_tokens`).
    pub prompt_tps: f64,
    /// Generated tokens per second (single sequence).
    pub gen_tps: f64,
}

/// Best (highest) of several measurements: the least disturbed by other load on the machine.
pub fn best(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
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
