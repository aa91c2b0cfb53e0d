//! Anthropic's Messages API: `POST /v1/messages` (one JSON answer, or SSE with Anthropic's
//! event names) and `POST /v1/messages/count_tokens`, translated to the engine's chat prompt
//! and [`Params`]. Errors take Anthropic's shape through [`Flavor::Anthropic`] (chosen by
//! path). Fields this server cannot honour are a 400 naming them; a few are documented
//! no-ops (README, "Anthropic Messages").

use super::{anthropic_tools, tools};
use super::{
    error::{ApiError, Flavor},
    events,
    extract::JsonBody,
    guard::Mutation,
    params::{new_id, Params},
    streaming::{self, Framer, Slotted, SLOT},
    AppState,
};
use crate::engine::{
    tools::stream::CallBuffer, ChatMessage, Completion, Constraint, EngineError, FinishReason,
    Prompt, Tools,
};
use axum::{
    extract::State,
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// The body of `POST /v1/messages`. Unknown fields are refused by name (serde's message).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesRequest {
    model: String,
    /// Required, as Anthropic requires it; checked by hand for a message naming it.
    max_tokens: Option<i64>,
    messages: Vec<InMessage>,
    system: Option<System>,
    stop_sequences: Option<Vec<String>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    #[serde(default)]
    stream: bool,
    /// `{type: "json_schema", schema}` (structured output) is honoured.
    output_config: Option<OutputConfig>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    thinking: Option<Value>,
    /// Documented no-ops: `metadata.user_id` is for Anthropic's abuse tracking, the service
    /// tier and prompt-cache markers have nothing to choose here (prompt prefixes are
    /// reused automatically).
    #[allow(dead_code)]
    metadata: Option<Value>,
    #[allow(dead_code)]
    service_tier: Option<Value>,
    #[allow(dead_code)]
    cache_control: Option<Value>,
}

/// The body of `POST /v1/messages/count_tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountRequest {
    model: String,
    messages: Vec<InMessage>,
    system: Option<System>,
    output_config: Option<OutputConfig>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    thinking: Option<Value>,
    #[allow(dead_code)]
    cache_control: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InMessage {
    role: String,
    content: Content,
}

/// A message's content, or the system prompt: a string or content blocks.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<Value>),
}

type System = Content;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputConfig {
    format: Option<Value>,
    effort: Option<Value>,
}

/// The request's tools (canonical), and a refusal of reasoning, which this server has not.
fn tools_and_thinking(
    tools: Option<&[Value]>,
    tool_choice: Option<&Value>,
    thinking: Option<&Value>,
) -> Result<Option<Tools>, ApiError> {
    let tools = anthropic_tools::tools_of(tools, tool_choice).map_err(bad)?;
    let thinking_kind = thinking.and_then(|t| t.get("type")).and_then(Value::as_str);
    if thinking.is_some_and(|t| !t.is_null()) && thinking_kind != Some("disabled") {
        return Err(bad(
            "thinking: extended thinking is not supported by this server; leave it out or \
             send {\"type\": \"disabled\"}",
        ));
    }
    Ok(tools)
}

/// `output_config.format` as a constraint; `effort` is refused (no reasoning here).
fn constraint_of(config: Option<&OutputConfig>) -> Result<Option<Constraint>, ApiError> {
    let Some(config) = config else {
        return Ok(None);
    };
    if config.effort.as_ref().is_some_and(|e| !e.is_null()) {
        return Err(bad(
            "output_config.effort is not supported by this server (no extended thinking)",
        ));
    }
    let Some(format) = config.format.as_ref().filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            let schema = format
                .get("schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| bad("output_config.format.schema must be a JSON schema object"))?;
            Ok(Some(Constraint::JsonSchema(schema.to_string())))
        }
        other => Err(bad(format!(
            "output_config.format.type must be \"json_schema\", got {other:?}"
        ))),
    }
}

