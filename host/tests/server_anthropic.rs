//! Anthropic Messages (`/v1/messages`, `/v1/messages/count_tokens`) over loopback HTTP: the
//! scripted backend for shapes, events, stop reasons, errors and keys; the official
//! `anthropic` Python client, unmodified, against the real llama.cpp plugin on the fixture
//! model (and the shipped stories260K), structured output checked by `jsonschema`.

mod dialect_support;
mod server_support;

use dialect_support::{ensure_python_packages, parse_named_sse, run_python};
use llmlocal::{
    engine::{Engine, EngineSettings},
    server::ServerSettings,
};
use serde_json::{json, Value};
use server_support::{
    client, llama_cpp_settings, post, registry, scripted_engine, scripted_settings, TestServer,
};
use std::path::Path;

const SCRIPT: &str = "The quick brown fox ✓ jumps.";

async fn server(dir: &Path, settings: ServerSettings) -> TestServer {
    let engine = scripted_engine(scripted_settings(dir, &[("fox", SCRIPT)]));
    TestServer::start(engine, settings).await
}

fn hello(extra: Value) -> Value {
    let mut body = json!({
        "model": "fox",
        "max_tokens": 200,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0,
    });
    for (key, value) in extra.as_object().into_iter().flatten() {
        body[key] = value.clone();
    }
    body
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Anthropic's error shape, with the error type; returns the message.
fn anthropic_error(status: u16, body: &str, want_status: u16, want_type: &str) -> String {
    assert_eq!(status, want_status, "{body}");
    let v = parse(body);
    assert_eq!(v["type"], "error", "{body}");
    assert_eq!(v["error"]["type"], want_type, "{body}");
    v["error"]["message"].as_str().expect("message").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_has_anthropics_shape_and_usage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path(), ServerSettings::default()).await;
    let blocks = json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "H"}, {"type": "text", "text": "i", "cache_control": {"type": "ephemeral"}}
    ]}], "metadata": {"user_id": "u1"}});
    let (status, body) = post(&server, "/v1/messages", hello(blocks)).await;
    assert_eq!(status, 200, "{body}");
    let v = parse(&body);
    assert!(v["id"].as_str().expect("id").starts_with("msg"), "{v}");
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "fox");
    assert_eq!(v["content"], json!([{"type": "text", "text": SCRIPT}]));
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["stop_sequence"], Value::Null);
    assert_eq!(v["usage"]["output_tokens"], SCRIPT.len());
    // Every prompt token is either fresh input or read from the prompt cache.
    let usage = &v["usage"];
    let input = usage["input_tokens"].as_u64().expect("input_tokens");
    let cached = usage["cache_read_input_tokens"].as_u64().expect("cached");
    // The same conversation through the OpenAI dialect counts the same prompt.
    let (_, chat) = post(
        &server,
        "/v1/chat/completions",
        json!({"model": "fox", "temperature": 0, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}
        ]}),
    )
    .await;
    let prompt = parse(&chat)["usage"]["prompt_tokens"].as_u64();
    assert_eq!(Some(input + cached), prompt, "{body} vs {chat}");
    // count_tokens tokenizes the same way, through the chat template.
    let (status, counted) = post(
        &server,
        "/v1/messages/count_tokens",
        json!({"model": "fox", "system": [{"type": "text", "text": "Be brief."}],
               "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(status, 200, "{counted}");
    assert_eq!(parse(&counted), json!({"input_tokens": input + cached}));
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_reasons_name_the_limit_and_the_stop_sequence() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path(), ServerSettings::default()).await;
    let (_, body) = post(&server, "/v1/messages", hello(json!({"max_tokens": 5}))).await;
    let v = parse(&body);
    assert_eq!(v["stop_reason"], "max_tokens", "{v}");
    assert_eq!(v["content"][0]["text"], "The q");
    let stops = json!({"stop_sequences": ["zzz", " fox"]});
    let (_, body) = post(&server, "/v1/messages", hello(stops)).await;
    let v = parse(&body);
    assert_eq!(v["stop_reason"], "stop_sequence", "{v}");
    assert_eq!(v["stop_sequence"], " fox");
    assert_eq!(v["content"][0]["text"], "The quick brown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_sends_anthropics_events_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path(), ServerSettings::default()).await;
    let response = client()
        .post(server.url("/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(&hello(json!({"stream": true, "stop_sequences": ["✓"]})))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().ok();
    assert_eq!(content_type, Some("text/event-stream"));
    let events = parse_named_sse(&response.text().await.expect("body"));
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let deltas = names.len() - 6;
    assert!(deltas >= 1, "{names:?}");
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", deltas));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
    let start = &events[0].1["message"];
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["content"], json!([]));
    assert!(start["usage"]["input_tokens"].as_u64() > Some(2), "{start}");
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, v)| {
            assert_eq!(v["delta"]["type"], "text_delta");
            v["delta"]["text"].as_str().expect("text").to_string()
        })
        .collect();
    assert_eq!(text, "The quick brown fox ");
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "stop_sequence", "{delta}");
    assert_eq!(delta["delta"]["stop_sequence"], "✓");
    assert_eq!(
        delta["usage"]["output_tokens"].as_u64(),
        Some(23),
        "{delta}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_mid_stream_is_an_error_event() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = scripted_settings(dir.path(), &[("fox", SCRIPT)]);
    if let Some(entry) = settings.models.get_mut("fox") {
        entry.backend = Some("panicking-generation".into());
    }
    let engine = Engine::new(settings, registry(&["panicking_generation"]), None);
    let server = TestServer::start(engine, ServerSettings::default()).await;
    let (status, body) = post(&server, "/v1/messages", hello(json!({"stream": true}))).await;
    assert_eq!(status, 200, "{body}");
    let events = parse_named_sse(&body);
    let (name, error) = events.last().expect("events");
    assert_eq!(name, "error", "{events:?}");
    assert_eq!(error["error"]["type"], "api_error", "{error}");
    assert!(error["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(
        !events.iter().any(|(n, _)| n == "message_stop"),
        "a failed stream does not claim a normal end: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unsupported_input_is_a_400_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path(), ServerSettings::default()).await;
    let image = json!({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}
    ]}]});
    let no_schema = json!({"tools": [{"name": "get_weather"}]});
    let server_tool = json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]});
    let use_in_user_turn = json!({"messages": [{"role": "user", "content": [
        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}
    ]}]});
    let cases = [
        (hello(image), "image"),
        (hello(no_schema), "tools[0].input_schema"),
        (hello(server_tool), "tools[0].type"),
        (hello(use_in_user_turn), "tool_use"),
        (
            hello(json!({"tool_choice": {"type": "maybe"}})),
            "tool_choice",
        ),
        (hello(json!({"top_logprobs": 3})), "top_logprobs"),
        (
            hello(json!({"thinking": {"type": "enabled", "budget_tokens": 100}})),
            "thinking",
        ),
        (
            hello(json!({"messages": [{"role": "system", "content": "x"}]})),
            "role",
        ),
        (hello(json!({"temperature": 7})), "temperature"),
    ];
    for (body, named) in cases {
        let (status, text) = post(&server, "/v1/messages", body).await;
        let message = anthropic_error(status, &text, 400, "invalid_request_error");
        assert!(message.contains(named), "{named}: {message}");
    }
    let mut body = hello(json!({}));
    body.as_object_mut().map(|o| o.remove("max_tokens"));
    let (status, text) = post(&server, "/v1/messages", body).await;
    let message = anthropic_error(status, &text, 400, "invalid_request_error");
    assert!(message.contains("max_tokens"), "{message}");
    let (status, text) = post(&server, "/v1/messages", hello(json!({"model": "nope"}))).await;
    anthropic_error(status, &text, 404, "not_found_error");
    let count =
        json!({"model": "fox", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3});
    let (status, text) = post(&server, "/v1/messages/count_tokens", count).await;
    let message = anthropic_error(status, &text, 400, "invalid_request_error");
    assert!(message.contains("max_tokens"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_taken_from_x_api_key_or_bearer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = ServerSettings {
        api_keys: vec!["user-key".into()],
        admin_keys: vec!["admin-key".into()],
        ..ServerSettings::default()
    };
    let server = server(dir.path(), settings).await;
    let send = |headers: Vec<(&'static str, &'static str)>, path: &'static str| {
        let mut request = client().post(server.url(path)).json(&hello(json!({})));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            (status, response.text().await.expect("body"))
        }
    };
    for key in ["user-key", "admin-key"] {
        let (status, body) = send(vec![("x-api-key", key)], "/v1/messages").await;
        assert_eq!(status, 200, "{key}: {body}");
    }
    let (status, _) = send(vec![("authorization", "Bearer user-key")], "/v1/messages").await;
    assert_eq!(status, 200);
    // x-api-key is a key header for every route, not only Anthropic's.
    let (status, _) = send(vec![("x-api-key", "user-key")], "/v1/chat/completions").await;
    assert_ne!(status, 401);
    let (status, body) = send(vec![], "/v1/messages").await;
    let message = anthropic_error(status, &body, 401, "authentication_error");
    assert!(message.contains("x-api-key"), "{message}");
    let (status, body) = send(vec![("x-api-key", "wrong")], "/v1/messages").await;
    anthropic_error(status, &body, 401, "authentication_error");
    // An admin key in x-api-key may change what the server holds; an inference key may not.
    let remove = |key: &'static str| {
        let request = client()
            .delete(server.url("/api/delete"))
            .header("x-api-key", key)
            .json(&json!({"model": "not-here"}));
        async move { request.send().await.expect("request").status().as_u16() }
    };
    assert_eq!(remove("user-key").await, 403);
    assert_eq!(remove("admin-key").await, 404, "past the admin check");
}

