//! Tool calling at the edge: OpenAI's and Ollama's wire shapes of tools, tool choices,
//! calls and tool results, to and from the engine's canonical [`Tools`] / [`ToolCall`].
//! Errors name the request field (`tools[2].function.name`, `messages[1].tool_calls[0]...`).

use crate::engine::{
    tools::{parse::Parsed, stream::CallBuffer},
    ChatMessage, ToolCall, ToolChoice, ToolSpec, Tools,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// OpenAI's tool fields of a chat request.
#[derive(Debug, Default, Deserialize)]
pub struct OpenAiTools {
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
}

impl OpenAiTools {
    /// The canonical tools; `None` when the request defines none.
    pub fn canonical(&self) -> Result<Option<Tools>, String> {
        let choice = match &self.tool_choice {
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(choice) => openai_choice(choice)?,
        };
        let specs = match &self.tools {
            None | Some(Value::Null) => Vec::new(),
            Some(tools) => specs_of(tools)?,
        };
        if specs.is_empty() && choice == ToolChoice::Auto {
            return Ok(None);
        }
        Ok(Some(Tools {
            specs,
            choice,
            parallel: self.parallel_tool_calls.unwrap_or(true),
        }))
    }
}

impl OpenAiTools {
    /// The first tool field the request sets (for routes that take none).
    pub fn present(&self) -> Option<&'static str> {
        let set = |v: &Option<Value>| !matches!(v, None | Some(Value::Null));
        if set(&self.tools) {
            Some("tools")
        } else if set(&self.tool_choice) {
            Some("tool_choice")
        } else {
            self.parallel_tool_calls.map(|_| "parallel_tool_calls")
        }
    }
}

/// `tool_choice`: `"auto"`, `"none"`, `"required"` or
/// `{"type": "function", "function": {"name": ...}}`.
fn openai_choice(value: &Value) -> Result<ToolChoice, String> {
    match value {
        Value::String(s) if s == "auto" => Ok(ToolChoice::Auto),
        Value::String(s) if s == "none" => Ok(ToolChoice::None),
        Value::String(s) if s == "required" => Ok(ToolChoice::Required),
        Value::Object(map) => map
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|name| ToolChoice::Function(name.to_string()))
            .ok_or_else(|| {
                "tool_choice.function.name: a named tool choice is \
                 {\"type\": \"function\", \"function\": {\"name\": ...}}"
                    .to_string()
            }),
        other => Err(format!(
            "tool_choice: use \"auto\", \"none\", \"required\" or a named function, got {other}"
        )),
    }
}

/// `tools`: a list of `{"type": "function", "function": {"name", "description",
/// "parameters"}}` (Ollama sends the same shape).
pub fn specs_of(tools: &Value) -> Result<Vec<ToolSpec>, String> {
    let Value::Array(list) = tools else {
        return Err(
            "tools: must be a list of {\"type\": \"function\", \"function\": {...}}".into(),
        );
    };
    list.iter()
        .enumerate()
        .map(|(i, t)| spec_of(i, t))
        .collect()
}

fn spec_of(index: usize, tool: &Value) -> Result<ToolSpec, String> {
    let field = |name: &str| format!("tools[{index}].{name}");
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(other) => {
            return Err(format!(
                "{}: only \"function\" tools are supported, got {other:?}",
                field("type")
            ))
        }
        None => return Err(format!("{}: missing (use \"function\")", field("type"))),
    }
    let function = tool
        .get("function")
        .filter(|f| f.is_object())
        .ok_or_else(|| format!("{}: missing or not an object", field("function")))?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{}: missing or not a string", field("function.name")))?;
    let description = match function.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => {
            return Err(format!(
                "{}: must be a string",
                field("function.description")
            ))
        }
    };
    let parameters = match function.get("parameters") {
        // A function without parameters takes none.
        None | Some(Value::Null) => json!({ "type": "object", "properties": {} }),
        Some(schema) => schema.clone(),
    };
    Ok(ToolSpec {
        name: name.to_string(),
        description,
        parameters,
    })
}

/// OpenAI's call in an assistant message: `arguments` is a JSON string.
#[derive(Debug, Deserialize)]
pub struct OpenAiCall {
    pub id: Option<String>,
    pub function: OpenAiFunction,
}

#[derive(Debug, Deserialize)]
pub struct OpenAiFunction {
    pub name: String,
    #[serde(default)]
    pub arguments: Option<Value>,
}