/// The chat prompt: the system prompt first, then the turns: text blocks, an assistant's
/// `tool_use` blocks as its calls, a user's `tool_result` blocks as `tool` messages (before
/// the user's own text).
fn prompt_of(system: Option<System>, messages: Vec<InMessage>) -> Result<Prompt, ApiError> {
    if messages.is_empty() {
        return Err(bad("messages: at least one message is required"));
    }
    let mut chat = Vec::with_capacity(messages.len() + 1);
    if let Some(system) = system {
        chat.push(ChatMessage::new("system", text_of(system, "system")?));
    }
    let last = messages.len() - 1;
    for (i, message) in messages.into_iter().enumerate() {
        if !matches!(message.role.as_str(), "user" | "assistant") {
            return Err(bad(format!(
                "messages[{i}].role must be \"user\" or \"assistant\", got {:?} (the system \
                 prompt goes in the top-level `system` field)",
                message.role
            )));
        }
        if i == last && message.role == "assistant" {
            // The chat template starts a new assistant turn; continuing this one would need
            // the template to leave it open, which templates do not promise.
            return Err(bad(
                "messages: a final assistant message (prefilling the answer) is not supported; \
                 end with a user message",
            ));
        }
        chat.extend(turn_of(message, &format!("messages[{i}].content"))?);
    }
    Ok(Prompt::Chat(chat))
}

/// One turn as chat messages (several when a user turn carries tool results).
fn turn_of(message: InMessage, where_: &str) -> Result<Vec<ChatMessage>, ApiError> {
    let blocks = match message.content {
        Content::Text(text) => return Ok(vec![ChatMessage::new(message.role, text)]),
        Content::Blocks(blocks) => blocks,
    };
    let assistant = message.role == "assistant";
    let (mut text, mut calls, mut results) = (String::new(), Vec::new(), Vec::new());
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{where_}[{j}]");
        match block.get("type").and_then(Value::as_str) {
            Some("tool_use") if assistant => {
                calls.push(anthropic_tools::call_of(block, &at).map_err(bad)?)
            }
            Some("tool_result") if !assistant => {
                results.push(anthropic_tools::result_of(block, &at).map_err(bad)?)
            }
            Some(kind @ ("tool_use" | "tool_result")) => {
                return Err(bad(format!(
                    "{at}: a {kind} block belongs in {} turn",
                    if kind == "tool_use" {
                        "an assistant"
                    } else {
                        "a user"
                    }
                )))
            }
            _ => text.push_str(block_text(block, &at)?),
        }
    }
    let mut turn = results;
    if !text.is_empty() || !calls.is_empty() || turn.is_empty() {
        let mut own = ChatMessage::new(message.role, text);
        own.tool_calls = calls;
        turn.push(own);
    }
    Ok(turn)
}

/// The text of a content: a string, or text blocks joined (`where_` names it in errors).
fn text_of(content: Content, where_: &str) -> Result<String, ApiError> {
    let blocks = match content {
        Content::Text(text) => return Ok(text),
        Content::Blocks(blocks) => blocks,
    };
    let mut text = String::new();
    for (j, block) in blocks.iter().enumerate() {
        text.push_str(block_text(block, &format!("{where_}[{j}]"))?);
    }
    Ok(text)
}

/// Keys a text block may carry: `cache_control` is a no-op, `citations` only when empty.
const TEXT_BLOCK_KEYS: &[&str] = &["type", "text", "cache_control", "citations"];

fn block_text<'a>(block: &'a Value, where_: &str) -> Result<&'a str, ApiError> {
    let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" => {}
        "image" | "document" => {
            return Err(bad(format!(
                "{where_}: {kind} content blocks are not supported by this server (text only)"
            )))
        }
        "server_tool_use" => {
            return Err(bad(format!(
                "{where_}: server_tool_use blocks: server tools run at Anthropic, not here"
            )))
        }
        "" => return Err(bad(format!("{where_}: a content block needs a `type`"))),
        other => {
            return Err(bad(format!(
                "{where_}: content blocks of type {other:?} are not supported (text only)"
            )))
        }
    }
    let mut keys = block.as_object().into_iter().flat_map(|o| o.keys());
    if let Some(key) = keys.find(|key| !TEXT_BLOCK_KEYS.contains(&key.as_str())) {
        return Err(bad(format!(
            "{where_}: unknown field `{key}` in a text block"
        )));
    }
    let citations = block.get("citations");
    if citations.is_some_and(|c| !c.is_null() && c.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(bad(format!("{where_}.citations are not supported")));
    }
    block
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{where_}: a text block needs a string `text`")))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message).flavor(Flavor::Anthropic)
}

fn engine_error(err: EngineError) -> ApiError {
    ApiError::engine(&err, Flavor::Anthropic)
}