/// Drives the `anthropic` client: create, stream (text_stream + get_final_message),
/// count_tokens, a structured answer validated by `jsonschema`, and the errors a client
/// sees for a wrong key and a bad request.
const CLIENT_SCRIPT: &str = r#"
import json, os
import anthropic, jsonschema

base, key, model = os.environ["BASE_URL"], os.environ["API_KEY"], os.environ["MODEL"]
client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=120)
greedy = {"temperature": 0}
msgs = [{"role": "user", "content": "Say something."}]

def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)

m = client.messages.create(model=model, max_tokens=40, messages=msgs, system="Be brief.", extra_body=greedy)
text = m.content[0].text
check(m.type == "message" and m.role == "assistant" and m.content[0].type == "text", "shape %r" % m)
check(m.stop_reason in ("end_turn", "max_tokens"), "stop_reason %r" % m.stop_reason)
check(m.usage.output_tokens >= 1 and len(text) > 0, "generated something: %r" % m)

with client.messages.stream(model=model, max_tokens=40, messages=msgs, system="Be brief.", extra_body=greedy) as stream:
    streamed = "".join(stream.text_stream)
    final = stream.get_final_message()
check(streamed == text, "stream %r == create %r" % (streamed, text))
check(final.content[0].text == text and final.stop_reason == m.stop_reason, "final message %r" % final)
check(final.usage.output_tokens == m.usage.output_tokens, "final usage %r" % final.usage)

