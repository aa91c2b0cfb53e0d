//! `/v1/completions` with token-id prompts, and the llama.cpp-style `timings` object on the
//! OpenAI completion responses. The request-shape errors run on the scripted backend; the
//! "same completion as the text" checks run stories260K on llama.cpp (skipped with a SKIP
//! line when the shared models are not there).

mod server_support;

use llmlocal::{plugins::LoadRequest, server::ServerSettings};
use serde_json::{json, Value};
use server_support::{
    llama_cpp_settings, parse_sse, post, registry, scripted_engine, scripted_settings, TestServer,
};
use std::path::{Path, PathBuf};

const SCRIPT: &str = "The quick brown fox jumps.";
const STORY: &str = "Once upon a time, there was a little girl";

async fn scripted_server(dir: &Path) -> TestServer {
    let engine = scripted_engine(scripted_settings(dir, &[("fox", SCRIPT)]));
    TestServer::start(engine, ServerSettings::default()).await
}

fn stories_gguf() -> Option<PathBuf> {
    Some(server_support::stories260k_gguf())
}

/// A server with stories260K as model `story` on llama.cpp, and the prompt's token ids as
/// the plugin tokenizes it (with BOS).
async fn stories_server() -> Option<(TestServer, Vec<u32>)> {
    let Some(path) = stories_gguf() else {
        eprintln!("SKIP: stories260K.gguf not found (set LLMLOCAL_SHARED_MODELS)");
        return None;
    };
    let plugins = registry(&["llama_cpp"]);
    let model = plugins
        .backend("llama-cpp")
        .expect("llama-cpp backend")
        .load_model(LoadRequest::new(path.to_string_lossy()))
        .expect("stories260K loads");
    let ids = model.tokenize(STORY, true, false).expect("tokenizes");
    drop(model);
    let settings = llama_cpp_settings("story", &path);
    let engine = llmlocal::engine::Engine::new(settings, plugins, None);
    Some((
        TestServer::start(engine, ServerSettings::default()).await,
        ids,
    ))
}

/// A greedy non-streamed completion; the whole JSON answer.
async fn complete(server: &TestServer, model: &str, prompt: Value, tokens: u32) -> Value {
    let body = json!({"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
                      "ignore_eos": true});
    let (status, text) = post(server, "/v1/completions", body).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("JSON")
}

/// A request that must fail with 400; its error message.
async fn bad_request(server: &TestServer, body: Value) -> String {
    let (status, text) = post(server, "/v1/completions", body).await;
    assert_eq!(status, 400, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON error");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    v["error"]["message"].as_str().expect("message").to_string()
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "{message:?} should mention {part:?}"
        );
    }
}

