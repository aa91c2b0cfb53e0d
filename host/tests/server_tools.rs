//! Tool calling over loopback HTTP: a scripted model that answers with Hermes-style calls
//! (parsed into `tool_calls`, streamed as deltas), conversations with calls and tool results
//! rendered into the prompt, malformed tools refused naming the field; and, with the real
//! llama.cpp plugin and the official `openai` / `ollama` Python clients, grammar-forced calls
//! (`tool_choice: required` / a named function) whose arguments validate against the
//! function's schema with an independent validator (Python's `jsonschema`).

mod server_support;

use llmlocal::{
    engine::{ChatMessage, ChatTemplate, ToolCall, ToolSpec},
    server::ServerSettings,
};
use serde_json::{json, Value};
use server_support::{
    client, parse_ndjson, parse_sse, post, scripted_engine, scripted_settings, TestServer,
};

/// Prose, then two parallel calls, as Qwen/Hermes models write them.
const CALLER: &str = "Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}\n</tool_call>";

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time",
         "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}
    ])
}

async fn server(dir: &std::path::Path) -> TestServer {
    let engine = scripted_engine(scripted_settings(
        dir,
        &[("caller", CALLER), ("plain", "Just text.")],
    ));
    TestServer::start(engine, ServerSettings::default()).await
}

fn ask(model: &str) -> Value {
    json!({"model": model, "temperature": 0, "tools": tools(),
           "messages": [{"role": "user", "content": "Weather and time in Paris?"}]})
}

fn call_names_and_arguments(calls: &Value) -> Vec<(String, Value)> {
    calls
        .as_array()
        .expect("tool_calls list")
        .iter()
        .map(|c| {
            let arguments = c["function"]["arguments"].as_str().expect("string");
            (
                c["function"]["name"].as_str().expect("name").to_string(),
                serde_json::from_str(arguments).expect("arguments are JSON"),
            )
        })
        .collect()
}

