//! GPU benchmark (issue #9): the backend plugins on a CUDA device, measured through the host
//! contract and through `llmlocal serve`'s HTTP API, against llama.cpp driven directly
//! through its C API on the same llama.cpp build, plus CPU/GPU greedy agreement and continuous batching.
//!
//! The GPU machine has no Rust toolchain: `cargo xtask gpu-build` packs the `gpu-bench` binary,
//! the plugins and the llama.cpp source, and `scripts/gpu/device.sh` runs this there.

use crate::{best, plugin, Setup, Speed};
use anyhow::{anyhow, bail, Context as _};
use llmlocal::plugins::LoadedModel;
use llmlocal_plugin_api::Step;
use serde::Serialize;
use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Greedy token ids of `model` for `prompt`, up to `n` tokens (stops early at EOS).
fn greedy_ids(model: &LoadedModel, prompt: &[u32], n: usize) -> anyhow::Result<Vec<u32>> {
    let mut request = plugin::request(prompt, n);
    request.ignore_eos = false;
    let mut generation = model.generate(request)?;
    let mut ids = Vec::new();
    loop {
        match generation.next()? {
            Step::Token(token) => ids.push(token.id),
            Step::Finished(_) => return Ok(ids),
        }
    }
}

/// Greedy agreement between the CPU and a GPU on one model.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    pub backend: String,
    pub model: String,
    pub device: String,
    pub cpu: Vec<u32>,
    pub gpu: Vec<u32>,
    /// Index of the first differing token; `None` when the sequences are equal.
    pub first_difference: Option<usize>,
}

impl Agreement {
    /// Tokens equal from the start.
    pub fn agreeing(&self) -> usize {
        self.first_difference
            .unwrap_or(self.cpu.len().min(self.gpu.len()))
    }
}

/// Loads `setup.model` on the CPU and on `device` with `backend` and compares `n` greedy tokens
/// after "Once upon a time", or, when `long_prompt` is set, after a prompt of
/// `setup.prompt_tokens` tokens (to reach positions a short prompt does not).
pub fn agree(
    dir: &Path,
    backend: &str,
    setup: &Setup,
    device: &str,
    n: usize,
    long_prompt: bool,
) -> anyhow::Result<Agreement> {
    let on = |dev: &str| -> anyhow::Result<Vec<u32>> {
        let model = plugin::load_on(dir, backend, setup, 1, dev)?;
        let prompt = if long_prompt {
            plugin::prompt_tokens(&model, setup.prompt_tokens)?
        } else {
            model.tokenize("Once upon a time", true, false)?
        };
        greedy_ids(&model, &prompt, n)
    };
    let cpu = on("cpu")?;
    let gpu = on(device)?;
    let first_difference = cpu
        .iter()
        .zip(&gpu)
        .position(|(a, b)| a != b)
        .or_else(|| (cpu.len() != gpu.len()).then(|| cpu.len().min(gpu.len())));
    Ok(Agreement {
        backend: backend.to_string(),
        model: setup.model.display().to_string(),
        device: device.to_string(),
        cpu,
        gpu,
        first_difference,
    })
}

/// Runs `direct-bench MODE MODEL N_PROMPT N_GEN LAST` and parses the JSON line it prints.
fn run_direct(
    exe: &Path,
    mode: &str,
    setup: &Setup,
    last: usize,
) -> anyhow::Result<serde_json::Value> {
    let output = Command::new(exe)
        .arg(mode)
        .arg(&setup.model)
        .arg(setup.prompt_tokens.to_string())
        .arg(setup.gen_tokens.to_string())
        .arg(last.to_string())
        // The plugin's thread count when the bench sets one (direct-bench keeps llama.cpp's
        // default of 4 otherwise; the plugin's default is one per physical core).
        .env("DIRECT_BENCH_THREADS", setup.threads.to_string())
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("run {}", exe.display()))?;
    if !output.status.success() {
        bail!("{} {mode} failed: {}", exe.display(), output.status);
    }
    serde_json::from_slice(&output.stdout).context("direct-bench's JSON output")
}

