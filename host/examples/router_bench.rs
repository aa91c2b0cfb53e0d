//! The latency `llmlocal router` adds, measured from outside: this process is only the
//! load generator; the fast fake node and the router run as two child processes (this
//! same binary with `--serve-node` / `--serve-router`), so neither competes with the
//! clients for a runtime, and the router runs `llmlocal::router::serve` exactly as
//! `llmlocal router` does (SQLite history on disk included).
//!
//! Three runs per path (node direct, then through the router):
//! - 1 client, sequential requests;
//! - 100 clients, closed loop (each sends its next request when the previous ends): the
//!   requests/s each path sustains, and latency at saturation;
//! - 100 clients, open loop at a fixed total rate below saturation: a request delayed by
//!   its client's previous one counts from its scheduled send time, so a stall is not
//!   hidden by the client waiting (coordinated omission). This is the "added latency at
//!   100 concurrent clients" that proxies' published numbers describe.
//!
//! Percentiles are exact (all samples, sorted). Numbers depend on the build profile and
//! the core count: on a 2-core machine the clients, router and node share two cores.
//!
//! `cargo run -p llmlocal --example router_bench -- [--requests N] [--rate R]`
//! (N: requests per 100-client run, default 20000; R: open-loop requests/s, default 2000).
//! With optimised code: `cargo run --profile release -p llmlocal --example router_bench`.

use anyhow::{bail, Context as _};
use axum::{body::Bytes, http::header, response::IntoResponse, routing::post, Router};
use llmlocal::router::{self, RouterSettings, RouterState};
use serde_json::json;
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

const READY: &str = "bench listening on http://";
const TOKEN: &str = "bench";

/// A fixed small OpenAI answer, serialised once.
fn answer_body() -> Bytes {
    Bytes::from(
        json!({
            "id": "x", "object": "chat.completion", "model": "m",
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": "ok" }, "finish_reason": "stop" }],
            "usage": { "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2 },
        })
        .to_string(),
    )
}

async fn listen() -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{READY}{}", listener.local_addr()?);
    Ok(listener)
}

/// Child mode: the fast node.
async fn serve_node() -> anyhow::Result<()> {
    let body = answer_body();
    let answer = move || {
        let body = body.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], body).into_response() }
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(answer))
        .route("/health", axum::routing::get(|| async { "ok" }));
    let listener = listen().await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// Child mode: the router, with its history in `db`.
async fn serve_router(db: &str) -> anyhow::Result<()> {
    let settings = RouterSettings {
        db_path: Some(db.into()),
        join_token: Some(TOKEN.into()),
        offline_after: Duration::from_secs(3600),
        ..RouterSettings::default()
    };
    let (state, _) = RouterState::open(settings)?;
    let listener = listen().await?;
    router::serve(listener, state, std::future::pending()).await?;
    Ok(())
}

/// A child process of this binary, killed on drop.
struct Proc {
    child: Child,
    url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_self(args: &[&str]) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let Some(addr) = line.trim().strip_prefix(READY) else {
        let _ = child.kill();
        bail!("child {args:?} did not start: {line:?}");
    };
    Ok(Proc {
        url: format!("http://{addr}"),
        child,
    })
}

