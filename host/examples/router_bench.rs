//! The latency `llmlocal router` adds: a fast loopback node (fixed small JSON answer) is
//! called directly and through an in-process router, at 1 and 100 concurrent clients.
//! Prints p50/p99 latency of each path, the difference, and requests/s.
//!
//! `cargo run -p llmlocal --example router_bench [-- REQUESTS_PER_CLIENT_AT_100]`

use anyhow::Context as _;
use axum::{routing::post, Json, Router};
use llmlocal::router::{self, RouterSettings, RouterState};
use serde_json::{json, Value};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

async fn answer() -> Json<Value> {
    Json(json!({
        "id": "x", "object": "chat.completion", "model": "m",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": "ok" }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2 },
    }))
}

async fn start_node() -> anyhow::Result<String> {
    let app = Router::new()
        .route("/v1/chat/completions", post(answer))
        .route("/health", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

async fn start_router(node: &str, db: &std::path::Path) -> anyhow::Result<String> {
    let settings = RouterSettings {
        db_path: Some(db.to_path_buf()),
        join_token: Some("bench".into()),
        offline_after: Duration::from_secs(3600),
        ..RouterSettings::default()
    };
    let (state, _) = RouterState::open(settings)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(router::serve(listener, state, std::future::pending()));
    let reg = json!({ "node_id": "fast", "url": node, "models_available": ["m"] });
    let resp = reqwest::Client::new()
        .post(format!("{url}/api/nodes/register"))
        .bearer_auth("bench")
        .header("content-type", "application/json")
        .body(reg.to_string())
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "registration: {}",
        resp.status()
    );
    Ok(url)
}

struct Run {
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Run {
    fn pct(&self, p: f64) -> f64 {
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i].as_secs_f64() * 1000.0
    }
    fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }
}

async fn load(url: &str, clients: usize, per_client: usize) -> anyhow::Result<Run> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .tcp_nodelay(true)
        .build()?;
    let body = Arc::new(
        json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] }).to_string(),
    );
    let target = Arc::new(format!("{url}/v1/chat/completions"));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, body, target) = (client.clone(), body.clone(), target.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let t = Instant::now();
                    let resp = client
                        .post(target.as_str())
                        .header("content-type", "application/json")
                        .body(body.as_str().to_owned())
                        .send()
                        .await?;
                    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
                    resp.bytes().await?;
                    lat.push(t.elapsed());
                }
                Ok(lat)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.context("client task")??);
    }
    let wall = start.elapsed();
    latencies.sort();
    Ok(Run { latencies, wall })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let per_client_100: usize = std::env::args().nth(1).map_or(Ok(100), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let node = start_node().await?;
    let router = start_router(&node, &dir.path().join("bench.sqlite")).await?;
    // Warm up both paths (connections, allocations).
    load(&node, 10, 50).await?;
    load(&router, 10, 50).await?;
    println!(
        "{:>8} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "clients", "path", "p50 ms", "p99 ms", "req/s", "requests"
    );
    for (clients, per_client) in [(1usize, 2000usize), (100, per_client_100)] {
        let direct = load(&node, clients, per_client).await?;
        let routed = load(&router, clients, per_client).await?;
        for (name, run) in [("direct", &direct), ("router", &routed)] {
            println!(
                "{clients:>8} {name:>8} {:>10.3} {:>10.3} {:>10.0} {:>10}",
                run.pct(0.5),
                run.pct(0.99),
                run.rps(),
                run.latencies.len()
            );
        }
        println!(
            "{clients:>8} {:>8} {:>10.3} {:>10.3}",
            "added",
            routed.pct(0.5) - direct.pct(0.5),
            routed.pct(0.99) - direct.pct(0.99)
        );
    }
    Ok(())
}