fn expected_calls() -> Vec<(String, Value)> {
    vec![
        ("get_weather".into(), json!({"city": "Paris"})),
        ("get_time".into(), json!({"zone": "CET"})),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_answer_with_parallel_calls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let (status, body) = post(&server, "/v1/chat/completions", ask("caller")).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    assert_eq!(choice["message"]["content"], "Sure.");
    let calls = &choice["message"]["tool_calls"];
    assert_eq!(call_names_and_arguments(calls), expected_calls());
    for call in calls.as_array().expect("list") {
        assert_eq!(call["type"], "function");
        assert!(call["id"].as_str().expect("id").starts_with("call_"));
    }

    // `parallel_tool_calls: false`: the first call only.
    let mut single = ask("caller");
    single["parallel_tool_calls"] = json!(false);
    let (_, body) = post(&server, "/v1/chat/completions", single).await;
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let calls = &v["choices"][0]["message"]["tool_calls"];
    assert_eq!(call_names_and_arguments(calls), expected_calls()[..1]);

    // Without tools the same answer is plain text.
    let mut plain = ask("caller");
    plain["tool_choice"] = json!("none");
    let (_, body) = post(&server, "/v1/chat/completions", plain).await;
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["choices"][0]["message"]["content"], CALLER);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_stream_sends_prose_then_tool_call_deltas() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let mut request = ask("caller");
    request["stream"] = json!(true);
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .json(&request)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let (events, done) = parse_sse(&response.text().await.expect("body"));
    assert!(done);
    let deltas: Vec<&Value> = events.iter().map(|e| &e["choices"][0]["delta"]).collect();
    let content: String = deltas
        .iter()
        .filter_map(|d| d["content"].as_str())
        .collect();
    assert_eq!(
        content.trim(),
        "Sure.",
        "the prose streams, the markup does not"
    );
    let calls: Vec<Value> = deltas
        .iter()
        .filter_map(|d| d["tool_calls"].as_array())
        .flatten()
        .cloned()
        .collect();
    let indexes: Vec<u64> = calls
        .iter()
        .map(|c| c["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(indexes, [0, 1]);
    assert_eq!(
        call_names_and_arguments(&Value::Array(calls)),
        expected_calls()
    );
    let finish: Vec<&Value> = events
        .iter()
        .map(|e| &e["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn ollama_chat_answers_with_tool_calls_streamed_and_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let mut request = ask("caller");
    request["stream"] = json!(false);
    request["options"] = json!({"temperature": 0});
    let (status, body) = post(&server, "/api/chat", request.clone()).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let calls = &v["message"]["tool_calls"];
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(
        calls[0]["function"]["arguments"],
        json!({"city": "Paris"}),
        "an object"
    );
    assert_eq!(calls[1]["function"]["arguments"], json!({"zone": "CET"}));
    assert_eq!(v["message"]["content"], "Sure.");

    request["stream"] = json!(true);
    let (status, body) = post(&server, "/api/chat", request).await;
    assert_eq!(status, 200, "{body}");
    let lines = parse_ndjson(&body);
    let streamed: Vec<&Value> = lines
        .iter()
        .filter_map(|l| l["message"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(streamed.len(), 2, "{body}");
    assert_eq!(streamed[1]["function"]["name"], "get_time");
    assert_eq!(lines.last().expect("last")["done"], true);
}

/// The prompt the scripted model gets is counted in bytes, so the tokens of a request with
/// tools and a call/result history must be those of the template rendered with them.
#[tokio::test(flavor = "multi_thread")]
async fn tools_calls_and_results_are_rendered_into_the_prompt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let prompt_tokens = |body: &str| -> usize {
        let v: Value = serde_json::from_str(body).expect("JSON");
        v["usage"]["prompt_tokens"].as_u64().expect("usage") as usize
    };
    let chatml = ChatTemplate::fallback("", "");
    let first = [ChatMessage::new("user", "Weather?")];
    let (_, body) = post(
        &server,
        "/v1/chat/completions",
        json!({"model": "plain", "messages": [{"role": "user", "content": "Weather?"}]}),
    )
    .await;
    let overhead = prompt_tokens(&body) - chatml.render(&first, true).expect("renders").len();

    let request = json!({"model": "plain", "tools": tools(), "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "noon"}
    ]});
    let (status, body) = post(&server, "/v1/chat/completions", request).await;
    assert_eq!(status, 200, "{body}");
    let mut call = ChatMessage::new("assistant", "");
    call.tool_calls = vec![
        ToolCall {
            id: "call_a".into(),
            name: "get_weather".into(),
            arguments: json!({"city": "Paris"}),
        },
        ToolCall {
            id: "call_b".into(),
            name: "get_time".into(),
            arguments: json!({}),
        },
    ];
    let mut results = [
        ChatMessage::new("tool", "sunny"),
        ChatMessage::new("tool", "noon"),
    ];
    results[0].tool_call_id = Some("call_a".into());
    results[1].tool_call_id = Some("call_b".into());
    let mut history = vec![first[0].clone(), call];
    history.extend(results);
    let specs: Vec<ToolSpec> = tools()
        .as_array()
        .expect("list")
        .iter()
        .map(|t| ToolSpec {
            name: t["function"]["name"].as_str().expect("name").into(),
            description: t["function"]["description"].as_str().map(str::to_string),
            parameters: t["function"]["parameters"].clone(),
        })
        .collect();
    let rendered = chatml
        .render_with_tools(&history, Some(&specs), true)
        .expect("renders");
    assert!(rendered.contains("<tool_response>\nsunny\n</tool_response>\n<tool_response>\nnoon"));
    assert_eq!(
        prompt_tokens(&body),
        rendered.len() + overhead,
        "{rendered}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_tools_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let one = |function: Value| json!([{"type": "function", "function": function}]);
    let too_many: Vec<Value> = (0..129)
        .map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
        .collect();
    let cases = [
        (
            json!({"tools": one(json!({"description": "no name"}))}),
            "tools[0].function.name",
        ),
        (
            json!({"tools": one(json!({"name": "bad name!"}))}),
            "tools[0].function.name",
        ),
        (
            json!({"tools": one(json!({"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "float"}}}}))}),
            "tools[0].function.parameters",
        ),
        (
            json!({"tools": one(json!({"name": "f", "parameters": {"type": "array"}}))}),
            "tools[0].function.parameters",
        ),
        (json!({"tools": too_many}), "at most 128"),
        (
            json!({"tools": tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (
            json!({"tools": tools(), "tool_choice": "always"}),
            "tool_choice",
        ),
        (
            json!({"tools": tools(), "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "x", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
    ];
    for (fields, expected) in cases {
        let mut request =
            json!({"model": "caller", "messages": [{"role": "user", "content": "Hi"}]});
        for (key, value) in fields.as_object().expect("object") {
            request[key] = value.clone();
        }
        let (status, body) = post(&server, "/v1/chat/completions", request.clone()).await;
        assert_eq!(status, 400, "{expected}: {body}");
        let message = serde_json::from_str::<Value>(&body).expect("JSON")["error"]["message"]
            .as_str()
            .expect("message")
            .to_string();
        assert!(message.contains(expected), "{message} lacks {expected}");
        if request.get("response_format").is_some() {
            assert!(message.contains("tools"), "names both: {message}");
        }
        if request.get("tool_choice").is_some() || request.get("response_format").is_some() {
            continue; // OpenAI-only fields
        }
        request["stream"] = json!(false);
        let (status, body) = post(&server, "/api/chat", request).await;
        assert_eq!(status, 400, "ollama {expected}: {body}");
        assert!(body.contains(expected), "ollama: {body} lacks {expected}");
    }
}

/// The official clients against the server: on the llama.cpp fixture model (and
/// stories260K through both backends when present) a forced call; on the scripted model
/// parallel calls in `auto` mode. Every call's arguments are validated against the
/// function's schema with Python's `jsonschema`; streamed calls are reassembled by the
/// `openai` client's own stream helper.
const CLIENT_SCRIPT: &str = r#"
import json, os
import openai, ollama, jsonschema

base = os.environ["BASE_URL"]
forced_models = json.loads(os.environ["FORCED_MODELS"])
oa = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
ol = ollama.Client(host=base, timeout=120)
weather = {"type": "object", "additionalProperties": False, "required": ["city"],
           "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                          "days": {"type": "integer", "minimum": 1, "maximum": 7}}}
clock = {"type": "object", "additionalProperties": False, "required": ["zone"],
         "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}}
schemas = {"get_weather": weather, "get_time": clock}
tools = [{"type": "function", "function": {"name": n, "description": "The " + n[4:], "parameters": s}}
         for n, s in schemas.items()]
msgs = [{"role": "user", "content": "What is the weather in Paris?"}]

def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)

def valid(name, arguments):
    check(name in schemas, "known function %r" % name)
    jsonschema.validate(arguments, schemas[name])
    return arguments

def ask(model, **kw):
    return oa.chat.completions.create(model=model, messages=msgs, tools=tools, temperature=0, max_tokens=200, **kw)

for model in forced_models:
    r = ask(model, tool_choice="required")
    c = r.choices[0]
    check(c.finish_reason == "tool_calls", model + ": finish %r, message %r" % (c.finish_reason, c.message))
    check(len(c.message.tool_calls) == 1, model + ": one forced call")
    call = c.message.tool_calls[0]
    check(call.id.startswith("call_") and call.type == "function", model + ": call shape")
    valid(call.function.name, json.loads(call.function.arguments))
    named = ask(model, tool_choice={"type": "function", "function": {"name": "get_time"}}).choices[0]
    check(named.message.tool_calls[0].function.name == "get_time", model + ": the named function")
    valid("get_time", json.loads(named.message.tool_calls[0].function.arguments))
    with oa.beta.chat.completions.stream(model=model, messages=msgs, tools=tools, tool_choice="required",
                                         temperature=0, max_tokens=200) as stream:
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls
    check(len(streamed) == 1 and streamed[0].function.name == call.function.name, model + ": streamed call")
    check(json.loads(streamed[0].function.arguments) == json.loads(call.function.arguments), model + ": same streamed arguments")
    # The call and its result go back; with tool_choice none the answer is text.
    history = msgs + [c.message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    after = oa.chat.completions.create(model=model, messages=history, tools=tools, tool_choice="none", temperature=0, max_tokens=5)
    check(after.choices[0].finish_reason in ("stop", "length") and not after.choices[0].message.tool_calls, model + ": text after the result")

# The scripted model writes two Hermes calls after some prose: parallel calls in auto mode.
r = ask("caller")
calls = r.choices[0].message.tool_calls
check([c.function.name for c in calls] == ["get_weather", "get_time"], "parallel calls: %r" % calls)
for c in calls:
    valid(c.function.name, json.loads(c.function.arguments))
with oa.beta.chat.completions.stream(model="caller", messages=msgs, tools=tools, temperature=0) as stream:
    final = stream.get_final_completion()
check([json.loads(c.function.arguments) for c in final.choices[0].message.tool_calls]
      == [json.loads(c.function.arguments) for c in calls], "streamed parallel calls reassembled")
check(final.choices[0].finish_reason == "tool_calls", "streamed finish reason")

o = ol.chat(model="caller", messages=msgs, tools=tools, options={"temperature": 0})
ocalls = o.message.tool_calls
check([c.function.name for c in ocalls] == ["get_weather", "get_time"], "ollama calls %r" % ocalls)
for c in ocalls:
    valid(c.function.name, dict(c.function.arguments))
parts = [p.message.tool_calls for p in ol.chat(model="caller", messages=msgs, tools=tools, options={"temperature": 0}, stream=True)]
check(sum(len(p or []) for p in parts) == 2, "ollama streamed calls")
history = msgs + [{"role": "assistant", "content": "", "tool_calls": [c.model_dump() for c in ocalls]},
                  {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
o2 = ol.chat(model="caller", messages=history, tools=tools, options={"temperature": 0, "num_predict": 5})
check(o2.done, "ollama multi-turn with a tool result")
print("ok")
"#;

fn python_clients_ready() {
    let has = |code: &str| {
        std::process::Command::new("python3")
            .args(["-c", code])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has("import openai, ollama, jsonschema") {
        return;
    }
    let out = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "openai",
            "ollama",
            "jsonschema",
        ])
        .output()
        .expect("run pip");
    assert!(
        out.status.success() && has("import openai, ollama, jsonschema"),
        "FAIL: cannot pip-install openai, ollama and jsonschema: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn official_clients_get_schema_valid_forced_and_parallel_calls() {
    python_clients_ready();
    let dir = tempfile::tempdir().expect("temp dir");
    let fixtures = llmlocal_fixtures::ensure_default().expect("fixture models");
    let mut settings = scripted_settings(dir.path(), &[("caller", CALLER)]);
    let mut forced = vec!["fx-llama"];
    // The tool list in the prompt is longer than these small models' default context.
    let entry = |path: &std::path::Path, backend: &str| llmlocal::engine::ModelEntry {
        backend: Some(backend.into()),
        context_length: Some(2048),
        ..llmlocal::engine::ModelEntry::new(path.to_string_lossy())
    };
    settings
        .models
        .insert("fx-llama".into(), entry(&fixtures.gguf_f32, "llama-cpp"));
    if let Some(stories) = llmlocal_fixtures::shared::stories260k() {
        let gguf = stories.join("stories260K.gguf");
        settings
            .models
            .insert("stories-llama".into(), entry(&gguf, "llama-cpp"));
        settings.models.insert(
            "stories-candle".into(),
            entry(&stories.join("hf"), "candle"),
        );
        forced.extend(["stories-llama", "stories-candle"]);
    } else {
        eprintln!("fixture model only");
    }
    let registry = server_support::registry(&["scripted", "llama_cpp", "candle"]);
    let engine = llmlocal::engine::Engine::new(settings, registry, None);
    let server = TestServer::start(engine, ServerSettings::default()).await;
    let base = format!("http://{}", server.addr);
    let forced = serde_json::to_string(&forced).expect("JSON");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", CLIENT_SCRIPT])
            .env("BASE_URL", base)
            .env("FORCED_MODELS", forced)
            .output()
            .expect("run python3")
    })
    .await
    .expect("python thread");
    assert!(
        out.status.success(),
        "client script failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_on_routes_without_a_chat_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let request = json!({"model": "plain", "prompt": "Hi", "tools": tools(), "stream": false});
    for (path, field) in [("/v1/completions", "tools"), ("/api/generate", "tools")] {
        let (status, body) = post(&server, path, request.clone()).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(field), "{path}: {body}");
    }
    let choice = json!({"model": "plain", "prompt": "Hi", "tool_choice": "required"});
    let (status, body) = post(&server, "/v1/completions", choice).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tool_choice"), "{body}");
}
