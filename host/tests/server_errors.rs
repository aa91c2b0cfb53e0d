//! Bad input gets the right 4xx and a JSON error in the protocol's shape, and the server
//! keeps serving; a full queue gets 429 with Retry-After.

mod server_support;

use llmlocal::server::ServerSettings;
use serde_json::{json, Value};
use server_support::{client, scripted_engine, scripted_settings, TestServer};

const KEY: &str = "test-key-123";

async fn server(dir: &std::path::Path, keys: bool) -> TestServer {
    let engine = scripted_engine(scripted_settings(dir, &[("s", "fine")]));
    let settings = ServerSettings {
        api_keys: if keys {
            vec![KEY.to_string()]
        } else {
            Vec::new()
        },
        max_body_bytes: 64 * 1024,
        max_tokens_cap: 1000,
        ..ServerSettings::default()
    };
    TestServer::start(engine, settings).await
}

/// Sends a raw body; returns status, headers and the parsed JSON body.
async fn send(
    server: &TestServer,
    path: &str,
    body: impl Into<reqwest::Body>,
    key: Option<&str>,
) -> (u16, Value) {
    let mut request = client()
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"));
    (status, value)
}

/// An OpenAI error: `{"error": {"message": "...", "type": "...", "code": ...}}`.
fn openai_error(value: &Value) -> (&str, &str) {
    let error = &value["error"];
    let message = error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.message in {value}"));
    let code = error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code in {value}"));
    assert!(error["type"].is_string(), "no error.type in {value}");
    (message, code)
}

