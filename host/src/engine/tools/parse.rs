//! The model's text as tool calls, for the formats models are trained on:
//!
//! - Hermes / Qwen: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block
//!   per call (several = parallel calls); text around the blocks stays content;
//! - Llama 3.x: `{"name": ..., "parameters": {...}}`, possibly after `<|python_tag|>`,
//!   several separated by `;`;
//! - Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`;
//! - generic: the whole answer is a JSON call object or a list of them (what a forced call
//!   produces, and what the formats above leave when the backend drops their special tokens).
//!
//! A call names a function of the request's tools; `arguments` may be an object or a string
//! holding one. Anything else is not a call: the text stays content, unchanged.

use super::{ToolCall, ToolSpec};
use serde_json::Value;

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const LLAMA_TAG: &str = "<|python_tag|>";
const MISTRAL_TAG: &str = "[TOOL_CALLS]";

/// The answer split into plain content and calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<ToolCall>,
}

/// Parses `text` for calls of `tools`; with none found, all of it is content.
pub fn parse(text: &str, tools: &[ToolSpec]) -> Parsed {
    let known = |name: &str| tools.iter().any(|t| t.name == name);
    let found = hermes(text)
        .or_else(|| tagged(text, MISTRAL_TAG))
        .or_else(|| tagged(text, LLAMA_TAG))
        .or_else(|| bare(text).map(|calls| (String::new(), calls)));
    match found {
        Some((content, calls)) if !calls.is_empty() && calls.iter().all(|c| known(&c.name)) => {
            Parsed { content, calls }
        }
        _ => Parsed {
            content: text.to_string(),
            calls: Vec::new(),
        },
    }
}

/// Could `text` (the start of an answer) still become a call? `false` once it clearly is
/// prose, so a stream can stop holding it back.
pub fn may_be_call(text: &str) -> bool {
    let start = text.trim_start();
    if text.contains(HERMES_OPEN) || text.contains(MISTRAL_TAG) || text.contains(LLAMA_TAG) {
        return true;
    }
    start.is_empty()
        || start.starts_with(['{', '['])
        || start.starts_with("```")
        || [HERMES_OPEN, MISTRAL_TAG, LLAMA_TAG, "```"]
            .iter()
            .any(|marker| marker.starts_with(start))
}

/// `<tool_call>` blocks; the last may be unterminated (the answer ended inside it).
fn hermes(text: &str) -> Option<(String, Vec<ToolCall>)> {
    let mut rest = text;
    let mut content = String::new();
    let mut calls = Vec::new();
    while let Some(start) = rest.find(HERMES_OPEN) {
        content.push_str(&rest[..start]);
        let body = &rest[start + HERMES_OPEN.len()..];
        let (inner, after) = match body.find(HERMES_CLOSE) {
            Some(end) => (&body[..end], &body[end + HERMES_CLOSE.len()..]),
            None => (body, ""),
        };
        calls.extend(json_calls(inner)?);
        rest = after;
    }
    content.push_str(rest);
    (!calls.is_empty()).then(|| (content.trim().to_string(), calls))
}

/// A marker followed by JSON calls (Mistral's list, Llama's `;`-separated objects); text
/// before the marker stays content.
fn tagged(text: &str, tag: &str) -> Option<(String, Vec<ToolCall>)> {
    let (before, after) = text.split_once(tag)?;
    let calls = json_calls(after)?;
    Some((before.trim().to_string(), calls))
}

/// The whole answer as JSON calls (also inside one Markdown code fence).
fn bare(text: &str) -> Option<Vec<ToolCall>> {
    let trimmed = text.trim();
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|t| t.strip_suffix("```"))
        .unwrap_or(trimmed);
    json_calls(unfenced)
}

/// One or more JSON values, each a call or a list of calls, separated by whitespace or `;`,
/// and nothing else.
fn json_calls(text: &str) -> Option<Vec<ToolCall>> {
    let mut calls = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let value = values.next()?.ok()?;
        rest = rest[values.byte_offset()..].trim_start();
        rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
        match value {
            Value::Array(list) => {
                for item in list {
                    calls.push(call_of(item)?);
                }
            }
            other => calls.push(call_of(other)?),
        }
    }
    (!calls.is_empty()).then_some(calls)
}

