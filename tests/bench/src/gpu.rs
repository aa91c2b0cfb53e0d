//! GPU benchmark (issue #9): the backend plugins on a CUDA device, measured through the host
//! contract and through `llmlocal serve`'s HTTP API, against llama.cpp driven directly
//! through its C API on the same llama.cpp build, plus CPU/GPU greedy agreement and continuous batching.
//!
//! The GPU machine has no Rust toolchain: `cargo xtask gpu-build` packs the `gpu-bench` binary,
//! the plugins and the llama.cpp source, and `scripts/gpu/device.sh` runs this there.

mod direct_process;
mod http;
mod rounds;

use crate::{
    median,
    plugin::{self, Kind},
    Setup, Speed,
};
use anyhow::{anyhow, bail, Context as _};
use http::Client;
use llmlocal::plugins::LoadedModel;
use llmlocal_plugin_api::Step;
use serde::Serialize;
use std::{
    io::{BufRead, Read},
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

/// Aggregate tokens/s of `n_seq` sequences decoded together by llama.cpp directly (one token
/// per sequence per decode, greedy on one thread): a reference for the plugin's continuous
/// batching. Runs `direct-bench batched MODEL N_PROMPT N_GEN N_SEQ`, which prints one JSON line.
pub fn direct_batched(exe: &Path, setup: &Setup, n_seq: usize) -> anyhow::Result<f64> {
    let output = Command::new(exe)
        .arg("batched")
        .arg(&setup.model)
        .arg(setup.prompt_tokens.to_string())
        .arg(setup.gen_tokens.to_string())
        .arg(n_seq.to_string())
        // The plugin's thread count when the bench sets one (direct-bench keeps llama.cpp's
        // default of 4 otherwise; the plugin's default is one per physical core).
        .env("DIRECT_BENCH_THREADS", setup.threads.to_string())
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("run {}", exe.display()))?;
    if !output.status.success() {
        bail!("{} batched failed: {}", exe.display(), output.status);
    }
    let row: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("direct-bench's JSON output")?;
    row["tg_tps"]
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
    let mut server = Server { child, addr };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok((status, _)) = http(&server.addr, "GET", "/health", "") {
            if status == 200 {
                return Ok(server);
            }
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            bail!("llmlocal serve exited ({status}); see {}", log.display());
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

/// One request on a connection of its own; the status and the whole body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    Client::new(addr).exchange(method, path, body, |_, status, reader| {
        Ok((status, read_text(reader)?))
    })
}

fn read_text(reader: &mut impl Read) -> anyhow::Result<String> {
    let mut text = String::new();
    reader.read_to_string(&mut text)?;
    Ok(text)
}

/// The lowest and the median of a set of times.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Millis {
    pub best: f64,
    pub median: f64,
}

