//! Measurements (printed; run with `--nocapture`): time to first token and tokens/s of the
//! same greedy generation through the engine API and over HTTP (SSE), aggregate tokens/s at
//! 1, 4 and 16 concurrent streams, the per-token and the first-token cost HTTP adds on a
//! backend whose tokens cost nothing (scripted), cached model load time in a cold `llmlocal
//! serve` process, and the idle RSS of `llmlocal serve` with the real plugins discovered, with
//! no model loaded and with one. The
//! assertions check that both paths produce the same text and that the numbers are sane; the
//! targets (HTTP >= 0.97x the engine, idle RSS < 50 MB) are reported, not enforced, since a
//! shared 2-core machine cannot hold them steady.
//!
//! Where the HTTP gap comes from (measured on a quiet 16-core host): the server + client add
//! about 1 us of CPU per token (scripted backend), yet the fixture model streams ~10% slower
//! over HTTP at ~7000 tok/s. llama.cpp runs one thread per core and its threads meet at a
//! barrier for every op, so each token's wakeups (server task, client) preempt a compute
//! thread and the whole token waits; at real models' 20-100 tok/s that is < 0.1%.
//! `$LLMLOCAL_BENCH_THREADS` (e.g. "16,15,8") compares other llama.cpp thread counts.
//!
//! `$LLMLOCAL_BENCH_GGUF` names a model of real size (e.g. the 1B benchmark model that
//! `gpu-bench write-model` makes) for the same HTTP vs engine comparison at its speed;
//! `$LLMLOCAL_BENCH_DEVICE` (default cpu) picks where it runs. `cargo xtask bench --suite
//! server` runs these measurements.

mod server_support;

use futures_util::StreamExt;
use llmlocal::{
    engine::{Engine, EngineSettings, Event, GenerationConfig, ModelEntry, Prompt},
    server::ServerSettings,
};
use serde_json::json;
use server_support::{client, registry, TestServer};
use std::time::{Duration, Instant};

const TOKENS: u32 = 400;
const RUNS: usize = 9;

/// How long each compared generation is, and how many of each path.
#[derive(Debug, Clone, Copy)]
struct Length {
    tokens: u32,
    runs: usize,
}

/// The fixture model streams thousands of tokens/s: long generations, many runs.
const FIXTURE: Length = Length {
    tokens: TOKENS,
    runs: RUNS,
};