/// `{"name", "arguments" | "parameters"}`, also nested as `{"function": {...}}`.
fn call_of(value: Value) -> Option<ToolCall> {
    let Value::Object(mut map) = value else {
        return None;
    };
    if let Some(function @ Value::Object(_)) = map.remove("function") {
        return call_of(function);
    }
    let name = match map.remove("name")? {
        Value::String(name) => name,
        _ => return None,
    };
    let arguments = match map.remove("arguments").or_else(|| map.remove("parameters")) {
        None => Value::Object(Default::default()),
        Some(Value::String(text)) => match serde_json::from_str(&text).ok()? {
            object @ Value::Object(_) => object,
            _ => return None,
        },
        Some(object @ Value::Object(_)) => object,
        Some(_) => return None,
    };
    Some(ToolCall::new(name, arguments))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<ToolSpec> {
        ["get_weather", "get_time"]
            .iter()
            .map(|name| ToolSpec {
                name: name.to_string(),
                description: None,
                parameters: json!({"type": "object"}),
            })
            .collect()
    }

    fn calls(parsed: &Parsed) -> Vec<(String, Value)> {
        parsed
            .calls
            .iter()
            .map(|c| (c.name.clone(), c.arguments.clone()))
            .collect()
    }

    #[test]
    fn hermes_blocks_are_calls_and_the_text_around_them_is_content() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}\n</tool_call>";
        let parsed = parse(text, &tools());
        assert_eq!(parsed.content, "Let me check.");
        assert_eq!(
            calls(&parsed),
            vec![
                ("get_weather".to_string(), json!({"city": "Paris"})),
                ("get_time".to_string(), json!({"zone": "CET"})),
            ]
        );
        assert!(parsed.calls.iter().all(|c| c.id.starts_with("call_")));
        assert_ne!(parsed.calls[0].id, parsed.calls[1].id);
    }

    #[test]
    fn an_unterminated_hermes_block_at_the_end_still_parses() {
        let parsed = parse(
            "<tool_call>{\"name\": \"get_time\", \"arguments\": {}}",
            &tools(),
        );
        assert_eq!(calls(&parsed), vec![("get_time".to_string(), json!({}))]);
    }

    #[test]
    fn llama_json_with_and_without_the_python_tag() {
        for text in [
            "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}",
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}",
        ] {
            let parsed = parse(text, &tools());
            assert_eq!(parsed.content, "");
            assert_eq!(
                calls(&parsed),
                vec![("get_weather".to_string(), json!({"city": "Rome"}))]
            );
        }
        let two = "{\"name\": \"get_weather\", \"parameters\": {}}; {\"name\": \"get_time\", \"parameters\": {}}";
        assert_eq!(parse(two, &tools()).calls.len(), 2);
    }

    #[test]
    fn mistral_tool_calls_list() {
        let text = "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}, \"id\": \"abcdefghi\"}, {\"name\": \"get_time\", \"arguments\": {}}]";
        let parsed = parse(text, &tools());
        assert_eq!(
            calls(&parsed),
            vec![
                ("get_weather".to_string(), json!({"city": "Oslo"})),
                ("get_time".to_string(), json!({})),
            ]
        );
    }

    #[test]
    fn generic_json_fallback_with_string_arguments_and_code_fences() {
        let forced = "{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}";
        assert_eq!(parse(forced, &tools()).calls.len(), 1);
        let stringly = "{\"name\": \"get_time\", \"arguments\": \"{\\\"zone\\\": \\\"UTC\\\"}\"}";
        assert_eq!(
            calls(&parse(stringly, &tools())),
            vec![("get_time".to_string(), json!({"zone": "UTC"}))]
        );
        let fenced = "```json\n{\"name\": \"get_time\", \"arguments\": {}}\n```";
        assert_eq!(parse(fenced, &tools()).calls.len(), 1);
        let nested =
            "[{\"type\": \"function\", \"function\": {\"name\": \"get_time\", \"arguments\": {}}}]";
        assert_eq!(parse(nested, &tools()).calls.len(), 1);
    }

    #[test]
    fn prose_json_answers_and_unknown_functions_stay_content() {
        for text in [
            "The weather in Paris is sunny.",
            "{\"answer\": 42}",
            "{\"name\": \"delete_everything\", \"arguments\": {}}",
            "<tool_call>not json</tool_call>",
            "{\"name\": \"get_time\", \"arguments\": {}} and then some prose",
            "{\"name\": \"get_time\", \"arguments\": [1, 2]}",
        ] {
            let parsed = parse(text, &tools());
            assert!(parsed.calls.is_empty(), "{text}");
            assert_eq!(parsed.content, text);
        }
    }

    #[test]
    fn may_be_call_holds_back_only_what_could_start_a_call() {
        for start in [
            "",
            "  ",
            "{\"na",
            "[",
            "<tool",
            "<|python",
            "[TOOL",
            "```",
            "ok <tool_call>",
        ] {
            assert!(may_be_call(start), "{start:?}");
        }
        for prose in ["Hello", "The weather", "<b>", "Sure: {"] {
            assert!(!may_be_call(prose), "{prose:?}");
        }
    }
}