impl Millis {
    fn of(values: &[f64]) -> Option<Millis> {
        Some(Millis {
            median: median(values)?,
            best: values.iter().copied().fold(f64::INFINITY, f64::min),
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
    /// `GET /health` on the same connection, one after each measured prompt run: what any
    /// request costs there (the client's write and wake-up, the server's wake-up, HTTP
    /// parsing), without the engine. `None` when no run was measured.
    pub round_trip_ms: Option<Millis>,
}

/// What one set of streamed HTTP runs measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpResult {
    pub speed: Speed,
    pub timing: HttpTiming,
}

impl HttpResult {
    /// Prompt tokens/s from the prompt-only runs' time to the first token event (and the
    /// server's own prompt time next to the client's), generated tokens/s of the full runs
    /// from the first token event to the last.
    fn of(
        prompt_runs: &[HttpRun],
        gen_runs: &[HttpRun],
        round_trips: &[f64],
        prompt_tokens: usize,
    ) -> HttpResult {
        let ttft: Vec<f64> = prompt_runs.iter().map(|r| r.ttft_ms).collect();
        let server_ms: Option<Vec<f64>> = prompt_runs.iter().map(|r| r.server_prompt_ms).collect();
        let overhead: Option<Vec<f64>> = prompt_runs
            .iter()
            .map(|r| r.server_prompt_ms.map(|s| r.ttft_ms - s))
            .collect();
        let pp: Vec<f64> = ttft
            .iter()
            .map(|ms| prompt_tokens as f64 * 1000.0 / ms)
            .collect();
        let tg: Vec<f64> = gen_runs.iter().filter_map(|r| r.gen_tps).collect();
        HttpResult {
            speed: Speed::of(pp, tg),
            timing: HttpTiming {
                client_ttft_ms: Millis::of(&ttft).unwrap_or_default(),
                server_prompt_ms: server_ms.as_deref().and_then(Millis::of),
                overhead_ms: overhead.as_deref().and_then(Millis::of),
                round_trip_ms: Millis::of(round_trips),
            },
        }
    }
}

/// One measured streamed request.
struct HttpRun {
    ttft_ms: f64,
    server_prompt_ms: Option<f64>,
    /// Generated tokens/s from the first to the last token event.
    gen_tps: Option<f64>,
}

/// Streamed `/v1/completions` requests of one prompt (a JSON string, or a list of token ids;
/// greedy) on one keep-alive connection, as an SDK client sends them: prompt-only ones
/// (`max_tokens` 1) for the prompt speed and full ones (`max_tokens` = gen_tokens + 1) for the
/// generation speed, as [`plugin::run`] measures. Runs accumulate over calls of
/// [`HttpSeries::measure`].
pub struct HttpSeries<'a> {
    server: &'a mut Server,
    client: Client,
    prompt: serde_json::Value,
    gen_tokens: usize,
    prompt_runs: Vec<HttpRun>,
    gen_runs: Vec<HttpRun>,
    /// Milliseconds of each `GET /health` (see [`HttpTiming::round_trip_ms`]).
    round_trips: Vec<f64>,
}

impl<'a> HttpSeries<'a> {
    /// Opens the connection with one request that is not measured: the first request of a
    /// server loads the model (on demand), and the first of a connection pays its accept.
    pub fn start(
        server: &'a mut Server,
        prompt: &serde_json::Value,
        setup: &Setup,
    ) -> anyhow::Result<Self> {
        let client = Client::new(&server.addr);
        let mut series = HttpSeries {
            server,
            client,
            prompt: prompt.clone(),
            gen_tokens: setup.gen_tokens,
            prompt_runs: Vec::new(),
            gen_runs: Vec::new(),
            round_trips: Vec::new(),
        };
        series.run(Kind::Generation, false)?;
        Ok(series)
    }

    /// `n` more measured requests of each kind, made as [`plugin::schedule`] says.
    pub fn measure(&mut self, n: usize) -> anyhow::Result<()> {
        plugin::schedule(n, |kind, record| self.run(kind, record))
    }

    /// One request: prompt-only (`max_tokens` 1) or with the generation; kept when `record`.
    pub fn run(&mut self, kind: Kind, record: bool) -> anyhow::Result<()> {
        let run = self.request(kind.max_tokens(self.gen_tokens))?;
        if record {
            match kind {
                Kind::Prompt => {
                    self.prompt_runs.push(run);
                    let ms = self.round_trip()?;
                    self.round_trips.push(ms);
                }
                Kind::Generation => self.gen_runs.push(run),
            }
        }
        Ok(())
    }

    /// One `GET /health`: milliseconds from writing the request to the end of the answer.
    fn round_trip(&mut self) -> anyhow::Result<f64> {
        // `exchange` reads the rest of the body before it returns.
        let (started, status) =
            self.client
                .exchange("GET", "/health", "", |started, status, _| {
                    Ok((started, status))
                })?;
        if status != 200 {
            bail!("GET /health answered {status}");
        }
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    }

    pub fn result(&self, prompt_tokens: usize) -> HttpResult {
        HttpResult::of(
            &self.prompt_runs,
            &self.gen_runs,
            &self.round_trips,
            prompt_tokens,
        )
    }

    /// Connections opened so far (1 when every request reused the first).
    pub fn connects(&self) -> usize {
        self.client.connects
    }

    /// An error, or that the server exited (which is what to look at then).
    fn explain(&mut self, error: anyhow::Error) -> anyhow::Error {
        match self.server.child.try_wait() {
            Ok(Some(status)) => anyhow!("llmlocal serve exited ({status}); see its log"),
            _ => error,
        }
    }

