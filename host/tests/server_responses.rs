//! OpenAI Responses (`/v1/responses`, stateless) over loopback HTTP: the scripted backend for
//! shapes, events, limits and refusals; the official `openai` Python client, unmodified,
//! against the real llama.cpp plugin on the fixture model (and the shipped stories260K),
//! structured output checked by `jsonschema`.

mod dialect_support;
mod server_support;

use dialect_support::{ensure_python_packages, parse_named_sse, run_python};
use llmlocal::{
    engine::{Engine, EngineSettings},
    server::ServerSettings,
};
use serde_json::{json, Value};
use server_support::{
    llama_cpp_settings, post, registry, scripted_engine, scripted_settings, TestServer,
};
use std::path::Path;

const SCRIPT: &str = "The quick brown fox ✓ jumps.";

async fn server(dir: &Path) -> TestServer {
    let engine = scripted_engine(scripted_settings(dir, &[("fox", SCRIPT)]));
    TestServer::start(engine, ServerSettings::default()).await
}

fn request(extra: Value) -> Value {
    let mut body =
        json!({"model": "fox", "input": "Hi", "instructions": "Be brief.", "temperature": 0});
    for (key, value) in extra.as_object().into_iter().flatten() {
        body[key] = value.clone();
    }
    body
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_has_openais_shape_and_usage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let items = json!({"input": [
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
    ], "store": false, "metadata": {"k": "v"}});
    let (status, body) = post(&server, "/v1/responses", request(items)).await;
    assert_eq!(status, 200, "{body}");
    let v = parse(&body);
    assert!(v["id"].as_str().expect("id").starts_with("resp"), "{v}");
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["model"], "fox");
    assert_eq!(v["metadata"], json!({"k": "v"}));
    let item = &v["output"][0];
    assert_eq!(item["type"], "message");
    assert_eq!(item["role"], "assistant");
    assert_eq!(item["status"], "completed");
    assert_eq!(item["content"][0]["type"], "output_text");
    assert_eq!(item["content"][0]["text"], SCRIPT);
    let usage = &v["usage"];
    assert_eq!(usage["output_tokens"], SCRIPT.len());
    let input = usage["input_tokens"].as_u64().expect("input_tokens");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(input + SCRIPT.len() as u64)
    );
    assert!(
        usage["input_tokens_details"]["cached_tokens"].is_u64(),
        "{usage}"
    );
    // The same conversation through chat completions counts the same prompt.
    let (_, chat) = post(
        &server,
        "/v1/chat/completions",
        json!({"model": "fox", "temperature": 0, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "system", "content": "Rules."},
            {"role": "user", "content": "Hi"}
        ]}),
    )
    .await;
    assert_eq!(parse(&chat)["usage"]["prompt_tokens"].as_u64(), Some(input));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_response_is_incomplete() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let (status, body) = post(
        &server,
        "/v1/responses",
        request(json!({"max_output_tokens": 5})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v = parse(&body);
    assert_eq!(v["status"], "incomplete", "{v}");
    assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(v["output"][0]["content"][0]["text"], "The q");
    let (status, body) = post(
        &server,
        "/v1/responses",
        request(json!({"max_output_tokens": 0})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("max_output_tokens"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_sends_numbered_response_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let (status, body) = post(&server, "/v1/responses", request(json!({"stream": true}))).await;
    assert_eq!(status, 200, "{body}");
    let events = parse_named_sse(&body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let deltas = names.len() - 8;
    assert!(deltas >= 1, "{names:?}");
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, expected);
    for (i, (_, event)) in events.iter().enumerate() {
        assert_eq!(event["sequence_number"], i, "{event}");
    }
    assert_eq!(events[0].1["response"]["status"], "in_progress");
    let item_id = &events[2].1["item"]["id"];
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, v)| {
            assert_eq!(&v["item_id"], item_id);
            v["delta"].as_str().expect("delta").to_string()
        })
        .collect();
    assert_eq!(text, SCRIPT);
    let done = &events[4 + deltas].1;
    assert_eq!(done["text"], SCRIPT);
    let completed = &events[events.len() - 1].1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["output"][0]["content"][0]["text"], SCRIPT);
    assert_eq!(completed["usage"]["output_tokens"], SCRIPT.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn state_tools_and_unknown_fields_are_a_400_naming_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let image = json!({"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,AA=="}
    ]}]});
    let cases = [
        (request(json!({"store": true})), "store"),
        (
            request(json!({"previous_response_id": "resp_1"})),
            "previous_response_id",
        ),
        (
            request(json!({"tools": [{"type": "web_search_preview"}]})),
            "web_search_preview",
        ),
        (request(image), "input_image"),
        (
            request(json!({"input": [{"type": "computer_call", "call_id": "c"}]})),
            "computer_call",
        ),
        (
            request(json!({"frequency_penalty": 1})),
            "frequency_penalty",
        ),
        (
            request(json!({"text": {"format": {"type": "yaml"}}})),
            "text.format",
        ),
        (request(json!({"truncation": "auto"})), "truncation"),
    ];
    for (body, named) in cases {
        let (status, text) = post(&server, "/v1/responses", body).await;
        assert_eq!(status, 400, "{named}: {text}");
        let v = parse(&text);
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{named}: {text}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{text}");
    }
}

