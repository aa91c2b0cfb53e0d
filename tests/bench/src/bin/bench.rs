//! `bench`: llama.cpp direct vs through the llmlocal plugin host, and 1 vs N parallel
//! generations. See the crate docs. Example:
//!
//! ```text
//! cargo build -p llmlocal-backend-llama-cpp
//! cargo run -p llmlocal-bench --bin bench -- --threads 2 --json target/bench/llama-cpp.json
//! ```
//!
//! Backend comparison (candle plugin vs llama-cpp plugin, F32, F16 and Q8_0 random models):
//!
//! ```text
//! cargo build -p llmlocal-backend-llama-cpp -p llmlocal-backend-candle
//! cargo run -p llmlocal-bench --bin bench -- --threads 2 --compare candle --json target/bench/candle.json
//! ```

use anyhow::Context as _;
use clap::Parser;
use llmlocal_bench::{
    child::{self, Job, Measured, Spec},
    compare, constrained, isolation,
    random_gguf::{self, Shape, Storage},
    report::Report,
    Setup,
};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(about = "Benchmark the llama-cpp backend: direct llama.cpp vs the plugin host")]
struct Args {
    /// Folder holding the plugin libraries, e.g. libllmlocal_backend_llama_cpp.so (default: next
    /// to this binary).
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// GGUF model (default: a random-weight 85M-parameter F16 llama, written once under
    /// target/bench/, with the stories260K tokenizer; with --compare, random 50M-parameter F32,
    /// F16 and Q8_0 llamas of the same weights).
    #[arg(long)]
    model: Option<PathBuf>,
    /// CPU threads for both paths (default: all cores).
    #[arg(long)]
    threads: Option<u32>,
    /// Prompt-processing batch size for both paths.
    #[arg(long, default_value_t = 512)]
    batch_size: u32,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Parallel generations for the aggregate measurement.
    #[arg(long, default_value_t = 4)]
    parallel: u32,
    /// Rounds: for the direct/plugin, --compare and --isolation comparisons, interleaved
    /// rounds with each path (backend) in a fresh process (median and min–max over rounds are
    /// reported); for --constrained the rounds.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Direct/plugin, --compare and --isolation: recorded runs of each kind inside each
    /// process (after its warm-up); the median of them is that round's value.
    #[arg(long, default_value_t = 3)]
    runs_per_child: usize,
    /// Internal: measure one path as the JSON spec in this file says, print the outcome.
    #[arg(long, hide = true, value_name = "SPEC")]
    child: Option<PathBuf>,
    /// Instead of the llama.cpp direct/plugin benchmark, compare this backend plugin (e.g.
    /// `candle`) with the llama-cpp plugin, both through the host, same threads and prompt
    /// tokens, each backend in a fresh process per round (interleaved rounds, medians).
    /// Every child gets RAYON_NUM_THREADS, CANDLE_NUM_THREADS and OMP_NUM_THREADS set to
    /// --threads: candle sizes its pools from them.
    #[arg(long, value_name = "BACKEND")]
    compare: Option<String>,
    /// Instead: JSON-schema-constrained vs free greedy decoding through this backend plugin
    /// (e.g. `llama-cpp`), same model, interleaved rounds (--repeat of them), medians.
    #[arg(long, value_name = "BACKEND", conflicts_with = "compare")]
    constrained: Option<String>,
    /// Instead: this backend plugin in-process vs in a worker process (process isolation),
    /// same model, interleaved rounds (--repeat of them), medians of generation tokens/s and
    /// time to first token, and the worker's idle RSS. Workers run `llmlocal plugin-worker`:
    /// the llmlocal binary next to this one, or $LLMLOCAL_WORKER_EXE.
    #[arg(long, value_name = "BACKEND", conflicts_with_all = ["compare", "constrained"])]
    isolation: Option<String>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn exe_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the bench binary")?;
    Ok(exe
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".")))
}