    fn request(&mut self, max_tokens: usize) -> anyhow::Result<HttpRun> {
        let body = serde_json::json!({
            "model": "bench",
            "prompt": self.prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": true,
            // As the in-process runs: a random model may pick EOS at any point.
            "ignore_eos": true,
        })
        .to_string();
        let run = self.client.exchange(
            "POST",
            "/v1/completions",
            &body,
            |started, status, reader| {
                if status != 200 {
                    bail!(
                        "POST /v1/completions answered {status}: {}",
                        read_text(reader)?
                    );
                }
                stream_run(started, reader, max_tokens)
            },
        );
        run.map_err(|e| self.explain(e))
    }
}

/// Reads a streamed completion's events; times the token events from `started`. A token
/// whose text is held back (part of a UTF-8 character, a possible stop sequence) sends no
/// event, so one event fewer than `max_tokens` is accepted.
fn stream_run(
    started: Instant,
    reader: &mut impl BufRead,
    max_tokens: usize,
) -> anyhow::Result<HttpRun> {
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
    if times.len() + 1 < max_tokens {
        bail!(
            "the server streamed {} token events for max_tokens {max_tokens}",
            times.len(),
        );
    }
    Ok(HttpRun {
        ttft_ms: (*first - started).as_secs_f64() * 1000.0,
        server_prompt_ms: server_ms,
        gen_tps: (times.len() > 1)
            .then(|| (times.len() - 1) as f64 / (*last - *first).as_secs_f64()),
    })
}

/// One block of `setup.repeat` measured streamed requests of `prompt` (after the unmeasured
/// first one).
pub fn http_speed(
    server: &mut Server,
    prompt: &serde_json::Value,
    setup: &Setup,
) -> anyhow::Result<HttpResult> {
    let mut series = HttpSeries::start(server, prompt, setup)?;
    series.measure(setup.repeat)?;
    Ok(series.result(setup.prompt_tokens))
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

/// The text of exactly `n` prompt tokens of `model` (the bench prompt, detokenized), so an HTTP
/// request carries the same prompt length as the in-process runs.
pub fn prompt_text(model: &LoadedModel, n: usize) -> anyhow::Result<(Vec<u32>, String)> {
    let ids = plugin::prompt_tokens(model, n)?;
    let text = model.detokenize(&ids, true)?;
    Ok((ids, text))
}

/// One model file on the GPU: llama.cpp direct, the plugin through the host, over HTTP.
///
/// Speeds carry their runs, best and median; `direct`, `plugin` and `http_ids` ran in
/// `rounds` interleaved rounds of `repeat` runs each. The ratios `x_vs_y_*` are of medians
/// (the headline); `x_vs_y_*_best` are the same of the best runs.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    pub label: String,
    pub size_bytes: u64,
    pub rounds: usize,
    /// Runs of each path per round.
    pub repeat: usize,
    pub direct: Option<Speed>,
    pub plugin: Speed,
    /// `llmlocal serve`, streamed `/v1/completions` with the prompt as text (one block of
    /// `repeat` runs, not in the rounds).
    pub http: Option<Speed>,
    /// The same with the prompt as the token ids the plugin run used (as llama.cpp's pp).
    pub http_ids: Option<Speed>,
    /// Client TTFT vs the server's `timings.prompt_ms`, text prompt.
    pub http_timing: Option<HttpTiming>,
    /// Client TTFT vs the server's `timings.prompt_ms`, token-id prompt.
    pub http_ids_timing: Option<HttpTiming>,
    /// TCP connections the token-id series used (1: every request on one kept connection).
    pub http_ids_connections: Option<usize>,
    /// `direct-bench http` with the token-id requests (`--http-floor`): the same client
    /// against a server that runs the prompt on the thread that read the request.
    pub http_floor: Option<Speed>,
    pub http_floor_timing: Option<HttpTiming>,
    pub http_floor_vs_direct_pp: f64,
    pub http_floor_vs_direct_pp_best: f64,
    /// `llmlocal serve` / the floor, token-id prompts.
    pub http_ids_vs_floor_pp: f64,
    pub http_ids_vs_floor_pp_best: f64,
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
    pub plugin_vs_direct_pp_best: f64,
    pub plugin_vs_direct_tg_best: f64,
    pub http_vs_direct_pp_best: f64,
    pub http_ids_vs_direct_pp_best: f64,
    pub http_vs_direct_tg_best: f64,
    pub http_ids_vs_direct_tg_best: f64,
    pub http_vs_plugin_tg_best: f64,
    /// Aggregate generated tokens/s with N parallel streams.
    pub aggregate: Vec<(usize, f64)>,
    /// The same through llama.cpp directly (N sequences in one decode per step).
    pub direct_aggregate: Vec<(usize, f64)>,
    /// Generation tokens/s the weight bytes allow at the measured copy bandwidth.
    pub bandwidth_bound_tg: Option<f64>,
    /// plugin tg (median) / bandwidth bound.
    pub bandwidth_share: Option<f64>,
    /// candle on the same file and device, through the host.
    pub candle: Option<Speed>,
    pub candle_vs_llama_pp: f64,
    pub candle_vs_llama_tg: f64,
    pub candle_vs_llama_pp_best: f64,
    pub candle_vs_llama_tg_best: f64,
}

/// a / b of the prompt and generation speeds, of the medians and of the bests.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Ratios {
    pp: f64,
    tg: f64,
    pp_best: f64,
    tg_best: f64,
}

