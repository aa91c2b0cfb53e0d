//! Shared pieces of the router tests: a fake node (axum app on its own runtime so that
//! "killing" it closes every connection), a router on a loopback port, and small clients.
#![allow(dead_code)]

pub mod procs;

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use llmlocal::router::{
    node_agent::{run_node_agent, NodeAgentConfig, NodeStatus},
    RouterSettings, RouterState,
};
use serde_json::{json, Value};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

pub const ADMIN: &str = "admin-key-for-tests";
pub const TOKEN: &str = "join-token-for-tests";

/// Knobs a test turns while the fake node runs.
#[derive(Default)]
pub struct Behaviour {
    /// Answer every generation with 500.
    pub fail_500: AtomicBool,
    /// Break streams after two chunks.
    pub break_stream: AtomicBool,
    /// `/health` answers 503.
    pub unhealthy: AtomicBool,
    /// Delay between stream chunks, ms.
    pub chunk_delay_ms: AtomicU32,
    /// Requests answered (generations only).
    pub served: AtomicUsize,
    /// Load reported by the node agent.
    pub active: AtomicU32,
    /// CPU % reported instead of the machine's (whose samples differ between the fake nodes
    /// of one process under load, and would break ties the test means to keep).
    pub cpu_percent: Mutex<Option<f32>>,
    pub loaded: Mutex<Vec<String>>,
    /// Model-changing requests received (`/api/delete`, `/api/pull`, `/api/copy`, `/api/create`).
    pub admin_calls: AtomicUsize,
    /// Every `Authorization`, `Cookie` and `x-api-key` value received, as `name: value`.
    pub credentials: Mutex<Vec<String>>,
    /// Streams send one chunk, then nothing more (a node that hangs mid-answer).
    pub stall_stream: AtomicBool,
}

impl Behaviour {
    fn note_credentials(&self, headers: &axum::http::HeaderMap) {
        let mut seen = self.credentials.lock().unwrap();
        for name in ["authorization", "cookie", "x-api-key"] {
            for value in headers.get_all(name) {
                seen.push(format!("{name}: {}", value.to_str().unwrap_or("?")));
            }
        }
    }
}

#[derive(Clone)]
struct NodeApp {
    name: String,
    models: Vec<String>,
    behaviour: Arc<Behaviour>,
}

/// A fake `llmlocal serve`: /health, /v1/models, /api/tags, /v1/chat/completions
/// (JSON or SSE) and /api/chat (NDJSON); every answer names the node.
pub struct FakeNode {
    pub name: String,
    pub addr: SocketAddr,
    pub models: Vec<String>,
    pub behaviour: Arc<Behaviour>,
    /// The node agent's `nvidia-smi` (None: no GPU); set before [`FakeNode::join`].
    pub nvidia_smi: Option<std::path::PathBuf>,
    /// Where the node agent keeps its node secret (None: memory only); set before
    /// [`FakeNode::join`] to let a restarted node take its id back.
    pub secret_file: Option<std::path::PathBuf>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    agent: Option<tokio::task::JoinHandle<()>>,
}

impl FakeNode {
    /// Starts on `addr` (port 0: any free port).
    pub fn start(name: &str, models: &[&str], addr: SocketAddr, behaviour: Arc<Behaviour>) -> Self {
        let app = NodeApp {
            name: name.to_string(),
            models: models.iter().map(|m| m.to_string()).collect(),
            behaviour: behaviour.clone(),
        };
        let std_listener = bind_retrying(addr);
        let addr = std_listener.local_addr().unwrap();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                axum::serve(listener, node_router(app)).await.ok();
            });
            // Dropping the runtime cancels the server and every open connection.
            let _ = stopped.recv();
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        Self {
            name: name.to_string(),
            addr,
            models: models.iter().map(|m| m.to_string()).collect(),
            behaviour,
            nvidia_smi: None,
            secret_file: None,
            stop: Some(stop),
            thread: Some(thread),
            agent: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Joins a router with the real node agent.
    pub fn join(&mut self, router: &str, token: &str) {
        let mut cfg = NodeAgentConfig::new(router, token, &self.url());
        cfg.node_id = self.name.clone();
        cfg.heartbeat_interval = Duration::from_millis(200);
        cfg.backends = vec!["fake".into()];
        cfg.nvidia_smi = self.nvidia_smi.clone();
        cfg.secret_file = self.secret_file.clone();
        let models = self.models.clone();
        let behaviour = self.behaviour.clone();
        let status = move || NodeStatus {
            active_requests: behaviour.active.load(Ordering::Relaxed),
            models_available: models.clone(),
            models_loaded: behaviour.loaded.lock().unwrap().clone(),
            cpu_percent: *behaviour.cpu_percent.lock().unwrap(),
            ..NodeStatus::default()
        };
        self.agent = Some(tokio::spawn(run_node_agent(cfg, status)));
    }

    /// The node agent's task, to stop only the agent.
    pub fn agent_handle(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        self.agent.take()
    }

    /// Stops the server (all connections) and its agent, like a killed process.
    pub fn kill(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.abort();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The port of a killed node may linger briefly; retry the bind.
fn bind_retrying(addr: SocketAddr) -> std::net::TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                l.set_nonblocking(true).unwrap();
                return l;
            }
            Err(err) if Instant::now() < deadline => {
                eprintln!("bind {addr}: {err}; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(err) => panic!("cannot bind {addr}: {err}"),
        }
    }
}