/// Sets an OpenAI message's tool fields on the canonical message (`index`: its place in
/// `messages`, for errors).
pub fn openai_message_tools(
    message: &mut ChatMessage,
    index: usize,
    calls: Option<Vec<OpenAiCall>>,
    tool_call_id: Option<String>,
    name: Option<String>,
) -> Result<(), String> {
    for (j, call) in calls.into_iter().flatten().enumerate() {
        let field = format!("messages[{index}].tool_calls[{j}].function.arguments");
        let arguments = arguments_of(call.function.arguments, &field)?;
        message.tool_calls.push(ToolCall {
            id: call.id.unwrap_or_else(crate::engine::tools::new_call_id),
            name: call.function.name,
            arguments,
        });
    }
    message.tool_call_id = tool_call_id;
    message.name = name;
    Ok(())
}

/// A call's arguments: a JSON object, or a string holding one (OpenAI's form).
fn arguments_of(value: Option<Value>, field: &str) -> Result<Value, String> {
    let parsed = match value {
        None | Some(Value::Null) => return Ok(json!({})),
        Some(Value::String(text)) if text.trim().is_empty() => return Ok(json!({})),
        Some(Value::String(text)) => {
            serde_json::from_str(&text).map_err(|err| format!("{field}: not valid JSON ({err})"))?
        }
        Some(other) => other,
    };
    match parsed {
        object @ Value::Object(_) => Ok(object),
        other => Err(format!("{field}: must be a JSON object, got {other}")),
    }
}

/// A call as OpenAI answers it (`arguments` as a JSON string), with its `index` for deltas.
pub fn openai_call(index: usize, call: &ToolCall) -> Value {
    json!({
        "index": index,
        "id": call.id,
        "type": "function",
        "function": { "name": call.name, "arguments": call.arguments.to_string() },
    })
}

/// The non-streamed assistant message (content `null` when the answer is only calls).
pub fn openai_message(parsed: &Parsed) -> Value {
    if parsed.calls.is_empty() {
        return json!({ "role": "assistant", "content": parsed.content });
    }
    let calls: Vec<Value> = parsed
        .calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut call = openai_call(i, c);
            if let Some(map) = call.as_object_mut() {
                map.remove("index");
            }
            call
        })
        .collect();
    let content = (!parsed.content.is_empty()).then_some(parsed.content.as_str());
    json!({ "role": "assistant", "content": content, "tool_calls": calls })
}

/// OpenAI's finish reason: `tool_calls` when the answer called tools.
pub fn openai_finish(parsed: &Parsed, otherwise: &'static str) -> &'static str {
    if parsed.calls.is_empty() {
        otherwise
    } else {
        "tool_calls"
    }
}

/// Ollama's call in an assistant message: `arguments` is an object.
#[derive(Debug, Deserialize)]
pub struct OllamaCall {
    pub function: OpenAiFunction,
}

/// Sets an Ollama message's tool fields (`tool_name` names the function a result is from).
pub fn ollama_message_tools(
    message: &mut ChatMessage,
    index: usize,
    calls: Option<Vec<OllamaCall>>,
    tool_name: Option<String>,
) -> Result<(), String> {
    for (j, call) in calls.into_iter().flatten().enumerate() {
        let field = format!("messages[{index}].tool_calls[{j}].function.arguments");
        let arguments = arguments_of(call.function.arguments, &field)?;
        message
            .tool_calls
            .push(ToolCall::new(call.function.name, arguments));
    }
    message.name = tool_name;
    Ok(())
}

/// Ollama's `tools` (no `tool_choice` in its API: the model decides).
pub fn ollama_tools(tools: Option<&Value>) -> Result<Option<Tools>, String> {
    let specs = match tools {
        None | Some(Value::Null) => return Ok(None),
        Some(tools) => specs_of(tools)?,
    };
    if specs.is_empty() {
        return Ok(None);
    }
    Ok(Some(Tools {
        specs,
        choice: ToolChoice::Auto,
        parallel: true,
    }))
}

/// Ollama's `message.tool_calls`: `arguments` as an object.
pub fn ollama_calls(calls: &[ToolCall]) -> Value {
    let list: Vec<Value> = calls
        .iter()
        .map(|c| json!({ "function": { "name": c.name, "arguments": c.arguments } }))
        .collect();
    Value::Array(list)
}

/// The buffer a streamed chat uses when the request has active tools.
pub fn call_buffer(tools: Option<&Tools>) -> Option<CallBuffer> {
    let tools = tools?;
    let specs = tools.active()?;
    Some(CallBuffer::new(specs.to_vec(), tools.parallel))
}

/// The text a streamed answer may show now: all of it without tools, else what the buffer
/// releases (`None` while it holds everything back).
pub fn release<'a>(
    calls: &mut Option<CallBuffer>,
    text: &'a str,
) -> Option<std::borrow::Cow<'a, str>> {
    match calls {
        None => Some(std::borrow::Cow::Borrowed(text)),
        Some(buffer) => {
            let released = buffer.push(text);
            (!released.is_empty()).then_some(std::borrow::Cow::Owned(released))
        }
    }
}

