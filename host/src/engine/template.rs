//! Chat templates, rendered by the host so every backend formats chats the same way.
//!
//! The template comes from the model: `chat_template` in a Hugging Face folder's
//! tokenizer_config.json, or `tokenizer.chat_template` in a GGUF (the backend reports it in
//! [`crate::plugins::ModelMetadata::chat_template`]). It is rendered with minijinja plus
//! Python string methods (`.strip()`, `.startswith()`, ...), with the variables transformers
//! passes: `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, and a
//! `raise_exception(msg)` function.
//!
//! Fallback: a model without a template is prompted with ChatML
//! (`<|im_start|>role\ncontent<|im_end|>\n` ... `<|im_start|>assistant\n`), and `<|im_end|>`
//! becomes a stop sequence, so the answer ends where ChatML would end it.

use super::tools::{prompt as tool_prompt, ToolCall, ToolSpec};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// The text (empty for an assistant message that only calls tools).
    pub content: String,
    /// An assistant message's calls (see [`crate::engine::tools`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` message: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A `tool` message: the function's name (some templates and APIs use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }
}

/// The fallback template (ChatML).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
/// The stop sequence that goes with the fallback template.
pub const CHATML_STOP: &str = "<|im_end|>";

const NAME: &str = "chat";

/// A compiled chat template with the model's special-token texts.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    is_fallback: bool,
    /// Stop sequences the template implies (its end-of-turn marker, for built-ins).
    stops: Vec<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("is_fallback", &self.is_fallback)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; the error says where the syntax is wrong.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, String> {
        Self::build(source, bos_token, eos_token, false, Vec::new())
    }

    /// Compiles `source`, whose answers end at any of `stops` (a built-in template's
    /// end-of-turn marker, see [`super::template_override`]).
    pub fn with_stops(
        source: &str,
        bos_token: &str,
        eos_token: &str,
        stops: Vec<String>,
    ) -> Result<Self, String> {
        Self::build(source, bos_token, eos_token, false, stops)
    }

    /// The ChatML fallback.
    pub fn fallback(bos_token: &str, eos_token: &str) -> Self {
        let stops = vec![CHATML_STOP.to_string()];
        Self::build(CHATML_TEMPLATE, bos_token, eos_token, true, stops)
            .unwrap_or_else(|err| unreachable!("the built-in template compiles: {err}"))
    }

    fn build(
        source: &str,
        bos: &str,
        eos: &str,
        is_fallback: bool,
        stops: Vec<String>,
    ) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", super::tools::tojson::tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|err| err.to_string())?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos.to_string(),
            eos_token: eos.to_string(),
            is_fallback,
            stops,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_fallback(&self) -> bool {
        self.is_fallback
    }

    /// Stop sequences this template implies (ChatML's end marker for the fallback).
    pub fn stop_sequences(&self) -> Vec<String> {
        self.stops.clone()
    }

    /// Renders the conversation, ending with the assistant's turn opened when
    /// `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// Renders the conversation with the tools the model may call: the model's own template
    /// gets `tools` and the calls as transformers passes them when it renders tools itself;
    /// otherwise the generic instruction and call form of [`tool_prompt`] are used.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[ToolSpec]>,
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let template = self.env.get_template(NAME).map_err(|err| err.to_string())?;
        let knows_tools = !self.is_fallback && tool_prompt::template_knows_tools(&self.source);
        let (messages, tools) = if knows_tools {
            let tools = tools.map(tool_prompt::template_tools);
            (tool_prompt::template_messages(messages), tools)
        } else {
            let generic = tool_prompt::generic_messages(messages, tools);
            (tool_prompt::template_messages(&generic), None)
        };
        let base = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        // Templates test `tools is defined`: without tools the variable is left undefined.
        let context = match tools {
            Some(tools) => minijinja::context! { tools => tools, ..base },
            None => base,
        };
        template.render(context).map_err(|err| describe(&err))
    }
}

fn describe(err: &minijinja::Error) -> String {
    match err.kind() {
        ErrorKind::InvalidOperation => err.detail().unwrap_or("invalid operation").to_string(),
        _ => err.to_string(),
    }
}

/// `raise_exception("...")` in templates (e.g. "roles must alternate").
fn raise_exception(message: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`, which some templates use for today's date.
fn strftime_now(format: String) -> String {
    chrono::Local::now().format(&format).to_string()
}

/// The template, BOS and EOS texts a Hugging Face folder's tokenizer_config.json holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerConfig {
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

/// Reads `dir/tokenizer_config.json` (absent or unreadable: all `None`).
pub fn read_tokenizer_config(dir: &Path) -> TokenizerConfig {
    let Ok(text) = std::fs::read_to_string(dir.join("tokenizer_config.json")) else {
        return TokenizerConfig::default();
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        tracing::warn!("{}/tokenizer_config.json is not valid JSON", dir.display());
        return TokenizerConfig::default();
    };
    TokenizerConfig {
        chat_template: template_of(json.get("chat_template")),
        bos_token: token_text(json.get("bos_token")),
        eos_token: token_text(json.get("eos_token")),
    }
}

/// `chat_template` is a string, or a list of `{name, template}` of which `default` is used.
fn template_of(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => {
            let named = |name: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
            };
            named("default")
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string)
        }
        _ => None,
    }
}

/// A special token is a string or `{"content": "..."}`.
fn token_text(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => other.get("content")?.as_str().map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
        ]
    }

    #[test]
    fn fallback_is_chatml() {
        let t = ChatTemplate::fallback("<s>", "</s>");
        let text = t.render(&chat(), true).expect("renders");
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(t.stop_sequences(), vec![CHATML_STOP.to_string()]);
    }

    #[test]
    fn renders_a_llama_style_template_with_python_methods() {
        let source = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'].strip() }} [/INST]{% elif m['role'] == 'system' %}<<SYS>>{{ m['content'] | trim }}<</SYS>>{% endif %}{% endfor %}";
        let t = ChatTemplate::new(source, "<s>", "</s>").expect("compiles");
        let messages = vec![
            ChatMessage::new("system", " Be brief. "),
            ChatMessage::new("user", "  Hi  "),
        ];
        assert_eq!(
            t.render(&messages, true).expect("renders"),
            "<s><<SYS>>Be brief.<</SYS>>[INST] Hi [/INST]"
        );
        assert!(t.stop_sequences().is_empty());
    }

    #[test]
    fn raise_exception_reports_the_templates_message() {
        let source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}";
        let t = ChatTemplate::new(source, "", "").expect("compiles");
        let err = t.render(&chat(), true).expect_err("raises");
        assert!(err.contains("Conversation must start with user"), "{err}");
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }

    #[test]
    fn reads_tokenizer_config_forms() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"chat_template":[{"name":"tool_use","template":"T"},{"name":"default","template":"D"}],
                "bos_token":{"content":"<s>"},"eos_token":"</s>"}"#,
        )
        .expect("write");
        let config = read_tokenizer_config(dir.path());
        assert_eq!(config.chat_template.as_deref(), Some("D"));
        assert_eq!(config.bos_token.as_deref(), Some("<s>"));
        assert_eq!(config.eos_token.as_deref(), Some("</s>"));
    }
}
