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
            plain
                .content
                .push_str(&format!("<tool_call>\n{body}\n</tool_call>"));
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

/// The real templates of tool-calling model families, rendered with tools and a
/// multi-turn conversation (a call, its result). Template texts: Qwen2.5-Instruct's
/// tokenizer_config.json (Hermes style), and llama.cpp's models/templates copies of
/// Llama-3.2-3B-Instruct and Mistral-Nemo-Instruct-2407.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ChatTemplate, ToolCall};

    const QWEN: &str = include_str!("templates/qwen2.5.jinja");
    const LLAMA: &str = include_str!("templates/llama-3.2.jinja");
    const MISTRAL: &str = include_str!("templates/mistral-nemo.jinja");

    fn weather() -> ToolSpec {
        ToolSpec {
            name: "get_weather".into(),
            description: Some("The weather in a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        }
    }

    /// user asks, assistant calls (id `abcdef123`: Mistral wants 9 characters), tool answers.
    fn conversation() -> Vec<ChatMessage> {
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = vec![ToolCall {
            id: "abcdef123".into(),
            name: "get_weather".into(),
            arguments: json!({"city": "Paris"}),
        }];
        let mut result = ChatMessage::new("tool", "{\"sky\": \"clear\"}");
        result.tool_call_id = Some("abcdef123".into());
        result.name = Some("get_weather".into());
        vec![ChatMessage::new("user", "Weather in Paris?"), call, result]
    }

    fn render(source: &str, messages: &[ChatMessage]) -> String {
        let template = ChatTemplate::new(source, "<s>", "</s>").expect("compiles");
        let tools = [weather()];
        template
            .render_with_tools(messages, Some(&tools), true)
            .unwrap_or_else(|err| panic!("renders: {err}"))
    }

    #[test]
    fn qwen_renders_tools_calls_and_results_in_its_own_form() {
        let text = render(QWEN, &conversation());
        assert!(text.contains("# Tools"), "{text}");
        assert!(
            text.contains("\"name\": \"get_weather\"") && text.contains("The weather in a city"),
            "{text}"
        );
        assert!(text.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"), "{text}");
        assert!(text.contains("<|im_start|>user\n<tool_response>\n{\"sky\": \"clear\"}\n</tool_response><|im_end|>"), "{text}");
        assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
    }

    #[test]
    fn llama_renders_tools_calls_and_results_in_its_own_form() {
        let text = render(LLAMA, &conversation());
        assert!(
            text.starts_with(
                "<s><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython"
            ),
            "{text}"
        );
        assert!(
            text.contains("\"get_weather\"") && text.contains("Weather in Paris?"),
            "{text}"
        );
        assert!(
            text.contains(
                "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}<|eot_id|>"
            ),
            "{text}"
        );
        // A string `is iterable` in Jinja too, so transformers also writes the result as a
        // JSON string here.
        assert!(text.contains("<|start_header_id|>ipython<|end_header_id|>\n\n\"{\\\"sky\\\": \\\"clear\\\"}\"<|eot_id|>"), "{text}");
    }

    #[test]
    fn mistral_renders_tools_calls_and_results_in_its_own_form() {
        let text = render(MISTRAL, &conversation());
        assert!(
            text.contains("[AVAILABLE_TOOLS][{\"type\": \"function\", \"function\": {"),
            "{text}"
        );
        assert!(text.contains("\"name\": \"get_weather\""), "{text}");
        // Keys come sorted (serde_json maps); transformers keeps the dict's order.
        assert!(text.contains("[TOOL_CALLS][{\"arguments\": {\"city\": \"Paris\"}, \"name\": \"get_weather\", \"id\": \"abcdef123\"}]</s>"), "{text}");
        assert!(text.contains("[TOOL_RESULTS]{\"content\": {\"sky\": \"clear\"}, \"call_id\": \"abcdef123\"}[/TOOL_RESULTS]"), "{text}");
    }

    #[test]
    fn a_template_without_tools_gets_the_generic_hermes_form() {
        let plain = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}";
        let text = render(plain, &conversation());
        assert!(text.starts_with("[system] # Tools"), "{text}");
        assert!(
            text.contains("<tools>\n{\"function\":{")
                || text.contains("<tools>\n{\"type\":\"function\""),
            "{text}"
        );
        assert!(text.contains("[assistant] <tool_call>\n{\"arguments\":{\"city\":\"Paris\"},\"name\":\"get_weather\"}\n</tool_call>")
            || text.contains("[assistant] <tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call>"), "{text}");
        assert!(
            text.contains("[user] <tool_response>\n{\"sky\": \"clear\"}\n</tool_response>"),
            "{text}"
        );
        let fallback = ChatTemplate::fallback("", "");
        let text = fallback
            .render_with_tools(&conversation(), Some(&[weather()]), true)
            .expect("renders");
        assert!(text.starts_with("<|im_start|>system\n# Tools"), "{text}");
        assert!(text.contains("<|im_start|>user\n<tool_response>"), "{text}");
    }

    #[test]
    fn without_tools_a_tool_aware_template_renders_as_before() {
        let messages = [ChatMessage::new("user", "Hi")];
        let template = ChatTemplate::new(QWEN, "", "").expect("compiles");
        let text = template.render(&messages, true).expect("renders");
        assert!(!text.contains("# Tools"), "{text}");
        assert!(text.contains("<|im_start|>user\nHi<|im_end|>"), "{text}");
    }
}
