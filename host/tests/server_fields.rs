//! Fields are honoured or refused, never silently ignored: unknown OpenAI fields and Ollama
//! options are 400s naming them, the documented no-ops (`user`, `metadata`, Ollama's load
//! options) are accepted, and `repeat_last_n` reaches the backend in every dialect that has
//! it (a window of 0 turns a strong repeat penalty off; stories260K on llama.cpp). Ollama's
//! `/api/generate` passes the prompt raw to a model without a chat template (Ollama's
//! `{{ .Prompt }}`), so it tells the same story as llama-server's `/completion`.

mod server_support;

use llmlocal::{engine::Engine, server::ServerSettings};
use serde_json::{json, Value};
use server_support::{llama_cpp_settings, post, registry, stories260k_gguf, TestServer};

async fn stories_server() -> TestServer {
    let settings = llama_cpp_settings("story", &stories260k_gguf());
    let engine = Engine::new(settings, registry(&["llama_cpp"]), None);
    TestServer::start(engine, ServerSettings::default()).await
}

async fn ok_json(server: &TestServer, path: &str, body: Value) -> Value {
    let (status, text) = post(server, path, body).await;
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).expect("JSON")
}

async fn refused(server: &TestServer, path: &str, body: Value, named: &str) {
    let (status, text) = post(server, path, body).await;
    assert_eq!(status, 400, "{path} {named}: {text}");
    assert!(
        text.contains(named),
        "{path}: the error names {named}: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_fields_are_named_and_no_ops_are_accepted() {
    let server = stories_server().await;
    let chat = |extra: Value| {
        let mut body = json!({"model": "story", "max_tokens": 4,
                              "messages": [{"role": "user", "content": "Hi"}]});
        body.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        body
    };
    refused(
        &server,
        "/v1/chat/completions",
        chat(json!({"modalities": ["audio"]})),
        "modalities",
    )
    .await;
    refused(
        &server,
        "/v1/chat/completions",
        chat(json!({"store": true})),
        "store",
    )
    .await;
    let completion = json!({"model": "story", "prompt": "Once", "max_tokens": 4, "best_of": 3});
    refused(&server, "/v1/completions", completion, "best_of").await;
    ok_json(
        &server,
        "/v1/chat/completions",
        chat(json!({"user": "u1", "metadata": {"a": "b"}, "store": false})),
    )
    .await;

    let generate = |options: Value| {
        json!({"model": "story", "prompt": "Once", "stream": false,
               "options": options})
    };
    refused(
        &server,
        "/api/generate",
        generate(json!({"mirostat": 2})),
        "options.mirostat",
    )
    .await;
    let loaded = generate(json!({"num_ctx": 4096, "num_thread": 2, "num_predict": 4}));
    ok_json(&server, "/api/generate", loaded).await;
    refused(
        &server,
        "/api/generate",
        generate(json!({"repeat_last_n": -1})),
        "repeat_last_n",
    )
    .await;
}

async fn ollama_story(server: &TestServer, options: Value) -> String {
    let body = json!({"model": "story", "prompt": "Once upon a time", "stream": false,
                      "options": options});
    let v = ok_json(server, "/api/generate", body).await;
    v["response"].as_str().expect("response").to_string()
}

async fn native_story(server: &TestServer, window: i64) -> String {
    let body = json!({"model": "story", "prompt": "Once upon a time", "n_predict": 48,
                      "temperature": 0, "repeat_penalty": 10.0, "repeat_last_n": window});
    let v = ok_json(server, "/completion", body).await;
    v["content"].as_str().expect("content").to_string()
}

/// A repeat penalty of 10 over the last 64 tokens changes a greedy story; over a window of
/// 0 tokens it is off, and the story is the unpenalized one.
#[tokio::test(flavor = "multi_thread")]
async fn repeat_last_n_reaches_the_backend_in_every_dialect() {
    let server = stories_server().await;
    let base = json!({"temperature": 0, "num_predict": 48});
    let mut penalized = base.clone();
    penalized["repeat_penalty"] = json!(10.0);
    let mut windowless = penalized.clone();
    windowless["repeat_last_n"] = json!(0);
    let plain = ollama_story(&server, base).await;
    let strong = ollama_story(&server, penalized).await;
    assert_ne!(strong, plain, "a repeat penalty of 10 changes the story");
    assert_eq!(
        ollama_story(&server, windowless).await,
        plain,
        "a window of 0 turns it off"
    );
    assert_eq!(native_story(&server, 0).await, plain);
    assert_eq!(native_story(&server, 64).await, strong);
}