/// A random model written once next to the target dir (target/bench/).
fn default_model(name: &str, shape: &Shape, storage: Storage) -> anyhow::Result<PathBuf> {
    let target = exe_dir()?.parent().map(PathBuf::from).unwrap_or_default();
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("random-llama-{name}-{}.gguf", storage.suffix()));
    if path.is_file() {
        return Ok(path);
    }
    let shared = std::env::var_os("LLMLOCAL_SHARED_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models")
        });
    let tokenizer = shared.join("stories260K/stories260K.gguf");
    eprintln!("writing the random benchmark model {} ...", path.display());
    random_gguf::write_as(&path, &tokenizer, shape, storage)
        .with_context(|| format!("write {} (or pass --model)", path.display()))?;
    Ok(path)
}

/// The models of a comparison: --model alone, or the random F32, F16 and Q8_0 ones.
fn compare_models(model: Option<PathBuf>) -> anyhow::Result<Vec<(String, PathBuf)>> {
    if let Some(m) = model {
        return Ok(vec![("model".into(), m)]);
    }
    [
        (Storage::F32, "F32"),
        (Storage::F16, "F16"),
        (Storage::Q8_0, "Q8_0"),
    ]
    .into_iter()
    .map(|(storage, label)| {
        Ok((
            label.to_string(),
            default_model("50m", &Shape::RANDOM_50M, storage)?,
        ))
    })
    .collect()
}

fn write_json(path: Option<&PathBuf>, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(value)?)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(1))
            .unwrap_or(1)
    });
    llmlocal_bench::init_logging();
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
    if let Some(spec) = &args.child {
        return child::serve(spec);
    }
    let context_length = u32::try_from(args.prompt_tokens + args.gen_tokens + 16)?;
    let plugin_dir = match &args.plugin_dir {
        Some(d) => d.clone(),
        None => exe_dir()?,
    };
    let mut setup = Setup {
        model: PathBuf::new(),
        threads,
        batch_size: args.batch_size,
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens,
        parallel: args.parallel,
        repeat: args.repeat.max(1),
        context_length,
    };
    let exe = std::env::current_exe().context("locate the bench binary")?;
    let runs = args.runs_per_child.max(1);
    if let Some(backend) = &args.compare {
        let models = compare_models(args.model)?;
        let comparison = compare::run(&exe, &plugin_dir, backend, &setup, runs, &models)?;
        println!("{}", comparison.table());
        return write_json(args.json.as_ref(), &comparison);
    }
    setup.model = match args.model {
        Some(m) => m,
        None => default_model("85m", &Shape::RANDOM_85M, Storage::F16)?,
    };
    if let Some(backend) = &args.isolation {
        let report = isolation::run(&exe, &plugin_dir, backend, &setup, runs)?;
        println!("{}", report.table());
        return write_json(args.json.as_ref(), &report);
    }
    if let Some(backend) = &args.constrained {
        let report = constrained::run(&plugin_dir, backend, &setup)?;
        println!("{}", report.table());
        return write_json(args.json.as_ref(), &report);
    }

    // Each path in a fresh process per round (see llmlocal_bench::child).
    let spec = |job| Spec {
        job,
        setup: setup.clone(),
        plugin_dir: plugin_dir.clone(),
        backend: "llama-cpp".into(),
        runs,
        prompt: None,
    };
    let [direct, through]: [Vec<_>; 2] =
        child::interleaved(&exe, &[Job::Direct, Job::Plugin], setup.repeat, spec)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("expected the outcomes of two paths"))?;
    eprintln!(
        "aggregate: 1 vs {} parallel generations ...",
        setup.parallel
    );
    let aggregate = child::once(&exe, &spec(Job::Aggregate))?
        .aggregate
        .unwrap_or_default();
    let report = Report::new(
        setup.clone(),
        runs,
        Measured::of(direct),
        Measured::of(through),
        aggregate,
    );
    println!("{}", report.table());
    write_json(args.json.as_ref(), &report)
}
