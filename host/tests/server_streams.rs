//! Streams under stress: a client that disconnects cancels its generation; 64 concurrent
//! streams all complete with the right text; shutdown lets in-flight streams finish; a
//! backend that blocks in `generate` does not stall other requests.

mod server_support;

use llmlocal::{engine::Engine, server::ServerSettings};
use serde_json::{json, Value};
use server_support::{
    client, eventually, metric, parse_sse, post, registry, scripted_engine, scripted_settings,
    TestServer,
};
use std::time::{Duration, Instant};

const DIGITS: &str = "0123456789";

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_cancels_its_generation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = scripted_settings(dir.path(), &[("s", DIGITS)]);
    settings.context_length = Some(1 << 30);
    let server_settings = ServerSettings {
        max_tokens_cap: 1 << 29,
        ..ServerSettings::default()
    };
    let server = TestServer::start(scripted_engine(settings), server_settings).await;
    let asked: u64 = 1 << 29;
    let body = json!({"model": "s", "messages": [{"role": "user", "content": "go"}], "stream": true,
                      "ignore_eos": true, "max_tokens": asked, "temperature": 0});
    let mut response = client()
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let mut received = 0;
    while received < 4096 {
        received += response
            .chunk()
            .await
            .expect("read")
            .expect("more data")
            .len();
    }
    drop(response); // closes the connection
    let metrics = || {
        let text = server.engine.metrics().render();
        let generated =
            metric(&text, "llmlocal_generated_tokens_total{model=\"s\"}").unwrap_or(-1.0);
        let cancelled = metric(
            &text,
            "llmlocal_generations_total{model=\"s\",reason=\"cancelled\"}",
        );
        (
            generated,
            cancelled,
            metric(&text, "llmlocal_active_generations"),
        )
    };
    let stopped = eventually(Duration::from_secs(10), || metrics().2 == Some(0.0)).await;
    assert!(
        stopped,
        "the generation ended after the disconnect: {:?}",
        metrics()
    );
    let (generated, cancelled, _) = metrics();
    assert_eq!(cancelled, Some(1.0));
    assert!(
        generated > 0.0 && generated < 1_000_000.0,
        "decoding stopped early: {generated} of {asked}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(metrics().0, generated, "no decoding after the cancel");
}

#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_concurrent_streams_complete_with_their_own_text() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = "abcdefghijklmnopqrstuvwxyz0123456789";
    let server = TestServer::start(
        scripted_engine(scripted_settings(dir.path(), &[("s", script)])),
        ServerSettings::default(),
    )
    .await;
    let http = client();
    let tasks: Vec<_> = (0..64usize)
        .map(|i| {
            let http = http.clone();
            let url = server.url("/v1/chat/completions");
            let n = 1 + i % script.len();
            tokio::spawn(async move {
                let body = json!({"model": "s", "messages": [{"role": "user", "content": format!("request {i}")}],
                                  "stream": true, "max_tokens": n, "temperature": 0});
                let response = http.post(url).json(&body).send().await.expect("request");
                assert_eq!(response.status(), 200);
                let (events, done) = parse_sse(&response.text().await.expect("body"));
                assert!(done, "request {i} ended with [DONE]");
                let text: String = events
                    .iter()
                    .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
                    .collect();
                (n, text)
            })
        })
        .collect();
    for task in tasks {
        let (n, text) = task.await.expect("task");
        assert_eq!(text, &script[..n]);
    }
    let text = server.engine.metrics().render();
    let finished: f64 = ["length", "stop"]
        .iter()
        .filter_map(|r| {
            metric(
                &text,
                &format!("llmlocal_generations_total{{model=\"s\",reason=\"{r}\"}}"),
            )
        })
        .sum();
    assert_eq!(finished, 64.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_in_flight_streams_finish() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script: String = (0..200)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut server = TestServer::start(
        scripted_engine(scripted_settings(dir.path(), &[("s", &script)])),
        ServerSettings::default(),
    )
    .await;
    let body = json!({"model": "s", "prompt": "x", "stream": true, "temperature": 0});
    let mut response = client()
        .post(server.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let mut text = String::from_utf8(
        response
            .chunk()
            .await
            .expect("read")
            .expect("chunk")
            .to_vec(),
    )
    .expect("utf-8");
    let task = server.begin_shutdown();
    while let Some(chunk) = response
        .chunk()
        .await
        .expect("the stream goes on during shutdown")
    {
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    let (events, done) = parse_sse(&text);
    assert!(done, "the in-flight stream finished");
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, script);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the server stops after the stream")
        .expect("task")
        .expect("serve");
    let refused = client().get(server.url("/health")).send().await;
    assert!(refused.is_err(), "no new connections after shutdown");
    let _: Option<Value> = None;
}

/// The slow-generate test plugin blocks 3 s inside `generate`, as a backend that reads the
/// prompt there would. With a single runtime worker, a server that made that call on the
/// worker itself would answer nothing else until it returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_backend_that_blocks_in_generate_does_not_stall_other_requests() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = scripted_settings(dir.path(), &[("quick", DIGITS), ("slow", DIGITS)]);
    if let Some(slow) = settings.models.get_mut("slow") {
        slow.backend = Some("slow-generate".to_string());
    }
    let engine = Engine::new(settings, registry(&["scripted", "slow_generate"]), None);
    let server = TestServer::start(engine, ServerSettings::default()).await;
    let body =
        |model: &str| json!({"model": model, "prompt": "go", "max_tokens": 4, "temperature": 0});
    let sent = Instant::now();
    let slow = tokio::spawn(
        client()
            .post(server.url("/v1/completions"))
            .json(&body("slow"))
            .send(),
    );
    // The plugin creates this file when its generate call begins.
    let marker = dir.path().join("slow.txt.generating");
    let began = eventually(Duration::from_secs(10), || marker.exists()).await;
    assert!(began, "the slow model's generate call began");

    let (status, text) = post(&server, "/v1/completions", body("quick")).await;
    let answered = sent.elapsed();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("0123"), "{text}");
    // The slow generate returns 3 s after it began, which was after `sent`.
    assert!(
        answered < Duration::from_secs(2),
        "the quick model was answered {answered:?} after the slow request was sent: it waited \
         for the slow model's generate"
    );

    let response = slow.await.expect("join").expect("slow request");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert!(text.contains("0123"), "{text}");
}