fn node_router(app: NodeApp) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/api/tags", get(tags))
        .route("/v1/chat/completions", post(fake_chat))
        .route("/api/chat", post(ollama_chat))
        .route("/api/version", get(version))
        .route("/api/delete", axum::routing::delete(model_change))
        .route("/api/pull", post(model_change))
        .route("/api/copy", post(model_change))
        .route("/api/create", post(model_change))
        .with_state(app)
}

/// A model-changing route: counted, and answered like Ollama does.
async fn model_change(State(app): State<NodeApp>, headers: axum::http::HeaderMap) -> Json<Value> {
    app.behaviour.note_credentials(&headers);
    app.behaviour.admin_calls.fetch_add(1, Ordering::Relaxed);
    Json(json!({ "status": "success", "node": app.name }))
}

async fn health(State(app): State<NodeApp>) -> Response {
    if app.behaviour.unhealthy.load(Ordering::Relaxed) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    Json(json!({ "status": "ok", "node": app.name })).into_response()
}

async fn version(State(app): State<NodeApp>) -> Json<Value> {
    Json(json!({ "version": "0.0.0-fake", "node": app.name }))
}

async fn models(State(app): State<NodeApp>) -> Json<Value> {
    let data: Vec<Value> = app
        .models
        .iter()
        .map(|m| json!({ "id": m, "object": "model", "owned_by": app.name }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

async fn tags(State(app): State<NodeApp>) -> Json<Value> {
    let data: Vec<Value> = app
        .models
        .iter()
        .map(|m| json!({ "name": m, "model": m }))
        .collect();
    Json(json!({ "models": data }))
}

type Chunks = futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Chunks with a delay between them; with `break_stream`, an error after two chunks.
fn chunked(app: &NodeApp, pieces: Vec<String>) -> Chunks {
    let delay = Duration::from_millis(app.behaviour.chunk_delay_ms.load(Ordering::Relaxed) as u64);
    let broken = app.behaviour.break_stream.load(Ordering::Relaxed);
    let stall = app.behaviour.stall_stream.load(Ordering::Relaxed);
    let stream = futures_util::stream::unfold(
        (pieces.into_iter(), 0usize),
        move |(mut it, n)| async move {
            if n > 0 {
                tokio::time::sleep(delay).await;
            }
            if stall && n == 1 {
                std::future::pending::<()>().await;
            }
            if broken && n == 2 {
                return Some((Err(std::io::Error::other("node broke")), (it, usize::MAX)));
            }
            if n == usize::MAX {
                return None;
            }
            let piece = it.next()?;
            Some((Ok(Bytes::from(piece)), (it, n + 1)))
        },
    );
    Box::pin(stream)
}

async fn fake_chat(
    State(app): State<NodeApp>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    app.behaviour.note_credentials(&headers);
    app.behaviour.served.fetch_add(1, Ordering::Relaxed);
    if app.behaviour.fail_500.load(Ordering::Relaxed) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "boom"}})),
        )
            .into_response();
    }
    let model = body["model"].as_str().unwrap_or("").to_string();
    let usage = json!({ "prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8 });
    if body["stream"].as_bool() != Some(true) {
        return Json(json!({
            "id": "x", "object": "chat.completion", "model": model, "node": app.name,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": format!("hello from {}", app.name) }, "finish_reason": "stop" }],
            "usage": usage,
        }))
        .into_response();
    }
    let mut pieces: Vec<String> = (0..5)
        .map(|i| {
            let chunk = json!({ "object": "chat.completion.chunk", "node": app.name, "model": model,
                "choices": [{ "index": 0, "delta": { "content": format!("t{i} ") } }], "usage": null });
            format!("data: {chunk}\n\n")
        })
        .collect();
    pieces.push(format!(
        "data: {}\n\n",
        json!({ "choices": [], "usage": usage })
    ));
    pieces.push("data: [DONE]\n\n".to_string());
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(chunked(&app, pieces)))
        .unwrap()
}