/// Drives the `openai` client's Responses API: plain, streamed (the same greedy text, events
/// numbered in order) and `text.format` json_schema validated by `jsonschema`; plus the same
/// question through chat completions, which must agree.
const CLIENT_SCRIPT: &str = r#"
import json, os
import openai, jsonschema

base, key, model = os.environ["BASE_URL"], os.environ["API_KEY"], os.environ["MODEL"]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)

def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)

r = client.responses.create(model=model, input="Say something.", instructions="Be brief.", temperature=0, max_output_tokens=40)
text = r.output_text
check(r.status in ("completed", "incomplete") and len(text) > 0, "response %r" % r)
check(r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens, "usage adds up %r" % r.usage)
chat = client.chat.completions.create(model=model, temperature=0, max_tokens=40, messages=[
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}])
check(chat.choices[0].message.content == text, "chat %r == responses %r" % (chat.choices[0].message.content, text))

events = list(client.responses.create(model=model, input=[{"role": "user", "content": [{"type": "input_text", "text": "Say something."}]}],
                                      instructions="Be brief.", temperature=0, max_output_tokens=40, stream=True))
check([e.sequence_number for e in events] == list(range(len(events))), "sequence numbers")
check(events[0].type == "response.created" and events[-1].type == "response." + r.status, "first/last %r %r" % (events[0].type, events[-1].type))
streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
check(streamed == text, "stream %r == create %r" % (streamed, text))
check(events[-1].response.output_text == text, "the final response carries the text")

schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["ok", "n"], "additionalProperties": False}
s = client.responses.create(model=model, input="Say something.", temperature=0, max_output_tokens=60,
                            text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}})
answer = json.loads(s.output_text)
jsonschema.validate(answer, schema)
check(s.status == "completed", "structured output ends by itself: %r" % s.status)
try:
    client.responses.create(model=model, input="x", previous_response_id="resp_123")
    check(False, "previous_response_id is refused")
except openai.BadRequestError as e:
    check("previous_response_id" in str(e), "the error names it: %s" % e)
print(json.dumps({"text": text, "json": answer}))
"#;

async fn run_client(settings: EngineSettings, model: &str) -> Value {
    ensure_python_packages(&[("openai", "openai"), ("jsonschema", "jsonschema")]);
    let engine = Engine::new(settings, registry(&["llama_cpp"]), None);
    let server = TestServer::start(
        engine,
        ServerSettings {
            api_keys: vec!["e2e-key".into()],
            ..ServerSettings::default()
        },
    )
    .await;
    let env = vec![
        ("BASE_URL", format!("http://{}", server.addr)),
        ("API_KEY", "e2e-key".to_string()),
        ("MODEL", model.to_string()),
    ];
    let out = tokio::task::spawn_blocking(move || run_python(CLIENT_SCRIPT, &env))
        .await
        .expect("client thread");
    serde_json::from_str(out.trim()).expect("report JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_client_responses_on_the_fixture_model() {
    let fixtures = llmlocal_fixtures::ensure_default().expect("fixture models");
    let report = run_client(llama_cpp_settings("fx", &fixtures.gguf_f32), "fx").await;
    let expected = llmlocal_fixtures::spec::expected_text(&[u32::from(b'\n')], 64);
    assert!(
        expected.starts_with(report["text"].as_str().expect("text")),
        "{report} vs {expected:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_client_responses_on_stories260k() {
    let gguf = server_support::stories260k_gguf();
    run_client(llama_cpp_settings("stories", &gguf), "stories").await;
}
