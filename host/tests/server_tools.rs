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
    let content: String = deltas.iter().filter_map(|d| d["content"].as_str()).collect();
    assert_eq!(content.trim(), "Sure.", "the prose streams, the markup does not");
    let calls: Vec<Value> = deltas
        .iter()
        .filter_map(|d| d["tool_calls"].as_array())
        .flatten()
        .cloned()
        .collect();
    let indexes: Vec<u64> = calls.iter().map(|c| c["index"].as_u64().expect("index")).collect();
    assert_eq!(indexes, [0, 1]);
    assert_eq!(call_names_and_arguments(&Value::Array(calls)), expected_calls());
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
    assert_eq!(calls[0]["function"]["arguments"], json!({"city": "Paris"}), "an object");
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
        ToolCall { id: "call_a".into(), name: "get_weather".into(), arguments: json!({"city": "Paris"}) },
        ToolCall { id: "call_b".into(), name: "get_time".into(), arguments: json!({}) },
    ];
    let mut results = [ChatMessage::new("tool", "sunny"), ChatMessage::new("tool", "noon")];
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
    assert_eq!(prompt_tokens(&body), rendered.len() + overhead, "{rendered}");
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
        (json!({"tools": one(json!({"description": "no name"}))}), "tools[0].function.name"),
        (json!({"tools": one(json!({"name": "bad name!"}))}), "tools[0].function.name"),
        (json!({"tools": one(json!({"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "float"}}}}))}), "tools[0].function.parameters"),
        (json!({"tools": one(json!({"name": "f", "parameters": {"type": "array"}}))}), "tools[0].function.parameters"),
        (json!({"tools": too_many}), "at most 128"),
        (json!({"tools": tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}), "tool_choice"),
        (json!({"tools": tools(), "tool_choice": "always"}), "tool_choice"),
        (json!({"tools": tools(), "response_format": {"type": "json_object"}}), "response_format"),
        (json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "x", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}), "messages[0].tool_calls[0].function.arguments"),
    ];
    for (fields, expected) in cases {
        let mut request = json!({"model": "caller", "messages": [{"role": "user", "content": "Hi"}]});
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