async fn ollama_chat(State(app): State<NodeApp>, Json(body): Json<Value>) -> Response {
    app.behaviour.served.fetch_add(1, Ordering::Relaxed);
    let model = body["model"].as_str().unwrap_or("").to_string();
    let mut pieces: Vec<String> = (0..4)
        .map(|i| format!("{}\n", json!({ "model": model, "node": app.name, "message": { "role": "assistant", "content": format!("t{i}") }, "done": false })))
        .collect();
    pieces.push(format!(
        "{}\n",
        json!({ "model": model, "done": true, "prompt_eval_count": 2, "eval_count": 4 })
    ));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(chunked(&app, pieces)))
        .unwrap()
}

/// A router on a loopback port.
pub struct TestRouter {
    pub addr: SocketAddr,
    pub state: RouterState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn settings(db: Option<std::path::PathBuf>) -> RouterSettings {
    let mut s = RouterSettings {
        db_path: db,
        join_token: Some(TOKEN.into()),
        admin_key: Some(ADMIN.into()),
        ..RouterSettings::default()
    };
    s.heartbeat_interval = Duration::from_millis(200);
    s.offline_after = Duration::from_millis(1500);
    s
}

impl TestRouter {
    pub async fn start(settings: RouterSettings) -> Self {
        Self::start_on(settings, loopback()).await
    }

    /// On a given address (a restart on the same port).
    pub async fn start_on(settings: RouterSettings, addr: SocketAddr) -> Self {
        let (state, _join) = RouterState::open(settings).expect("router opens");
        let listener = tokio::net::TcpListener::from_std(bind_retrying(addr)).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serve_state = state.clone();
        let task = tokio::spawn(async move {
            llmlocal::router::serve(listener, serve_state, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// `GET /api/nodes` as a map of id -> status.
pub async fn node_statuses(router: &str) -> Vec<(String, String)> {
    let resp = client()
        .get(format!("{router}/api/nodes"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node_id"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits until `check` holds on the node table; returns how long it took.
pub async fn wait_nodes(
    router: &str,
    within: Duration,
    check: impl Fn(&[(String, String)]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let nodes = node_statuses(router).await;
        if check(&nodes) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "node table never matched; last: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn status_of<'a>(nodes: &'a [(String, String)], id: &str) -> Option<&'a str> {
    nodes.iter().find(|(n, _)| n == id).map(|(_, s)| s.as_str())
}

pub fn all_online(nodes: &[(String, String)], ids: &[&str]) -> bool {
    ids.iter().all(|id| status_of(nodes, id) == Some("online"))
}

/// A non-streaming chat completion; returns (status, body).
pub async fn chat(router: &str, model: &str) -> (u16, Value) {
    let resp = client()
        .post(format!("{router}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(
            json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] })
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    status_and_json(resp).await
}

/// The status and the JSON body (null when the body is not JSON) of `resp`.
async fn status_and_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub async fn post_json(url: &str, bearer: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.unwrap();
    status_and_json(resp).await
}

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A fake node on a free loopback port with default behaviour.
pub fn fake_node(name: &str, models: &[&str]) -> FakeNode {
    FakeNode::start(name, models, loopback(), Arc::default())
}

/// Joins `nodes` to `router` and waits (5 s at most) until all of them are online.
pub async fn join_all(router: &str, token: &str, nodes: &mut [FakeNode]) {
    for node in nodes.iter_mut() {
        node.join(router, token);
    }
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let ids: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_nodes(router, Duration::from_secs(5), |n| all_online(n, &ids)).await;
}

/// Waits until node `id` has `status` in the node table; returns how long it took.
pub async fn wait_status(router: &str, within: Duration, id: &str, status: &str) -> Duration {
    wait_nodes(router, within, |n| status_of(n, id) == Some(status)).await
}

/// `GET url` (with `bearer` as its bearer token); returns (status, JSON body or null).
pub async fn get_json(url: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut req = client().get(url);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.unwrap();
    status_and_json(resp).await
}

/// Three fake nodes serving `m`, joined to `router`.
pub async fn three_nodes(router: &str) -> Vec<FakeNode> {
    let mut nodes: Vec<FakeNode> = ["n1", "n2", "n3"]
        .iter()
        .map(|name| fake_node(name, &["m"]))
        .collect();
    join_all(router, TOKEN, &mut nodes).await;
    nodes
}

/// The router's request history (`/admin/requests`), once it holds at least `min` rows.
pub async fn history(router: &str, min: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let resp = client()
            .get(format!("{router}/admin/requests?limit=1000"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        let rows = body["requests"].as_array().cloned().unwrap_or_default();
        if rows.len() >= min || start.elapsed() > Duration::from_secs(5) {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