async fn register(router: &str, node: &str) -> anyhow::Result<()> {
    let reg = json!({ "node_id": "fast", "url": node, "models_available": ["m"] });
    let resp = reqwest::Client::new()
        .post(format!("{router}/api/nodes/register"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(reg.to_string())
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "registration: {}",
        resp.status()
    );
    Ok(())
}

struct Run {
    /// Sorted.
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Run {
    /// Nearest-rank percentile, ms.
    fn pct(&self, p: f64) -> f64 {
        let n = self.latencies.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.latencies[rank.clamp(1, n) - 1].as_secs_f64() * 1000.0
    }
    fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }
}

/// How clients pace their requests.
#[derive(Clone, Copy)]
enum Pace {
    /// Next request as soon as the previous one ends.
    Closed,
    /// Total requests/s over all clients; latency from the scheduled send time.
    Open(f64),
}

struct Load {
    client: reqwest::Client,
    body: Bytes,
}

impl Load {
    fn new() -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .http1_only()
            .build()?;
        let body = Bytes::from(
            json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] }).to_string(),
        );
        Ok(Self { client, body })
    }

    async fn run(
        &self,
        base: &str,
        clients: usize,
        per_client: usize,
        pace: Pace,
    ) -> anyhow::Result<Run> {
        let target: Arc<str> = format!("{base}/v1/chat/completions").into();
        let start = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                let (client, body, target) =
                    (self.client.clone(), self.body.clone(), target.clone());
                // Open loop: each client sends every `clients / rate` s, staggered.
                let gap = match pace {
                    Pace::Closed => None,
                    Pace::Open(rate) => Some(Duration::from_secs_f64(clients as f64 / rate)),
                };
                let offset = gap.map(|g| g.mul_f64(i as f64 / clients as f64));
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per_client);
                    let mut previous_end = start;
                    for k in 0..per_client {
                        let sent = match (gap, offset) {
                            (Some(gap), Some(offset)) => {
                                let at = start + offset + gap * k as u32;
                                tokio::time::sleep_until(at.into()).await;
                                // Late because the previous answer came after this send
                                // was due: count the wait (coordinated omission). Late
                                // only by timer slop (tokio timers tick in ms): do not.
                                if previous_end > at {
                                    at
                                } else {
                                    Instant::now()
                                }
                            }
                            _ => Instant::now(),
                        };
                        let resp = client
                            .post(&*target)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .await?;
                        anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
                        resp.bytes().await?;
                        previous_end = Instant::now();
                        lat.push(previous_end - sent);
                    }
                    Ok(lat)
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(clients * per_client);
        for task in tasks {
            latencies.extend(task.await.context("client task")??);
        }
        let wall = start.elapsed();
        latencies.sort();
        Ok(Run { latencies, wall })
    }
}

fn report(label: &str, direct: &Run, routed: &Run) {
    for (name, run) in [("direct", direct), ("router", routed)] {
        println!(
            "{label:<22} {name:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.0} {:>8}",
            run.pct(50.0),
            run.pct(99.0),
            run.pct(99.9),
            run.rps(),
            run.latencies.len()
        );
    }
    println!(
        "{label:<22} {:>7} {:>9.3} {:>9.3} {:>9.3}",
        "added",
        routed.pct(50.0) - direct.pct(50.0),
        routed.pct(99.0) - direct.pct(99.0),
        routed.pct(99.9) - direct.pct(99.9),
    );
}

struct Args {
    requests: usize,
    rate: f64,
}

fn args(rest: &[String]) -> anyhow::Result<Args> {
    let mut parsed = Args {
        requests: 20_000,
        rate: 2000.0,
    };
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--requests" => parsed.requests = value.parse().context("--requests")?,
            "--rate" => parsed.rate = value.parse().context("--rate")?,
            other => bail!("unknown flag {other} (use --requests N, --rate R)"),
        }
    }
    anyhow::ensure!(parsed.rate > 0.0, "--rate must be positive");
    Ok(parsed)
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("bench.sqlite");
    let node = spawn_self(&["--serve-node"])?;
    let router = spawn_self(&["--serve-router", &db.display().to_string()])?;
    register(&router.url, &node.url).await?;
    let load = Load::new()?;
    // Warm up both paths (connections, allocator, the router's pool).
    for url in [&node.url, &router.url] {
        load.run(url, 100, 20, Pace::Closed).await?;
    }
    let per_client = args.requests.div_ceil(100);
    println!(
        "{} cores; load generator, router and node in 3 processes",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<22} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "run", "path", "p50 ms", "p99 ms", "p99.9 ms", "req/s", "requests"
    );
    let runs = [
        ("1 client".to_string(), 1, 5000, Pace::Closed),
        (
            "100 clients closed".to_string(),
            100,
            per_client,
            Pace::Closed,
        ),
        (
            format!("100 clients @{}/s", args.rate),
            100,
            per_client,
            Pace::Open(args.rate),
        ),
    ];
    for (label, clients, per, pace) in runs {
        let direct = load.run(&node.url, clients, per, pace).await?;
        let routed = load.run(&router.url, clients, per, pace).await?;
        report(&label, &direct, &routed);
    }
    Ok(())
}

/// A child exits when its stdin closes: the bench ended, even if it was killed.
fn exit_with_parent() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match argv.first().map(String::as_str) {
        Some("--serve-node") => {
            exit_with_parent();
            runtime.block_on(serve_node())
        }
        Some("--serve-router") => {
            exit_with_parent();
            let db = argv.get(1).context("--serve-router DB")?;
            runtime.block_on(serve_router(db))
        }
        _ => runtime.block_on(bench(args(&argv)?)),
    }
}