#[derive(Debug, Clone, Copy)]
struct Run {
    ttft_ms: f64,
    tokens_per_s: f64,
    tokens: usize,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn config(tokens: u32) -> GenerationConfig {
    GenerationConfig {
        ignore_eos: true,
        ..GenerationConfig::greedy(tokens)
    }
}

async fn engine_run(engine: &Engine, tokens: u32) -> (Run, String) {
    let started = Instant::now();
    let mut stream = engine
        .generate("m", Prompt::Text("uvw".into()), config(tokens))
        .await
        .expect("starts");
    let (mut first, mut text, mut tokens) = (None, String::new(), 0usize);
    while let Some(event) = stream.next().await {
        match event.expect("no error") {
            Event::Text(piece) => {
                first.get_or_insert_with(Instant::now);
                text.push_str(&piece);
            }
            Event::Done(done) => tokens = done.completion_tokens as usize,
            _ => {}
        }
    }
    (measure(started, first, tokens), text)
}

/// One streamed completion over HTTP; `http` is reused, so its connection is kept alive as a
/// real client's would be (a new connection per run would put TCP setup into TTFT).
async fn http_run(server: &TestServer, http: &reqwest::Client, tokens: u32) -> (Run, String) {
    let body = json!({"model": "m", "prompt": "uvw", "stream": true, "ignore_eos": true,
                      "max_tokens": tokens, "temperature": 0,
                      "stream_options": {"include_usage": true}});
    let started = Instant::now();
    let mut response = http
        .post(server.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .expect("request");
    let (mut first, mut raw) = (None, String::new());
    while let Some(chunk) = response.chunk().await.expect("read") {
        let chunk = std::str::from_utf8(&chunk).expect("utf-8");
        if first.is_none() && has_text(chunk) {
            first = Some(Instant::now());
        }
        raw.push_str(chunk);
    }
    let (events, done) = server_support::parse_sse(&raw);
    assert!(done);
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    let usage = events
        .iter()
        .find_map(|e| e["usage"]["completion_tokens"].as_u64());
    let tokens = usage.expect("a usage chunk") as usize;
    (measure(started, first, tokens), text)
}

/// Whether an SSE chunk holds an event with non-empty `text` (a chunk may hold several).
fn has_text(chunk: &str) -> bool {
    const KEY: &str = "\"text\":\"";
    chunk
        .match_indices(KEY)
        .any(|(at, _)| !chunk[at + KEY.len()..].starts_with('"'))
}

fn measure(started: Instant, first: Option<Instant>, tokens: usize) -> Run {
    let first = first.expect("a first token");
    let decode = first.elapsed().as_secs_f64();
    Run {
        ttft_ms: (first - started).as_secs_f64() * 1000.0,
        tokens_per_s: (tokens.saturating_sub(1)) as f64 / decode.max(1e-9),
        tokens,
    }
}

async fn aggregate(server: &TestServer, streams: usize) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let url = server.url("/v1/completions");
            tokio::spawn(async move {
                let body = json!({"model": "m", "prompt": "uvw", "ignore_eos": true,
                                  "max_tokens": TOKENS, "temperature": 0});
                let v: serde_json::Value = client()
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .expect("req")
                    .json()
                    .await
                    .expect("json");
                v["usage"]["completion_tokens"].as_u64().expect("usage")
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// The fixture model served with `threads` CPU threads per generation (0 = the backend's
/// default: every core).
async fn fixture_server(threads: u32) -> (Engine, TestServer) {
    let fixtures = llmlocal_fixtures::ensure_default().expect("fixtures");
    model_server(&fixtures.gguf_q8_0, "cpu", threads).await
}

/// `path` as model `m` on llama.cpp, on `device`, in an engine and a server over it.
async fn model_server(path: &std::path::Path, device: &str, threads: u32) -> (Engine, TestServer) {
    let mut settings = EngineSettings {
        threads,
        device: device.into(),
        ..EngineSettings::default()
    };
    settings.models.insert(
        "m".into(),
        ModelEntry {
            backend: Some("llama-cpp".into()),
            ..ModelEntry::new(path.to_string_lossy())
        },
    );
    let engine = Engine::new(settings, registry(&["llama_cpp"]), None);
    let server = TestServer::start(engine.clone(), ServerSettings::default()).await;
    (engine, server)
}

/// Engine API vs HTTP SSE, interleaved runs; returns HTTP/engine tokens/s.
async fn compare(engine: &Engine, server: &TestServer, label: &str, length: Length) -> f64 {
    let Length { tokens, runs } = length;
    let http_client = client();
    engine_run(engine, tokens).await; // load + warm up
    http_run(server, &http_client, tokens).await;
    let (mut direct, mut http) = (Vec::new(), Vec::new());
    let (mut direct_text, mut http_text) = (String::new(), String::new());
    for _ in 0..runs {
        let (run, text) = engine_run(engine, tokens).await;
        direct.push(run);
        direct_text = text;
        let (run, text) = http_run(server, &http_client, tokens).await;
        http.push(run);
        http_text = text;
    }
    assert_eq!(
        http_text, direct_text,
        "same text over HTTP and through the engine"
    );
    assert!(direct
        .iter()
        .chain(&http)
        .all(|r| r.tokens == tokens as usize));
    let ttft = |runs: &[Run]| median(runs.iter().map(|r| r.ttft_ms).collect());
    let tps = |runs: &[Run]| median(runs.iter().map(|r| r.tokens_per_s).collect());
    let ratio = tps(&http) / tps(&direct);
    println!(
        "BENCH {label}, {tokens} tokens, median of {runs}: engine TTFT {:.2} ms, \
         {:.1} tok/s; HTTP SSE TTFT {:.2} ms, {:.1} tok/s; HTTP/engine = {ratio:.3}",
        ttft(&direct),
        tps(&direct),
        ttft(&http),
        tps(&http)
    );
    ratio
}

#[tokio::test(flavor = "multi_thread")]
async fn http_versus_engine_throughput_on_the_fixture_model() {
    let (engine, server) = fixture_server(0).await;
    let label = "fixture q8_0 llama-cpp (threads: all cores)";
    let ratio = compare(&engine, &server, label, FIXTURE).await;
    for streams in [1, 4, 16] {
        println!(
            "BENCH aggregate over HTTP, {streams} streams: {:.0} tok/s",
            aggregate(&server, streams).await
        );
    }
    // The ratio is reported, not asserted: on a shared 2-core CI machine it swings from 0.47
    // to 0.96 with the load of other tests (a timing assertion would be flaky).
    println!("BENCH HTTP / engine tokens/s (all cores): {ratio:.3}");
    // llama.cpp's threads meet at a barrier for every op of every token: when they use every
    // core, the server's and the client's work for a token preempts one of them and the
    // whole token waits. Other thread counts: $LLMLOCAL_BENCH_THREADS (e.g. "8,15"), else
    // every core but one.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let counts: Vec<u32> = match std::env::var("LLMLOCAL_BENCH_THREADS") {
        Ok(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        Err(_) => (cores > 1).then_some(cores - 1).into_iter().collect(),
    };
    for threads in counts {
        let (engine, server) = fixture_server(threads).await;
        let label = format!("fixture q8_0 llama-cpp (threads: {threads} of {cores} cores)");
        compare(&engine, &server, &label, FIXTURE).await;
    }
}

/// The same comparison on a model of real size (`$LLMLOCAL_BENCH_GGUF`): at tens of
/// tokens/s, what HTTP costs a user. Reported, not asserted (see the module doc).
#[tokio::test(flavor = "multi_thread")]
async fn http_versus_engine_throughput_on_a_real_size_model() {
    let Some(path) = bench_gguf() else {
        eprintln!("SKIP: set LLMLOCAL_BENCH_GGUF to a GGUF model of real size");
        return;
    };
    let device = std::env::var("LLMLOCAL_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let (engine, server) = model_server(&path, &device, 0).await;
    let name = path
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy());
    let label = format!("{name} llama-cpp on {device} (threads: default)");
    let length = Length {
        tokens: 128,
        runs: 7,
    };
    let ratio = compare(&engine, &server, &label, length).await;
    println!("BENCH HTTP / engine tokens/s ({name}, {device}): {ratio:.3}");
}

/// VmRSS of a process, in bytes (Linux).
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[test]
fn idle_rss_of_serve_with_plugins_discovered() {
    let dir = real_plugins_folder();
    let (mut child, line) = spawn_serve(dir.path(), &[]);
    std::thread::sleep(Duration::from_millis(500));
    let bytes = rss(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("llmlocal listening on"), "{line}");
    let Some(bytes) = bytes else {
        eprintln!("SKIP: no /proc/PID/status here");
        return;
    };
    println!(
        "BENCH idle RSS of llmlocal serve (llama-cpp + candle plugins, no model): {:.1} MB",
        bytes as f64 / 1e6
    );
    assert!(bytes < 500_000_000, "idle RSS {bytes}");
}

/// Idle RSS of `llmlocal serve` with one model loaded (issue #23 tracks the idle RSS of
/// `serve`; this is the same process after an Ollama load-only request, nothing generating):
/// the fixture Q8_0 GGUF, stories260K when present and `$LLMLOCAL_BENCH_GGUF` when set, on
/// llama-cpp in-process. The number includes the weights (mapped pages touched) and the KV
/// cache of the default context.
#[tokio::test(flavor = "multi_thread")]
async fn idle_rss_of_serve_with_one_model_loaded() {
    let fixtures = llmlocal_fixtures::ensure_default().expect("fixtures");
    let plugins = real_plugins_folder();
    let mut cases = vec![("fixture q8_0 GGUF", fixtures.gguf_q8_0.clone())];
    if let Some(dir) = stories260k() {
        cases.push(("stories260K GGUF", dir.join("stories260K.gguf")));
    }
    if let Some(path) = std::env::var_os("LLMLOCAL_BENCH_GGUF") {
        cases.push(("$LLMLOCAL_BENCH_GGUF", path.into()));
    }
    for (label, path) in cases {
        let (mut child, url) = serve_child(plugins.path(), "llama-cpp", &path);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss(child.id());
        let response = client()
            .post(format!("{url}/api/generate"))
            .json(&json!({"model": "m"}))
            .send()
            .await
            .expect("load request");
        let status = response.status();
        let body: serde_json::Value = response.json().await.expect("json");
        // Let the load's transient allocations settle, as the no-model case does.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(status.is_success(), "{label}: {body}");
        assert_eq!(body["done_reason"], "load", "{label}: {body}");
        let (Some(before), Some(after)) = (before, after) else {
            eprintln!("SKIP: no /proc/PID/status here");
            return;
        };
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        println!(
            "BENCH idle RSS of llmlocal serve with one model loaded ({label}, {:.1} MB file, \
             llama-cpp in-process): {:.1} MB (before the load: {:.1} MB)",
            size as f64 / 1e6,
            after as f64 / 1e6,
            before as f64 / 1e6
        );
        assert!(
            after > before,
            "loading a model did not grow the process: {after} <= {before}"
        );
    }
}

/// The shared real tiny model's folder, if present.
fn stories260k() -> Option<std::path::PathBuf> {
    llmlocal_fixtures::shared::stories260k()
}

/// A folder holding copies of the llama.cpp and candle plugins only (no test plugins).
fn real_plugins_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["llama_cpp", "candle"] {
        let from = server_support::plugin_library(name);
        std::fs::copy(&from, dir.path().join(from.file_name().expect("name"))).expect("copy");
    }
    dir
}

/// `llmlocal serve` on an ephemeral loopback port with only the plugins in `plugins` and
/// `args`; returns the child and its first stdout line (the address it listens on).
fn spawn_serve(plugins: &std::path::Path, args: &[&str]) -> (std::process::Child, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_llmlocal"))
        .args(["serve", "--bind", "127.0.0.1:0", "--plugin-dir"])
        .arg(plugins)
        .args(args)
        .env("LLMLOCAL_PLUGIN_PATH", "")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start serve");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("line");
    (child, line)
}

/// A `llmlocal serve` child serving `path` as model `m` with `backend`; returns it and its
/// address once it listens.
fn serve_child(
    plugins: &std::path::Path,
    backend: &str,
    path: &std::path::Path,
) -> (std::process::Child, String) {
    let model = format!("m={}", path.display());
    let (child, line) = spawn_serve(plugins, &["--backend", backend, "--model", &model]);
    let url = line
        .trim()
        .strip_prefix("llmlocal listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, url)
}

/// Cached model load time: a fresh `llmlocal serve` process (plugins discovered, nothing
/// loaded), the model already on disk; the time of an Ollama load-only request (empty
/// prompt), i.e. from the load call to the model being ready. Median of 3 cold processes.
#[tokio::test(flavor = "multi_thread")]
async fn cached_model_load_time_in_a_cold_process() {
    let fixtures = llmlocal_fixtures::ensure_default().expect("fixtures");
    let plugins = real_plugins_folder();
    let mut cases = vec![("fixture q8_0 GGUF", "llama-cpp", fixtures.gguf_q8_0.clone())];
    if let Some(dir) = stories260k() {
        cases.push((
            "stories260K GGUF",
            "llama-cpp",
            dir.join("stories260K.gguf"),
        ));
        cases.push(("stories260K HF folder", "candle", dir.join("hf")));
    }
    for (label, backend, path) in cases {
        let mut times = Vec::new();
        for _ in 0..3 {
            let (mut child, url) = serve_child(plugins.path(), backend, &path);
            let started = Instant::now();
            let response = client()
                .post(format!("{url}/api/generate"))
                .json(&json!({"model": "m"}))
                .send()
                .await
                .expect("load request");
            let status = response.status();
            let body: serde_json::Value = response.json().await.expect("json");
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            let _ = child.kill();
            let _ = child.wait();
            assert!(status.is_success(), "{label}: {body}");
            assert_eq!(body["done_reason"], "load", "{label}: {body}");
        }
        println!(
            "BENCH cached model load, cold process, {label} via {backend}: median {:.1} ms (runs {:?})",
            median(times.clone()),
            times.iter().map(|t| (t * 10.0).round() / 10.0).collect::<Vec<_>>()
        );
    }
}

/// Where the HTTP path's time per token goes, without a model's cost in the way: the
/// scripted backend (a token costs ~nothing) through the engine API and over HTTP SSE, same
/// tokens; the difference is what the server + client add per token (framing, channel hop,
/// task wakeup, write syscall, loopback, client read).
#[tokio::test(flavor = "multi_thread")]
async fn per_token_cost_of_http_streaming_on_a_free_backend() {
    const N: u32 = 20_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = server_support::scripted_settings(dir.path(), &[("m", "abcdefghij")]);
    settings.context_length = Some(1 << 16);
    let engine = server_support::scripted_engine(settings);
    let server_settings = ServerSettings {
        max_tokens_cap: N,
        ..ServerSettings::default()
    };
    let server = TestServer::start(engine.clone(), server_settings).await;
    let http_client = client();
    let config = GenerationConfig {
        ignore_eos: true,
        ..GenerationConfig::greedy(N)
    };
    let (mut direct, mut http) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let started = Instant::now();
        let mut stream = engine
            .generate("m", Prompt::Text("x".into()), config.clone())
            .await
            .expect("starts");
        let mut tokens = 0;
        while let Some(event) = stream.next().await {
            if let Event::Done(done) = event.expect("no error") {
                tokens = done.completion_tokens;
            }
        }
        assert_eq!(tokens, N);
        direct.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(N));

        let body = json!({"model": "m", "prompt": "x", "stream": true, "ignore_eos": true,
                          "max_tokens": N, "temperature": 0});
        let started = Instant::now();
        let mut response = http_client
            .post(server.url("/v1/completions"))
            .json(&body)
            .send()
            .await
            .expect("request");
        let response_status = response.status().as_u16();
        let (mut chunks, mut bytes) = (0usize, 0usize);
        while let Some(chunk) = response.chunk().await.expect("read") {
            chunks += 1;
            bytes += chunk.len();
        }
        assert_eq!(response_status, 200);
        assert!(bytes > N as usize * 20, "{bytes} bytes for {N} tokens");
        http.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(N));
        println!("BENCH   (one HTTP run: {N} tokens in {chunks} body chunks)");
    }
    let (direct, http) = (median(direct), median(http));
    println!(
        "BENCH per token, scripted backend, {N} tokens, median of {RUNS}: engine API {direct:.2} us, \
         HTTP SSE {http:.2} us, HTTP adds {:.2} us/token",
        http - direct
    );
    assert!(http > 0.0 && direct > 0.0);
}

/// What HTTP adds to the time to the first token, without a model's cost in the way: the
/// scripted backend through the engine API and as an SSE completion over a kept-alive
/// connection (request parsing, JSON, the first event's framing and the loopback trip).
#[tokio::test(flavor = "multi_thread")]
async fn time_to_first_token_over_http_on_a_free_backend() {
    const RUNS: usize = 51;
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = server_support::scripted_settings(dir.path(), &[("m", "abcdefghij")]);
    let engine = server_support::scripted_engine(settings);
    let server = TestServer::start(engine.clone(), ServerSettings::default()).await;
    let http_client = client();
    let (mut direct, mut http) = (Vec::new(), Vec::new());
    for run in 0..=RUNS {
        let (run_engine, engine_text) = engine_run(&engine, 4).await;
        let (run_http, http_text) = http_run(&server, &http_client, 4).await;
        assert_eq!(http_text, engine_text, "same tokens both ways");
        // The first run of each warms up (connection, allocator).
        if run > 0 {
            direct.push(run_engine.ttft_ms);
            http.push(run_http.ttft_ms);
        }
    }
    // The floor: one bare HTTP round trip on the same connection and runtime.
    let mut round_trip = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let response = http_client.get(server.url("/health")).send().await;
        let body = response.expect("health").bytes().await.expect("body");
        round_trip.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(!body.is_empty());
    }
    let (direct, http, round_trip) = (median(direct), median(http), median(round_trip));
    println!(
        "BENCH TTFT, scripted backend, median of {RUNS}: engine API {direct:.3} ms, HTTP SSE \
         {http:.3} ms, HTTP adds {:.3} ms (a bare GET /health round trip: {round_trip:.3} ms)",
        http - direct
    );
    assert!(http > 0.0 && direct > 0.0);
}

