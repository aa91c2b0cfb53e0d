//! Chat-template overrides (`llmlocal serve --chat-template NAME_OR_JINJA`, per-model
//! `chat_template`) over loopback HTTP on the scripted backend: the model has no template of
//! its own (ChatML would be used), and its byte tokenizer makes `prompt_tokens` the rendered
//! prompt's length plus BOS, so a chat's usage shows which template formatted it.

mod server_support;

use llmlocal::server::ServerSettings;
use serde_json::{json, Value};
use server_support::{post, scripted_engine, scripted_settings, TestServer};

const LLAMA3_PROMPT: &str = "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
<|start_header_id|>assistant<|end_header_id|>\n\n";
const CUSTOM: &str = "{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}>";
const CUSTOM_PROMPT: &str = "[system:Be brief.][user:Hi]>";

async fn server(dir: &std::path::Path) -> TestServer {
    // `a` takes the server-wide override; `b` its own, which wins.
    let script = "Hello.<|eot_id|>never shown";
    let mut settings = scripted_settings(dir, &[("a", script), ("b", "Fine.")]);
    settings.chat_template = Some("llama3".into());
    if let Some(b) = settings.models.get_mut("b") {
        b.chat_template = Some(CUSTOM.into());
    }
    TestServer::start(scripted_engine(settings), ServerSettings::default()).await
}

fn messages() -> Value {
    json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
}

async fn ok(server: &TestServer, path: &str, body: Value) -> Value {
    let (status, text) = post(server, path, body).await;
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_template_and_chats_use_the_override() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    for (model, prompt) in [("a", LLAMA3_PROMPT), ("b", CUSTOM_PROMPT)] {
        let v = ok(
            &server,
            "/apply-template",
            json!({"model": model, "messages": messages()}),
        )
        .await;
        assert_eq!(v["prompt"], prompt, "{model}");
        let chat = json!({"model": model, "messages": messages(), "temperature": 0});
        let v = ok(&server, "/v1/chat/completions", chat).await;
        // The byte tokenizer: one token per byte, plus BOS.
        assert_eq!(
            v["usage"]["prompt_tokens"],
            prompt.len() + 1,
            "{model}: {v}"
        );
        let v = ok(
            &server,
            "/api/chat",
            json!({"model": model, "messages": messages(), "stream": false,
                   "options": {"temperature": 0}}),
        )
        .await;
        assert_eq!(v["prompt_eval_count"], prompt.len() + 1, "{model}: {v}");
    }
    // A built-in's end-of-turn marker ends the answer, as ChatML's `<|im_end|>` would.
    let chat = json!({"model": "a", "messages": messages(), "temperature": 0});
    let v = ok(&server, "/v1/chat/completions", chat).await;
    assert_eq!(v["choices"][0]["message"]["content"], "Hello.", "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
}