counted = client.messages.count_tokens(model=model, messages=msgs, system="Be brief.")
prompt = m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)
check(counted.input_tokens == prompt, "count_tokens %r == usage %r" % (counted, m.usage))

schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["ok", "n"], "additionalProperties": False}
s = client.messages.create(model=model, max_tokens=60, messages=msgs, extra_body=greedy,
                           output_config={"format": {"type": "json_schema", "schema": schema}})
answer = json.loads(s.content[0].text)
jsonschema.validate(answer, schema)
check(s.stop_reason == "end_turn", "structured output ends by itself: %r" % s.stop_reason)

weather = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                            "required": ["city"], "additionalProperties": False}}
forced = {"type": "tool", "name": "get_weather"}
t = client.messages.create(model=model, max_tokens=60, messages=msgs, tools=[weather],
                           tool_choice=forced, extra_body=greedy)
uses = [b for b in t.content if b.type == "tool_use"]
check(t.stop_reason == "tool_use" and len(uses) == 1, "a forced tool call: %r" % t)
check(uses[0].name == "get_weather" and uses[0].id.startswith("toolu_"), "the call: %r" % uses[0])
jsonschema.validate(uses[0].input, weather["input_schema"])
with client.messages.stream(model=model, max_tokens=60, messages=msgs, tools=[weather],
                            tool_choice=forced, extra_body=greedy) as stream:
    streamed_call = [b for b in stream.get_final_message().content if b.type == "tool_use"]
