//! Messages and tools as a chat template sees them.
//!
//! A template that knows tools (its source mentions `tools`) gets what transformers passes:
//! `tools` as OpenAI-shaped `[{"type": "function", "function": {...}}]` and assistant
//! messages with `tool_calls: [{"id", "type": "function", "function": {"name",
//! "arguments": <object>}}]`, `tool` messages with `tool_call_id` (and `name`).
//!
//! Any other template (and the ChatML fallback) gets the generic Hermes form, which most
//! instruction-tuned models follow: the tool list and the expected
//! `<tool_call>{"name": ..., "arguments": ...}</tool_call>` form in the system message
//! ([`generic_instruction`]), earlier calls written into the assistant's text the same way,
//! and tool results as a user turn of `<tool_response>` blocks.

use super::{ToolCall, ToolSpec};
use crate::engine::ChatMessage;
use serde_json::{json, Value};

/// Does this template render tools itself?
pub fn template_knows_tools(source: &str) -> bool {
    source.contains("tools")
}

/// The `messages` a tool-aware template gets.
pub fn template_messages(messages: &[ChatMessage]) -> Vec<Value> {
    messages.iter().map(template_message).collect()
}

fn template_message(message: &ChatMessage) -> Value {
    let mut value = json!({ "role": message.role, "content": message.content });
    if !message.tool_calls.is_empty() {
        let calls: Vec<Value> = message.tool_calls.iter().map(call_json).collect();
        value["tool_calls"] = Value::Array(calls);
    }
    if let Some(id) = &message.tool_call_id {
        value["tool_call_id"] = json!(id);
    }
    if let Some(name) = &message.name {
        value["name"] = json!(name);
    }
    value
}

fn call_json(call: &ToolCall) -> Value {
    json!({
        "id": call.id,
        "type": "function",
        "function": { "name": call.name, "arguments": call.arguments },
    })
}

/// The `tools` a tool-aware template gets.
pub fn template_tools(tools: &[ToolSpec]) -> Vec<Value> {
    tools.iter().map(ToolSpec::openai_json).collect()
}

/// The system instruction for templates that do not render tools (Hermes' wording).
pub fn generic_instruction(tools: &[ToolSpec]) -> String {
    let mut text = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools {
        text.push('\n');
        text.push_str(&tool.openai_json().to_string());
    }
    text.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    text
}

/// The conversation in the generic form, for a template that does not render tools:
/// the instruction joins (or becomes) the system message, calls become text, and each run
/// of tool results becomes one user turn.
pub fn generic_messages(messages: &[ChatMessage], tools: Option<&[ToolSpec]>) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    for message in messages {
        if message.role == "tool" {
            let block = format!("<tool_response>\n{}\n</tool_response>", message.content);
            match out.last_mut() {
                Some(last) if last.role == "user" && last.content.ends_with("</tool_response>") => {
                    last.content.push('\n');
                    last.content.push_str(&block);
                }
                _ => out.push(ChatMessage::new("user", block)),
            }
            continue;
        }
        let mut plain = ChatMessage::new(message.role.clone(), message.content.clone());
        for call in &message.tool_calls {
            let body = json!({ "name": call.name, "arguments": call.arguments });
            if !plain.content.is_empty() {
                plain.content.push('\n');
            }
            plain.content.push_str(&format!("<tool_call>\n{body}\n</tool_call>"));
        }
        out.push(plain);
    }
    if let Some(tools) = tools.filter(|t| !t.is_empty()) {
        let instruction = generic_instruction(tools);
        match out.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{instruction}", first.content);
            }
            _ => out.insert(0, ChatMessage::new("system", instruction)),
        }
    }
    out
}
