//! Router end to end on loopback with fake nodes and the real node agent: registration,
//! strategies, streaming, failover, offline detection, persistence and bad input.

mod router_support;

use futures_util::StreamExt as _;
use llmlocal::router::Strategy;
use router_support::*;
use serde_json::{json, Value};
use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

fn node_of(body: &Value) -> String {
    body["node"].as_str().unwrap_or("?").to_string()
}

/// A router with `strategy` and three fake nodes serving `m` joined to it.
async fn three_node_router(strategy: Strategy) -> (TestRouter, Vec<FakeNode>) {
    let mut s = settings(None);
    s.strategy = strategy;
    let router = TestRouter::start(s).await;
    let nodes = three_nodes(&router.url()).await;
    // One CPU figure for all: least-loaded breaks ties on CPU, and three samples of a busy
    // machine taken at different moments would decide ties the tests mean to keep.
    for node in &nodes {
        *node.behaviour.cpu_percent.lock().unwrap() = Some(10.0);
    }
    (router, nodes)
}

/// Lets a heartbeat (every 200 ms) carry the nodes' new load to the router.
async fn let_heartbeats_report() {
    tokio::time::sleep(Duration::from_millis(600)).await;
}

/// A chat completion for `m` with no messages, streamed or not, as the raw response.
async fn chat_response(router: &str, stream: bool) -> reqwest::Response {
    client()
        .post(format!("{router}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(json!({ "model": "m", "stream": stream, "messages": [] }).to_string())
        .send()
        .await
        .unwrap()
}

/// `POST /api/nodes/{id}/drain` as the admin; returns the status.
async fn drain(router: &str, id: &str) -> u16 {
    post_json(&format!("{router}/api/nodes/{id}/drain"), Some(ADMIN), "")
        .await
        .0
}

/// `DELETE /api/nodes/{id}` as the admin; returns the status.
async fn forget_node(router: &str, id: &str) -> u16 {
    let resp = client()
        .delete(format!("{router}/api/nodes/{id}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

/// `field` of every entry of the JSON array `list`.
fn names<'a>(list: &'a Value, field: &str) -> Vec<&'a str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m[field].as_str().unwrap())
        .collect()
}

const CLIENT_KEY: &str = "client-key";

/// `POST /v1/chat/completions` with `body` and the client key; returns (status, body).
async fn client_chat(router: &str, body: &str) -> (u16, Value) {
    post_json(
        &format!("{router}/v1/chat/completions"),
        Some(CLIENT_KEY),
        body,
    )
    .await
}

async fn spread(router: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let (status, body) = chat(router, "m").await;
        assert_eq!(status, 200, "{body}");
        *counts.entry(node_of(&body)).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_robin_spreads_evenly_over_registered_nodes() {
    let (router, _nodes) = three_node_router(Strategy::RoundRobin).await;
    let counts = spread(&router.url(), 30).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|&c| c == 10),
        "uneven round robin: {counts:?}"
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_loaded_sends_to_the_idle_node() {
    let (router, nodes) = three_node_router(Strategy::LeastLoaded).await;
    nodes[0].behaviour.active.store(5, Ordering::Relaxed);
    nodes[1].behaviour.active.store(5, Ordering::Relaxed);
    let_heartbeats_report().await;
    let counts = spread(&router.url(), 12).await;
    assert_eq!(counts.get("n3"), Some(&12), "{counts:?}");
    // Now n3 is the busiest: the two others share the traffic.
    nodes[2].behaviour.active.store(9, Ordering::Relaxed);
    nodes[0].behaviour.active.store(1, Ordering::Relaxed);
    nodes[1].behaviour.active.store(1, Ordering::Relaxed);
    let_heartbeats_report().await;
    let counts = spread(&router.url(), 12).await;
    assert_eq!(counts.get("n3"), None, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 12);
    assert!(
        counts.get("n1") >= Some(&4) && counts.get("n2") >= Some(&4),
        "{counts:?}"
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_loaded_counts_the_routers_own_open_streams() {
    let (router, nodes) = three_node_router(Strategy::LeastLoaded).await;
    nodes[1].behaviour.active.store(2, Ordering::Relaxed);
    nodes[2].behaviour.active.store(2, Ordering::Relaxed);
    let_heartbeats_report().await;
    for n in &nodes {
        n.behaviour.chunk_delay_ms.store(400, Ordering::Relaxed);
    }
    // Five slow streams opened faster than heartbeats report them: by reported load alone
    // all would go to n1; the router's own in-flight count stops n1 at the others' level.
    let mut open = Vec::new();
    for _ in 0..5 {
        let resp = chat_response(&router.url(), true).await;
        let node = resp.headers()["x-llmlocal-node"]
            .to_str()
            .unwrap()
            .to_string();
        open.push((node, resp));
    }
    let on_n1 = open.iter().filter(|(n, _)| n == "n1").count();
    assert!((2..5).contains(&on_n1), "n1 got {on_n1} of 5 streams");
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefer_loaded_picks_the_node_with_the_model_in_memory() {
    let (router, nodes) = three_node_router(Strategy::PreferLoaded).await;
    nodes[1].behaviour.loaded.lock().unwrap().push("m".into());
    let_heartbeats_report().await;
    let counts = spread(&router.url(), 9).await;
    assert_eq!(counts.get("n2"), Some(&9), "{counts:?}");
    // Drained, n2 takes nothing; the others share.
    assert_eq!(drain(&router.url(), "n2").await, 200);
    let counts = spread(&router.url(), 8).await;
    assert_eq!(counts.get("n2"), None, "{counts:?}");
    let statuses = node_statuses(&router.url()).await;
    assert_eq!(status_of(&statuses, "n2"), Some("draining"));
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_pass_through_as_they_arrive() {
    let router = TestRouter::start(settings(None)).await;
    let mut node = [fake_node("slow", &["m"])];
    node[0]
        .behaviour
        .chunk_delay_ms
        .store(300, Ordering::Relaxed);
    join_all(&router.url(), TOKEN, &mut node).await;
    let start = Instant::now();
    let resp = chat_response(&router.url(), true).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let first_at = start.elapsed();
    let mut text = String::from_utf8_lossy(&first).to_string();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let total = start.elapsed();
    assert!(
        text.contains("t0") && text.contains("data: [DONE]"),
        "{text}"
    );
    // 6 delays of 300 ms: the first chunk must come long before the end.
    assert!(total >= Duration::from_millis(1500), "total {total:?}");
    assert!(
        first_at < Duration::from_millis(500),
        "first chunk after {first_at:?} (buffered?)"
    );
    // A client leaving mid-stream is recorded as such; the complete stream is not an error.
    let resp = chat_response(&router.url(), true).await;
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let history = wait_history(&router.url(), 2).await;
    assert!(history[0]["error"].is_null(), "{}", history[0]);
    assert_eq!(history[1]["error"], "client disconnected", "{}", history[1]);
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fails_over_on_5xx_and_refused_connections() {
    let router = TestRouter::start(settings(None)).await;
    let mut nodes = three_nodes(&router.url()).await;
    nodes[0].behaviour.fail_500.store(true, Ordering::Relaxed);
    let counts = spread(&router.url(), 12).await;
    assert_eq!(counts.get("n1"), None, "{counts:?}");
    assert!(
        nodes[0].behaviour.served.load(Ordering::Relaxed) > 0,
        "n1 was never tried"
    );
    // Kill n2: requests still succeed (on n3), right away, not after the offline timeout.
    nodes[1].kill();
    let start = Instant::now();
    let counts = spread(&router.url(), 6).await;
    assert_eq!(counts.get("n3"), Some(&6), "{counts:?}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "failover took {:?}",
        start.elapsed()
    );
    // The refused connection marks n2 offline at once.
    let statuses = node_statuses(&router.url()).await;
    assert_eq!(status_of(&statuses, "n2"), Some("offline"));
    // Every node failing: a 503 with a JSON error.
    nodes[2].behaviour.fail_500.store(true, Ordering::Relaxed);
    let (code, body) = chat(&router.url(), "m").await;
    assert_eq!(code, 500, "last node's own 5xx passes through: {body}");
    nodes[2].kill();
    nodes[0].kill();
    let (code, body) = chat(&router.url(), "m").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model `m`"),
        "{body}"
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_broken_after_the_first_byte_ends_with_an_error_event() {
    let router = TestRouter::start(settings(None)).await;
    let mut node = [fake_node("flaky", &["m"])];
    node[0]
        .behaviour
        .break_stream
        .store(true, Ordering::Relaxed);
    join_all(&router.url(), TOKEN, &mut node).await;
    // OpenAI SSE.
    let resp = chat_response(&router.url(), true).await;
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{text}");
    let last: Value = serde_json::from_str(events[2].strip_prefix("data: ").unwrap()).unwrap();
    assert!(
        last["error"]["message"].as_str().unwrap().contains("flaky"),
        "{last}"
    );
    // Ollama NDJSON.
    let resp = client()
        .post(format!("{}/api/chat", router.url()))
        .header("content-type", "application/json")
        .body(json!({ "model": "m", "messages": [] }).to_string())
        .send()
        .await
        .unwrap();
    let text = String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[2]["error"].as_str().unwrap().contains("mid-response"),
        "{text}"
    );
    // The router keeps serving.
    node[0]
        .behaviour
        .break_stream
        .store(false, Ordering::Relaxed);
    assert_eq!(chat(&router.url(), "m").await.0, 200);
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_node_goes_offline_within_the_timeout_and_comes_back() {
    let s = settings(None);
    let timeout = s.offline_after;
    let router = TestRouter::start(s).await;
    let mut nodes = three_nodes(&router.url()).await;
    let addr = nodes[0].addr;
    nodes[0].kill();
    let took = wait_status(&router.url(), timeout * 2, "n1", "offline").await;
    assert!(
        took <= timeout,
        "offline after {took:?}, timeout {timeout:?}"
    );
    // Traffic goes to the others meanwhile.
    let counts = spread(&router.url(), 4).await;
    assert_eq!(counts.get("n1"), None);
    // Same node back on the same address.
    let mut back = FakeNode::start("n1", &["m"], addr, Arc::default());
    back.join(&router.url(), TOKEN);
    wait_status(&router.url(), Duration::from_secs(3), "n1", "online").await;
    let counts = spread(&router.url(), 6).await;
    assert_eq!(counts.get("n1"), Some(&2), "{counts:?}");
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_agent_stays_online_while_its_health_answers() {
    let s = settings(None);
    let timeout = s.offline_after;
    let router = TestRouter::start(s).await;
    let mut nodes = three_nodes(&router.url()).await;
    // The agent stops, the server keeps answering /health: the probe keeps it online.
    if let Some(agent) = nodes[0].agent_handle() {
        agent.abort();
    }
    tokio::time::sleep(timeout * 2).await;
    assert_eq!(
        status_of(&node_statuses(&router.url()).await, "n1"),
        Some("online")
    );
    // /health failing: offline.
    nodes[0].behaviour.unhealthy.store(true, Ordering::Relaxed);
    wait_status(&router.url(), timeout * 2, "n1", "offline").await;
    nodes[0].behaviour.unhealthy.store(false, Ordering::Relaxed);
    wait_status(&router.url(), timeout * 2, "n1", "online").await;
    drop(nodes);
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_registers_again_after_the_router_forgets_it() {
    let (router, _nodes) = three_node_router(Strategy::RoundRobin).await;
    assert_eq!(forget_node(&router.url(), "n3").await, 200);
    assert_eq!(status_of(&node_statuses(&router.url()).await, "n3"), None);
    wait_nodes(&router.url(), Duration::from_secs(3), |n| {
        all_online(n, &["n3"])
    })
    .await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn models_are_the_union_over_healthy_nodes() {
    let router = TestRouter::start(settings(None)).await;
    let mut nodes = [
        fake_node("a", &["m1", "shared"]),
        fake_node("b", &["m2", "shared"]),
    ];
    join_all(&router.url(), TOKEN, &mut nodes).await;
    let (_, body) = get_json(&format!("{}/v1/models", router.url()), None).await;
    assert_eq!(names(&body["data"], "id"), ["m1", "m2", "shared"]);
    let (_, body) = get_json(&format!("{}/api/tags", router.url()), None).await;
    assert_eq!(names(&body["models"], "name"), ["m1", "m2", "shared"]);
    // Model-aware: m1 only ever goes to a, m2 to b.
    for _ in 0..4 {
        assert_eq!(node_of(&chat(&router.url(), "m1").await.1), "a");
        assert_eq!(node_of(&chat(&router.url(), "m2").await.1), "b");
    }
    nodes[1].kill();
    wait_status(&router.url(), Duration::from_secs(3), "b", "offline").await;
    let (_, body) = get_json(&format!("{}/v1/models", router.url()), None).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 2, "{body}");
    // A known model whose nodes are all offline: 503, not 404.
    let (code, body) = chat(&router.url(), "m2").await;
    assert_eq!(code, 503, "{body}");
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_history_and_token_survive_a_router_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("router.sqlite");
    let mut s = settings(Some(db.clone()));
    s.join_token = None; // generated and stored
    let (state, join) = llmlocal::router::RouterState::open(s.clone()).unwrap();
    assert!(join.generated);
    drop(state);
    let router = TestRouter::start(s.clone()).await;
    let (_, again) = llmlocal::router::RouterState::open(s.clone()).unwrap();
    assert!(!again.generated);
    assert_eq!(again.token, join.token, "stored token reused");
    let mut nodes = [fake_node("p1", &["m"]), fake_node("p2", &["m"])];
    // Like `serve --join`, p1 keeps its node secret in a file, to take its id back later.
    let p1_secret = dir.path().join("p1.secret");
    nodes[0].secret_file = Some(p1_secret.clone());
    join_all(&router.url(), &join.token, &mut nodes).await;
    for _ in 0..5 {
        assert_eq!(chat(&router.url(), "m").await.0, 200);
    }
    assert_eq!(chat(&router.url(), "nope").await.0, 404);
    // Drain survives the restart too.
    drain(&router.url(), "p2").await;
    let history = wait_history(&router.url(), 6).await;
    router.stop().await;
    // Nodes stopped too, so the restarted router sees them only from its database.
    drop(nodes);
    let router = TestRouter::start(s).await;
    let statuses = node_statuses(&router.url()).await;
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    let after = wait_history(&router.url(), 6).await;
    assert_eq!(after.len(), history.len());
    let refused = after
        .iter()
        .find(|r| r["status"] == 404)
        .expect("404 recorded");
    assert_eq!(refused["model"], "nope");
    assert!(refused["error"].as_str().unwrap().contains("not served"));
    let ok = after.iter().find(|r| r["status"] == 200).unwrap();
    assert_eq!(ok["model"], "m");
    assert_eq!(ok["tokens_in"], 3);
    assert_eq!(ok["tokens_out"], 5);
    assert!(ok["node_id"].as_str().unwrap().starts_with('p'));
    assert!(ok["latency_ms"].as_f64().unwrap() > 0.0);
    // A complete answer of known length is not an error (the server stops reading the body
    // at its length: the relay must still record the end).
    assert!(ok["error"].is_null(), "{ok}");
    // Stored nodes are offline until heard from; a node coming back is online again.
    wait_status(&router.url(), Duration::from_secs(3), "p1", "offline").await;
    let mut p1 = fake_node("p1", &["m"]);
    p1.secret_file = Some(p1_secret);
    p1.join(&router.url(), &join.token);
    wait_status(&router.url(), Duration::from_secs(3), "p1", "online").await;
    assert_eq!(chat(&router.url(), "m").await.0, 200);
    router.stop().await;
}

/// The persisted history, once it holds at least `min` rows.
async fn wait_history(router: &str, min: usize) -> Vec<Value> {
    let rows = history(router, min).await;
    assert!(rows.len() >= min, "history has {} rows", rows.len());
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_rejected_with_clear_errors() {
    let mut s = settings(None);
    s.api_keys = vec![CLIENT_KEY.into()];
    let router = TestRouter::start(s).await;
    let url = router.url();
    let register = format!("{url}/api/nodes/register");
    let good = json!({ "node_id": "x1", "url": "http://127.0.0.1:9" });
    // Join token: wrong, missing.
    let (code, body) = post_json(&register, Some("wrong"), &good.to_string()).await;
    assert_eq!(code, 401, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("join token"));
    assert_eq!(post_json(&register, None, &good.to_string()).await.0, 401);
    // Malformed registrations.
    let cases = [
        ("{not json", "invalid registration"),
        (r#"{"url":"http://127.0.0.1:9"}"#, "node_id"),
        (
            r#"{"node_id":"x","url":"http://h:1","extra":1}"#,
            "unknown field",
        ),
        (r#"{"node_id":"a b","url":"http://127.0.0.1:9"}"#, "node_id"),
        (r#"{"node_id":"x","url":"ftp://127.0.0.1:21"}"#, "scheme"),
        (
            r#"{"node_id":"x","url":"http://user:pw@127.0.0.1:9"}"#,
            "user:password",
        ),
        (r#"{"node_id":"x","url":"http://127.0.0.1:0"}"#, "port"),
        (r#"{"node_id":"x","url":"not a url"}"#, "url"),
        (
            r#"{"node_id":"x","url":"http://127.0.0.1:9/?q=1"}"#,
            "query",
        ),
        (
            r#"{"node_id":"x","url":"http://127.0.0.1:9","models_available":[""]}"#,
            "models_available",
        ),
    ];
    for (body, expected) in cases {
        let (code, reply) = post_json(&register, Some(TOKEN), body).await;
        assert_eq!(code, 400, "{body} -> {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(expected),
            "{body}: {message:?} lacks {expected:?}"
        );
    }
    // Heartbeats: unknown node, wrong token, bad body.
    let (code, body) = post_json(
        &format!("{url}/api/nodes/ghost/heartbeat"),
        Some(TOKEN),
        "{}",
    )
    .await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(
        post_json(&format!("{url}/api/nodes/ghost/heartbeat"), Some("x"), "{}")
            .await
            .0,
        401
    );
    // Admin API.
    assert_eq!(get_json(&format!("{url}/api/nodes"), None).await.0, 401);
    let as_client = get_json(&format!("{url}/api/nodes"), Some(CLIENT_KEY)).await;
    assert_eq!(as_client.0, 401);
    assert_eq!(
        post_json(&format!("{url}/api/nodes/ghost/drain"), Some(ADMIN), "")
            .await
            .0,
        404
    );
    // Client keys on the proxied API.
    let chat_body = json!({ "model": "m", "messages": [] }).to_string();
    let (code, _) = post_json(&format!("{url}/v1/chat/completions"), None, &chat_body).await;
    assert_eq!(code, 401);
    // No node at all: unknown model 404, JSON.
    let (code, body) = client_chat(&url, &chat_body).await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("`m`"));
    // Ollama routes answer errors the Ollama way: `error` is a string.
    let (code, body) = post_json(&format!("{url}/api/chat"), Some(CLIENT_KEY), &chat_body).await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("`m`"), "{body}");
    // A node advertising the router's own address: refused as a loop, not recursion.
    let looped = json!({ "node_id": "loop", "url": url, "models_available": ["loopy"] });
    assert_eq!(
        post_json(&register, Some(TOKEN), &looped.to_string())
            .await
            .0,
        200
    );
    let (code, body) = client_chat(&url, r#"{"model":"loopy"}"#).await;
    assert_eq!(code, 508, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("loop"),
        "{body}"
    );
    assert_eq!(forget_node(&url, "loop").await, 200);
    // Requests without a model and no node: 503.
    let version = format!("{url}/api/version");
    assert_eq!(get_json(&version, Some(CLIENT_KEY)).await.0, 503);
    // Not a proxied path.
    assert_eq!(get_json(&format!("{url}/etc/passwd"), None).await.0, 404);
    // After all that, a real node joins and requests work.
    let mut good = [fake_node("good", &["m"])];
    join_all(&url, TOKEN, &mut good).await;
    let (code, body) = client_chat(&url, &chat_body).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(node_of(&body), "good");
    let (code, body) = client_chat(&url, r#"{"model":"other"}"#).await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(get_json(&version, Some(CLIENT_KEY)).await.0, 200);
    router.stop().await;
}

/// The node agent reads GPU load with nvidia-smi (here a stand-in script printing the
/// query's real output format) and the router shows it; a node without one reports none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heartbeats_carry_gpu_load_read_with_nvidia_smi() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let smi = dir.path().join("nvidia-smi");
    // Two GPUs, as `--format=csv,noheader,nounits` prints them; other arguments fail.
    let script =
        "#!/bin/sh\n[ \"$1\" = --query-gpu=utilization.gpu,memory.used,memory.total ] || exit 2\n\
                  printf '30, 2048, 81559\\n50, 0, 81559\\n'\n";
    std::fs::write(&smi, script).unwrap();
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).unwrap();

    let router = TestRouter::start(settings(None)).await;
    let mut gpu = fake_node("gpu", &["m"]);
    gpu.nvidia_smi = Some(smi);
    gpu.join(&router.url(), TOKEN);
    let mut cpu = fake_node("cpu", &["m"]);
    cpu.nvidia_smi = Some(dir.path().join("missing-nvidia-smi"));
    // The server's own CPU figure wins over the machine's.
    *cpu.behaviour.cpu_percent.lock().unwrap() = Some(37.5);
    cpu.join(&router.url(), TOKEN);

    let start = Instant::now();
    let nodes = loop {
        let (_, body) = get_json(&format!("{}/api/nodes", router.url()), Some(ADMIN)).await;
        let nodes = body["nodes"].as_array().cloned().unwrap_or_default();
        // Registration carries no load; a heartbeat always sets the memory total.
        let beaten = |n: &Value| n["load"]["memory_total_bytes"].as_u64() > Some(0);
        if nodes.len() == 2 && nodes.iter().all(beaten) {
            break nodes;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no heartbeats: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let load = |id: &str| nodes.iter().find(|n| n["node_id"] == id).unwrap()["load"].clone();
    let gpu_load = load("gpu");
    assert_eq!(gpu_load["gpu_percent"].as_f64(), Some(40.0), "{gpu_load}");
    assert_eq!(gpu_load["gpu_memory_used_bytes"].as_u64(), Some(2048 << 20));
    assert_eq!(
        gpu_load["gpu_memory_total_bytes"].as_u64(),
        Some((2 * 81559) << 20)
    );
    let cpu_load = load("cpu");
    assert_eq!(cpu_load["cpu_percent"].as_f64(), Some(37.5), "{cpu_load}");
    assert!(cpu_load["gpu_percent"].is_null(), "{cpu_load}");
    assert!(cpu_load["gpu_memory_used_bytes"].is_null(), "{cpu_load}");
    router.stop().await;
}

/// A plain answer keeps the node's Content-Length (one write, no chunked framing); a stream
/// has none, so the router can still append an error event if the node breaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_answers_keep_their_length_and_streams_do_not() {
    let (router, _nodes) = three_node_router(Strategy::RoundRobin).await;
    let plain = chat_response(&router.url(), false).await;
    assert_eq!(plain.status(), 200);
    let length = plain.headers().get("content-length").cloned();
    assert!(plain.headers().get("transfer-encoding").is_none());
    let body = plain.bytes().await.unwrap();
    assert_eq!(
        length.and_then(|l| l.to_str().ok()?.parse().ok()),
        Some(body.len())
    );
    let streamed = chat_response(&router.url(), true).await;
    assert_eq!(streamed.status(), 200);
    assert!(streamed.headers().get("content-length").is_none());
    assert!(streamed
        .bytes()
        .await
        .unwrap()
        .ends_with(b"data: [DONE]\n\n"));
    router.stop().await;
}
