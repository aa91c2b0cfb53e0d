//! OpenAI-compatible routes over loopback HTTP on the scripted backend.

mod server_support;

use llmlocal::server::ServerSettings;
use serde_json::{json, Value};
use server_support::{client, parse_sse, post, scripted_engine, scripted_settings, TestServer};

const SCRIPT: &str = "The quick brown fox ✓ jumps.";

async fn server(dir: &std::path::Path) -> TestServer {
    let engine = scripted_engine(scripted_settings(dir, &[("fox", SCRIPT), ("other", "xyz")]));
    TestServer::start(engine, ServerSettings::default()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_completion_without_streaming() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let (status, body) = post(
        &server,
        "/v1/chat/completions",
        json!({"model": "fox", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "fox");
    assert!(v["id"].as_str().expect("id").starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], SCRIPT);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let usage = &v["usage"];
    assert_eq!(usage["completion_tokens"], SCRIPT.len());
    let prompt = usage["prompt_tokens"].as_u64().expect("prompt tokens");
    assert!(prompt > 2, "the chat template adds tokens: {prompt}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(prompt + SCRIPT.len() as u64)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_completion_streams_sse_chunks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .json(&json!({
            "model": "fox",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "temperature": 0,
            "stream": true,
            "stream_options": {"include_usage": true}
        }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let (events, done) = parse_sse(&response.text().await.expect("body"));
    assert!(done, "ends with data: [DONE]");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one id for the stream"
    );
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"].get(0)?["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, SCRIPT);
    assert!(events
        .iter()
        .all(|e| e["object"] == "chat.completion.chunk"));
    let finish: Vec<&Value> = events
        .iter()
        .filter_map(|e| e["choices"].get(0).map(|c| &c["finish_reason"]))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("stop")], "one finish reason, at the end");
    let usage = &events.last().expect("usage chunk")["usage"];
    assert_eq!(usage["completion_tokens"], SCRIPT.len());
    assert!(events.len() > 5, "streamed in several chunks");
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_stream_and_not_with_max_tokens_and_stop() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let (status, body) = post(
        &server,
        "/v1/completions",
        json!({"model": "fox", "prompt": "Once", "max_tokens": 9, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], &SCRIPT[..9]);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 9);
    assert_eq!(v["usage"]["prompt_tokens"], 5, "BOS + 4 bytes");

    let response = client()
        .post(server.url("/v1/completions"))
        .json(&json!({"model": "fox", "prompt": ["Once"], "stop": ["own f", "zzz"], "stream": true, "temperature": 0}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let (events, done) = parse_sse(&response.text().await.expect("body"));
    assert!(done);
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "The quick br", "stops before the stop sequence");
    assert_eq!(
        events.last().expect("last")["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_and_temperature_are_passed_through() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let ask = |seed: u64| {
        let body =
            json!({"model": "fox", "prompt": "q", "temperature": 0.9, "top_p": 0.9, "seed": seed});
        let url = server.url("/v1/completions");
        async move {
            let v: Value = client()
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("req")
                .json()
                .await
                .expect("json");
            v["choices"][0]["text"].as_str().expect("text").to_string()
        }
    };
    let (a, b, c) = (ask(7).await, ask(7).await, ask(8).await);
    assert_eq!(a, b);
    assert_ne!(a, c, "the scripted backend rotates by seed when sampling");
}

#[tokio::test(flavor = "multi_thread")]
async fn models_lists_the_configured_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let v: Value = client()
        .get(server.url("/v1/models"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .expect("list")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["fox", "other"]);
    assert!(v["data"]
        .as_array()
        .expect("list")
        .iter()
        .all(|m| m["object"] == "model"));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_metrics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let health: Value = client()
        .get(server.url("/health"))
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["backends"], json!(["scripted"]));
    let (status, _) = post(
        &server,
        "/v1/completions",
        json!({"model": "other", "prompt": "a", "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200);
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("req")
        .text()
        .await
        .expect("text");
    let value = |series: &str| server_support::metric(&text, series);
    assert_eq!(
        value("llmlocal_generated_tokens_total{model=\"other\"}"),
        Some(3.0)
    );
    assert_eq!(
        value("llmlocal_prompt_tokens_total{model=\"other\"}"),
        Some(2.0)
    );
    assert_eq!(value("llmlocal_loaded_models"), Some(1.0));
    assert_eq!(
        value("llmlocal_time_to_first_token_seconds_count{model=\"other\"}"),
        Some(1.0)
    );
    assert_eq!(
        value("llmlocal_token_latency_seconds_count{model=\"other\"}"),
        Some(2.0)
    );
    assert_eq!(
        value("llmlocal_http_requests_total{endpoint=\"/v1/completions\",status=\"200\"}"),
        Some(1.0)
    );
    assert!(text.contains("llmlocal_queue_depth"), "{text}");
}