async fn still_serving(server: &TestServer, key: Option<&str>) {
    let good =
        json!({"model": "s", "messages": [{"role": "user", "content": "x"}], "temperature": 0});
    let (status, value) = send(server, "/v1/chat/completions", good.to_string(), key).await;
    assert_eq!(status, 200, "{value}");
    assert_eq!(value["choices"][0]["message"]["content"], "fine");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path(), false).await;
    let chat = |extra: Value| {
        let mut body = json!({"model": "s", "messages": [{"role": "user", "content": "x"}]});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        body.to_string()
    };
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        (
            "malformed JSON",
            "{\"model\": \"s\", \"messages\": [".into(),
            400,
            "invalid_request",
            "invalid JSON",
        ),
        (
            "not JSON at all",
            "hello".into(),
            400,
            "invalid_request",
            "invalid JSON",
        ),
        (
            // `model` may be left out with one model served (llama-server's rule).
            "missing model and messages",
            json!({"messages": []}).to_string(),
            400,
            "invalid_request",
            "messages",
        ),
        (
            "messages of the wrong type",
            json!({"model": "s", "messages": "hi"}).to_string(),
            400,
            "invalid_request",
            "invalid JSON",
        ),
        (
            "max_tokens of the wrong type",
            chat(json!({"max_tokens": "ten"})),
            400,
            "invalid_request",
            "invalid JSON",
        ),
        (
            "negative max_tokens",
            chat(json!({"max_tokens": -5})),
            400,
            "invalid_request",
            "at least 1",
        ),
        (
            "zero max_tokens",
            chat(json!({"max_tokens": 0})),
            400,
            "invalid_request",
            "at least 1",
        ),
        (
            "huge max_tokens",
            chat(json!({"max_tokens": 1_000_000_000_000u64})),
            400,
            "invalid_request",
            "limit of 1000",
        ),
        (
            "temperature out of range",
            chat(json!({"temperature": 7})),
            400,
            "invalid_request",
            "temperature",
        ),
        (
            "top_p out of range",
            chat(json!({"top_p": 0})),
            400,
            "invalid_request",
            "top_p",
        ),
        (
            "n > 1",
            chat(json!({"n": 3})),
            400,
            "invalid_request",
            "n = 1",
        ),
        (
            "empty messages",
            json!({"model": "s", "messages": []}).to_string(),
            400,
            "invalid_request",
            "messages",
        ),
        (
            "unknown model",
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).to_string(),
            404,
            "model_not_found",
            "nope",
        ),
        (
            "unknown backend",
            chat(json!({"backend": "warp-drive"})),
            400,
            "backend_unavailable",
            "warp-drive",
        ),
    ];
    for (what, body, status, code, needle) in cases {
        let (got, value) = send(&server, "/v1/chat/completions", body, None).await;
        assert_eq!(got, status, "{what}: {value}");
        let (message, got_code) = openai_error(&value);
        assert_eq!(got_code, code, "{what}: {value}");
        assert!(
            message.contains(needle),
            "{what}: {message:?} should mention {needle:?}"
        );
        still_serving(&server, None).await;
    }
    // Completions and unknown routes answer the same way.
    let (status, value) = send(
        &server,
        "/v1/completions",
        json!({"model": "s", "prompt": 5}).to_string(),
        None,
    )
    .await;
    assert_eq!(status, 400, "{value}");
    openai_error(&value);
    let (status, value) = send(&server, "/v1/nothing", "{}", None).await;
    assert_eq!(status, 404, "{value}");
    openai_error(&value);
    still_serving(&server, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_body_is_413() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path(), false).await;
    let big = json!({"model": "s", "messages": [{"role": "user", "content": "x".repeat(200_000)}]});
    let (status, value) = send(&server, "/v1/chat/completions", big.to_string(), None).await;
    assert_eq!(status, 413, "{value}");
    let (_, code) = openai_error(&value);
    assert_eq!(code, "request_too_large");
    let (status, value) = send(&server, "/api/chat", big.to_string(), None).await;
    assert_eq!(status, 413, "{value}");
    assert!(value["error"].is_string(), "Ollama shape: {value}");
    still_serving(&server, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_are_checked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path(), true).await;
    let body = json!({"model": "s", "messages": [{"role": "user", "content": "x"}]}).to_string();
    let (status, value) = send(&server, "/v1/chat/completions", body.clone(), None).await;
    assert_eq!(status, 401, "{value}");
    let (message, code) = openai_error(&value);
    assert_eq!(code, "invalid_api_key");
    assert!(message.contains("missing"), "{message}");
    let (status, value) = send(&server, "/v1/chat/completions", body.clone(), Some("wrong")).await;
    assert_eq!(status, 401, "{value}");
    assert!(openai_error(&value).0.contains("invalid"), "{value}");
    let (status, value) = send(&server, "/api/chat", body, Some("wrong")).await;
    assert_eq!(status, 401, "{value}");
    assert!(value["error"].is_string(), "Ollama shape: {value}");
    let models = client()
        .get(server.url("/v1/models"))
        .send()
        .await
        .expect("req");
    assert_eq!(models.status(), 401, "every API route needs the key");
    let health = client()
        .get(server.url("/health"))
        .send()
        .await
        .expect("req");
    assert_eq!(health.status(), 200, "/health is open");
    still_serving(&server, Some(KEY)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ollama_routes_answer_in_ollama_shape() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path(), false).await;
    let cases: Vec<(&str, &str, String, u16)> = vec![
        ("malformed", "/api/generate", "{".into(), 400),
        (
            "wrong type",
            "/api/generate",
            json!({"model": "s", "prompt": 3}).to_string(),
            400,
        ),
        (
            "unknown model",
            "/api/generate",
            json!({"model": "nope", "prompt": "x"}).to_string(),
            404,
        ),
        (
            "unknown model",
            "/api/chat",
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).to_string(),
            404,
        ),
        (
            "huge num_predict",
            "/api/generate",
            json!({"model": "s", "prompt": "x", "options": {"num_predict": 99999}}).to_string(),
            400,
        ),
        (
            "unknown backend",
            "/api/generate",
            json!({"model": "s", "prompt": "x", "backend": "nope"}).to_string(),
            400,
        ),
        (
            "show unknown",
            "/api/show",
            json!({"model": "nope"}).to_string(),
            404,
        ),
    ];
    for (what, path, body, status) in cases {
        let (got, value) = send(&server, path, body, None).await;
        assert_eq!(got, status, "{what} {path}: {value}");
        assert!(
            value["error"].is_string(),
            "{what}: Ollama errors are {{\"error\": \"...\"}}: {value}"
        );
        still_serving(&server, None).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_is_429_with_retry_after() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = scripted_settings(dir.path(), &[("s", "0123456789")]);
    settings.parallel = Some(1);
    settings.queue_depth = 0;
    settings.context_length = Some(1 << 30);
    let server_settings = ServerSettings {
        max_tokens_cap: 1 << 29,
        ..ServerSettings::default()
    };
    let server = TestServer::start(scripted_engine(settings), server_settings).await;
    let long = json!({"model": "s", "prompt": "x", "stream": true, "ignore_eos": true, "max_tokens": 1 << 29, "temperature": 0});
    let mut running = client()
        .post(server.url("/v1/completions"))
        .json(&long)
        .send()
        .await
        .expect("request");
    assert_eq!(running.status(), 200);
    running.chunk().await.expect("read").expect("a first chunk");
    let short = json!({"model": "s", "prompt": "x", "max_tokens": 3, "temperature": 0});
    let busy = client()
        .post(server.url("/v1/completions"))
        .json(&short)
        .send()
        .await
        .expect("request");
    assert_eq!(busy.status(), 429);
    let retry = busy
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(retry.parse::<u64>().is_ok(), "{retry}");
    let value: Value = busy.json().await.expect("JSON");
    assert_eq!(openai_error(&value).1, "queue_full");
    drop(running);
    let freed = server_support::eventually(std::time::Duration::from_secs(10), || {
        server.engine.metrics().active_generations.get() == 0
    })
    .await;
    assert!(freed, "the disconnected stream's generation ended");
    let ok: Value = client()
        .post(server.url("/v1/completions"))
        .json(&short)
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(ok["choices"][0]["text"], "012");
}