/// pp/tg of llama.cpp driven directly through its C API (`scripts/gpu/direct_bench.c`, built
/// against the same llama.cpp build the plugin runs on), all layers on the GPU.
pub fn direct_bench(exe: &Path, setup: &Setup) -> anyhow::Result<Speed> {
    let row = run_direct(exe, "bench", setup, setup.repeat)?;
    let speed = Speed {
        prompt_tps: row["pp_tps"].as_f64().unwrap_or(0.0),
        gen_tps: row["tg_tps"].as_f64().unwrap_or(0.0),
    };
    if speed.prompt_tps == 0.0 || speed.gen_tps == 0.0 {
        bail!("direct-bench printed no speeds");
    }
    Ok(speed)
}

/// Aggregate tokens/s of `n_seq` sequences decoded together by llama.cpp directly (one token
/// per sequence per decode, greedy on one thread): a reference for the plugin's continuous
/// batching.
pub fn direct_batched(exe: &Path, setup: &Setup, n_seq: usize) -> anyhow::Result<f64> {
    run_direct(exe, "batched", setup, n_seq)?["tg_tps"]
        .as_f64()
        .ok_or_else(|| anyhow!("direct-bench batched printed no speed"))
}

/// A `llmlocal serve` child process, killed on drop.
pub struct Server {
    child: Child,
    pub addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a model is loaded with: sequences run at once and context per sequence. The KV cache
/// holds `parallel x context_length` cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LoadShape {
    pub parallel: u32,
    pub context_length: u32,
}

impl LoadShape {
    /// The in-process plugin runs and direct-bench (scripts/gpu/direct_bench.c): one
    /// sequence of `setup.context_length` cells.
    pub fn bench(setup: &Setup) -> Self {
        LoadShape {
            parallel: 1,
            context_length: setup.context_length,
        }
    }

    /// What `llmlocal serve` loads a model with when neither `--parallel` nor
    /// `--context-length` is given: the plugin's default parallel generations, and the
    /// engine's context for this machine's memory and the model's trained context.
    pub fn served_default(dir: &Path, setup: &Setup) -> anyhow::Result<Self> {
        use llmlocal::engine::memory;
        Ok(LoadShape {
            parallel: plugin::default_parallel(dir, "llama-cpp")?,
            context_length: memory::default_context_length(
                memory::read().total,
                memory::model_max_context(&setup.model),
            ),
        })
    }
}

/// Starts `llmlocal serve` with the model under the alias `bench`, loaded as `shape` says,
/// and waits for `/health`.
pub fn serve(
    llmlocal: &Path,
    plugin_dir: &Path,
    setup: &Setup,
    shape: LoadShape,
    port: u16,
    log: &Path,
) -> anyhow::Result<Server> {
    let addr = format!("127.0.0.1:{port}");
    let log_file =
        std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let child = serve_command(llmlocal, plugin_dir, setup, shape, &addr)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("start {}", llmlocal.display()))?;
    let server = Server { child, addr };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok((status, _)) = http(&server.addr, "GET", "/health", "") {
            if status == 200 {
                return Ok(server);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("llmlocal serve did not answer /health within 60 s")
}

/// The `llmlocal serve` command line of [`serve`].
fn serve_command(
    llmlocal: &Path,
    plugin_dir: &Path,
    setup: &Setup,
    shape: LoadShape,
    addr: &str,
) -> Command {
    let mut command = Command::new(llmlocal);
    command
        .args(["serve", "--bind", addr, "--backend", "llama-cpp"])
        .arg("--model")
        .arg(format!("bench={}", setup.model.display()))
        .arg("--parallel")
        .arg(shape.parallel.to_string())
        .arg("--context-length")
        .arg(shape.context_length.to_string())
        .arg("--threads")
        .arg(setup.threads.to_string())
        .env("LLMLOCAL_PLUGIN_PATH", plugin_dir)
        // The bench's own filter when set, so that e.g.
        // `llmlocal_backend_llama_cpp::engine=debug` splits the prompt time on both sides.
        .env(
            "LLMLOCAL_LOG",
            std::env::var("LLMLOCAL_LOG").unwrap_or_else(|_| "info".into()),
        );
    command
}

/// One HTTP/1.1 request with `Connection: close`; the status and the whole body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut reader = send(addr, method, path, body)?;
    let status = read_status(&mut reader)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut reader, &mut text)?;
    Ok((status, text))
}

