//! Server-wide and per-model sampling defaults (`llmlocal serve --temp --seed --n-predict ...`,
//! `[engine]` / `[models.NAME]` keys) over loopback HTTP on the scripted backend, whose output
//! shows the sampling: greedy replays the script from its start, a sampled generation starts
//! at `(sum of prompt ids + seed) mod len`, and every token is one byte.

mod server_support;

use llmlocal::{
    engine::{EngineSettings, SamplingDefaults},
    server::ServerSettings,
};
use serde_json::{json, Value};
use server_support::{post, scripted_engine, scripted_settings, TestServer};
use std::path::Path;

const SCRIPT: &str = "abcdefghijklmnopqrstuvwxyz0123456789";

async fn server(dir: &Path, defaults: SamplingDefaults, model: SamplingDefaults) -> TestServer {
    let mut settings: EngineSettings = scripted_settings(dir, &[("s", SCRIPT)]);
    settings.sampling = defaults;
    if let Some(entry) = settings.models.get_mut("s") {
        entry.temperature = model.temperature;
        entry.seed = model.seed;
        entry.n_predict = model.n_predict;
    }
    TestServer::start(scripted_engine(settings), ServerSettings::default()).await
}

async fn ok(server: &TestServer, path: &str, body: Value) -> Value {
    let (status, text) = post(server, path, body).await;
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
}

async fn completion_text(server: &TestServer, extra: Value) -> String {
    let mut body = json!({"model": "s", "prompt": "x"});
    for (key, value) in extra.as_object().into_iter().flatten() {
        body[key] = value.clone();
    }
    let v = ok(server, "/v1/completions", body).await;
    v["choices"][0]["text"].as_str().expect("text").to_string()
}

/// Generated-token counts of one request without a token limit, in every dialect that
/// lets a request leave it out (Anthropic requires `max_tokens`).
async fn counts_without_a_limit(server: &TestServer) -> Vec<(&'static str, u64)> {
    let chat =
        json!({"model": "s", "messages": [{"role": "user", "content": "x"}], "temperature": 0});
    let v = ok(server, "/v1/chat/completions", chat).await;
    let openai = v["usage"]["completion_tokens"].as_u64().expect("usage");
    let v = ok(
        server,
        "/api/generate",
        json!({"model": "s", "prompt": "x", "stream": false, "options": {"temperature": 0}}),
    )
    .await;
    let ollama = v["eval_count"].as_u64().expect("eval_count");
    let v = ok(
        server,
        "/completion",
        json!({"prompt": "x", "temperature": 0}),
    )
    .await;
    let llama = v["tokens_predicted"].as_u64().expect("tokens_predicted");
    let v = ok(
        server,
        "/v1/responses",
        json!({"model": "s", "input": "x", "temperature": 0}),
    )
    .await;
    let responses = v["usage"]["output_tokens"].as_u64().expect("output_tokens");
    vec![
        ("openai", openai),
        ("ollama", ollama),
        ("llama-server", llama),
        ("responses", responses),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_default_temperature_of_0_gives_the_greedy_answer_and_a_request_overrides_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let greedy = SamplingDefaults {
        temperature: Some(0.0),
        ..SamplingDefaults::default()
    };
    let server = server(dir.path(), greedy, SamplingDefaults::default()).await;
    let explicit = completion_text(&server, json!({"temperature": 0, "max_tokens": 8})).await;
    assert_eq!(explicit, &SCRIPT[..8]);
    // A seed that starts a sampled replay elsewhere: without the default, this is not greedy.
    let defaulted = completion_text(&server, json!({"seed": 5, "max_tokens": 8})).await;
    assert_eq!(defaulted, explicit);
    let sampled = completion_text(
        &server,
        json!({"seed": 5, "max_tokens": 8, "temperature": 1}),
    )
    .await;
    assert_ne!(sampled, explicit, "the request's temperature wins");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_default_seed_makes_sampled_requests_repeat_unless_they_ask_for_random() {
    let dir = tempfile::tempdir().expect("temp dir");
    let seeded = SamplingDefaults {
        seed: Some(9),
        ..SamplingDefaults::default()
    };
    let server = server(dir.path(), seeded, SamplingDefaults::default()).await;
    let sampled = json!({"temperature": 1, "max_tokens": 6});
    let with_seed_9 = completion_text(
        &server,
        json!({"temperature": 1, "max_tokens": 6, "seed": 9}),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(completion_text(&server, sampled.clone()).await, with_seed_9);
    }
    let other = completion_text(
        &server,
        json!({"temperature": 1, "max_tokens": 6, "seed": 10}),
    )
    .await;
    assert_ne!(other, with_seed_9, "the request's seed wins");
}

#[tokio::test(flavor = "multi_thread")]
async fn n_predict_caps_requests_without_a_limit_in_every_dialect() {
    let dir = tempfile::tempdir().expect("temp dir");
    let five = SamplingDefaults {
        n_predict: Some(5),
        ..SamplingDefaults::default()
    };
    let server = server(dir.path(), five, SamplingDefaults::default()).await;
    for (dialect, count) in counts_without_a_limit(&server).await {
        assert_eq!(count, 5, "{dialect}");
    }
    // The request's own limit wins.
    let v = ok(
        &server,
        "/v1/completions",
        json!({"model": "s", "prompt": "x", "temperature": 0, "max_tokens": 2}),
    )
    .await;
    assert_eq!(v["usage"]["completion_tokens"], 2, "{v}");
    let v = ok(
        &server,
        "/completion",
        json!({"prompt": "x", "temperature": 0, "n_predict": 8}),
    )
    .await;
    assert_eq!(v["tokens_predicted"], 8, "{v}");
    assert_eq!(v["generation_settings"]["n_predict"], 8, "{v}");
    // llama-server reports the defaults a request runs with.
    let v = ok(
        &server,
        "/completion",
        json!({"prompt": "x", "temperature": 0}),
    )
    .await;
    assert_eq!(v["generation_settings"]["n_predict"], 5, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_models_defaults_win_over_the_servers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server_wide = SamplingDefaults {
        n_predict: Some(5),
        temperature: Some(1.0),
        ..SamplingDefaults::default()
    };
    let model = SamplingDefaults {
        n_predict: Some(3),
        temperature: Some(0.0),
        ..SamplingDefaults::default()
    };
    let server = server(dir.path(), server_wide, model).await;
    for (dialect, count) in counts_without_a_limit(&server).await {
        assert_eq!(count, 3, "{dialect}");
    }
    assert_eq!(
        completion_text(&server, json!({"seed": 5})).await,
        &SCRIPT[..3]
    );
}
