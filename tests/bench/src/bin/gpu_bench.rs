//! `gpu-bench`: the GPU benchmark and checks of issue #9, run on the GPU machine by
//! `scripts/gpu/device.sh` (see docs/gpu.md). Subcommands:
//!
//! - `write-model`: a random-weight model of Llama-3.2-1B's shapes (F16, F32 or Q8_0);
//! - `agree`: CPU vs GPU greedy tokens of one backend on one model;
//! - `run`: per model, llama.cpp driven directly (scripts/gpu/direct_bench.c) vs the llama-cpp plugin through the host vs
//!   `llmlocal serve` over HTTP, aggregate tokens/s with N parallel streams, candle vs
//!   llama.cpp, and the share of the weight-bandwidth bound. Direct, plugin and HTTP (token
//!   ids, one keep-alive connection) run in `--rounds` rounds of `--repeat` runs of each
//!   kind (prompt-only, prompt + generation), one run of each path in turn; the table's
//!   speeds and ratios are medians of all runs, the best-run ratios beside them.

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use llmlocal_bench::{
    gpu::{self, ModelJob},
    random_gguf::{self, Shape, Storage},
    Setup,
};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(about = "GPU benchmark of the llmlocal backend plugins")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write a random-weight model with Llama-3.2-1B's shapes.
    WriteModel {
        /// f16, f32 or q8_0.
        #[arg(long, default_value = "f16")]
        storage: String,
        /// A llama GGUF whose tokenizer is copied (padded to 128256 tokens).
        #[arg(long)]
        tokenizer_from: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Greedy tokens on the CPU vs on the GPU.
    Agree {
        #[arg(long)]
        plugin_dir: PathBuf,
        #[arg(long, default_value = "llama-cpp")]
        backend: String,
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "cuda")]
        device: String,
        #[arg(long, default_value_t = 64)]
        tokens: usize,
        /// Fail unless at least this many leading tokens agree (and the GPU produced them).
        #[arg(long, default_value_t = 32)]
        require: usize,
        /// A prompt of this many tokens instead of "Once upon a time" (0), e.g. to reach
        /// positions where candle's decode attention splits over blocks (past 1024).
        #[arg(long, default_value_t = 0)]
        prompt_tokens: usize,
    },
    /// The throughput benchmark.
    Run {
        #[arg(long)]
        plugin_dir: PathBuf,
        /// LABEL=PATH, repeatable.
        #[arg(long = "model", value_parser = parse_labelled)]
        models: Vec<(String, PathBuf)>,
        #[arg(long, default_value = "cuda")]
        device: String,
        /// scripts/gpu/direct_bench.c built against the same llama.cpp, for the direct numbers.
        #[arg(long)]
        direct_bench: Option<PathBuf>,
        /// The llmlocal binary, for the HTTP numbers.
        #[arg(long)]
        llmlocal: Option<PathBuf>,
        #[arg(long, default_value_t = 512)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 128)]
        gen_tokens: usize,
        /// Runs of each path per round.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Interleaved rounds of direct, plugin and HTTP (token ids), `--repeat` runs each.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// CPU threads of the plugin's model, in-process and in `llmlocal serve` (0: the
        /// plugin's default).
        #[arg(long, default_value_t = 0)]
        threads: u32,
        /// Parallel stream counts for the aggregate measurement.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
        parallel: Vec<usize>,
        /// Measured device copy bandwidth, GB/s one way, for the weight-bandwidth bound.
        #[arg(long)]
        bandwidth_gbs: Option<f64>,
        /// Labels of models also measured with the candle plugin.
        #[arg(long, value_delimiter = ',')]
        candle: Vec<String>,
        /// Also measure `direct-bench http` (needs --direct-bench) in the rounds: llama.cpp
        /// behind the thinnest HTTP server, with the same client as `llmlocal serve`.
        #[arg(long)]
        http_floor: bool,
        #[arg(long)]
        json: Option<PathBuf>,
        /// Folder for the `llmlocal serve` logs.
        #[arg(long, default_value = ".")]
        log_dir: PathBuf,
    },
}

fn parse_labelled(s: &str) -> Result<(String, PathBuf), String> {
    let (label, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected LABEL=PATH, got {s:?}"))?;
    Ok((label.to_string(), PathBuf::from(path)))
}

fn storage(name: &str) -> anyhow::Result<Storage> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "f16" => Storage::F16,
        "f32" => Storage::F32,
        "q8_0" => Storage::Q8_0,
        other => bail!("unknown storage {other:?}: f16, f32 or q8_0"),
    })
}

fn setup(model: PathBuf, prompt_tokens: usize, gen_tokens: usize, repeat: usize) -> Setup {
    Setup {
        model,
        threads: 0,
        batch_size: 512,
        prompt_tokens,
        gen_tokens,
        parallel: 1,
        repeat: repeat.max(1),
        context_length: u32::try_from(prompt_tokens + gen_tokens + 16).unwrap_or(u32::MAX),
    }
}

fn main() -> anyhow::Result<()> {
    llmlocal_bench::init_logging();
    match Args::parse().command {
        Cmd::WriteModel {
            storage: s,
            tokenizer_from,
            out,
        } => {
            random_gguf::write_as(&out, &tokenizer_from, &Shape::LLAMA_3_2_1B, storage(&s)?)
                .with_context(|| format!("write {}", out.display()))?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Cmd::Agree {
            plugin_dir,
            backend,
            model,
            device,
            tokens,
            require,
            prompt_tokens,
        } => {
            let setup = setup(model, prompt_tokens.max(16), tokens, 1);
            let long_prompt = prompt_tokens > 0;
            let a = gpu::agree(&plugin_dir, &backend, &setup, &device, tokens, long_prompt)?;
            println!(
                "{backend} {}: CPU {} tokens, {device} {} tokens, {} agree from the start{}",
                a.model,
                a.cpu.len(),
                a.gpu.len(),
                a.agreeing(),
                match a.first_difference {
                    Some(i) => format!(" (first difference at token {i})"),
                    None => " (identical)".to_string(),
                }
            );
            if a.agreeing() < require.min(a.cpu.len()) {
                bail!("fewer than {require} greedy tokens agree");
            }
            Ok(())
        }
        Cmd::Run {
            plugin_dir,
            models,
            device,
            direct_bench,
            llmlocal,
            prompt_tokens,
            gen_tokens,
            repeat,
            rounds,
            threads,
            parallel,
            bandwidth_gbs,
            candle,
            http_floor,
            json,
            log_dir,
        } => {
            let mut rows = Vec::new();
            for (label, path) in models {
                let job = ModelJob {
                    candle: candle.contains(&label),
                    label,
                    setup: Setup {
                        threads,
                        ..setup(path, prompt_tokens, gen_tokens, repeat)
                    },
                    rounds: rounds.max(1),
                    device: &device,
                    direct_bench: direct_bench.as_deref(),
                    llmlocal: llmlocal.as_deref(),
                    log_dir: &log_dir,
                    parallel: &parallel,
                    bandwidth_gbs,
                    http_floor,
                };
                rows.push(gpu::measure(&plugin_dir, &job)?);
                eprint!("{}", gpu::table(&rows));
            }
            println!("{}", gpu::table(&rows));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&rows)?)
                    .with_context(|| format!("write {}", path.display()))?;
            }
            Ok(())
        }
    }
}