impl Ratios {
    fn of(a: Option<&Speed>, b: Option<&Speed>) -> Ratios {
        let (Some(a), Some(b)) = (a, b) else {
            return Ratios::default();
        };
        Ratios {
            pp: ratio(a.prompt_tps_median, b.prompt_tps_median),
            tg: ratio(a.gen_tps_median, b.gen_tps_median),
            pp_best: ratio(a.prompt_tps, b.prompt_tps),
            tg_best: ratio(a.gen_tps, b.gen_tps),
        }
    }
}

/// What to measure for one model.
pub struct ModelJob<'a> {
    pub label: String,
    pub setup: Setup,
    /// Interleaved rounds of direct, plugin and HTTP (token ids), `setup.repeat` runs each.
    pub rounds: usize,
    pub device: &'a str,
    pub direct_bench: Option<&'a Path>,
    pub llmlocal: Option<&'a Path>,
    /// Where `llmlocal serve` writes its log.
    pub log_dir: &'a Path,
    pub parallel: &'a [usize],
    /// Copy bandwidth in GB/s (bytes read + written per second / 2 = one direction).
    pub bandwidth_gbs: Option<f64>,
    pub candle: bool,
    /// Also measure `direct-bench http` (the thinnest HTTP front end, see
    /// scripts/gpu/direct_bench.c) in the rounds, with the same client as `llmlocal serve`.
    pub http_floor: bool,
}

/// The pp/tg comparison of one model: the three paths measured in interleaved rounds, and
/// the text-prompt HTTP block.
struct Paths {
    direct: Option<Speed>,
    plugin: Speed,
    http: Option<HttpResult>,
    http_ids: Option<HttpResult>,
    http_ids_connections: Option<usize>,
    http_floor: Option<HttpResult>,
}