impl MessagesRequest {
    fn params(&self) -> Result<Params, ApiError> {
        let max_tokens = self
            .max_tokens
            .ok_or_else(|| bad("max_tokens: the field is required"))?;
        Ok(Params {
            max_tokens: Some(max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            stop: self.stop_sequences.clone().unwrap_or_default(),
            constraint: constraint_of(self.output_config.as_ref())?,
            ..Params::default()
        })
    }
}

/// Anthropic's `stop_reason`: `stop_sequence` only for one of the request's own stops (a
/// chat template's end marker is the model ending its turn).
fn stop_reason(
    done: &Completion,
    stops: &[String],
    called: bool,
) -> (&'static str, Option<String>) {
    if called {
        return ("tool_use", None);
    }
    match done.finish_reason {
        FinishReason::Length => ("max_tokens", None),
        FinishReason::ContextFull => ("model_context_window_exceeded", None),
        FinishReason::Stop => match &done.stop_sequence {
            Some(stop) if stops.contains(stop) => ("stop_sequence", Some(stop.clone())),
            _ => ("end_turn", None),
        },
    }
}

/// Usage as Anthropic counts it: `input_tokens` are those not read from the prompt cache.
fn usage(done: &Completion) -> Value {
    json!({
        "input_tokens": done.prompt_tokens - done.cached_tokens.min(done.prompt_tokens),
        "cache_read_input_tokens": done.cached_tokens,
        "cache_creation_input_tokens": 0,
        "output_tokens": done.completion_tokens,
    })
}

/// `POST /v1/messages`
pub async fn messages(
    State(state): State<AppState>,
    mutation: Mutation,
    JsonBody(request): JsonBody<MessagesRequest>,
) -> Result<Response, ApiError> {
    let tools = tools_and_thinking(
        request.tools.as_deref(),
        request.tool_choice.as_ref(),
        request.thinking.as_ref(),
    )?;
    mutation.allow_downloads(&state, &request.model, None, Flavor::Anthropic)?;
    let mut config = request
        .params()?
        .into_config(state.settings.max_tokens_cap, "max_tokens")
        .map_err(|e| e.flavor(Flavor::Anthropic))?;
    config.tools = tools.clone();
    let stops = config.stop.clone();
    let prompt = prompt_of(request.system, request.messages)?;
    let tokens = state
        .engine
        .generate(&request.model, prompt, config)
        .await
        .map_err(engine_error)?;
    let id = new_id("msg");
    if request.stream {
        let framer = MessageFramer {
            id,
            model: request.model,
            stops,
            input_tokens: tokens.prompt_tokens,
            delta: None,
            calls: tools::call_buffer(tools.as_ref()),
        };
        return Ok(events::response(streaming::body(tokens, framer)));
    }
    let (text, done) = tokens.collect_text().await.map_err(engine_error)?;
    let answer = tools::parse_answer(text, tools.as_ref());
    let (reason, sequence) = stop_reason(&done, &stops, !answer.calls.is_empty());
    Ok(Json(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "content": anthropic_tools::content_of(&answer),
        "model": request.model,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(&done),
    }))
    .into_response())
}

/// Anthropic's stream: `message_start`, one text block (`content_block_start`, `ping`,
/// `content_block_delta`s, `content_block_stop`), then with tools one `tool_use` block per
/// call (its input as one `input_json_delta`), `message_delta`, `message_stop`.
struct MessageFramer {
    id: String,
    model: String,
    stops: Vec<String>,
    input_tokens: u32,
    delta: Option<Slotted>,
    /// With tools: holds back text that may be a call (see [`CallBuffer`]).
    calls: Option<CallBuffer>,
}

impl Framer for MessageFramer {
    fn start(&mut self) -> Vec<String> {
        let message = json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": null,
            "stop_sequence": null,
            // The cache count is known at the end; `message_delta` carries the final usage.
            "usage": { "input_tokens": self.input_tokens, "output_tokens": 0 },
        });
        vec![
            events::named(
                "message_start",
                &json!({ "type": "message_start", "message": message }),
            ),
            events::named(
                "content_block_start",
                &json!({
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": { "type": "text", "text": "" },
                }),
            ),
            events::named("ping", &json!({ "type": "ping" })),
        ]
    }

    fn text(&mut self, text: &str) -> Vec<String> {
        let Some(released) = tools::release(&mut self.calls, text) else {
            return Vec::new();
        };
        let text = released.as_ref();
        let frame = self.delta.get_or_insert_with(|| {
            Slotted::new(&events::named(
                "content_block_delta",
                &json!({
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": { "type": "text_delta", "text": SLOT },
                }),
            ))
        });
        vec![frame.fill(text)]
    }

    fn done(&mut self, done: &Completion) -> Vec<String> {
        let mut frames = Vec::new();
        let mut calls = Vec::new();
        if let Some(buffer) = self.calls.take() {
            let answer = buffer.finish();
            if !answer.content.is_empty() {
                frames.extend(self.text(&answer.content));
            }
            calls = answer.calls;
        }
        frames.push(events::named(
            "content_block_stop",
            &json!({ "type": "content_block_stop", "index": 0 }),
        ));
        for (i, call) in calls.iter().enumerate() {
            frames.extend(tool_use_events(i + 1, call));
        }
        let (reason, sequence) = stop_reason(done, &self.stops, !calls.is_empty());
        frames.extend([
            events::named(
                "message_delta",
                &json!({
                    "type": "message_delta",
                    "delta": { "stop_reason": reason, "stop_sequence": sequence },
                    "usage": usage(done),
                }),
            ),
            events::named("message_stop", &json!({ "type": "message_stop" })),
        ]);
        frames
    }

    fn error(&mut self, err: &EngineError) -> Vec<String> {
        vec![events::named(
            "error",
            &ApiError::engine(err, Flavor::Anthropic).body(),
        )]
    }
}

