//! The router under attack, on loopback: anonymous model changes, the dashboard socket
//! without a key or from another origin, node hijacks and hosts that must not be reached,
//! client credentials leaking to nodes, and nodes that hang.

mod router_support;

use router_support::*;
use serde_json::{json, Value};
use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

const CLIENT_KEY: &str = "client-key-for-tests";

/// `method url` with a JSON body and an optional bearer token; (status, JSON body or null).
async fn send(
    method: reqwest::Method,
    url: &str,
    bearer: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut req = client()
        .request(method, url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = bearer {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn admin_calls(nodes: &[FakeNode]) -> usize {
    nodes
        .iter()
        .map(|n| n.behaviour.admin_calls.load(Ordering::Relaxed))
        .sum()
}

/// The model-changing Ollama routes, as (method, path).
fn model_changes() -> [(reqwest::Method, &'static str); 4] {
    [
        (reqwest::Method::DELETE, "/api/delete"),
        (reqwest::Method::POST, "/api/pull"),
        (reqwest::Method::POST, "/api/copy"),
        (reqwest::Method::POST, "/api/create"),
    ]
}

/// Issue 24 case 3: anonymous `DELETE /api/delete` through the router emptied the cluster.
/// Model changes need the router's admin key; a client key is not enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_changes_through_the_router_need_the_admin_key() {
    let mut s = settings(None);
    s.api_keys = vec![CLIENT_KEY.into()];
    let router = TestRouter::start(s).await;
    let url = router.url();
    let mut nodes = [fake_node("d1", &["m"]), fake_node("d2", &["m"])];
    join_all(&url, TOKEN, &mut nodes).await;
    let body = json!({ "model": "m", "name": "m", "source": "m", "destination": "m2" });
    for (method, path) in model_changes() {
        for key in [None, Some(CLIENT_KEY), Some("wrong")] {
            let (code, reply) =
                send(method.clone(), &format!("{url}{path}"), key, body.clone()).await;
            assert_eq!(code, 401, "{method} {path} with {key:?}: {reply}");
        }
    }
    assert_eq!(admin_calls(&nodes), 0, "a model change reached a node");
    // Inference still works with the client key.
    let chat = json!({ "model": "m", "messages": [] });
    let (code, reply) = send(
        reqwest::Method::POST,
        &format!("{url}/v1/chat/completions"),
        Some(CLIENT_KEY),
        chat,
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    // The admin key opens them.
    let (code, reply) = send(
        reqwest::Method::DELETE,
        &format!("{url}/api/delete"),
        Some(ADMIN),
        body,
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(admin_calls(&nodes), 1);
    router.stop().await;
}

/// Without an admin key configured, model changes are refused with a message that says
/// how to enable them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_changes_are_off_without_an_admin_key() {
    let mut s = settings(None);
    s.admin_key = None;
    let router = TestRouter::start(s).await;
    let url = router.url();
    let mut nodes = [fake_node("o1", &["m"])];
    join_all_unchecked(&url, &mut nodes).await;
    let body = json!({ "model": "m" });
    for (method, path) in model_changes() {
        let (code, reply) = send(method.clone(), &format!("{url}{path}"), None, body.clone()).await;
        assert_eq!(code, 403, "{method} {path}: {reply}");
        let message = reply["error"].as_str().unwrap_or_default();
        assert!(message.contains("--admin-key"), "{reply}");
    }
    assert_eq!(admin_calls(&nodes), 0, "a model change reached a node");
    router.stop().await;
}

/// Joins `nodes` and waits until the router sends them traffic (no admin API to ask).
async fn join_all_unchecked(router: &str, nodes: &mut [FakeNode]) {
    for node in nodes.iter_mut() {
        node.join(router, TOKEN);
    }
    let start = Instant::now();
    loop {
        let (code, _) = chat(router, &nodes[0].models[0]).await;
        if code == 200 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "nodes never joined"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebSocket handshake on `/dashboard/ws` (`key` as `?key=`, `origin` as `Origin`): the
/// status code, and for 101 what arrives within a few seconds (the first snapshot frame).
async fn dashboard_socket(
    addr: std::net::SocketAddr,
    key: Option<&str>,
    origin: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let query = key.map(|k| format!("?key={k}")).unwrap_or_default();
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET /dashboard/ws{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{origin}\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
        let text = String::from_utf8_lossy(&seen);
        // A refusal is complete once its headers are; an upgrade once a frame followed.
        if text.contains("\r\n\r\n")
            && (!text.starts_with("HTTP/1.1 101") || text.contains("\"nodes\""))
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&seen).to_string();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// Issue 24 case 4: the dashboard's socket streamed node URLs and traffic without the
/// admin key and to any origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_socket_needs_the_admin_key_and_the_routers_origin() {
    let router = TestRouter::start(settings(None)).await;
    let url = router.url();
    let mut nodes = [fake_node("w1", &["m"])];
    join_all(&url, TOKEN, &mut nodes).await;
    let addr = router.addr;
    let node_url = nodes[0].url();
    let own = format!("http://{addr}");
    // The page's own origin with the key: the feed, with the node's URL.
    let (code, text) = dashboard_socket(addr, Some(ADMIN), Some(&own)).await;
    assert_eq!(code, 101, "{text}");
    assert!(
        text.contains(&nodes[0].addr.to_string()),
        "no node in {text}"
    );
    // A non-browser client (no Origin) with the key.
    assert_eq!(dashboard_socket(addr, Some(ADMIN), None).await.0, 101);
    // No key, a wrong key.
    for key in [None, Some("wrong")] {
        let (code, text) = dashboard_socket(addr, key, Some(&own)).await;
        assert_eq!(code, 401, "{text}");
        assert!(!text.contains(&node_url), "{text}");
    }
    // Another site's page, even with the key.
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let (code, text) = dashboard_socket(addr, Some(ADMIN), Some(origin)).await;
        assert_eq!(code, 403, "{origin}: {text}");
        assert!(text.contains("--dashboard-origin"), "{text}");
    }
    router.stop().await;
    // An allowed extra origin.
    let mut s = settings(None);
    s.dashboard_origins = vec!["https://ops.example".into()];
    let router = TestRouter::start(s).await;
    let (code, text) =
        dashboard_socket(router.addr, Some(ADMIN), Some("https://ops.example")).await;
    assert_eq!(code, 101, "{text}");
    router.stop().await;
    // No admin key configured: no feed at all.
    let mut s = settings(None);
    s.admin_key = None;
    let router = TestRouter::start(s).await;
    let (code, text) = dashboard_socket(router.addr, None, None).await;
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("--admin-key"), "{text}");
    router.stop().await;
}

/// `POST /api/nodes/register` with the join token and, when given, a node secret.
async fn register(router: &str, body: Value, secret: Option<&str>) -> (u16, Value) {
    let mut req = client()
        .post(format!("{router}/api/nodes/register"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(secret) = secret {
        req = req.header("x-llmlocal-node-secret", secret);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn url_of(router: &str, id: &str) -> String {
    let (code, node) = get_json(&format!("{router}/api/nodes/{id}"), Some(ADMIN)).await;
    assert_eq!(code, 200, "{node}");
    node["url"].as_str().unwrap().to_string()
}

/// Issue 24 case 8: any join-token holder could re-register an existing node id with its
/// own URL (persisted), and register any URL, cloud metadata included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_ids_cannot_be_hijacked_and_bad_hosts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(Some(dir.path().join("router.sqlite")));
    let router = TestRouter::start(s.clone()).await;
    let url = router.url();
    let mut nodes = [fake_node("v1", &["m"])];
    join_all(&url, TOKEN, &mut nodes).await;
    let real = url_of(&url, "v1").await;
    let hijack = json!({ "node_id": "v1", "url": "http://127.0.0.1:9", "models_available": ["m"] });
    for secret in [None, Some("guess")] {
        let (code, reply) = register(&url, hijack.clone(), secret).await;
        assert_eq!(code, 403, "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("node secret"),
            "{reply}"
        );
    }
    let (code, reply) =
        post_json(&format!("{url}/api/nodes/v1/heartbeat"), Some(TOKEN), "{}").await;
    assert_eq!(code, 403, "heartbeat without the node's secret: {reply}");
    assert_eq!(url_of(&url, "v1").await, real);
    assert_eq!(chat(&url, "m").await.0, 200);
    // A restarted router (same database) still knows who owns the id; the node's agent
    // keeps its secret and stays online.
    let addr = router.addr;
    router.stop().await;
    let router = TestRouter::start_on(s, addr).await;
    let (code, reply) = register(&url, hijack, None).await;
    assert_eq!(code, 403, "{reply}");
    wait_status(&url, Duration::from_secs(5), "v1", "online").await;
    assert_eq!(url_of(&url, "v1").await, real);
    assert_eq!(chat(&url, "m").await.0, 200);
    // Hosts a router must never send requests to.
    for bad in [
        "http://169.254.169.254",
        "http://169.254.169.254:80/latest",
        "http://0.0.0.0:8080",
        "http://[::]:8080",
        "http://[fe80::1]:8080",
        "http://[::ffff:169.254.169.254]:80",
        "http://224.0.0.1:80",
        "gopher://127.0.0.1:70",
    ] {
        let (code, reply) = register(&url, json!({ "node_id": "meta", "url": bad }), None).await;
        assert_eq!(code, 400, "{bad}: {reply}");
    }
    let (code, _) = get_json(&format!("{url}/api/nodes/meta"), Some(ADMIN)).await;
    assert_eq!(code, 404);
    router.stop().await;
    // With an allowlist, only the hosts on it.
    let mut s = settings(None);
    s.node_allow_hosts = vec!["localhost".into()];
    let router = TestRouter::start(s).await;
    let (code, reply) = register(
        &router.url(),
        json!({ "node_id": "x", "url": "http://127.0.0.1:9" }),
        None,
    )
    .await;
    assert_eq!(code, 400, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--node-allow-hosts"),
        "{reply}"
    );
    let (code, reply) = register(
        &router.url(),
        json!({ "node_id": "x", "url": "http://localhost:9" }),
        None,
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    assert!(
        reply["node_secret"].as_str().is_some_and(|s| s.len() == 64),
        "{reply}"
    );
    router.stop().await;
}

/// Issue 24 case 8: the client's `Authorization` (and cookies, `x-api-key`) reached the
/// nodes. The router sends its own node key instead, when it has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_credentials_never_reach_nodes() {
    for node_key in [None, Some("node-key-for-tests")] {
        let mut s = settings(None);
        s.api_keys = vec![CLIENT_KEY.into()];
        s.node_key = node_key.map(str::to_string);
        let router = TestRouter::start(s).await;
        let url = router.url();
        let mut nodes = [fake_node("c1", &["m"])];
        join_all(&url, TOKEN, &mut nodes).await;
        let resp = client()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .header("cookie", "session=client-cookie")
            .header("x-api-key", CLIENT_KEY)
            .header("content-type", "application/json")
            .body(json!({ "model": "m", "messages": [] }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let (code, reply) = send(
            reqwest::Method::DELETE,
            &format!("{url}/api/delete"),
            Some(ADMIN),
            json!({ "model": "m" }),
        )
        .await;
        assert_eq!(code, 200, "{reply}");
        let seen = nodes[0].behaviour.credentials.lock().unwrap().clone();
        let expected: Vec<String> = node_key
            .map(|k| vec![format!("authorization: Bearer {k}"); 2])
            .unwrap_or_default();
        assert_eq!(seen, expected, "credentials the node saw");
        router.stop().await;
    }
}

/// A node that accepts connections and never answers, like a SIGSTOPped `serve` (the
/// kernel still completes the handshakes): registered by hand, it sends no heartbeats.
async fn register_hung_node(router: &str, id: &str) -> std::net::TcpListener {
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let node_url = format!("http://{}", hung.local_addr().unwrap());
    let body = json!({ "node_id": id, "url": node_url, "models_available": ["m"] });
    let (code, reply) = register(router, body, None).await;
    assert_eq!(code, 200, "{reply}");
    hung
}

/// Issue 24 case 5: a hung node blackholed every request routed to it. Requests fail over
/// after the first-byte timeout and the node is skipped while suspect; a stream that stalls
/// after its first byte ends with an error event after the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_node_is_skipped_and_stalled_streams_end() {
    let mut s = settings(None);
    s.first_byte_timeout = Duration::from_millis(500);
    s.idle_timeout = Duration::from_millis(500);
    // Long enough that the monitor does not take the hung node offline during the test.
    s.offline_after = Duration::from_secs(60);
    let router = TestRouter::start(s).await;
    let url = router.url();
    let mut nodes = [fake_node("good", &["m"])];
    join_all(&url, TOKEN, &mut nodes).await;
    let _hung = register_hung_node(&url, "hung").await;
    for _ in 0..4 {
        let started = Instant::now();
        let (code, body) = chat(&url, "m").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["node"], "good");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }
    let statuses = node_statuses(&url).await;
    assert_eq!(
        status_of(&statuses, "hung"),
        Some("suspect"),
        "{statuses:?}"
    );
    // A stream that stops after its first chunk.
    nodes[0]
        .behaviour
        .stall_stream
        .store(true, Ordering::Relaxed);
    let resp = client()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(json!({ "model": "m", "stream": true, "messages": [] }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), resp.bytes())
        .await
        .expect("the stalled stream never ended")
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("t0"), "first chunk missing: {text}");
    assert!(
        text.contains("\"error\"") && text.contains("sent nothing"),
        "{text}"
    );
    router.stop().await;
}

/// A request waiting on a node that stops heartbeating fails over as soon as the node is
/// offline, without waiting out a long first-byte timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_on_a_node_gone_offline_fail_over_at_once() {
    let mut s = settings(None);
    s.first_byte_timeout = Duration::from_secs(120);
    let router = TestRouter::start(s).await;
    let url = router.url();
    let mut nodes = [fake_node("good", &["m"])];
    join_all(&url, TOKEN, &mut nodes).await;
    let _hung = register_hung_node(&url, "hung").await;
    let started = Instant::now();
    // Round-robin: of two requests at once, one tries the hung node first.
    let (a, b) = tokio::join!(chat(&url, "m"), chat(&url, "m"));
    for (code, body) in [a, b] {
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["node"], "good");
    }
    // Offline after 1.5 s without a heartbeat (the test settings); well under 120 s.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    router.stop().await;
}
