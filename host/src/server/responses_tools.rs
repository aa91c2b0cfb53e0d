//! Function tools on OpenAI's Responses API, to and from the engine's canonical [`Tools`] /
//! [`ToolCall`] through the chat dialect's translation ([`super::tools`]): Responses tools
//! are flat (`{type: "function", name, description, parameters, strict}`) where chat tools
//! nest them under `function`, and calls travel as `function_call` /
//! `function_call_output` items instead of message fields.

use super::tools::OpenAiTools;
use crate::engine::{ChatMessage, ToolCall, Tools};
use serde_json::{json, Map, Value};

/// Keys of a Responses function tool.
const TOOL_KEYS: &[&str] = &["type", "name", "description", "parameters", "strict"];
/// Keys of a `function_call` item (`id` and `status` come back from earlier output).
const CALL_KEYS: &[&str] = &["type", "call_id", "name", "arguments", "id", "status"];
/// Keys of a `function_call_output` item.
const OUTPUT_KEYS: &[&str] = &["type", "call_id", "output", "id", "status"];

/// The canonical tools of `tools`, `tool_choice` and `parallel_tool_calls`; `None` when the
/// request defines none. Errors name the field.
pub fn canonical(
    tools: Option<&Value>,
    choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<Tools>, String> {
    let tools = match tools.filter(|t| !t.is_null()) {
        None => None,
        Some(Value::Array(list)) => Some(Value::Array(
            list.iter()
                .enumerate()
                .map(|(i, t)| chat_tool(i, t))
                .collect::<Result<_, _>>()?,
        )),
        Some(_) => return Err("tools: must be a list of function tools".into()),
    };
    let tool_choice = choice
        .filter(|c| !c.is_null())
        .map(chat_choice)
        .transpose()?;
    OpenAiTools {
        tools,
        tool_choice,
        parallel_tool_calls: parallel,
    }
    .canonical()
}

/// A flat Responses function tool in the chat form; other tool types are named.
fn chat_tool(index: usize, tool: &Value) -> Result<Value, String> {
    let kind = tool.get("type").and_then(Value::as_str);
    if kind != Some("function") {
        return Err(format!(
            "tools[{index}].type: only \"function\" tools are supported on this server, got \
             {}",
            kind.map_or_else(|| "none".to_string(), |k| format!("{k:?}"))
        ));
    }
    let fields = tool.as_object().cloned().unwrap_or_default();
    if let Some(key) = fields.keys().find(|k| !TOOL_KEYS.contains(&k.as_str())) {
        return Err(format!("tools[{index}]: unknown field `{key}`"));
    }
    let mut function = Map::new();
    for key in ["name", "description", "parameters"] {
        if let Some(value) = fields.get(key) {
            function.insert(key.to_string(), value.clone());
        }
    }
    Ok(json!({ "type": "function", "function": function }))
}

/// `tool_choice`: `auto`, `none`, `required`, or `{type: "function", name}`.
fn chat_choice(choice: &Value) -> Result<Value, String> {
    match choice {
        Value::String(_) => Ok(choice.clone()),
        Value::Object(map) => match map.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = map.get("name").and_then(Value::as_str).ok_or_else(|| {
                    "tool_choice.name: a named tool choice is {\"type\": \"function\", \"name\": ...}"
                        .to_string()
                })?;
                Ok(json!({ "type": "function", "function": { "name": name } }))
            }
            other => Err(format!(
                "tool_choice.type: only \"function\" is supported, got {other:?}"
            )),
        },
        other => Err(format!(
            "tool_choice: use \"auto\", \"none\", \"required\" or {{\"type\": \"function\", \
             \"name\": ...}}, got {other}"
        )),
    }
}

fn checked<'a>(
    item: &'a Value,
    keys: &[&str],
    where_: &str,
) -> Result<&'a Map<String, Value>, String> {
    let fields = item
        .as_object()
        .ok_or_else(|| format!("{where_} must be an object"))?;
    if let Some(key) = fields.keys().find(|k| !keys.contains(&k.as_str())) {
        return Err(format!("{where_}: unknown field `{key}`"));
    }
    Ok(fields)
}

fn string<'a>(fields: &'a Map<String, Value>, key: &str, where_: &str) -> Result<&'a str, String> {
    fields
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{where_}.{key}: missing or not a string"))
}

/// A `function_call` input item (an earlier answer's call), added to the assistant turn
/// before it or as a new one.
pub fn push_call(chat: &mut Vec<ChatMessage>, item: &Value, where_: &str) -> Result<(), String> {
    let fields = checked(item, CALL_KEYS, where_)?;
    let arguments_text = string(fields, "arguments", where_)?;
    let arguments: Value = if arguments_text.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(arguments_text)
            .map_err(|err| format!("{where_}.arguments: not valid JSON ({err})"))?
    };
    if !arguments.is_object() {
        return Err(format!("{where_}.arguments: must be a JSON object"));
    }
    let call = ToolCall {
        id: string(fields, "call_id", where_)?.to_string(),
        name: string(fields, "name", where_)?.to_string(),
        arguments,
    };
    match chat.last_mut().filter(|m| m.role == "assistant") {
        Some(turn) => turn.tool_calls.push(call),
        None => {
            let mut turn = ChatMessage::new("assistant", "");
            turn.tool_calls.push(call);
            chat.push(turn);
        }
    }
    Ok(())
}