/// Measures one model; each part that fails is reported on stderr and left out.
pub fn measure(dir: &Path, job: &ModelJob) -> anyhow::Result<ModelRow> {
    let setup = &job.setup;
    let size_bytes = std::fs::metadata(&setup.model)
        .with_context(|| format!("{}", setup.model.display()))?
        .len();
    let (paths, prompt) = paths(dir, job)?;
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
        .map(|exe| direct_aggregate(exe, job))
        .unwrap_or_default();
    let candle = job
        .candle
        .then(|| candle_speed(dir, job, &prompt))
        .and_then(|r| r.map_err(|e| eprintln!("candle: {e:#}")).ok());
    let bound = job.bandwidth_gbs.map(|gbs| gbs * 1e9 / size_bytes as f64);
    let d = paths.direct.as_ref();
    let through = Some(&paths.plugin);
    let h = paths.http.as_ref().map(|r| &r.speed);
    let hi = paths.http_ids.as_ref().map(|r| &r.speed);
    let plugin_direct = Ratios::of(through, d);
    let (http_direct, ids_direct) = (Ratios::of(h, d), Ratios::of(hi, d));
    let http_plugin = Ratios::of(h, through);
    let floor = paths.http_floor.as_ref().map(|r| &r.speed);
    let (floor_direct, ids_floor) = (Ratios::of(floor, d), Ratios::of(hi, floor));
    let candle_llama = Ratios::of(candle.as_ref(), through);
    Ok(ModelRow {
        label: job.label.clone(),
        size_bytes,
        rounds: job.rounds,
        repeat: setup.repeat,
        plugin_vs_direct_pp: plugin_direct.pp,
        plugin_vs_direct_tg: plugin_direct.tg,
        http_vs_direct_pp: http_direct.pp,
        http_ids_vs_direct_pp: ids_direct.pp,
        http_vs_direct_tg: http_direct.tg,
        http_ids_vs_direct_tg: ids_direct.tg,
        http_vs_plugin_tg: http_plugin.tg,
        plugin_vs_direct_pp_best: plugin_direct.pp_best,
        plugin_vs_direct_tg_best: plugin_direct.tg_best,
        http_vs_direct_pp_best: http_direct.pp_best,
        http_ids_vs_direct_pp_best: ids_direct.pp_best,
        http_vs_direct_tg_best: http_direct.tg_best,
        http_ids_vs_direct_tg_best: ids_direct.tg_best,
        http_vs_plugin_tg_best: http_plugin.tg_best,
        bandwidth_bound_tg: bound,
        bandwidth_share: bound.map(|b| ratio(paths.plugin.gen_tps_median, b)),
        direct: paths.direct,
        plugin: paths.plugin,
        http: paths.http.as_ref().map(|r| r.speed.clone()),
        http_ids: paths.http_ids.as_ref().map(|r| r.speed.clone()),
        http_timing: paths.http.map(|r| r.timing),
        http_ids_timing: paths.http_ids.map(|r| r.timing),
        http_ids_connections: paths.http_ids_connections,
        http_floor_vs_direct_pp: floor_direct.pp,
        http_floor_vs_direct_pp_best: floor_direct.pp_best,
        http_ids_vs_floor_pp: ids_floor.pp,
        http_ids_vs_floor_pp_best: ids_floor.pp_best,
        http_floor: paths.http_floor.as_ref().map(|r| r.speed.clone()),
        http_floor_timing: paths.http_floor.map(|r| r.timing),
        http_load: LoadShape::bench(setup),
        load_cost,
        aggregate,
        direct_aggregate,
        candle_vs_llama_pp: candle_llama.pp,
        candle_vs_llama_tg: candle_llama.tg,
        candle_vs_llama_pp_best: candle_llama.pp_best,
        candle_vs_llama_tg_best: candle_llama.tg_best,
        candle,
    })
}

/// Loads the plugin's model and starts `llmlocal serve` (both kept for all rounds), measures
/// the text-prompt HTTP block, then the interleaved rounds. Also returns the prompt.
fn paths(dir: &Path, job: &ModelJob) -> anyhow::Result<(Paths, Vec<u32>)> {
    let setup = &job.setup;
    eprintln!("{}: llama-cpp plugin on {} ...", job.label, job.device);
    let model = plugin::load_on(dir, "llama-cpp", setup, 1, job.device)?;
    let (prompt, text) = prompt_text(&model, setup.prompt_tokens)?;
    let mut server = job.llmlocal.and_then(|exe| start_server(exe, dir, job));
    let http = server.as_mut().and_then(|server| {
        eprintln!("{}: HTTP with a text prompt ...", job.label);
        http_speed(server, &serde_json::json!(text), setup)
            .map_err(|e| eprintln!("HTTP (text prompt): {e:#}"))
            .ok()
    });
    let mut floor = job.direct_bench.filter(|_| job.http_floor).and_then(|exe| {
        eprintln!("{}: HTTP floor (direct-bench http) ...", job.label);
        direct_process::start_http(exe, setup)
            .map_err(|e| eprintln!("HTTP floor: {e:#}"))
            .ok()
    });
    let measured = rounds::rounds(job, &model, server.as_mut(), floor.as_mut(), &prompt)?;
    let paths = Paths {
        direct: measured.direct,
        plugin: measured.plugin,
        http,
        http_ids_connections: measured.http_ids.as_ref().map(HttpSeries::connects),
        http_ids: measured
            .http_ids
            .map(|series| series.result(setup.prompt_tokens)),
        http_floor: measured
            .http_floor
            .map(|series| series.result(setup.prompt_tokens)),
    };
    Ok((paths, prompt))
}

