//! The host-RAM prompt cache (`--cache-ram`, `cache_ram_mib`) end to end on stories260K with
//! the llama-cpp backend and one slot (`parallel = 1`): two interleaved chats push each other
//! out of the slot, and chat A's next turn comes back from RAM (reported in
//! `usage.prompt_tokens_details.cached_tokens`) with the same answer as without the cache;
//! after an edit in the middle of A's history only the common part is reused. `/api/ps` and
//! `/metrics` report the bytes the cache holds now.

mod server_support;

use llmlocal::{engine::Engine, server::ServerSettings};
use serde_json::{json, Value};
use server_support::{
    client, get_json, llama_cpp_settings, metric, post, registry, stories260k_gguf, TestServer,
};

/// A server with stories260K as model `story`, one slot and `cache_ram_mib`.
async fn server(cache_ram_mib: u64) -> TestServer {
    let mut settings = llama_cpp_settings("story", &stories260k_gguf());
    settings.parallel = Some(1);
    settings.kv_cache.cache_ram_mib = Some(cache_ram_mib);
    let engine = Engine::new(settings, registry(&["llama_cpp"]), None);
    TestServer::start(engine, ServerSettings::default()).await
}

/// The answer and the cached prompt tokens of a greedy chat, and its prompt tokens.
async fn chat(server: &TestServer, messages: &[Value]) -> (String, u64, u64) {
    let body = json!({"model": "story", "messages": messages, "max_tokens": 16,
                      "temperature": 0});
    let (status, text) = post(server, "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    let usage = &v["usage"];
    let cached = usage["prompt_tokens_details"]["cached_tokens"].as_u64();
    let prompt = usage["prompt_tokens"].as_u64();
    (
        answer.to_string(),
        cached.expect("cached_tokens"),
        prompt.expect("prompt_tokens"),
    )
}

fn first_turn(system: &str, user: &str) -> Vec<Value> {
    vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": user}),
    ]
}

const A_SYSTEM: &str = "You tell short stories about animals that live on a farm.";
const A_USER: &str = "Tell me a story about a dog named Max and his friend the cat.";

/// Chat A's first turn, chat B's first turn, then A's second turn built by `second` from A's
/// first answer. Returns each answer, A's turn-1 prompt tokens and A's turn-2 cached count.
async fn interleaved(
    server: &TestServer,
    second: impl Fn(&str) -> Vec<Value>,
) -> (Vec<String>, u64, u64) {
    let (a1, cached, a1_prompt) = chat(server, &first_turn(A_SYSTEM, A_USER)).await;
    assert_eq!(cached, 0);
    let b = first_turn("Write poems about the sea.", "A poem about a boat, please.");
    let (b1, _, _) = chat(server, &b).await;
    let (a2, cached, _) = chat(server, &second(&a1)).await;
    (vec![a1, b1, a2], a1_prompt, cached)
}

/// A's history with its answer and a new question.
fn next_turn(answer: &str) -> Vec<Value> {
    let mut messages = first_turn(A_SYSTEM, A_USER);
    messages.push(json!({"role": "assistant", "content": answer}));
    messages.push(json!({"role": "user", "content": "What did Max find in the barn?"}));
    messages
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_pushed_out_of_the_only_slot_resumes_from_ram_with_the_same_answer() {
    let on = server(64).await;
    let (answers, a1_prompt, cached) = interleaved(&on, next_turn).await;
    assert!(
        cached >= a1_prompt,
        "A's second turn reused {cached} tokens; its first prompt alone had {a1_prompt}"
    );
    let off = server(0).await;
    let (answers_off, _, cached_off) = interleaved(&off, next_turn).await;
    assert_eq!(answers, answers_off, "the RAM cache changed an answer");
    assert!(
        cached_off < a1_prompt / 4,
        "without the RAM cache only the chat template's first tokens match chat B's: \
         {cached_off}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edit_in_the_middle_of_a_history_reuses_only_the_common_part() {
    // A's first user message changed near its end: the prefix up to the change is reused,
    // nothing after it.
    let edited = |answer: &str| {
        let user = A_USER.replace("the cat", "the goat");
        let mut messages = first_turn(A_SYSTEM, &user);
        messages.push(json!({"role": "assistant", "content": answer}));
        messages.push(json!({"role": "user", "content": "What did Max find in the barn?"}));
        messages
    };
    let on = server(64).await;
    let (answers, a1_prompt, cached) = interleaved(&on, edited).await;
    assert!(
        cached > a1_prompt / 2 && cached < a1_prompt,
        "reused {cached} of A's first {a1_prompt} prompt tokens"
    );
    let off = server(0).await;
    let (answers_off, _, _) = interleaved(&off, edited).await;
    assert_eq!(answers, answers_off, "the RAM cache changed an answer");
}

/// The `story` model's prompt cache bytes as `/api/ps` and the `/metrics` gauge report them.
async fn reported_cache(server: &TestServer) -> (u64, f64) {
    let ps = get_json(server, "/api/ps").await;
    let story = ps["models"]
        .as_array()
        .and_then(|models| models.iter().find(|m| m["name"] == "story"))
        .unwrap_or_else(|| panic!("story is not loaded: {ps}"));
    let bytes = story["prompt_cache_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no prompt_cache_bytes: {story}"));
    let response = client().get(server.url("/metrics")).send().await;
    let text = response.expect("metrics").text().await.expect("text");
    let gauge = metric(&text, "llmlocal_prompt_cache_bytes{model=\"story\"}")
        .unwrap_or_else(|| panic!("no prompt cache gauge in:\n{text}"));
    (bytes, gauge)
}

#[tokio::test(flavor = "multi_thread")]
async fn api_ps_and_metrics_report_the_bytes_the_ram_cache_holds_now() {
    let on = server(64).await;
    on.engine.load("story", None).await.expect("story loads");
    assert_eq!(
        reported_cache(&on).await,
        (0, 0.0),
        "a fresh load holds nothing"
    );
    chat(&on, &first_turn(A_SYSTEM, A_USER)).await;
    assert_eq!(
        reported_cache(&on).await,
        (0, 0.0),
        "A is still in its slot"
    );
    // Chat B takes the only slot: A's state goes to RAM.
    let b = first_turn("Write poems about the sea.", "A poem about a boat, please.");
    chat(&on, &b).await;
    let (bytes, gauge) = reported_cache(&on).await;
    assert!(
        bytes > 0 && bytes <= 64 << 20,
        "{bytes} bytes after A was pushed out"
    );
    assert_eq!(gauge, bytes as f64, "the gauge says what /api/ps says");
}