fn send(addr: &str, method: &str, path: &str, body: &str) -> anyhow::Result<BufReader<TcpStream>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    // One write, as HTTP clients send a request: `write!` on the socket would send each
    // formatted piece as its own segment (no Nagle), and the server would read the request
    // in pieces, which a real client does not make it do.
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    Ok(BufReader::new(stream))
}

fn read_status(reader: &mut BufReader<TcpStream>) -> anyhow::Result<u16> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP status line: {line:?}"))
}

/// The lowest and the median of a set of times.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Millis {
    pub best: f64,
    pub median: f64,
}

impl Millis {
    fn of(values: &[f64]) -> Option<Millis> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Some(Millis {
            best: sorted[0],
            median,
        })
    }
}

/// Where the time to the first token of the HTTP runs goes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HttpTiming {
    /// Client side: from sending the request to reading the first token event.
    pub client_ttft_ms: Millis,
    /// The server's own `timings.prompt_ms` (the plugin's stats clock: generation start to
    /// first token); `None` when the server sent no `timings`.
    pub server_prompt_ms: Option<Millis>,
    /// Per run, client TTFT - server prompt_ms: HTTP, JSON, tokenizing (text prompts), the
    /// engine's queue and the hand-offs between the host's threads.
    pub overhead_ms: Option<Millis>,
}

/// What one set of streamed HTTP runs measured.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HttpResult {
    pub speed: Speed,
    pub timing: HttpTiming,
}

/// One measured streamed request.
struct HttpRun {
    ttft_ms: f64,
    server_prompt_ms: Option<f64>,
    /// Generated tokens/s from the first to the last token event.
    gen_tps: Option<f64>,
}

/// Streamed `/v1/completions` runs of `prompt` (a JSON string, or a list of token ids;
/// greedy, `max_tokens`): prompt tokens/s from the time to the first token event, generated
/// tokens/s from the first to the last, and the server's own prompt time next to the client's.
pub fn http_speed(
    server: &mut Server,
    prompt: &serde_json::Value,
    setup: &Setup,
) -> anyhow::Result<HttpResult> {
    let result = http_runs(server, prompt, setup);
    if result.is_err() {
        if let Ok(Some(status)) = server.child.try_wait() {
            bail!("llmlocal serve exited ({status}); see its log");
        }
    }
    let runs = result?;
    let ttft: Vec<f64> = runs.iter().map(|r| r.ttft_ms).collect();
    let server_ms: Option<Vec<f64>> = runs.iter().map(|r| r.server_prompt_ms).collect();
    let overhead: Option<Vec<f64>> = runs
        .iter()
        .map(|r| r.server_prompt_ms.map(|s| r.ttft_ms - s))
        .collect();
    let pp: Vec<f64> = ttft
        .iter()
        .map(|ms| setup.prompt_tokens as f64 * 1000.0 / ms)
        .collect();
    let tg: Vec<f64> = runs.iter().filter_map(|r| r.gen_tps).collect();
    Ok(HttpResult {
        speed: Speed {
            prompt_tps: best(&pp),
            gen_tps: best(&tg),
        },
        timing: HttpTiming {
            client_ttft_ms: Millis::of(&ttft).unwrap_or_default(),
            server_prompt_ms: server_ms.as_deref().and_then(Millis::of),
            overhead_ms: overhead.as_deref().and_then(Millis::of),
        },
    })
}

/// Whether an SSE line is an event carrying generated text (not the final event, whose
/// text is empty, nor `[DONE]`).
fn has_text(line: &str) -> bool {
    const KEY: &str = "\"text\":\"";
    line.starts_with("data: {")
        && line
            .match_indices(KEY)
            .any(|(at, _)| !line[at + KEY.len()..].starts_with('"'))
}

/// `timings.prompt_ms` of an SSE event line that has it (the final event).
fn server_prompt_ms(line: &str) -> Option<f64> {
    let data = line.strip_prefix("data: ")?;
    if !data.contains("\"timings\"") {
        return None;
    }
    let event: serde_json::Value = serde_json::from_str(data.trim_end()).ok()?;
    event["timings"]["prompt_ms"].as_f64()
}

