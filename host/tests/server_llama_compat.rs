//! llama-server compatibility on the scripted backend (byte tokens, BOS = 256, a script it
//! replays): `POST /completion` with llama-server's fields and answer (`content`, `tokens`,
//! `stop_type`, `stopping_word`, `tokens_predicted`, `tokens_evaluated`, `timings`,
//! `generation_settings`), streamed as llama-server streams it; `/tokenize`, `/detokenize`,
//! `/apply-template`, `/props`, `/slots`, `/v1/models/{id}`; the OpenAI routes without
//! `/v1`; `model` left out with one model served; context-exceeded errors with
//! `n_prompt_tokens` and `n_ctx`; unknown fields refused by name.

mod server_support;

use llmlocal::server::ServerSettings;
use serde_json::{json, Value};
use server_support::{get_json, parse_sse, post, scripted_engine, scripted_settings, TestServer};

const SCRIPT: &str = "Hello, ENDING world";

async fn server(dir: &std::path::Path, models: &[(&str, &str)]) -> TestServer {
    let mut settings = scripted_settings(dir, models);
    for entry in settings.models.values_mut() {
        entry.context_length = Some(64);
    }
    TestServer::start(scripted_engine(settings), ServerSettings::default()).await
}

async fn ok_json(server: &TestServer, path: &str, body: Value) -> Value {
    let (status, text) = post(server, path, body).await;
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).expect("JSON answer")
}