/// One call as a streamed `tool_use` block at `index`: its start with an empty input, the
/// whole input as one `input_json_delta`, its stop (clients concatenate the partial JSON).
fn tool_use_events(index: usize, call: &crate::engine::ToolCall) -> Vec<String> {
    let mut start = anthropic_tools::tool_use(call);
    start["input"] = json!({});
    vec![
        events::named(
            "content_block_start",
            &json!({ "type": "content_block_start", "index": index, "content_block": start }),
        ),
        events::named(
            "content_block_delta",
            &json!({
                "type": "content_block_delta",
                "index": index,
                "delta": { "type": "input_json_delta", "partial_json": call.arguments.to_string() },
            }),
        ),
        events::named(
            "content_block_stop",
            &json!({ "type": "content_block_stop", "index": index }),
        ),
    ]
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens through the model's own tokenizer
/// and chat template, as a generation would see them.
pub async fn count_tokens(
    State(state): State<AppState>,
    mutation: Mutation,
    JsonBody(request): JsonBody<CountRequest>,
) -> Result<Response, ApiError> {
    let tools = tools_and_thinking(
        request.tools.as_deref(),
        request.tool_choice.as_ref(),
        request.thinking.as_ref(),
    )?;
    constraint_of(request.output_config.as_ref())?;
    mutation.allow_downloads(&state, &request.model, None, Flavor::Anthropic)?;
    let prompt = prompt_of(request.system, request.messages)?;
    let count = state
        .engine
        .count_tokens(&request.model, prompt, tools, None)
        .await
        .map_err(engine_error)?;
    Ok(Json(json!({ "input_tokens": count })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(reason: FinishReason, stop: Option<&str>) -> Completion {
        Completion {
            model: "m".into(),
            backend: "b".into(),
            finish_reason: reason,
            prompt_tokens: 10,
            completion_tokens: 3,
            stats: Default::default(),
            cached_tokens: 4,
            load_ms: 0.0,
            queue_ms: 0.0,
            total_ms: 0.0,
            stop_sequence: stop.map(str::to_string),
        }
    }

    #[test]
    fn stop_reasons_follow_anthropic() {
        let stops = vec!["END".to_string()];
        let reason = |r, s| stop_reason(&done(r, s), &stops, false);
        assert_eq!(reason(FinishReason::Length, None), ("max_tokens", None));
        assert_eq!(reason(FinishReason::Stop, None), ("end_turn", None));
        // A template's end marker is the end of the turn, not the caller's stop sequence.
        assert_eq!(
            reason(FinishReason::Stop, Some("<|im_end|>")),
            ("end_turn", None)
        );
        assert_eq!(
            reason(FinishReason::Stop, Some("END")),
            ("stop_sequence", Some("END".to_string()))
        );
        assert_eq!(usage(&done(FinishReason::Stop, None))["input_tokens"], 6);
    }

    #[test]
    fn content_blocks_are_text_only() {
        let blocks = |v: Value| Content::Blocks(v.as_array().cloned().unwrap_or_default());
        let ok = text_of(
            blocks(
                json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}]),
            ),
            "m",
        );
        assert_eq!(ok.ok().as_deref(), Some("ab"));
        let err = |v: Value| {
            text_of(blocks(v), "m")
                .err()
                .map(|e| e.message)
                .unwrap_or_default()
        };
        assert!(err(json!([{"type": "image", "source": {}}])).contains("image"));
        assert!(err(json!([{"type": "tool_result", "content": "x"}])).contains("tool_result"));
        assert!(err(json!([{"type": "text", "text": "a", "extra": 1}])).contains("`extra`"));
    }
}