fn http_runs(
    server: &Server,
    prompt: &serde_json::Value,
    setup: &Setup,
) -> anyhow::Result<Vec<HttpRun>> {
    let body = serde_json::json!({
        "model": "bench",
        "prompt": prompt,
        "max_tokens": setup.gen_tokens + 1,
        "temperature": 0.0,
        "stream": true,
        // As the in-process runs: a random model may pick EOS at any point.
        "ignore_eos": true,
    })
    .to_string();
    let mut runs = Vec::new();
    // The first request loads the model (the server loads on demand): not measured.
    for run in 0..=setup.repeat {
        let started = Instant::now();
        let mut reader = send(&server.addr, "POST", "/v1/completions", &body)?;
        let status = read_status(&mut reader)?;
        if status != 200 {
            let mut body = String::new();
            std::io::Read::read_to_string(&mut reader, &mut body)?;
            let body = body.rsplit("\r\n\r\n").next().unwrap_or_default();
            bail!("POST /v1/completions answered {status}: {body}");
        }
        let mut times = Vec::new();
        let mut server_ms = None;
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            if has_text(&line) {
                times.push(Instant::now());
            } else if let Some(ms) = server_prompt_ms(&line) {
                server_ms = Some(ms);
            }
            line.clear();
        }
        let (Some(first), Some(last)) = (times.first(), times.last()) else {
            bail!("the server streamed no tokens");
        };
        if times.len() < setup.gen_tokens {
            bail!(
                "the server streamed {} token events for max_tokens {}",
                times.len(),
                setup.gen_tokens + 1
            );
        }
        if run == 0 {
            continue;
        }
        runs.push(HttpRun {
            ttft_ms: (*first - started).as_secs_f64() * 1000.0,
            server_prompt_ms: server_ms,
            gen_tps: (times.len() > 1)
                .then(|| (times.len() - 1) as f64 / (*last - *first).as_secs_f64()),
        });
    }
    Ok(runs)
}

/// The text of exactly `n` prompt tokens of `model` (the bench prompt, detokenized), so an HTTP
/// request carries the same prompt length as the in-process runs.
pub fn prompt_text(model: &LoadedModel, n: usize) -> anyhow::Result<(Vec<u32>, String)> {
    let ids = plugin::prompt_tokens(model, n)?;
    let text = model.detokenize(&ids, true)?;
    Ok((ids, text))
}

/// One model file on the GPU: llama.cpp direct, the plugin through the host, over HTTP.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    pub label: String,
    pub size_bytes: u64,
    pub direct: Option<Speed>,
    pub plugin: Speed,
    /// `llmlocal serve`, streamed `/v1/completions` with the prompt as text.
    pub http: Option<Speed>,
    /// The same with the prompt as the token ids the plugin run used (as llama.cpp's pp).
    pub http_ids: Option<Speed>,
    /// Client TTFT vs the server's `timings.prompt_ms`, text prompt.
    pub http_timing: Option<HttpTiming>,
    /// Client TTFT vs the server's `timings.prompt_ms`, token-id prompt.
    pub http_ids_timing: Option<HttpTiming>,
    /// What the HTTP runs' server loaded the model with (as the plugin run).
    pub http_load: LoadShape,
    /// The plugin's prompt pass with the bench's load vs the server's default load.
    pub load_cost: Option<LoadCost>,
    pub plugin_vs_direct_pp: f64,
    pub plugin_vs_direct_tg: f64,
    pub http_vs_direct_pp: f64,
    pub http_ids_vs_direct_pp: f64,
    pub http_vs_direct_tg: f64,
    pub http_ids_vs_direct_tg: f64,
    pub http_vs_plugin_tg: f64,
    /// Aggregate generated tokens/s with N parallel streams.
    pub aggregate: Vec<(usize, f64)>,
    /// The same through llama.cpp directly (N sequences in one decode per step).
    pub direct_aggregate: Vec<(usize, f64)>,
    /// Generation tokens/s the weight bytes allow at the measured copy bandwidth.
    pub bandwidth_bound_tg: Option<f64>,
    /// plugin tg / bandwidth bound.
    pub bandwidth_share: Option<f64>,
    /// candle on the same file and device, through the host.
    pub candle: Option<Speed>,
    pub candle_vs_llama_pp: f64,
    pub candle_vs_llama_tg: f64,
}