/// Checks a `timings` object's counts and that its times and rates agree. As in
/// llama-server, `prompt_n` counts the evaluated prompt tokens and `cache_n` the ones reused
/// from the prompt cache: together the whole prompt.
fn check_timings(timings: &Value, prompt_tokens: u64, predicted_n: u64) {
    let prompt_n = timings["prompt_n"].as_u64().expect("prompt_n");
    let cache_n = timings["cache_n"].as_u64().expect("cache_n");
    assert_eq!(prompt_n + cache_n, prompt_tokens, "{timings}");
    assert_eq!(
        timings["predicted_n"].as_u64(),
        Some(predicted_n),
        "{timings}"
    );
    let number = |key: &str| {
        timings[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} is a number: {timings}"))
    };
    let prompt_ms = number("prompt_ms");
    assert!(prompt_ms > 0.0, "{timings}");
    let rate = number("prompt_per_second");
    let expected = prompt_n as f64 * 1000.0 / prompt_ms;
    assert!(
        (rate - expected).abs() <= expected * 1e-6,
        "prompt_per_second {rate} = prompt_n / prompt_ms ({expected})"
    );
    assert!(number("predicted_ms") >= 0.0, "{timings}");
    assert!(number("predicted_per_second") >= 0.0, "{timings}");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_ids_give_the_same_completion_as_their_text() {
    let Some((server, ids)) = stories_server().await else {
        return;
    };
    let from_text = complete(&server, "story", json!(STORY), 24).await;
    let text = from_text["choices"][0]["text"].as_str().expect("text");
    assert!(!text.is_empty());
    assert_eq!(from_text["usage"]["prompt_tokens"], ids.len());
    for prompt in [json!(ids), json!([ids])] {
        let from_ids = complete(&server, "story", prompt.clone(), 24).await;
        assert_eq!(from_ids["choices"][0]["text"], text, "prompt {prompt}");
        assert_eq!(from_ids["usage"]["prompt_tokens"], ids.len());
        assert_eq!(from_ids["usage"]["completion_tokens"], 24);
    }
    // The ids go as given: without the leading BOS, no BOS is added back.
    let no_bos = complete(&server, "story", json!(ids[1..]), 4).await;
    assert_eq!(no_bos["usage"]["prompt_tokens"], ids.len() - 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_ids_outside_the_vocabulary_are_refused() {
    let Some((server, ids)) = stories_server().await else {
        return;
    };
    let last = complete(&server, "story", json!([ids[0], 511]), 2).await;
    assert_eq!(
        last["usage"]["prompt_tokens"], 2,
        "511 is the last id of 512"
    );
    let message = bad_request(
        &server,
        json!({"model": "story", "prompt": [ids[0], 40, 512], "max_tokens": 2}),
    )
    .await;
    assert_mentions(&message, &["token id 512", "index 2", "vocabulary of 512"]);

    let dir = tempfile::tempdir().expect("temp dir");
    let scripted = scripted_server(dir.path()).await;
    let vocab = scripted
        .engine
        .load("fox", None)
        .await
        .expect("loads")
        .metadata
        .vocab_size;
    let message = bad_request(
        &scripted,
        json!({"model": "fox", "prompt": [[70, vocab]], "max_tokens": 2}),
    )
    .await;
    assert_mentions(
        &message,
        &[
            &format!("token id {vocab}"),
            &format!("vocabulary of {vocab}"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_token_prompts_are_a_400_that_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = scripted_server(dir.path()).await;
    let ask = |prompt: Value| json!({"model": "fox", "prompt": prompt, "max_tokens": 2});
    for empty in [json!([]), json!([[]])] {
        let message = bad_request(&server, ask(empty)).await;
        assert_mentions(&message, &["empty list of token ids"]);
    }
    let message = bad_request(&server, ask(json!([70, -1, 71]))).await;
    assert_mentions(
        &message,
        &["prompt[1] is -1", "integers from 0 to 4294967295"],
    );
    let message = bad_request(&server, ask(json!([[70, 1.5]]))).await;
    assert_mentions(&message, &["prompt[0][1] is 1.5", "integers"]);
    let message = bad_request(&server, ask(json!([4_294_967_296u64]))).await;
    assert_mentions(&message, &["prompt[0] is 4294967296", "4294967295"]);
    let message = bad_request(&server, ask(json!([[70, 71], [72]]))).await;
    assert_mentions(&message, &["batches are not supported", "2 prompts"]);
    let message = bad_request(&server, ask(json!(["a", "b", "c"]))).await;
    assert_mentions(&message, &["batches are not supported", "3 prompts"]);
    for mixed in [json!(["a", 70]), json!([70, [71]]), json!([{"a": 1}])] {
        let message = bad_request(&server, ask(mixed)).await;
        assert_mentions(&message, &["may not mix"]);
    }
    let message = bad_request(&server, ask(json!(42))).await;
    assert_mentions(&message, &["prompt must be", "got a number"]);
    let message = bad_request(&server, json!({"model": "fox", "max_tokens": 2})).await;
    assert_mentions(&message, &["missing field `prompt`"]);
    // Ids within the vocabulary, and one string in a list, still work.
    let ok = complete(&server, "fox", json!([70, 71]), 3).await;
    assert_eq!(ok["usage"]["prompt_tokens"], 2, "no BOS added to ids");
    let ok = complete(&server, "fox", json!(["Once"]), 3).await;
    assert_eq!(ok["usage"]["prompt_tokens"], 5, "BOS + 4 bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_report_timings_streamed_and_not() {
    let Some((server, ids)) = stories_server().await else {
        return;
    };
    let n = ids.len() as u64;
    let whole = complete(&server, "story", json!(ids), 16).await;
    assert_eq!(whole["usage"]["completion_tokens"], 16);
    check_timings(&whole["timings"], n, 16);

    let body = json!({"model": "story", "prompt": STORY, "max_tokens": 12, "temperature": 0,
                      "ignore_eos": true, "stream": true});
    let (status, text) = post(&server, "/v1/completions", body).await;
    assert_eq!(status, 200, "{text}");
    let (events, done) = parse_sse(&text);
    assert!(done);
    let (last, rest) = events.split_last().expect("chunks");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    check_timings(&last["timings"], n, 12);
    assert!(
        rest.iter().all(|e| e.get("timings").is_none()),
        "only the final chunk has timings"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_completions_report_timings_streamed_and_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = scripted_server(dir.path()).await;
    let request = |stream: bool| {
        json!({"model": "fox", "messages": [{"role": "user", "content": "Hi"}],
               "temperature": 0, "stream": stream, "stream_options": {"include_usage": true}})
    };
    let (status, text) = post(&server, "/v1/chat/completions", request(false)).await;
    assert_eq!(status, 200, "{text}");
    let whole: Value = serde_json::from_str(&text).expect("JSON");
    let prompt_n = whole["usage"]["prompt_tokens"].as_u64().expect("usage");
    check_timings(&whole["timings"], prompt_n, SCRIPT.len() as u64);

    let (status, text) = post(&server, "/v1/chat/completions", request(true)).await;
    assert_eq!(status, 200, "{text}");
    let (events, done) = parse_sse(&text);
    assert!(done);
    let with_timings: Vec<&Value> = events
        .iter()
        .filter(|e| e.get("timings").is_some())
        .collect();
    assert_eq!(with_timings.len(), 1, "one chunk carries timings");
    let finish = with_timings[0];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = &events.last().expect("usage chunk")["usage"];
    assert_eq!(usage["prompt_tokens"].as_u64(), Some(prompt_n));
    check_timings(&finish["timings"], prompt_n, SCRIPT.len() as u64);
}