/// The first user message of the chat-turn-2 measurement: about `tokens` tokens of prose.
fn long_message(tokens: usize, round: usize) -> String {
    const SENTENCE: &str = "The little fox walked along the river and looked at the trees. ";
    // Round first, so rounds share no more than the template's opening tokens.
    let mut text = format!("Round {round}. ");
    while text.len() < tokens * 3 {
        text.push_str(SENTENCE);
    }
    text
}

/// One streamed chat over HTTP: time to the first non-empty content, the answer, and the
/// prompt and cached token counts from the final usage chunk.
async fn chat_ttft(
    server: &TestServer,
    http: &reqwest::Client,
    messages: &serde_json::Value,
    cache_prompt: bool,
) -> (f64, String, u64, u64, f64) {
    let body = json!({"model": "m", "messages": messages, "stream": true, "max_tokens": 16,
                      "temperature": 0, "cache_prompt": cache_prompt,
                      "stream_options": {"include_usage": true}});
    let started = Instant::now();
    let mut response = http
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("request");
    const KEY: &str = "\"content\":\"";
    let (mut first, mut raw) = (None, String::new());
    while let Some(chunk) = response.chunk().await.expect("read") {
        let chunk = std::str::from_utf8(&chunk).expect("utf-8");
        let has_content = chunk
            .match_indices(KEY)
            .any(|(at, _)| !chunk[at + KEY.len()..].starts_with('"'));
        if first.is_none() && has_content {
            first = Some(started.elapsed().as_secs_f64() * 1000.0);
        }
        raw.push_str(chunk);
    }
    let (events, done) = server_support::parse_sse(&raw);
    assert!(done, "{raw}");
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    let usage = &events.last().expect("usage chunk")["usage"];
    let prompt = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("cached_tokens");
    // A random model may end at once: then the end is the first token.
    let ttft = first.unwrap_or_else(|| started.elapsed().as_secs_f64() * 1000.0);
    // The plugin's own time to its first token (prompt processing and the first sample).
    let prompt_ms = events
        .iter()
        .find_map(|e| e["timings"]["prompt_ms"].as_f64())
        .expect("timings");
    (ttft, text, prompt, cached, prompt_ms)
}