/// What to measure for one model.
pub struct ModelJob<'a> {
    pub label: String,
    pub setup: Setup,
    pub device: &'a str,
    pub direct_bench: Option<&'a Path>,
    pub llmlocal: Option<&'a Path>,
    /// Where `llmlocal serve` writes its log.
    pub log_dir: &'a Path,
    pub parallel: &'a [usize],
    /// Copy bandwidth in GB/s (bytes read + written per second / 2 = one direction).
    pub bandwidth_gbs: Option<f64>,
    pub candle: bool,
}

/// Measures one model; each part that fails is reported on stderr and left out.
pub fn measure(dir: &Path, job: &ModelJob) -> anyhow::Result<ModelRow> {
    let setup = &job.setup;
    let size_bytes = std::fs::metadata(&setup.model)
        .with_context(|| format!("{}", setup.model.display()))?
        .len();
    eprintln!("{}: llama-cpp plugin on {} ...", job.label, job.device);
    let model = plugin::load_on(dir, "llama-cpp", setup, 1, job.device)?;
    let (prompt, text) = prompt_text(&model, setup.prompt_tokens)?;
    let through = plugin::run(&model, setup, &prompt)?;
    drop(model);
    let direct = job.direct_bench.and_then(|exe| {
        eprintln!("{}: llama.cpp direct ...", job.label);
        direct_bench(exe, setup)
            .map_err(|e| eprintln!("direct-bench: {e:#}"))
            .ok()
    });
    let (http, http_ids) = job
        .llmlocal
        .map(|exe| http_both(exe, dir, job, &text, &prompt))
        .unwrap_or_default();
    let load_cost = job.llmlocal.and_then(|_| {
        eprintln!(
            "{}: prompt pass, bench vs server default load ...",
            job.label
        );
        load_cost(dir, job, &prompt)
            .map_err(|e| eprintln!("load cost: {e:#}"))
            .ok()
    });
    let aggregate = aggregate(dir, job).unwrap_or_else(|e| {
        eprintln!("aggregate: {e:#}");
        Vec::new()
    });
    let direct_aggregate = job
        .direct_bench
        .map(|exe| {
            let mut short = setup.clone();
            short.prompt_tokens = AGGREGATE_PROMPT;
            job.parallel
                .iter()
                .filter_map(|&n| match direct_batched(exe, &short, n) {
                    Ok(tps) => Some((n, tps)),
                    Err(e) => {
                        eprintln!("direct batched {n}: {e:#}");
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let candle = job
        .candle
        .then(|| candle_speed(dir, job, &prompt))
        .and_then(|r| r.map_err(|e| eprintln!("candle: {e:#}")).ok());
    let bound = job.bandwidth_gbs.map(|gbs| gbs * 1e9 / size_bytes as f64);
    let d = direct.unwrap_or_default();
    let c = candle.unwrap_or_default();
    let (h, hi) = (
        http.unwrap_or_default().speed,
        http_ids.unwrap_or_default().speed,
    );
    Ok(ModelRow {
        label: job.label.clone(),
        size_bytes,
        plugin_vs_direct_pp: ratio(through.prompt_tps, d.prompt_tps),
        plugin_vs_direct_tg: ratio(through.gen_tps, d.gen_tps),
        http_vs_direct_pp: ratio(h.prompt_tps, d.prompt_tps),
        http_ids_vs_direct_pp: ratio(hi.prompt_tps, d.prompt_tps),
        http_vs_direct_tg: ratio(h.gen_tps, d.gen_tps),
        http_ids_vs_direct_tg: ratio(hi.gen_tps, d.gen_tps),
        http_vs_plugin_tg: ratio(h.gen_tps, through.gen_tps),
        direct,
        plugin: through,
        http: http.map(|r| r.speed),
        http_ids: http_ids.map(|r| r.speed),
        http_timing: http.map(|r| r.timing),
        http_ids_timing: http_ids.map(|r| r.timing),
        http_load: LoadShape::bench(setup),
        load_cost,
        aggregate,
        direct_aggregate,
        bandwidth_bound_tg: bound,
        bandwidth_share: bound.map(|b| ratio(through.gen_tps, b)),
        candle_vs_llama_pp: ratio(c.prompt_tps, through.prompt_tps),
        candle_vs_llama_tg: ratio(c.gen_tps, through.gen_tps),
        candle,
    })
}

/// One `llmlocal serve` for the model; the HTTP runs with the prompt as text, then as the
/// token ids `ids`. Each part that fails is reported on stderr and left out.
fn http_both(
    exe: &Path,
    dir: &Path,
    job: &ModelJob,
    text: &str,
    ids: &[u32],
) -> (Option<HttpResult>, Option<HttpResult>) {
    eprintln!("{}: llmlocal serve over HTTP ...", job.label);
    let log = job.log_dir.join(format!("serve-{}.log", job.label));
    // Loaded as the plugin runs and direct-bench load it (one sequence, prompt + generation
    // + 16 cells), not with the server's defaults (the plugin's 4 sequences x the engine's
    // context, 8192 on the GPU machine: 32768 KV cells, 1 GiB for the 1B F16 model, against
    // 768): HTTP vs plugin vs direct then differ only in the path, not in the context
    // llama.cpp runs. [`load_cost`] measures what the defaults change.
    let shape = LoadShape::bench(&job.setup);
    let mut server = match serve(exe, dir, &job.setup, shape, 18_473, &log) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("HTTP: {e:#}");
            return (None, None);
        }
    };
    let mut measure = |what: &str, prompt: serde_json::Value| {
        http_speed(&mut server, &prompt, &job.setup)
            .map_err(|e| eprintln!("HTTP ({what} prompt): {e:#}"))
            .ok()
    };
    let text = measure("text", serde_json::json!(text));
    eprintln!("{}: HTTP with token ids ...", job.label);
    (text, measure("token-id", serde_json::json!(ids)))
}

/// Generations per load in [`load_cost`], after one warm-up each.
const LOAD_COST_ROUNDS: usize = 8;

/// The plugin's prompt pass with two load shapes of one model: the bench's and what
/// `llmlocal serve` loads with by default.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LoadCost {
    pub bench: LoadShape,
    /// The plugin's stats clock (generation start to first token), as `timings.prompt_ms`.
    pub bench_prompt_ms: Millis,
    pub served: LoadShape,
    pub served_prompt_ms: Millis,
}

/// Loads the model twice in this process, as the bench loads it and as `llmlocal serve`
/// does by default, and times the prompt pass of `prompt` on each, alternating (so that a
/// drift of the machine's speed reaches both alike), on the plugin's own clock: what the
/// server's default KV cache and sequence count cost the prompt, without HTTP or another
/// process in the way.
pub fn load_cost(dir: &Path, job: &ModelJob, prompt: &[u32]) -> anyhow::Result<LoadCost> {
    let bench = LoadShape::bench(&job.setup);
    let served = LoadShape::served_default(dir, &job.setup)?;
    let load = |shape: LoadShape| {
        let mut setup = job.setup.clone();
        setup.context_length = shape.context_length;
        plugin::load_on(dir, "llama-cpp", &setup, shape.parallel, job.device)
    };
    let models = [load(bench)?, load(served)?];
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..=LOAD_COST_ROUNDS {
        for (model, times) in models.iter().zip(times.iter_mut()) {
            let ms = plugin::prompt_ms(model, prompt)?;
            // The first generation of a context pays first-use costs (cuBLAS handles, ...).
            if round > 0 {
                times.push(ms);
            }
        }
    }
    let [bench_ms, served_ms] = times;
    Ok(LoadCost {
        bench,
        bench_prompt_ms: Millis::of(&bench_ms).unwrap_or_default(),
        served,
        served_prompt_ms: Millis::of(&served_ms).unwrap_or_default(),
    })
}

/// Prompt length of the aggregate runs: short, as they measure decoding, and it keeps 64
/// sequences' KV cache small.
const AGGREGATE_PROMPT: usize = 64;

/// Aggregate tokens/s for each count of parallel streams, one load sized for the largest.
fn aggregate(dir: &Path, job: &ModelJob) -> anyhow::Result<Vec<(usize, f64)>> {
    let Some(&most) = job.parallel.iter().max() else {
        return Ok(Vec::new());
    };
    let mut setup = job.setup.clone();
    setup.prompt_tokens = AGGREGATE_PROMPT;
    let per_seq = setup.prompt_tokens + setup.gen_tokens + 16;
    setup.context_length = u32::try_from(per_seq * most)?;
    let slots = u32::try_from(most)?;
    let model = plugin::load_on(dir, "llama-cpp", &setup, slots, job.device)?;
    let prompt = plugin::prompt_tokens(&model, setup.prompt_tokens)?;
    job.parallel
        .iter()
        .map(|&n| {
            eprintln!("{}: {n} parallel streams ...", job.label);
            Ok((n, plugin::aggregate(&model, &setup, &prompt, n)?))
        })
        .collect()
}

fn candle_speed(dir: &Path, job: &ModelJob, prompt: &[u32]) -> anyhow::Result<Speed> {
    eprintln!("{}: candle plugin on {} ...", job.label, job.device);
    let model = plugin::load_on(dir, "candle", &job.setup, 1, job.device)?;
    plugin::run(&model, &job.setup, prompt)
}

/// The rows as a plain-text table.
pub fn table(rows: &[ModelRow]) -> String {
    let mut out = String::from(
        "model      size GB | direct pp   tg | plugin pp   tg (ratio) | http tg (/direct /plugin) | \
         bound tg share | candle pp tg (ratio)\n",
    );
    for r in rows {
        let d = r.direct.unwrap_or_default();
        let h = r.http.unwrap_or_default();
        let c = r.candle.unwrap_or_default();
        out.push_str(&format!(
            "{:<10} {:>7.2} | {:>9.0} {:>5.0} | {:>9.0} {:>5.0} ({:.3}/{:.3}) | {:>7.0} ({:.3}/{:.3}) | \
             {:>8.0} {:>5.2} | {:>6.0} {:>5.0} ({:.2}/{:.2})\n",
            r.label,
            r.size_bytes as f64 / 1e9,
            d.prompt_tps,
            d.gen_tps,
            r.plugin.prompt_tps,
            r.plugin.gen_tps,
            r.plugin_vs_direct_pp,
            r.plugin_vs_direct_tg,
            h.gen_tps,
            r.http_vs_direct_tg,
            r.http_vs_plugin_tg,
            r.bandwidth_bound_tg.unwrap_or(0.0),
            r.bandwidth_share.unwrap_or(0.0),
            c.prompt_tps,
            c.gen_tps,
            r.candle_vs_llama_pp,
            r.candle_vs_llama_tg,
        ));
        out.push_str(&http_line(r));
        if let Some(c) = &r.load_cost {
            out.push_str(&load_cost_line(c));
        }
        let agg: Vec<String> = r
            .aggregate
            .iter()
            .map(|(n, tps)| format!("{n}: {tps:.0}"))
            .collect();
        if !r.direct_aggregate.is_empty() {
            let direct: Vec<String> = r
                .direct_aggregate
                .iter()
                .map(|(n, tps)| format!("{n}: {tps:.0}"))
                .collect();
            out.push_str(&format!(
                "           llama.cpp direct batched tok/s {}\n",
                direct.join(", ")
            ));
        }
        if let Some((_, one)) = r.aggregate.first() {
            let last = r
                .aggregate
                .iter()
                .map(|(n, t)| format!("{n}x {:.2}", t / one));
            out.push_str(&format!(
                "           aggregate tok/s {} (vs 1 stream: {})\n",
                agg.join(", "),
                last.collect::<Vec<_>>().join(", ")
            ));
        }
    }
    out
}

/// The HTTP prompt numbers of a row: pp with a text and a token-id prompt against direct,
/// and where the time to the first token goes (medians).
fn http_line(r: &ModelRow) -> String {
    if r.http.is_none() && r.http_ids.is_none() {
        return String::new();
    }
    let (text, ids) = (r.http.unwrap_or_default(), r.http_ids.unwrap_or_default());
    let mut line = format!(
        "           http (load {} x {}) pp text {:.0} ({:.3} of direct), ids {:.0} ({:.3}); \
         tg ids {:.0} ({:.3})\n",
        r.http_load.parallel,
        r.http_load.context_length,
        text.prompt_tps,
        r.http_vs_direct_pp,
        ids.prompt_tps,
        r.http_ids_vs_direct_pp,
        ids.gen_tps,
        r.http_ids_vs_direct_tg,
    );
    for (what, timing) in [("text", r.http_timing), ("ids", r.http_ids_timing)] {
        if let Some(t) = timing {
            line.push_str(&timing_line(what, &t));
        }
    }
    line
}

/// The plugin's prompt pass with the bench's load vs the server's default (medians, best).
fn load_cost_line(c: &LoadCost) -> String {
    let shape = |s: &LoadShape| format!("{} x {}", s.parallel, s.context_length);
    format!(
        "           plugin prompt_ms, load {}: {:.2} (best {:.2}); serve's default load {}: \
         {:.2} (best {:.2})\n",
        shape(&c.bench),
        c.bench_prompt_ms.median,
        c.bench_prompt_ms.best,
        shape(&c.served),
        c.served_prompt_ms.median,
        c.served_prompt_ms.best,
    )
}

/// Client TTFT, the server's prompt_ms and the difference (HTTP + host path), medians.
fn timing_line(what: &str, t: &HttpTiming) -> String {
    let mut line = format!(
        "           {what:<4} TTFT client {:.2} ms",
        t.client_ttft_ms.median
    );
    match (t.server_prompt_ms, t.overhead_ms) {
        (Some(server), Some(over)) => line.push_str(&format!(
            ", server prompt_ms {:.2}, HTTP + host {:.2} ms (best {:.2})\n",
            server.median, over.median, over.best
        )),
        _ => line.push_str(" (the server sent no timings)\n"),
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_events_are_told_from_the_final_event_and_its_timings_read() {
        let token = r#"data: {"choices":[{"finish_reason":null,"index":0,"text":"Once"}]}"#;
        let last = r#"data: {"choices":[{"finish_reason":"length","index":0,"text":""}],"timings":{"prompt_ms":12.5,"prompt_n":3}}"#;
        assert!(has_text(&format!("{token}\n")));
        assert!(!has_text(&format!("{last}\n")));
        assert!(!has_text("data: [DONE]\n"));
        assert_eq!(server_prompt_ms(&format!("{last}\n")), Some(12.5));
        assert_eq!(server_prompt_ms(token), None);
    }

    fn setup() -> Setup {
        Setup {
            model: "m.gguf".into(),
            threads: 0,
            batch_size: 512,
            prompt_tokens: 512,
            gen_tokens: 128,
            parallel: 1,
            repeat: 3,
            context_length: 656,
        }
    }

    #[test]
    fn the_server_loads_the_model_as_the_plugin_run_does() {
        let setup = setup();
        let command = serve_command(
            Path::new("llmlocal"),
            Path::new("plugins"),
            &setup,
            LoadShape::bench(&setup),
            "127.0.0.1:1",
        );
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let value = |flag: &str| {
            let at = args.iter().position(|a| a == flag);
            at.and_then(|i| args.get(i + 1)).cloned()
        };
        assert_eq!(value("--parallel").as_deref(), Some("1"), "{args:?}");
        assert_eq!(
            value("--context-length").as_deref(),
            Some("656"),
            "{args:?}"
        );
        assert_eq!(
            value("--model").as_deref(),
            Some("bench=m.gguf"),
            "{args:?}"
        );
    }

    #[test]
    fn millis_are_the_lowest_and_the_median() {
        let odd = Millis::of(&[3.0, 1.0, 2.0]).expect("values");
        assert_eq!((odd.best, odd.median), (1.0, 2.0));
        let even = Millis::of(&[4.0, 1.0, 2.0, 3.0]).expect("values");
        assert_eq!((even.best, even.median), (1.0, 2.5));
        assert!(Millis::of(&[]).is_none());
    }
}
