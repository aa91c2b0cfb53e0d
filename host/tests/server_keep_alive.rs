//! Ollama's per-request `keep_alive` (0 unloads after the request, a duration sets the idle
//! time, negative keeps the model) and the refused `format` field, on the scripted backend.

mod server_support;

use serde_json::{json, Value};
use server_support::{
    eventually, parse_ndjson, post, scripted_engine, scripted_settings, TestServer,
};
use std::time::{Duration, SystemTime};

async fn server(keep_alive: Option<Duration>) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = scripted_settings(dir.path(), &[("s", "Hello"), ("t", "There")]);
    settings.keep_alive = keep_alive;
    let engine = scripted_engine(settings);
    let server = TestServer::start(engine, Default::default()).await;
    (server, dir)
}

fn loaded(server: &TestServer) -> Vec<String> {
    let mut names: Vec<String> = server.engine.loaded().into_iter().map(|l| l.name).collect();
    names.sort();
    names
}

/// Seconds from now until the model's keep-alive unloads it; None = never.
fn expires_in(server: &TestServer, model: &str) -> Option<f64> {
    let info = server
        .engine
        .loaded()
        .into_iter()
        .find(|l| l.name == model)
        .unwrap_or_else(|| panic!("`{model}` is loaded"));
    info.expires_at.map(|at| {
        at.duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs_f64()
    })
}

fn generate(model: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "prompt": "x", "stream": false,
                          "options": {"temperature": 0}});
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_zero_unloads_after_the_request() {
    let (server, _dir) = server(Some(Duration::from_secs(300))).await;
    let (status, body) = post(
        &server,
        "/api/generate",
        generate("s", json!({"keep_alive": 0})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(answer["response"], "Hello");
    assert!(loaded(&server).is_empty(), "unloaded once answered");

    // Streamed: unloaded when the stream ends.
    let (status, body) = post(
        &server,
        "/api/chat",
        json!({"model": "t", "messages": [{"role": "user", "content": "x"}],
               "options": {"temperature": 0}, "keep_alive": "0s"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let lines = parse_ndjson(&body);
    let text: String = lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect();
    assert_eq!(text, "There");
    let gone = eventually(Duration::from_secs(5), || loaded(&server).is_empty()).await;
    assert!(gone, "still loaded: {:?}", loaded(&server));

    // Without keep_alive the server's own setting applies: the model stays.
    let (status, _) = post(&server, "/api/generate", generate("s", json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(loaded(&server), ["s"]);
    // A load-only request with keep_alive 0 unloads without generating.
    let (status, body) = post(
        &server,
        "/api/generate",
        json!({"model": "s", "keep_alive": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(answer["done_reason"], "unload");
    assert!(loaded(&server).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_durations_set_the_idle_time_and_negative_keeps_forever() {
    let (server, _dir) = server(Some(Duration::from_secs(300))).await;
    let (status, _) = post(
        &server,
        "/api/generate",
        generate("s", json!({"keep_alive": "10m"})),
    )
    .await;
    assert_eq!(status, 200);
    let left = expires_in(&server, "s").expect("expires");
    assert!((590.0..=600.5).contains(&left), "{left}");
    // A number is seconds.
    let (status, _) = post(
        &server,
        "/api/generate",
        generate("s", json!({"keep_alive": 42})),
    )
    .await;
    assert_eq!(status, 200);
    let left = expires_in(&server, "s").expect("expires");
    assert!((35.0..=42.5).contains(&left), "{left}");

    // Negative: never expires, and the reaper leaves it even past the server's keep-alive.
    let (status, _) = post(
        &server,
        "/api/generate",
        generate("t", json!({"keep_alive": -1})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(expires_in(&server, "t"), None);

    // A short keep-alive really unloads once idle that long.
    let (status, _) = post(
        &server,
        "/api/generate",
        generate("s", json!({"keep_alive": "100ms"})),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reaped = server.engine.reap();
    assert_eq!(reaped.len(), 1, "{reaped:?}");
    assert_eq!(loaded(&server), ["t"], "t is kept forever");

    // A load-only request sets it too.
    let (status, body) = post(
        &server,
        "/api/chat",
        json!({"model": "s", "keep_alive": "1h"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let left = expires_in(&server, "s").expect("expires");
    assert!((3590.0..=3600.5).contains(&left), "{left}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_keep_alive_and_json_format_are_clear_400s() {
    let (server, _dir) = server(None).await;
    for (extra, words) in [
        (json!({"keep_alive": "soon"}), "keep_alive"),
        (json!({"keep_alive": true}), "keep_alive"),
        // The scripted backend cannot constrain its output: the 400 names the capability.
        (json!({"format": "json"}), "json-schema"),
        (
            json!({"format": {"type": "object", "properties": {}}}),
            "json-schema",
        ),
    ] {
        for path in ["/api/generate", "/api/chat"] {
            let mut body = generate("s", extra.clone());
            body["messages"] = json!([{"role": "user", "content": "x"}]);
            let (status, text) = post(&server, path, body).await;
            assert_eq!(status, 400, "{path} {extra}: {text}");
            let error: Value = serde_json::from_str(&text).expect("json error");
            let message = error["error"].as_str().expect("Ollama error shape");
            assert!(message.contains(words), "{message}");
        }
    }
    assert!(loaded(&server).is_empty(), "refused before loading");
    // An empty format (what some clients send by default) is no format.
    let (status, text) = post(
        &server,
        "/api/generate",
        generate("s", json!({"format": ""})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
}