/// A `function_call_output` input item: a `tool` message answering the call `call_id`
/// (named after that call's function when the input holds it).
pub fn result_message(
    chat: &[ChatMessage],
    item: &Value,
    where_: &str,
) -> Result<ChatMessage, String> {
    let fields = checked(item, OUTPUT_KEYS, where_)?;
    let call_id = string(fields, "call_id", where_)?;
    let output = match fields.get("output") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => output_parts(parts, where_)?,
        _ => return Err(format!("{where_}.output: must be a string")),
    };
    let name = chat
        .iter()
        .flat_map(|m| &m.tool_calls)
        .find(|c| c.id == call_id)
        .map(|c| c.name.clone());
    let mut message = ChatMessage::new("tool", output);
    message.tool_call_id = Some(call_id.to_string());
    message.name = name;
    Ok(message)
}

/// An output given as `input_text` parts (images and files are not supported).
fn output_parts(parts: &[Value], where_: &str) -> Result<String, String> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        match (part.get("type").and_then(Value::as_str), part.get("text")) {
            (Some("input_text" | "output_text"), Some(Value::String(piece))) => {
                text.push_str(piece)
            }
            (kind, _) => {
                return Err(format!(
                    "{where_}.output[{j}]: only input_text parts are supported, got {kind:?}"
                ))
            }
        }
    }
    Ok(text)
}

/// A `function_call` output item (`arguments` as a JSON string, as OpenAI answers).
pub fn call_item(item_id: &str, call: &ToolCall, arguments: &str, status: &str) -> Value {
    json!({
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": arguments,
    })
}

/// The request's tools as the response object echoes them.
pub fn echo(tools: Option<&Value>) -> Value {
    tools
        .filter(|t| !t.is_null())
        .cloned()
        .unwrap_or_else(|| json!([]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ToolChoice;

    #[test]
    fn flat_function_tools_and_choices_become_canonical() {
        let tools = json!([{"type": "function", "name": "f", "description": "d",
                            "parameters": {"type": "object"}, "strict": true}]);
        let choice = json!({"type": "function", "name": "f"});
        let canonical = canonical(Some(&tools), Some(&choice), Some(false))
            .expect("valid")
            .expect("some");
        assert_eq!(canonical.specs[0].name, "f");
        assert_eq!(canonical.specs[0].description.as_deref(), Some("d"));
        assert_eq!(canonical.choice, ToolChoice::Function("f".into()));
        assert!(!canonical.parallel);
        let required = canonical_choice("required");
        assert_eq!(required, ToolChoice::Required);
    }

    fn canonical_choice(choice: &str) -> ToolChoice {
        let tools = json!([{"type": "function", "name": "f"}]);
        canonical(Some(&tools), Some(&json!(choice)), None)
            .expect("valid")
            .expect("some")
            .choice
    }

    #[test]
    fn other_tool_types_and_bad_items_are_named() {
        let err = canonical(Some(&json!([{"type": "web_search"}])), None, None).expect_err("web");
        assert!(
            err.contains("tools[0].type") && err.contains("web_search"),
            "{err}"
        );
        let err = canonical(
            Some(&json!([{"type": "function", "name": "f", "x": 1}])),
            None,
            None,
        )
        .expect_err("unknown key");
        assert!(err.contains("`x`"), "{err}");
        let err = canonical(None, Some(&json!({"type": "file_search"})), None).expect_err("choice");
        assert!(err.contains("tool_choice.type"), "{err}");
        let mut chat = Vec::new();
        let err = push_call(
            &mut chat,
            &json!({"type": "function_call", "call_id": "c", "name": "f", "arguments": "{oops"}),
            "input[0]",
        )
        .expect_err("bad JSON");
        assert!(err.starts_with("input[0].arguments"), "{err}");
    }

    #[test]
    fn call_and_output_items_become_an_assistant_turn_and_tool_messages() {
        let mut chat = vec![ChatMessage::new("user", "weather?")];
        for (id, name) in [("c1", "f"), ("c2", "g")] {
            let item = json!({"type": "function_call", "call_id": id, "name": name,
                              "arguments": "{\"a\": 1}", "id": "fc_1", "status": "completed"});
            push_call(&mut chat, &item, "input[1]").expect("valid");
        }
        assert_eq!(chat.len(), 2);
        assert_eq!(chat[1].tool_calls.len(), 2);
        assert_eq!(chat[1].tool_calls[1].arguments, json!({"a": 1}));
        let item = json!({"type": "function_call_output", "call_id": "c2", "output": "sunny"});
        let message = result_message(&chat, &item, "input[3]").expect("valid");
        assert_eq!(message.role, "tool");
        assert_eq!(message.content, "sunny");
        assert_eq!(message.name.as_deref(), Some("g"));
        assert_eq!(message.tool_call_id.as_deref(), Some("c2"));
    }
}
