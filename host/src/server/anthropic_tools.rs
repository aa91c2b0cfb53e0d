//! Anthropic tool use at the edge: `tools` (`name`, `description`, `input_schema`),
//! `tool_choice` (`auto`, `any`, `tool`, `none`, `disable_parallel_tool_use`), `tool_use`
//! blocks in assistant turns and `tool_result` blocks in user turns, to and from the engine's
//! canonical [`Tools`] / [`ToolCall`]. Errors name the request field.

use crate::engine::{tools::parse::Parsed, ChatMessage, ToolCall, ToolChoice, ToolSpec, Tools};
use serde_json::{json, Map, Value};

/// Keys a tool definition may carry: `cache_control` is a no-op (prefixes are reused
/// automatically), `type` must be absent or `custom` (server tools run at Anthropic).
const TOOL_KEYS: &[&str] = &[
    "name",
    "description",
    "input_schema",
    "type",
    "cache_control",
];

/// The canonical tools of a request; `None` when it defines none.
pub fn tools_of(tools: Option<&[Value]>, choice: Option<&Value>) -> Result<Option<Tools>, String> {
    let specs = tools
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, tool)| spec_of(i, tool))
        .collect::<Result<Vec<_>, _>>()?;
    let (choice, parallel) = match choice {
        None | Some(Value::Null) => (ToolChoice::Auto, true),
        Some(choice) => choice_of(choice)?,
    };
    if specs.is_empty() && choice == ToolChoice::Auto {
        return Ok(None);
    }
    Ok(Some(Tools {
        specs,
        choice,
        parallel,
    }))
}

fn spec_of(index: usize, tool: &Value) -> Result<ToolSpec, String> {
    let field = |name: &str| format!("tools[{index}].{name}");
    let object = tool
        .as_object()
        .ok_or_else(|| format!("tools[{index}] must be an object"))?;
    if let Some(key) = object.keys().find(|k| !TOOL_KEYS.contains(&k.as_str())) {
        return Err(format!("{}: unknown field", field(key)));
    }
    match object.get("type").and_then(Value::as_str) {
        None | Some("custom") => {}
        Some(other) => {
            return Err(format!(
                "{}: server tools ({other:?}) run at Anthropic, not here; define a custom tool",
                field("type")
            ))
        }
    }
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{}: a string is required", field("name")))?;
    let parameters = object
        .get("input_schema")
        .filter(|s| s.is_object())
        .cloned()
        .ok_or_else(|| {
            format!(
                "{}: a JSON schema object is required",
                field("input_schema")
            )
        })?;
    Ok(ToolSpec {
        name: name.to_string(),
        description: object
            .get("description")
            .and_then(Value::as_str)
            .map(String::from),
        parameters,
    })
}

/// `{"type": "auto" | "any" | "none"}` or `{"type": "tool", "name": ...}`, each with an
/// optional `disable_parallel_tool_use`.
fn choice_of(value: &Value) -> Result<(ToolChoice, bool), String> {
    let kind = value.get("type").and_then(Value::as_str);
    let parallel = !value
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let choice = match kind {
        Some("auto") => ToolChoice::Auto,
        Some("any") => ToolChoice::Required,
        Some("none") => ToolChoice::None,
        Some("tool") => ToolChoice::Function(
            value
                .get("name")
                .and_then(Value::as_str)
                .ok_or("tool_choice.name: a `tool` choice names the tool")?
                .to_string(),
        ),
        _ => {
            return Err(format!(
                "tool_choice.type must be \"auto\", \"any\", \"tool\" or \"none\", got {value}"
            ))
        }
    };
    Ok((choice, parallel))
}

/// An assistant turn's `tool_use` block as a call of the history.
pub fn call_of(block: &Value, where_: &str) -> Result<ToolCall, String> {
    let text = |key: &str| {
        block
            .get(key)
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| format!("{where_}.{key}: a string is required"))
    };
    let arguments = match block.get("input") {
        Some(input @ Value::Object(_)) => input.clone(),
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(_) => return Err(format!("{where_}.input must be an object")),
    };
    Ok(ToolCall {
        id: text("id")?,
        name: text("name")?,
        arguments,
    })
}

