//! The prompt cache end to end (stories260K on llama.cpp and on candle, which both declare
//! `prefix-cache`): a chat's second turn reuses the first turn's KV state and answers exactly
//! as without it, and every dialect reports the reused tokens: OpenAI `usage.
//! prompt_tokens_details.cached_tokens` (streamed too), llama-server `timings.cache_n`,
//! Ollama `prompt_eval_cached_count`, `/metrics`. `cache_prompt: false` reuses nothing.

mod server_support;

use llmlocal::engine::{EngineSettings, ModelEntry};
use llmlocal::{engine::Engine, server::ServerSettings};
use serde_json::{json, Value};
use server_support::{client, metric, parse_sse, post, registry, TestServer};

/// The backends under test: (name in the config, library name).
const LLAMA_CPP: (&str, &str) = ("llama-cpp", "llama_cpp");
const CANDLE: (&str, &str) = ("candle", "candle");

/// A server with stories260K as model `story` on `backend`.
async fn stories_server((backend, library): (&str, &str)) -> Option<TestServer> {
    let path = server_support::stories260k_gguf();
    let mut settings = EngineSettings {
        open_specs: false,
        ..EngineSettings::default()
    };
    let entry = ModelEntry {
        backend: Some(backend.into()),
        ..ModelEntry::new(path.to_string_lossy())
    };
    settings.models.insert("story".into(), entry);
    let engine = Engine::new(settings, registry(&[library]), None);
    Some(TestServer::start(engine, ServerSettings::default()).await)
}

fn turn1() -> Vec<Value> {
    vec![
        json!({"role": "system", "content": "You tell short stories about animals."}),
        json!({"role": "user", "content": "Tell me a story about a dog named Max."}),
    ]
}

fn chat_body(messages: &[Value], extra: Value) -> Value {
    let mut body = json!({"model": "story", "messages": messages, "max_tokens": 16,
                          "temperature": 0});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

async fn post_ok(server: &TestServer, path: &str, body: Value) -> String {
    let (status, text) = post(server, path, body).await;
    assert_eq!(status, 200, "{text}");
    text
}

/// A non-streamed chat: the answer and its usage.
async fn chat(server: &TestServer, messages: &[Value], extra: Value) -> (String, Value) {
    let text = post_ok(server, "/v1/chat/completions", chat_body(messages, extra)).await;
    let v: Value = serde_json::from_str(&text).expect("JSON");
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    check_timings(&v);
    (answer.to_string(), v["usage"].clone())
}

/// `timings`: the evaluated (`prompt_n`) and the reused (`cache_n`) make the whole prompt.
fn check_timings(v: &Value) {
    let (timings, usage) = (&v["timings"], &v["usage"]);
    assert_eq!(
        timings["cache_n"],
        usage["prompt_tokens_details"]["cached_tokens"]
    );
    let sum = timings["prompt_n"]
        .as_u64()
        .zip(timings["cache_n"].as_u64());
    assert_eq!(
        sum.map(|(a, b)| a + b),
        usage["prompt_tokens"].as_u64(),
        "{v}"
    );
}

fn cached(usage: &Value) -> u64 {
    usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("usage has prompt_tokens_details.cached_tokens: {usage}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_second_turn_reuses_the_first_and_answers_the_same() {
    chat_second_turn(LLAMA_CPP).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_second_turn_reuses_the_first_and_answers_the_same_on_candle() {
    chat_second_turn(CANDLE).await;
}

async fn chat_second_turn(backend: (&str, &str)) {
    let Some(server) = stories_server(backend).await else {
        return;
    };
    let (answer1, usage1) = chat(&server, &turn1(), json!({})).await;
    assert_eq!(cached(&usage1), 0, "nothing ran before: {usage1}");
    let mut turn2 = turn1();
    turn2.push(json!({"role": "assistant", "content": answer1}));
    turn2.push(json!({"role": "user", "content": "What did Max find?"}));

    let (uncached, usage) = chat(&server, &turn2, json!({"cache_prompt": false})).await;
    assert_eq!(cached(&usage), 0, "cache_prompt false: {usage}");
    let (answer2, usage2) = chat(&server, &turn2, json!({})).await;
    assert_eq!(answer2, uncached, "the cache changed the answer");
    let turn1_tokens = usage1["prompt_tokens"].as_u64().expect("prompt_tokens");
    assert!(
        cached(&usage2) >= turn1_tokens / 2,
        "turn 2 reused {} tokens; turn 1's prompt alone had {turn1_tokens}",
        cached(&usage2)
    );

    // Streamed: the final usage chunk says the same.
    let body = chat_body(
        &turn2,
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let (events, done) = parse_sse(&post_ok(&server, "/v1/chat/completions", body).await);
    assert!(done);
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, answer2);
    let usage = &events.last().expect("usage chunk")["usage"];
    assert!(cached(usage) > 0, "streamed usage: {usage}");

    // Ollama: prompt_eval_count is the whole prompt, the cached part on its own.
    let body = json!({"model": "story", "messages": turn2, "stream": false,
                      "options": {"temperature": 0, "num_predict": 16}});
    let v: Value = serde_json::from_str(&post_ok(&server, "/api/chat", body).await).expect("JSON");
    assert_eq!(v["message"]["content"], answer2.as_str());
    assert_eq!(v["prompt_eval_count"], usage2["prompt_tokens"], "{v}");
    assert!(v["prompt_eval_cached_count"].as_u64() > Some(0), "{v}");

    let response = client().get(server.url("/metrics")).send().await;
    let metrics = response.expect("metrics").text().await.expect("text");
    let total = metric(
        &metrics,
        "llmlocal_prompt_tokens_cached_total{model=\"story\"}",
    );
    assert!(total >= Some(cached(&usage2) as f64), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_reuse_a_repeated_prompt_unless_told_not_to() {
    repeated_completion(LLAMA_CPP).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_reuse_a_repeated_prompt_unless_told_not_to_on_candle() {
    repeated_completion(CANDLE).await;
}

async fn repeated_completion(backend: (&str, &str)) {
    let Some(server) = stories_server(backend).await else {
        return;
    };
    let complete = |extra: Value| {
        let mut body = json!({"model": "story", "prompt": "Once upon a time, there was a cat",
                              "max_tokens": 8, "temperature": 0});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let server = &server;
        async move {
            let v: Value = serde_json::from_str(&post_ok(server, "/v1/completions", body).await)
                .expect("JSON");
            check_timings(&v);
            (v["choices"][0]["text"].clone(), v["usage"].clone())
        }
    };
    let (first, usage) = complete(json!({})).await;
    assert_eq!(cached(&usage), 0);
    let (again, usage) = complete(json!({})).await;
    assert_eq!(again, first);
    let prompt_tokens = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
    assert_eq!(
        cached(&usage),
        prompt_tokens - 1,
        "all but the last prompt token (its logits give the first new token)"
    );
    let (uncached, usage) = complete(json!({"cache_prompt": false})).await;
    assert_eq!((uncached, cached(&usage)), (first, 0));
}
