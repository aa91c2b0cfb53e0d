//! Function tools on OpenAI Responses (`/v1/responses`) over loopback HTTP: the scripted
//! backend (whose script writes two Hermes calls after some prose) for the output items and
//! the streamed events; the official `openai` Python client, unmodified, on the llama.cpp
//! fixture model with forced calls (`tool_choice` required / named), every call's arguments
//! validated against its function's schema by Python's `jsonschema`.

mod dialect_support;
mod server_support;

use dialect_support::{ensure_python_packages, parse_named_sse, run_python};
use llmlocal::{engine::Engine, server::ServerSettings};
use serde_json::{json, Value};
use server_support::{post, scripted_engine, scripted_settings, TestServer};

const CALLER: &str = "Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}\n</tool_call>";

fn tools() -> Value {
    json!([
        {"type": "function", "name": "get_weather", "description": "Weather in a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
         "strict": true},
        {"type": "function", "name": "get_time",
         "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}
    ])
}

async fn server(dir: &std::path::Path) -> TestServer {
    let engine = scripted_engine(scripted_settings(dir, &[("caller", CALLER)]));
    TestServer::start(engine, ServerSettings::default()).await
}

fn ask(extra: Value) -> Value {
    let mut body = json!({"model": "caller", "input": "Weather and time in Paris?",
                          "tools": tools(), "temperature": 0});
    for (key, value) in extra.as_object().into_iter().flatten() {
        body[key] = value.clone();
    }
    body
}

async fn ok(server: &TestServer, body: Value) -> Value {
    let (status, text) = post(server, "/v1/responses", body).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `(name, arguments)` of the `function_call` items of an output list.
fn calls(output: &Value) -> Vec<(String, Value)> {
    output
        .as_array()
        .expect("output list")
        .iter()
        .filter(|item| item["type"] == "function_call")
        .map(|item| {
            assert!(
                item["call_id"]
                    .as_str()
                    .expect("call_id")
                    .starts_with("call_"),
                "{item}"
            );
            assert_eq!(item["status"], "completed", "{item}");
            let arguments = item["arguments"].as_str().expect("arguments string");
            (
                item["name"].as_str().expect("name").to_string(),
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
async fn calls_come_back_as_function_call_items_after_the_prose() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let v = ok(&server, ask(json!({}))).await;
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["output"][0]["type"], "message", "{v}");
    assert_eq!(v["output"][0]["content"][0]["text"], "Sure.", "{v}");
    assert_eq!(calls(&v["output"]), expected_calls());
    assert_eq!(v["tools"], tools(), "the tools are echoed");
    assert_eq!(v["tool_choice"], "auto");
    // parallel_tool_calls false: the first call only.
    let v = ok(&server, ask(json!({"parallel_tool_calls": false}))).await;
    assert_eq!(calls(&v["output"]), expected_calls()[..1]);
    assert_eq!(v["parallel_tool_calls"], false);
    // tool_choice none: the tools are not offered and the answer is text.
    let v = ok(&server, ask(json!({"tool_choice": "none"}))).await;
    assert!(calls(&v["output"]).is_empty(), "{v}");
    assert_eq!(v["output"][0]["content"][0]["text"], CALLER, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_sends_the_prose_then_each_calls_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let (status, body) = post(&server, "/v1/responses", ask(json!({"stream": true}))).await;
    assert_eq!(status, 200, "{body}");
    let events = parse_named_sse(&body);
    for (i, (name, event)) in events.iter().enumerate() {
        assert_eq!(event["sequence_number"], i, "{name}: {event}");
        assert_eq!(&event["type"], name);
    }
    let names: Vec<&str> = events
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| *n != "response.output_text.delta")
        .collect();
    let call = [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ];
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ];
    expected.extend(call);
    expected.extend(call);
    expected.push("response.completed");
    assert_eq!(names, expected);
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, v)| v["delta"].as_str().expect("delta").to_string())
        .collect();
    assert_eq!(text.trim(), "Sure.", "no call text leaks into the message");
    // Each call's arguments: the deltas add up to the done event's, which parse.
    let mut streamed = Vec::new();
    for (name, event) in &events {
        if name == "response.output_item.added" && event["item"]["type"] == "function_call" {
            assert_eq!(event["item"]["status"], "in_progress", "{event}");
            streamed.push((event["item"]["id"].clone(), String::new()));
        }
        if name == "response.function_call_arguments.delta" {
            let (id, arguments) = streamed.last_mut().expect("an item was added");
            assert_eq!(&event["item_id"], id, "{event}");
            arguments.push_str(event["delta"].as_str().expect("delta"));
        }
        if name == "response.function_call_arguments.done" {
            let (_, arguments) = streamed.last().expect("an item was added");
            assert_eq!(event["arguments"], *arguments, "{event}");
        }
    }
    let completed = &events.last().expect("events").1["response"];
    assert_eq!(calls(&completed["output"]), expected_calls());
    assert_eq!(completed["output"][1]["id"], streamed[0].0);
}

#[tokio::test(flavor = "multi_thread")]
async fn history_items_are_accepted_and_bad_tools_are_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let history = json!({"tool_choice": "none", "max_output_tokens": 3, "input": [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
         "arguments": "{\"city\": \"Paris\"}", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}
    ]});
    let v = ok(&server, ask(history)).await;
    assert_eq!(v["status"], "incomplete", "{v}");
    for (extra, named) in [
        (json!({"tools": [{"type": "web_search"}]}), "web_search"),
        (
            json!({"tools": [{"type": "file_search", "vector_store_ids": []}]}),
            "file_search",
        ),
        (
            json!({"tools": [{"type": "function", "name": "f", "cache": true}]}),
            "`cache`",
        ),
        (
            json!({"tool_choice": {"type": "function", "name": "nope"}}),
            "nope",
        ),
        (
            json!({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{x"}]}),
            "input[0].arguments",
        ),
    ] {
        let (status, text) = post(&server, "/v1/responses", ask(extra)).await;
        assert_eq!(status, 400, "{named}: {text}");
        assert!(text.contains(named), "{named}: {text}");
    }
}

/// The `openai` client's Responses API with tools on a real model: forced calls (required
/// and named), streamed, schema-valid; the call and its result sent back as input items.
const CLIENT_SCRIPT: &str = r#"
import json, os
import openai, jsonschema

base, model = os.environ["BASE_URL"], os.environ["MODEL"]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
weather = {"type": "object", "additionalProperties": False, "required": ["city"],
           "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                          "days": {"type": "integer", "minimum": 1, "maximum": 7}}}
clock = {"type": "object", "additionalProperties": False, "required": ["zone"],
         "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}}
schemas = {"get_weather": weather, "get_time": clock}
tools = [{"type": "function", "name": n, "description": "The " + n[4:], "parameters": s, "strict": True}
         for n, s in schemas.items()]
question = "What is the weather in Paris?"

def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)

def only_call(response):
    items = [o for o in response.output if o.type == "function_call"]
    check(len(items) == 1, "one forced call: %r" % response.output)
    call = items[0]
    check(call.name in schemas, "known function %r" % call.name)
    jsonschema.validate(json.loads(call.arguments), schemas[call.name])
    return call

r = client.responses.create(model=model, input=question, tools=tools, tool_choice="required",
                            temperature=0, max_output_tokens=200)
call = only_call(r)
named = only_call(client.responses.create(model=model, input=question, tools=tools, temperature=0,
                                          max_output_tokens=200, tool_choice={"type": "function", "name": "get_time"}))
check(named.name == "get_time", "the named function: %r" % named.name)

events = list(client.responses.create(model=model, input=question, tools=tools, tool_choice="required",
                                      temperature=0, max_output_tokens=200, stream=True))
check([e.sequence_number for e in events] == list(range(len(events))), "sequence numbers")
done = [e for e in events if e.type == "response.function_call_arguments.done"]
check(len(done) == 1 and json.loads(done[0].arguments) == json.loads(call.arguments), "streamed arguments %r" % done)
final = only_call(events[-1].response)
check(final.name == call.name, "the streamed call")

history = [{"role": "user", "content": question}, call.model_dump(exclude_none=True),
           {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
after = client.responses.create(model=model, input=history, tools=tools, tool_choice="none",
                                temperature=0, max_output_tokens=5)
check(not [o for o in after.output if o.type == "function_call"], "text after the result: %r" % after.output)
try:
    client.responses.create(model=model, input=question, tools=[{"type": "web_search"}])
    check(False, "web_search is refused")
except openai.BadRequestError as e:
    check("web_search" in str(e), "the error names the tool type: %s" % e)
print(json.dumps({"call": call.name}))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_client_gets_schema_valid_forced_calls() {
    ensure_python_packages(&[("openai", "openai"), ("jsonschema", "jsonschema")]);
    let fixtures = llmlocal_fixtures::ensure_default().expect("fixture models");
    // The tool list in the prompt is longer than the fixture's default context.
    let mut settings = server_support::llama_cpp_settings("fx", &fixtures.gguf_f32);
    if let Some(entry) = settings.models.get_mut("fx") {
        entry.context_length = Some(2048);
    }
    let engine = Engine::new(settings, server_support::registry(&["llama_cpp"]), None);
    let server = TestServer::start(engine, ServerSettings::default()).await;
    let env = vec![
        ("BASE_URL", format!("http://{}", server.addr)),
        ("MODEL", "fx".to_string()),
    ];
    let out = tokio::task::spawn_blocking(move || run_python(CLIENT_SCRIPT, &env))
        .await
        .expect("client thread");
    let report: Value = serde_json::from_str(out.trim()).expect("report JSON");
    assert!(report["call"].is_string(), "{report}");
}