/// A user turn's `tool_result` block as a `tool` message. `is_error: true` is kept in the
/// text (`Error: ...`), since chat templates have no field for it.
pub fn result_of(block: &Value, where_: &str) -> Result<ChatMessage, String> {
    let id = block
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{where_}.tool_use_id: a string is required"))?;
    let mut content = match block.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(piece))) => text.push_str(piece),
                    _ => {
                        return Err(format!(
                            "{where_}.content[{j}]: only text blocks are supported in a tool result"
                        ))
                    }
                }
            }
            text
        }
        Some(_) => return Err(format!("{where_}.content must be a string or text blocks")),
    };
    if block.get("is_error").and_then(Value::as_bool) == Some(true) {
        content = format!("Error: {content}");
    }
    let mut message = ChatMessage::new("tool", content);
    message.tool_call_id = Some(id.to_string());
    Ok(message)
}

/// The answer as Anthropic content blocks: its text (when there is any), then one
/// `tool_use` block per call.
pub fn content_of(answer: &Parsed) -> Vec<Value> {
    let mut blocks = Vec::new();
    if !answer.content.is_empty() || answer.calls.is_empty() {
        blocks.push(json!({ "type": "text", "text": answer.content }));
    }
    blocks.extend(answer.calls.iter().map(tool_use));
    blocks
}

/// One call as a `tool_use` block (ids `toolu_...`, as Anthropic's).
pub fn tool_use(call: &ToolCall) -> Value {
    json!({ "type": "tool_use", "id": toolu_id(&call.id), "name": call.name, "input": call.arguments })
}

/// Anthropic's id style for a call the server parsed (`call_<hex>` -> `toolu_<hex>`).
fn toolu_id(id: &str) -> String {
    match id.strip_prefix("call_") {
        Some(rest) => format!("toolu_{rest}"),
        None => id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_and_choices_become_canonical() {
        let tools = [json!({"name": "get_weather", "description": "Weather",
                            "input_schema": {"type": "object", "properties": {}}})];
        let any = json!({"type": "any", "disable_parallel_tool_use": true});
        let canonical = tools_of(Some(&tools), Some(&any))
            .expect("valid")
            .expect("some tools");
        assert_eq!(canonical.choice, ToolChoice::Required);
        assert!(!canonical.parallel);
        assert_eq!(canonical.specs[0].name, "get_weather");
        let named = json!({"type": "tool", "name": "get_weather"});
        let (choice, parallel) = choice_of(&named).expect("valid");
        assert_eq!(choice, ToolChoice::Function("get_weather".into()));
        assert!(parallel);
        assert_eq!(tools_of(None, None), Ok(None));
    }

    #[test]
    fn bad_tools_are_named() {
        let err = tools_of(Some(&[json!({"name": "f"})]), None).expect_err("no schema");
        assert!(err.contains("tools[0].input_schema"), "{err}");
        let server = json!({"type": "web_search_20250305", "name": "web_search"});
        let err = tools_of(Some(&[server]), None).expect_err("server tool");
        assert!(err.contains("tools[0].type"), "{err}");
        let err = choice_of(&json!({"type": "maybe"})).expect_err("bad choice");
        assert!(err.contains("tool_choice.type"), "{err}");
    }

    #[test]
    fn history_blocks_become_calls_and_tool_messages() {
        let call = call_of(
            &json!({"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}),
            "messages[1].content[0]",
        )
        .expect("valid");
        assert_eq!((call.id.as_str(), call.name.as_str()), ("toolu_1", "f"));
        assert_eq!(call.arguments, json!({"a": 1}));
        let result = result_of(
            &json!({"type": "tool_result", "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "sunny"}], "is_error": true}),
            "messages[2].content[0]",
        )
        .expect("valid");
        assert_eq!(result.role, "tool");
        assert_eq!(result.content, "Error: sunny");
        assert_eq!(result.tool_call_id.as_deref(), Some("toolu_1"));
    }

    #[test]
    fn answers_become_text_and_tool_use_blocks() {
        let call = ToolCall {
            id: "call_ab".into(),
            name: "f".into(),
            arguments: json!({"x": 2}),
        };
        let blocks = content_of(&Parsed {
            content: String::new(),
            calls: vec![call],
        });
        assert_eq!(
            blocks,
            [json!({"type": "tool_use", "id": "toolu_ab", "name": "f", "input": {"x": 2}})]
        );
    }
}