/// `llmlocal serve` for the model, or `None` (reported) when it does not start.
fn start_server(exe: &Path, dir: &Path, job: &ModelJob) -> Option<Server> {
    eprintln!("{}: llmlocal serve over HTTP ...", job.label);
    let log = job.log_dir.join(format!("serve-{}.log", job.label));
    // Loaded as the plugin runs and direct-bench load it (one sequence, prompt + generation
    // + 16 cells), not with the server's defaults (the plugin's 4 sequences x the engine's
    // context, 8192 on the GPU machine: 32768 KV cells, 1 GiB for the 1B F16 model, against
    // 768): HTTP vs plugin vs direct then differ only in the path, not in the context
    // llama.cpp runs. [`load_cost`] measures what the defaults change.
    let shape = LoadShape::bench(&job.setup);
    serve(exe, dir, &job.setup, shape, 18_473, &log)
        .map_err(|e| eprintln!("HTTP: {e:#}"))
        .ok()
}

/// llama.cpp's batched decoding for each count of parallel streams.
fn direct_aggregate(exe: &Path, job: &ModelJob) -> Vec<(usize, f64)> {
    let mut short = job.setup.clone();
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

/// What the table's numbers are.
fn legend(rows: &[ModelRow]) -> String {
    let (rounds, repeat) = rows.first().map_or((0, 0), |r| (r.rounds, r.repeat));
    format!(
        "tok/s = medians of the runs: direct, plugin and http ids in {rounds} rounds x {repeat} \
         runs, one run of each in turn; http text and candle one block of {repeat}; pp from \
         prompt-only runs, tg from runs of prompt + generation (as llama-bench); (ratios of \
         medians) [ratios of best runs]\n"
    )
}

/// The rows as a plain-text table.
pub fn table(rows: &[ModelRow]) -> String {
    let mut out = legend(rows);
    out.push_str(
        "model      size GB | direct pp    tg | plugin pp   tg (ratio pp/tg) [best ratios]  | \
         http tg (/direct /plugin) [best]    | bound tg share | candle pp tg (ratio) [best]\n",
    );
    for r in rows {
        let d = r.direct.clone().unwrap_or_default();
        let h = r.http.clone().unwrap_or_default();
        let c = r.candle.clone().unwrap_or_default();
        out.push_str(&format!(
            "{:<10} {:>7.2} | {:>9.0} {:>5.0} | {:>9.0} {:>5.0} ({:.3}/{:.3}) [{:.3}/{:.3}] | \
             {:>7.0} ({:.3}/{:.3}) [{:.3}/{:.3}] | {:>8.0} {:>5.2} | {:>6.0} {:>5.0} ({:.2}/{:.2}) \
             [{:.2}/{:.2}]\n",
            r.label,
            r.size_bytes as f64 / 1e9,
            d.prompt_tps_median,
            d.gen_tps_median,
            r.plugin.prompt_tps_median,
            r.plugin.gen_tps_median,
            r.plugin_vs_direct_pp,
            r.plugin_vs_direct_tg,
            r.plugin_vs_direct_pp_best,
            r.plugin_vs_direct_tg_best,
            h.gen_tps_median,
            r.http_vs_direct_tg,
            r.http_vs_plugin_tg,
            r.http_vs_direct_tg_best,
            r.http_vs_plugin_tg_best,
            r.bandwidth_bound_tg.unwrap_or(0.0),
            r.bandwidth_share.unwrap_or(0.0),
            c.prompt_tps_median,
            c.gen_tps_median,
            r.candle_vs_llama_pp,
            r.candle_vs_llama_tg,
            r.candle_vs_llama_pp_best,
            r.candle_vs_llama_tg_best,
        ));
        out.push_str(&best_line(r));
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

/// The best runs of the interleaved paths, pp and tg, for a look past the medians.
fn best_line(r: &ModelRow) -> String {
    let speed = |name: &str, s: Option<&Speed>| {
        s.map(|s| format!("{name} {:.0} {:.0}", s.prompt_tps, s.gen_tps))
    };
    let parts: Vec<String> = [
        speed("direct", r.direct.as_ref()),
        speed("plugin", Some(&r.plugin)),
        speed("http ids", r.http_ids.as_ref()),
        speed("http floor", r.http_floor.as_ref()),
    ]
    .into_iter()
    .flatten()
    .collect();
    format!("           best runs pp tg: {}\n", parts.join(", "))
}

/// The HTTP prompt numbers of a row: pp with a text and a token-id prompt against direct,
/// and where the time to the first token goes (medians).
fn http_line(r: &ModelRow) -> String {
    if r.http.is_none() && r.http_ids.is_none() {
        return String::new();
    }
    let text = r.http.clone().unwrap_or_default();
    let ids = r.http_ids.clone().unwrap_or_default();
    let mut line = format!(
        "           http (load {} x {}) pp text {:.0} ({:.3} of direct) [{:.3}], ids {:.0} \
         ({:.3}) [{:.3}]; tg ids {:.0} ({:.3}) [{:.3}]; ids on {} connection(s)\n",
        r.http_load.parallel,
        r.http_load.context_length,
        text.prompt_tps_median,
        r.http_vs_direct_pp,
        r.http_vs_direct_pp_best,
        ids.prompt_tps_median,
        r.http_ids_vs_direct_pp,
        r.http_ids_vs_direct_pp_best,
        ids.gen_tps_median,
        r.http_ids_vs_direct_tg,
        r.http_ids_vs_direct_tg_best,
        r.http_ids_connections.unwrap_or(0),
    );
    for (what, timing) in [("text", r.http_timing), ("ids", r.http_ids_timing)] {
        if let Some(t) = timing {
            line.push_str(&timing_line(what, &t));
        }
    }
    line.push_str(&floor_line(r));
    line
}

/// `direct-bench http` against direct, and `llmlocal serve` against it (token-id prompts).
fn floor_line(r: &ModelRow) -> String {
    let (Some(floor), Some(timing)) = (&r.http_floor, &r.http_floor_timing) else {
        return String::new();
    };
    let mut line = format!(
        "           http floor (direct-bench http) pp {:.0} ({:.3} of direct) [{:.3}], \
         tg {:.0}; llmlocal ids / floor pp {:.3} [{:.3}]\n",
        floor.prompt_tps_median,
        r.http_floor_vs_direct_pp,
        r.http_floor_vs_direct_pp_best,
        floor.gen_tps_median,
        r.http_ids_vs_floor_pp,
        r.http_ids_vs_floor_pp_best,
    );
    line.push_str(&timing_line("flr", timing));
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
            ", server prompt_ms {:.2}, HTTP + host {:.2} ms (best {:.2})",
            server.median, over.median, over.best
        )),
        _ => line.push_str(" (the server sent no timings)"),
    }
    if let Some(trip) = t.round_trip_ms {
        line.push_str(&format!(", GET /health {:.2} ms", trip.median));
    }
    line.push('\n');
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

    #[test]
    fn ratios_are_of_the_medians_with_the_bests_beside() {
        let a = Speed::of(vec![90.0, 100.0, 200.0], vec![9.0, 10.0, 11.0]);
        let b = Speed::of(vec![100.0, 100.0, 100.0], vec![10.0, 10.0, 22.0]);
        let r = Ratios::of(Some(&a), Some(&b));
        assert_eq!((r.pp, r.pp_best), (1.0, 2.0));
        assert_eq!((r.tg, r.tg_best), (1.0, 0.5));
        assert_eq!(Ratios::of(None, Some(&b)), Ratios::default());
    }

    #[test]
    fn a_streamed_completion_is_timed_from_its_chunked_events() {
        let token = r#"data: {"choices":[{"finish_reason":null,"index":0,"text":"a"}]}"#;
        let last = r#"data: {"choices":[{"finish_reason":"length","index":0,"text":""}],"timings":{"prompt_ms":7.5}}"#;
        let events = format!("{token}\n\n{token}\n\n{token}\n\n{last}\n\ndata: [DONE]\n\n");
        // Chunks of 5 bytes: events are split across chunks.
        let mut body = String::new();
        for piece in events.as_bytes().chunks(5) {
            body.push_str(&format!(
                "{:x}\r\n{}\r\n",
                piece.len(),
                String::from_utf8_lossy(piece)
            ));
        }
        body.push_str("0\r\n\r\n");
        let started = Instant::now();
        let chunks = http::ChunkedReader::new(body.as_bytes());
        let run = stream_run(started, &mut std::io::BufReader::new(chunks), 3).expect("run");
        assert_eq!(run.server_prompt_ms, Some(7.5));
        assert!(run.ttft_ms >= 0.0 && run.gen_tps.is_some());
        // Fewer token events than asked for is an error.
        let chunks = http::ChunkedReader::new(body.as_bytes());
        assert!(stream_run(started, &mut std::io::BufReader::new(chunks), 9).is_err());
    }

    fn row() -> ModelRow {
        let speed = Speed::of(vec![1000.0, 1200.0], vec![100.0, 120.0]);
        let r = Ratios::of(Some(&speed), Some(&speed));
        ModelRow {
            label: "F16".into(),
            size_bytes: 2_471_000_000,
            rounds: 3,
            repeat: 3,
            direct: Some(speed.clone()),
            plugin: speed.clone(),
            http: Some(speed.clone()),
            http_ids: Some(speed.clone()),
            http_timing: None,
            http_ids_timing: None,
            http_ids_connections: Some(1),
            http_floor: Some(speed.clone()),
            http_floor_timing: Some(HttpTiming::default()),
            http_floor_vs_direct_pp: r.pp,
            http_floor_vs_direct_pp_best: r.pp_best,
            http_ids_vs_floor_pp: r.pp,
            http_ids_vs_floor_pp_best: r.pp_best,
            http_load: LoadShape::bench(&setup()),
            load_cost: None,
            plugin_vs_direct_pp: r.pp,
            plugin_vs_direct_tg: r.tg,
            http_vs_direct_pp: r.pp,
            http_ids_vs_direct_pp: r.pp,
            http_vs_direct_tg: r.tg,
            http_ids_vs_direct_tg: r.tg,
            http_vs_plugin_tg: r.tg,
            plugin_vs_direct_pp_best: r.pp_best,
            plugin_vs_direct_tg_best: r.tg_best,
            http_vs_direct_pp_best: r.pp_best,
            http_ids_vs_direct_pp_best: r.pp_best,
            http_vs_direct_tg_best: r.tg_best,
            http_ids_vs_direct_tg_best: r.tg_best,
            http_vs_plugin_tg_best: r.tg_best,
            aggregate: Vec::new(),
            direct_aggregate: Vec::new(),
            bandwidth_bound_tg: Some(1300.0),
            bandwidth_share: Some(0.09),
            candle: Some(speed),
            candle_vs_llama_pp: r.pp,
            candle_vs_llama_tg: r.tg,
            candle_vs_llama_pp_best: r.pp_best,
            candle_vs_llama_tg_best: r.tg_best,
        }
    }

    #[test]
    fn the_table_shows_medians_and_its_columns_line_up() {
        let text = table(&[row()]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("3 rounds x 3 runs, one run of each in turn"),
            "{text}"
        );
        let bars = |line: &str| -> Vec<usize> {
            line.char_indices()
                .filter(|&(_, c)| c == '|')
                .map(|(i, _)| i)
                .collect()
        };
        assert_eq!(bars(lines[1]), bars(lines[2]), "\n{text}");
        // Medians (1100, 110) in the row; the bests (1200 120) on the "best runs" line.
        assert!(lines[2].contains(" 1100   110 "), "{text}");
        assert!(lines[3].contains("plugin 1200 120"), "{text}");
        assert!(lines[3].contains("http floor 1200 120"), "{text}");
        assert!(
            text.contains("http floor (direct-bench http) pp 1100 (1.000 of direct)"),
            "{text}"
        );
    }
}
