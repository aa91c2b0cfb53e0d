//! The router and three `llmlocal serve` processes (scripted test backend) on loopback:
//! each strategy, a router restart, and a node killed under traffic.

mod router_support;

use router_support::{client, node_statuses, procs, status_of, wait_nodes, ADMIN, TOKEN};
use serde_json::json;
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

const IDS: [&str; 3] = ["node-a", "node-b", "node-c"];

/// One chat completion of the scripted model through the router: (status, node).
async fn ask(router: &str) -> (u16, String) {
    ask_model(router, "s").await
}

/// One chat completion through the router: (status, node that answered).
async fn ask_model(router: &str, model: &str) -> (u16, String) {
    let resp = client()
        .post(format!("{router}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(json!({ "model": model, "max_tokens": 8, "messages": [{ "role": "user", "content": "hi" }] }).to_string())
        .send()
        .await;
    match resp {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let node = resp
                .headers()
                .get("x-llmlocal-node")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            let ok = status != 200 || String::from_utf8_lossy(&body).contains("\"usage\"");
            (if ok { status } else { 599 }, node)
        }
        Err(_) => (0, String::new()),
    }
}

async fn spread(router: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let (status, node) = ask(router).await;
        assert_eq!(status, 200);
        *counts.entry(node).or_default() += 1;
    }
    counts
}

