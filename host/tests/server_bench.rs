//! Measurements (printed; run with `--nocapture`): time to first token and tokens/s of the
//! same greedy generation through the engine API and over HTTP (SSE), aggregate tokens/s at
//! 1, 4 and 16 concurrent streams, and the idle RSS of `llmlocal serve` with the real plugins
//! discovered and no model loaded. The assertions check that both paths produce the same
//! text and that the numbers are sane; the targets (HTTP >= 0.97x the engine, idle RSS
//! < 50 MB) are reported, not enforced, since a shared 2-core machine cannot hold them steady.

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
const RUNS: usize = 5;

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

fn config() -> GenerationConfig {
    GenerationConfig {
        ignore_eos: true,
        ..GenerationConfig::greedy(TOKENS)
    }
}

async fn engine_run(engine: &Engine) -> (Run, String) {
    let started = Instant::now();
    let mut stream = engine
        .generate("m", Prompt::Text("uvw".into()), config())
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
        }
    }
    (measure(started, first, tokens), text)
}

async fn http_run(server: &TestServer) -> (Run, String) {
    let body = json!({"model": "m", "prompt": "uvw", "stream": true, "ignore_eos": true,
                      "max_tokens": TOKENS, "temperature": 0,
                      "stream_options": {"include_usage": true}});
    let started = Instant::now();
    let mut response = client()
        .post(server.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .expect("request");
    let (mut first, mut raw) = (None, String::new());
    while let Some(chunk) = response.chunk().await.expect("read") {
        let chunk = std::str::from_utf8(&chunk).expect("utf-8");
        if first.is_none() && chunk.contains("\"text\":\"") && !chunk.contains("\"text\":\"\"") {
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

#[tokio::test(flavor = "multi_thread")]
async fn http_versus_engine_throughput_on_the_fixture_model() {
    let fixtures = llmlocal_fixtures::ensure_default().expect("fixtures");
    let mut settings = EngineSettings::default();
    settings.models.insert(
        "m".into(),
        ModelEntry {
            backend: Some("llama-cpp".into()),
            ..ModelEntry::new(fixtures.gguf_q8_0.to_string_lossy())
        },
    );
    let engine = Engine::new(settings, registry(&["llama_cpp"]), None);
    let server = TestServer::start(engine.clone(), ServerSettings::default()).await;
    engine_run(&engine).await; // load + warm up
    let (mut direct, mut http) = (Vec::new(), Vec::new());
    let (mut direct_text, mut http_text) = (String::new(), String::new());
    for _ in 0..RUNS {
        let (run, text) = engine_run(&engine).await;
        direct.push(run);
        direct_text = text;
        let (run, text) = http_run(&server).await;
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
        .all(|r| r.tokens == TOKENS as usize));
    let ttft = |runs: &[Run]| median(runs.iter().map(|r| r.ttft_ms).collect());
    let tps = |runs: &[Run]| median(runs.iter().map(|r| r.tokens_per_s).collect());
    let ratio = tps(&http) / tps(&direct);
    println!(
        "BENCH fixture q8_0 llama-cpp, {TOKENS} tokens, median of {RUNS}: engine TTFT {:.2} ms, {:.0} tok/s; \
         HTTP SSE TTFT {:.2} ms, {:.0} tok/s; HTTP/engine = {ratio:.3}",
        ttft(&direct),
        tps(&direct),
        ttft(&http),
        tps(&http)
    );
    for streams in [1, 4, 16] {
        println!(
            "BENCH aggregate over HTTP, {streams} streams: {:.0} tok/s",
            aggregate(&server, streams).await
        );
    }
    assert!(
        ratio > 0.5,
        "HTTP is not wildly slower than the engine: {ratio}"
    );
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
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["llama_cpp", "candle"] {
        let from = server_support::plugin_library(name);
        std::fs::copy(&from, dir.path().join(from.file_name().expect("name"))).expect("copy");
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_llmlocal"))
        .args(["serve", "--bind", "127.0.0.1:0", "--plugin-dir"])
        .arg(dir.path())
        .env("LLMLOCAL_PLUGIN_PATH", "")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start serve");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("line");
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