#[tokio::test(flavor = "multi_thread")]
async fn completion_answers_as_llama_server_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path(), &[("s", SCRIPT)]).await;

    // `model` left out: the one model served.
    let limited = ok_json(
        &server,
        "/completion",
        json!({"prompt": "x", "n_predict": 3, "temperature": 0, "return_tokens": true}),
    )
    .await;
    assert_eq!(limited["content"], "Hel");
    assert_eq!(limited["tokens"], json!([72, 101, 108]));
    assert_eq!(limited["stop"], true);
    assert_eq!(limited["stop_type"], "limit");
    assert_eq!(limited["stopping_word"], "");
    assert_eq!(limited["tokens_predicted"], 3);
    assert_eq!(limited["tokens_evaluated"], 2, "BOS + x");
    assert_eq!(limited["model"], "s");
    assert_eq!(limited["generation_settings"]["n_predict"], 3);
    assert_eq!(limited["generation_settings"]["n_ctx"], 64);
    assert_eq!(limited["timings"]["predicted_n"], 3);

    let word = ok_json(
        &server,
        "/completion",
        json!({"prompt": [120], "stop": ["END"], "temperature": 0}),
    )
    .await;
    assert_eq!(word["content"], "Hello, ");
    assert_eq!(word["stop_type"], "word");
    assert_eq!(word["stopping_word"], "END");
    assert_eq!(word["tokens"], json!([]), "no ids unless return_tokens");
    assert_eq!(
        word["tokens_evaluated"], 1,
        "token prompts are taken as given"
    );

    let eos = ok_json(
        &server,
        "/completion",
        json!({"prompt": "x", "temperature": 0}),
    )
    .await;
    assert_eq!(eos["content"], SCRIPT);
    assert_eq!(eos["stop_type"], "eos");

    // Streamed: `data:` events with content and ids, the final object last, no [DONE].
    let (status, body) = post(
        &server,
        "/completion",
        json!({"prompt": "x", "stream": true, "stop": ["END"], "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (events, done_marker) = parse_sse(&body);
    assert!(!done_marker, "llama-server sends no [DONE] on /completion");
    let last = events.last().expect("events");
    assert_eq!(last["stop"], true);
    assert_eq!(last["stop_type"], "word");
    let pieces = &events[..events.len() - 1];
    assert!(pieces.iter().all(|e| e["stop"] == false));
    let text: String = pieces
        .iter()
        .map(|e| e["content"].as_str().expect("content"))
        .collect();
    assert_eq!(text, "Hello, ");
    let ids: Vec<u64> = pieces
        .iter()
        .flat_map(|e| e["tokens"].as_array().expect("tokens").clone())
        .map(|v| v.as_u64().expect("id"))
        .collect();
    assert_eq!(
        ids,
        b"Hello, ".iter().map(|&b| u64::from(b)).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_unsupported_fields_are_400s_naming_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path(), &[("s", SCRIPT)]).await;
    let cases = [
        (
            "/completion",
            json!({"prompt": "x", "mirostat": 2}),
            "mirostat",
        ),
        (
            "/completion",
            json!({"prompt": "x", "repeat_last_n": -1}),
            "repeat_last_n",
        ),
        (
            "/completion",
            json!({"prompt": "x", "n_predict": 0}),
            "n_predict",
        ),
        ("/tokenize", json!({"content": "x", "bogus": true}), "bogus"),
        ("/detokenize", json!({"tokens": [999]}), "999"),
        (
            "/completion",
            json!({"prompt": "x", "logit_bias": [["Hello", -1.0]]}),
            "logit_bias",
        ),
    ];
    for (path, body, needle) in cases {
        let (status, text) = post(&server, path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}: {text}");
        assert!(text.contains(needle), "{path}: {text} should name {needle}");
    }
    // llama-server's logit_bias pairs are read (the scripted backend then refuses them for
    // want of the `logit-bias` capability, rather than the request being malformed).
    let (status, text) = post(
        &server,
        "/completion",
        json!({"prompt": "x", "logit_bias": [[72, false]]}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("`logit-bias`"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokenizer_template_props_slots_and_model_routes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path(), &[("s", SCRIPT)]).await;
    let plain = ok_json(&server, "/tokenize", json!({"content": "hi"})).await;
    assert_eq!(plain["tokens"], json!([104, 105]));
    let special = ok_json(
        &server,
        "/tokenize",
        json!({"content": "hi", "add_special": true, "with_pieces": true}),
    )
    .await;
    assert_eq!(
        special["tokens"],
        json!([{"id": 256, "piece": "<s>"}, {"id": 104, "piece": "h"}, {"id": 105, "piece": "i"}])
    );
    let text = ok_json(&server, "/detokenize", json!({"tokens": [104, 105]})).await;
    assert_eq!(text["content"], "hi");
    let prompt = ok_json(
        &server,
        "/apply-template",
        json!({"messages": [{"role": "user", "content": "question?"}]}),
    )
    .await;
    let prompt = prompt["prompt"].as_str().expect("prompt");
    assert!(prompt.contains("question?"), "{prompt}");
    assert!(prompt.len() > "question?".len(), "templated: {prompt}");

    let props = get_json(&server, "/props").await;
    let slots_n = props["total_slots"].as_u64().expect("total_slots");
    assert!(slots_n >= 1, "{props}");
    assert_eq!(props["default_generation_settings"]["n_ctx"], 64);
    assert!(props["model_path"]
        .as_str()
        .is_some_and(|p| p.ends_with("s.txt")));
    assert!(props["chat_template"].is_string());
    let slots = get_json(&server, "/slots").await;
    assert_eq!(slots.as_array().map(Vec::len), Some(slots_n as usize));
    assert_eq!(slots[0]["is_processing"], false);

    let one = get_json(&server, "/v1/models/s").await;
    assert_eq!(
        (one["id"].as_str(), one["object"].as_str()),
        (Some("s"), Some("model"))
    );
    let status = server_support::client()
        .get(server.url("/v1/models/nope"))
        .send()
        .await
        .expect("request")
        .status();
    assert_eq!(status, 404);
    let listed = get_json(&server, "/models").await;
    assert_eq!(listed["data"][0]["id"], "s");

    // The OpenAI routes without /v1, and without `model`.
    let chat = ok_json(
        &server,
        "/chat/completions",
        json!({"messages": [{"role": "user", "content": "x"}], "temperature": 0,
               "max_tokens": 5}),
    )
    .await;
    assert_eq!(chat["choices"][0]["message"]["content"], "Hello");
    let completion = ok_json(
        &server,
        "/completions",
        json!({"prompt": "x", "temperature": 0, "max_tokens": 2}),
    )
    .await;
    assert_eq!(completion["choices"][0]["text"], "He");
}

#[tokio::test(flavor = "multi_thread")]
async fn model_is_needed_with_several_models_and_context_errors_carry_counts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path(), &[("a", SCRIPT), ("b", SCRIPT)]).await;
    let (status, text) = post(
        &server,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("model") && text.contains("a, b"), "{text}");

    for (path, body) in [
        (
            "/completion",
            json!({"model": "a", "prompt": "y".repeat(80)}),
        ),
        (
            "/v1/completions",
            json!({"model": "a", "prompt": "y".repeat(80)}),
        ),
    ] {
        let (status, text) = post(&server, path, body).await;
        assert_eq!(status, 400, "{text}");
        let error: Value = serde_json::from_str(&text).expect("JSON");
        let error = &error["error"];
        assert_eq!(error["n_prompt_tokens"], 81, "{error}");
        assert_eq!(error["n_ctx"], 64, "{error}");
        assert_eq!(error["type"], "exceed_context_size_error", "{error}");
    }
}
