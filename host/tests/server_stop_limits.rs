//! The stop list is bounded: more than `MAX_STOPS` stop sequences, or one longer than
//! `MAX_STOP_BYTES`, is a 400 naming the limit (13,000 stops of 300 characters once cost one
//! request 44 s of CPU); a list at the limits is served.

mod server_support;

use llmlocal::engine::stop::{MAX_STOPS, MAX_STOP_BYTES};
use llmlocal::server::ServerSettings;
use serde_json::{json, Value};
use server_support::{post, scripted_engine, scripted_settings, TestServer};

async fn server(dir: &std::path::Path) -> TestServer {
    let engine = scripted_engine(scripted_settings(dir, &[("s", "fine")]));
    TestServer::start(engine, ServerSettings::default()).await
}

fn stops(count: usize, len: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("{i:03}{}", "z".repeat(len - 3)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_lists_over_the_limits_are_400_naming_the_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    // Greedy: a sampled scripted generation replays its script from a seed-dependent start.
    let chat = |stop: Vec<String>| json!({"model": "s", "messages": [{"role": "user", "content": "x"}], "stop": stop, "temperature": 0});
    let generate =
        |stop: Vec<String>| json!({"model": "s", "prompt": "x", "options": {"stop": stop}});
    let too_many = stops(MAX_STOPS + 1, 8);
    let too_long = stops(1, MAX_STOP_BYTES + 1);
    for (what, path, body, needle) in [
        (
            "count",
            "/v1/chat/completions",
            chat(too_many.clone()),
            format!("at most {MAX_STOPS} stop"),
        ),
        (
            "length",
            "/v1/chat/completions",
            chat(too_long.clone()),
            format!("at most {MAX_STOP_BYTES} bytes"),
        ),
        (
            "count",
            "/api/generate",
            generate(too_many),
            format!("at most {MAX_STOPS} stop"),
        ),
        (
            "length",
            "/api/generate",
            generate(too_long),
            format!("at most {MAX_STOP_BYTES} bytes"),
        ),
    ] {
        let (status, text) = post(&server, path, body).await;
        assert_eq!(status, 400, "{what} {path}: {text}");
        assert!(text.contains(&needle), "{what} {path}: {text}");
    }
    // At the limits: served.
    let (status, text) = post(
        &server,
        "/v1/chat/completions",
        chat(stops(MAX_STOPS, MAX_STOP_BYTES)),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let value: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(value["choices"][0]["message"]["content"], "fine");
}

/// The other lists a client sends are bounded the same way, whichever dialect carries them.
#[tokio::test(flavor = "multi_thread")]
async fn message_and_logit_bias_lists_over_the_limits_are_400_naming_them() {
    use llmlocal::engine::limits::{MAX_LOGIT_BIAS, MAX_MESSAGES};
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let messages = vec![json!({"role": "user", "content": "x"}); MAX_MESSAGES + 1];
    let bias: serde_json::Map<String, Value> = (0..=MAX_LOGIT_BIAS)
        .map(|i| (i.to_string(), json!(1)))
        .collect();
    for (path, body, needle) in [
        (
            "/v1/chat/completions",
            json!({"model": "s", "messages": messages}),
            "messages",
        ),
        (
            "/api/chat",
            json!({"model": "s", "messages": messages, "stream": false}),
            "messages",
        ),
        (
            "/v1/completions",
            json!({"model": "s", "prompt": "x", "logit_bias": bias}),
            "logit_bias",
        ),
    ] {
        let (status, text) = post(&server, path, body).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains(needle), "{path}: {text}");
    }
}