/// Parses a collected answer for calls when the request has active tools.
pub fn parse_answer(text: String, tools: Option<&Tools>) -> Parsed {
    let Some((tools, specs)) = tools.and_then(|t| Some((t, t.active()?))) else {
        return Parsed {
            content: text,
            calls: Vec::new(),
        };
    };
    let mut parsed = crate::engine::tools::parse::parse(&text, specs);
    // `parallel_tool_calls: false`: at most one call, as OpenAI answers.
    if !tools.parallel {
        parsed.calls.truncate(1);
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_tools_and_choices_become_canonical() {
        let request: OpenAiTools = serde_json::from_value(json!({
            "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}},
                      {"type": "function", "function": {"name": "g"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
            "parallel_tool_calls": false
        }))
        .expect("parses");
        let tools = request.canonical().expect("valid").expect("some");
        assert_eq!(tools.specs.len(), 2);
        assert_eq!(tools.specs[0].description.as_deref(), Some("d"));
        assert_eq!(tools.specs[1].parameters["type"], "object");
        assert_eq!(tools.choice, ToolChoice::Function("g".into()));
        assert!(!tools.parallel);
        assert_eq!(OpenAiTools::default().canonical(), Ok(None));
    }

    #[test]
    fn malformed_tools_name_the_field() {
        for (tools, field) in [
            (json!({"type": "function"}), "tools: must be a list"),
            (json!([{"function": {"name": "f"}}]), "tools[0].type"),
            (json!([{"type": "retrieval"}]), "tools[0].type"),
            (json!([{"type": "function"}]), "tools[0].function"),
            (
                json!([{"type": "function", "function": {"description": "x"}}]),
                "tools[0].function.name",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "description": 3}}]),
                "tools[0].function.description",
            ),
        ] {
            let err = specs_of(&tools).expect_err(field);
            assert!(err.starts_with(field), "{err} does not start with {field}");
        }
        let bad_choice = OpenAiTools {
            tool_choice: Some(json!("sometimes")),
            ..OpenAiTools::default()
        };
        assert!(bad_choice
            .canonical()
            .expect_err("bad")
            .starts_with("tool_choice"));
    }

    #[test]
    fn history_calls_take_string_or_object_arguments() {
        let mut message = ChatMessage::new("assistant", "");
        let calls: Vec<OpenAiCall> = serde_json::from_value(json!([
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}},
            {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": {"b": 2}}}
        ]))
        .expect("parses");
        openai_message_tools(&mut message, 1, Some(calls), None, None).expect("valid");
        assert_eq!(message.tool_calls[0].arguments, json!({"a": 1}));
        assert_eq!(message.tool_calls[1].arguments, json!({"b": 2}));
        assert_eq!(message.tool_calls[1].id, "call_2");
        let bad: Vec<OpenAiCall> = serde_json::from_value(json!([
            {"id": "x", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
        ]))
        .expect("parses");
        let err = openai_message_tools(&mut message, 3, Some(bad), None, None).expect_err("bad");
        assert!(
            err.starts_with("messages[3].tool_calls[0].function.arguments"),
            "{err}"
        );
    }

    #[test]
    fn answers_with_calls_have_null_content_and_string_arguments() {
        let parsed = Parsed {
            content: String::new(),
            calls: vec![ToolCall::new("f", json!({"a": 1}))],
        };
        let message = openai_message(&parsed);
        assert_eq!(message["content"], Value::Null);
        assert_eq!(message["tool_calls"][0]["type"], "function");
        assert_eq!(
            message["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(openai_finish(&parsed, "stop"), "tool_calls");
        assert_eq!(
            ollama_calls(&parsed.calls)[0]["function"]["arguments"],
            json!({"a": 1})
        );
    }
}