check(len(streamed_call) == 1 and streamed_call[0].input == uses[0].input,
      "the streamed call %r == %r" % (streamed_call, uses))
history = msgs + [{"role": "assistant", "content": [u.model_dump() for u in uses]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                                "content": "Sunny, 21 C"}]}]
after = client.messages.create(model=model, max_tokens=20, messages=history, tools=[weather], extra_body=greedy)
check(after.stop_reason in ("end_turn", "max_tokens", "tool_use"), "an answer after the result: %r" % after)
with_tools = client.messages.count_tokens(model=model, messages=history, tools=[weather])
without = client.messages.count_tokens(model=model, messages=msgs)
check(with_tools.input_tokens > without.input_tokens + 10, "tools and results are in the prompt: %r vs %r" % (with_tools, without))

try:
    anthropic.Anthropic(base_url=base, api_key="wrong", max_retries=0).messages.create(model=model, max_tokens=5, messages=msgs)
    check(False, "a wrong key is refused")
except anthropic.AuthenticationError as e:
    check(e.body["error"]["type"] == "authentication_error", "auth error body %r" % e.body)
try:
    client.messages.create(model=model, max_tokens=5, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}])
    check(False, "an image is refused")
except anthropic.BadRequestError as e:
    check(e.body["type"] == "error" and e.body["error"]["type"] == "invalid_request_error", "error body %r" % e.body)
    check("image" in e.body["error"]["message"], "the error names the image: %r" % e.body)
print(json.dumps({"text": text, "json": answer, "call": uses[0].input}))
"#;

async fn run_client(settings: EngineSettings, model: &str) -> Value {
    ensure_python_packages(&[("anthropic", "anthropic"), ("jsonschema", "jsonschema")]);
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
async fn the_anthropic_client_on_the_fixture_model() {
    let fixtures = llmlocal_fixtures::ensure_default().expect("fixture models");
    let mut settings = llama_cpp_settings("fx", &fixtures.gguf_f32);
    // The tool turns (tools + Hermes instruction + history) pass the fixture's 512 tokens
    // of byte-level tokens.
    settings.context_length = Some(1024);
    let report = run_client(settings, "fx").await;
    // Designed greedy behaviour: a chat prompt ends with "\n", which decides the text.
    let expected = llmlocal_fixtures::spec::expected_text(&[u32::from(b'\n')], 64);
    assert!(
        expected.starts_with(report["text"].as_str().expect("text")),
        "{report} vs {expected:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_anthropic_client_on_stories260k() {
    let gguf = server_support::stories260k_gguf();
    run_client(llama_cpp_settings("stories", &gguf), "stories").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_may_send_anthropics_headers_from_a_cors_origin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = ServerSettings {
        cors_origins: vec!["http://localhost:5173".into()],
        ..ServerSettings::default()
    };
    let server = server(dir.path(), settings).await;
    let response = client()
        .request(reqwest::Method::OPTIONS, server.url("/v1/messages"))
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "x-api-key,anthropic-version,content-type",
        )
        .send()
        .await
        .expect("preflight");
    let allowed = response
        .headers()
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    for header in ["x-api-key", "anthropic-version", "content-type"] {
        assert!(allowed.contains(header), "{header} not in {allowed:?}");
    }
}