/// Time to the first token of a fresh (uncached) completion of `n` prompt tokens: what
/// evaluating only a turn's new tokens costs.
async fn fresh_ttft(server: &TestServer, http: &reqwest::Client, n: usize) -> f64 {
    // Ordinary token ids of the stories260K vocabulary (the bench models share it).
    let ids: Vec<u32> = (0..n).map(|i| 300 + (i % 200) as u32).collect();
    let body = json!({"model": "m", "prompt": ids, "max_tokens": 1, "temperature": 0,
                      "cache_prompt": false, "ignore_eos": true});
    let response = http
        .post(server.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .expect("request");
    let v: serde_json::Value = response.json().await.expect("json");
    v["timings"]["prompt_ms"].as_f64().expect("timings")
}

/// A chat's second turn after a long first turn (~1000 tokens): time to the first token
/// with the prompt cache (the first turn's KV cells reused) and without it (`cache_prompt:
/// false`), the same answer both ways; interleaved rounds (the order alternates), medians,
/// 2 threads. On `$LLMLOCAL_BENCH_GGUF` (e.g. the bench's random 85M F16 llama, written by
/// `cargo xtask bench` to target/bench/random-llama-85m-f16.gguf), else on stories260K.
/// `cargo xtask bench --suite server -- chat_turn2` runs only this one.
#[tokio::test(flavor = "multi_thread")]
async fn chat_turn2_time_to_first_token_with_and_without_the_prompt_cache() {
    const ROUNDS: usize = 5;
    const FIRST_TURN_TOKENS: usize = 1000;
    let path = match bench_gguf() {
        Some(path) => path,
        None => match stories260k() {
            Some(dir) => dir.join("stories260K.gguf"),
            None => {
                eprintln!("SKIP: set LLMLOCAL_BENCH_GGUF or LLMLOCAL_SHARED_MODELS");
                return;
            }
        },
    };
    let (_engine, server) = model_server(&path, "cpu", 2).await;
    let http = client();
    let (mut with_cache, mut without, mut counts) = (Vec::new(), Vec::new(), Vec::new());
    let (mut plugin_hit, mut plugin_miss, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        let mut messages = vec![json!({"role": "user",
                                       "content": long_message(FIRST_TURN_TOKENS, round)})];
        let (_, answer, ..) = chat_ttft(&server, &http, &json!(messages), true).await;
        messages.push(json!({"role": "assistant", "content": answer}));
        messages.push(json!({"role": "user", "content": "And then what happened?"}));
        let messages = json!(messages);
        let cached_first = round % 2 == 0;
        let mut runs = Vec::new();
        for cache in [cached_first, !cached_first] {
            runs.push((cache, chat_ttft(&server, &http, &messages, cache).await));
        }
        let (hit, miss) = match runs.as_slice() {
            [(true, hit), (_, miss)] | [(_, miss), (true, hit)] => (hit.clone(), miss.clone()),
            _ => unreachable!("one run with the cache, one without"),
        };
        assert_eq!(hit.1, miss.1, "the cache changed the answer");
        assert_eq!(miss.3, 0, "cache_prompt false reused tokens");
        // Round 0 warms up (model load, first-use buffers).
        if round > 0 {
            with_cache.push(hit.0);
            without.push(miss.0);
            counts.push((hit.2, hit.3));
            plugin_hit.push(hit.4);
            plugin_miss.push(miss.4);
            let new_tokens = (hit.2 - hit.3) as usize;
            fresh.push(fresh_ttft(&server, &http, new_tokens).await);
        }
    }
    let (prompt, cached) = counts[0];
    let name = path
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy());
    let (hit, miss) = (median(with_cache.clone()), median(without.clone()));
    println!(
        "BENCH chat turn 2 TTFT, {name}, 2 threads, {prompt} prompt tokens ({cached} cached), \
         median of {ROUNDS}: with the prompt cache {hit:.1} ms (runs {with_cache:.1?}), \
         without {miss:.1} ms (runs {without:.1?}), {:.1}x faster; in the plugin (timings \
         prompt_ms): {:.1} ms with, {:.1} ms without, {:.1} ms for the {} new tokens alone",
        miss / hit.max(1e-9),
        median(plugin_hit),
        median(plugin_miss),
        median(fresh),
        prompt - cached
    );
}

/// `$LLMLOCAL_BENCH_GGUF` as an absolute path: a relative one is taken from the workspace
/// root (where `cargo xtask bench` is run; tests run in host/), since the engine reads a
/// relative model spec as a hub repository.
fn bench_gguf() -> Option<std::path::PathBuf> {
    let path = std::path::PathBuf::from(std::env::var_os("LLMLOCAL_BENCH_GGUF")?);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = if path.is_absolute() {
        path
    } else {
        root.join(path)
    };
    match std::fs::canonicalize(&path) {
        Ok(path) => Some(path),
        Err(err) => panic!("LLMLOCAL_BENCH_GGUF {}: {err}", path.display()),
    }
}