fn online(nodes: &[(String, String)]) -> bool {
    IDS.iter().all(|id| status_of(nodes, id) == Some("online"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_serve_processes_behind_a_router_process() {
    let files = procs::NodeFiles::new();
    let db = files.dir.path().join("router.sqlite");
    // prefer-loaded first, while no node has the model in memory yet.
    let mut router = procs::router(&db, 0, "prefer-loaded", TOKEN, ADMIN);
    let port = router.addr.port();
    let url = router.url();
    let mut nodes: Vec<procs::Proc> = IDS
        .iter()
        .map(|id| procs::node(&files, id, 0, &url, TOKEN))
        .collect();
    wait_nodes(&url, Duration::from_secs(10), online).await;

    // prefer-loaded: the first request loads `s` on one node; once its heartbeat says so,
    // every request goes there.
    let (status, first) = ask(&url).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let counts = spread(&url, 10).await;
    assert_eq!(counts.get(&first), Some(&10), "prefer-loaded: {counts:?}");

    // Router restart (same port and database) as round-robin: nodes come back by
    // heartbeat, and requests rotate exactly.
    router.kill();
    let router = procs::router(&db, port, "round-robin", TOKEN, ADMIN);
    wait_nodes(&url, Duration::from_secs(10), online).await;
    let counts = spread(&url, 30).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&c| c == 10), "round-robin: {counts:?}");
    drop(router);

    // least-loaded: with equal request counts the CPU load decides, so sequential requests
    // may all go to one node; requests at once must spread (the router counts its own
    // in-flight requests).
    let _router = procs::router(&db, port, "least-loaded", TOKEN, ADMIN);
    wait_nodes(&url, Duration::from_secs(10), online).await;
    let burst = futures_util::future::join_all((0..12).map(|_| ask(&url))).await;
    let mut counts = BTreeMap::<String, usize>::new();
    for (status, node) in burst {
        assert_eq!(status, 200);
        *counts.entry(node).or_default() += 1;
    }
    assert!(counts.len() >= 2, "least-loaded burst: {counts:?}");

    // Kill node-b under traffic from 8 clients.
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Vec::<(Instant, u16, String)>::new()));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (stop, results, url) = (stop.clone(), results.clone(), url.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let (status, node) = ask(&url).await;
                    results.lock().unwrap().push((Instant::now(), status, node));
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let b_port = nodes[1].addr.port();
    nodes[1].kill();
    let killed_at = Instant::now();
    let took = wait_nodes(&url, Duration::from_secs(5), |n| {
        status_of(n, "node-b") == Some("offline")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let results = results.lock().unwrap().clone();
    let failed: Vec<_> = results.iter().filter(|(_, s, _)| *s != 200).collect();
    assert!(results.len() > 50, "only {} requests ran", results.len());
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        results.len()
    );
    let after = results
        .iter()
        .filter(|(t, _, n)| *t > killed_at + Duration::from_millis(50) && n == "node-b")
        .count();
    assert_eq!(after, 0, "requests answered by a killed node");
    assert!(
        took <= Duration::from_millis(1500),
        "offline after {took:?} (timeout 1.5 s)"
    );

    // Restarted on its port, node-b is back online and gets traffic again.
    nodes[1] = procs::node(&files, "node-b", b_port, &url, TOKEN);
    wait_nodes(&url, Duration::from_secs(10), online).await;
    let statuses = node_statuses(&url).await;
    assert_eq!(statuses.len(), 3, "{statuses:?}");
    let counts = spread(&url, 30).await;
    assert!(counts.get("node-b").is_some_and(|&c| c > 0), "{counts:?}");
}

/// Reads an SSE body until the first event with generated text; returns the text so far.
async fn first_content(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
) -> String {
    use futures_util::StreamExt as _;
    let mut text = String::new();
    while !text.contains("\"content\":\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.next())
            .await
            .expect("no first token within 30 s")
            .expect("the stream ended before any token")
            .expect("the stream failed before any token");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

/// A real `llmlocal serve` node (the fixture GGUF through the llama.cpp plugin) is killed
/// while it streams through the router: the client's stream ends promptly with an SSE error
/// event (not a hang, not a finished-looking stream), the request is in the history as an
/// error, and the next request is answered by the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_llama_cpp_node_mid_stream_ends_with_an_error_event() {
    use futures_util::StreamExt as _;
    let fixtures = llmlocal_fixtures::ensure_default().expect("fixture models");
    let files = procs::LlamaFiles::new();
    let db = files.dir.path().join("router.sqlite");
    let router = procs::router(&db, 0, "round-robin", TOKEN, ADMIN);
    let url = router.url();
    let ids = ["real-a", "real-b"];
    let mut nodes: Vec<procs::Proc> = ids
        .iter()
        .map(|id| procs::llama_node(&files, &fixtures.gguf_f32, id, &url, TOKEN))
        .collect();
    wait_nodes(&url, Duration::from_secs(10), |n| {
        ids.iter().all(|id| status_of(n, id) == Some("online"))
    })
    .await;

    // Far more tokens than can be generated before the kill lands.
    let request = json!({ "model": "real", "stream": true, "max_tokens": 3000, "ignore_eos": true,
        "messages": [{ "role": "user", "content": "Tell me a long story." }] });
    let resp = client()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(request.to_string())
        .send()
        .await
        .expect("router answers");
    assert_eq!(resp.status(), 200);
    let streaming_node = resp.headers()["x-llmlocal-node"]
        .to_str()
        .unwrap()
        .to_string();
    let victim = ids.iter().position(|id| *id == streaming_node).unwrap();
    let mut body = resp.bytes_stream();
    let mut text = first_content(&mut body).await;
    nodes[victim].kill();
    let killed_at = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut rest = String::new();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => rest.push_str(&String::from_utf8_lossy(&bytes)),
                Err(err) => {
                    panic!("the router broke the client's stream instead of ending it: {err}")
                }
            }
        }
        rest
    })
    .await
    .expect("the stream hung after its node was killed");
    text.push_str(&rest);
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .collect();
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap())
        .unwrap_or_else(|_| panic!("last event is not JSON: {:?}", events.last()));
    let message = last["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&streaming_node) && message.contains("failed mid-response"),
        "last event: {last}"
    );
    assert!(
        !text.contains("[DONE]"),
        "a broken stream must not look finished"
    );
    assert!(
        !text.contains("\"finish_reason\":\"length\""),
        "generation finished before the kill"
    );
    // No hang: the broken stream ends soon after the kill (a generous bound for loaded CI).
    assert!(
        killed_at.elapsed() < Duration::from_secs(20),
        "the stream took {:?} to end after the node was killed",
        killed_at.elapsed()
    );

    // The next request goes to the surviving node (directly or after failing over).
    let (status, node) = ask_model(&url, "real").await;
    assert_eq!(status, 200);
    assert_eq!(node, ids[1 - victim]);
    // The broken stream is in the history as an error from the killed node.
    let rows = router_support::history(&url, 2).await;
    assert!(
        rows.iter().any(|r| r["node_id"] == streaming_node
            && r["error"]
                .as_str()
                .is_some_and(|e| e.contains("mid-response"))),
        "{rows:?}"
    );
}
