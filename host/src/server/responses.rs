//! OpenAI's Responses API, stateless: `POST /v1/responses` (one response object, or SSE with
//! the Responses event names and a `sequence_number` on each), translated to the engine's
//! chat prompt and [`Params`]. Nothing is stored: `store: true`, `previous_response_id` and
//! `conversation` are refused. Fields this server cannot honour are a 400 naming them; a few
//! are documented no-ops (README, "OpenAI Responses"). Function tools go through the chat
//! dialect's translation ([`responses_tools`]): calls come back as `function_call` items.

use super::{
    error::{ApiError, Flavor},
    events,
    extract::JsonBody,
    guard::Mutation,
    params::{new_id, unix_now, Params},
    responses_tools,
    streaming::{self, Framer},
    tools, AppState,
};
use crate::engine::{
    tools::{parse::Parsed, stream::CallBuffer},
    ChatMessage, Completion, Constraint, EngineError, FinishReason, Prompt, Tools,
};
use axum::{
    extract::State,
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// The body of `POST /v1/responses`. Unknown fields are refused by name (serde's message).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponsesRequest {
    model: String,
    input: Input,
    instructions: Option<String>,
    max_output_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    #[serde(default)]
    stream: bool,
    text: Option<TextConfig>,
    store: Option<bool>,
    previous_response_id: Option<Value>,
    conversation: Option<Value>,
    background: Option<bool>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    reasoning: Option<Value>,
    include: Option<Vec<String>>,
    top_logprobs: Option<Value>,
    /// `"disabled"` (the default) only: this server does not drop input to make it fit.
    truncation: Option<String>,
    /// Documented no-ops: labels and routing hints with nothing to act on here.
    metadata: Option<Value>,
    #[allow(dead_code)]
    user: Option<Value>,
    #[allow(dead_code)]
    safety_identifier: Option<Value>,
    #[allow(dead_code)]
    prompt_cache_key: Option<Value>,
    #[allow(dead_code)]
    service_tier: Option<Value>,
    parallel_tool_calls: Option<bool>,
    #[allow(dead_code)]
    stream_options: Option<Value>,
}

/// `input`: a string (one user message) or a list of items.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Items(Vec<Value>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextConfig {
    format: Option<Value>,
    /// A hint for reasoning models: a documented no-op.
    #[allow(dead_code)]
    verbosity: Option<Value>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message).flavor(Flavor::OpenAi)
}

fn given(value: Option<&Value>) -> bool {
    value.is_some_and(|v| !v.is_null())
}

impl ResponsesRequest {
    /// Refuses what needs state or reasoning, which this route does not have.
    fn refuse_unsupported(&self) -> Result<(), ApiError> {
        if self.store == Some(true) {
            return Err(bad(
                "store: this server keeps no responses (stateless); send store: false or leave \
                 it out",
            ));
        }
        if given(self.previous_response_id.as_ref()) || given(self.conversation.as_ref()) {
            return Err(bad(
                "previous_response_id / conversation: this server keeps no responses \
                 (stateless); send the whole conversation in `input`",
            ));
        }
        if self.background == Some(true) {
            return Err(bad("background: background responses are not supported"));
        }
        if given(self.reasoning.as_ref()) {
            return Err(bad("reasoning: reasoning options are not supported"));
        }
        if let Some(item) = self.include.iter().flatten().next() {
            return Err(bad(format!("include: {item:?} is not supported")));
        }
        if given(self.top_logprobs.as_ref()) && self.top_logprobs != Some(json!(0)) {
            return Err(bad(
                "top_logprobs: logprobs are not supported on /v1/responses",
            ));
        }
        if let Some(mode) = self.truncation.as_deref().filter(|m| *m != "disabled") {
            return Err(bad(format!(
                "truncation {mode:?} is not supported: only \"disabled\" (input that does not \
                 fit the context is an error)"
            )));
        }
        Ok(())
    }

    /// The canonical tools (`None` without any).
    fn tools(&self) -> Result<Option<Tools>, ApiError> {
        responses_tools::canonical(
            self.tools.as_ref(),
            self.tool_choice.as_ref(),
            self.parallel_tool_calls,
        )
        .map_err(bad)
    }

    fn params(&self) -> Result<Params, ApiError> {
        Ok(Params {
            max_tokens: self.max_output_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            constraint: constraint_of(self.text.as_ref())?,
            ..Params::default()
        })
    }
}

/// `text.format` as a constraint: `text` none, `json_object` any object, `json_schema` its
/// `schema`.
fn constraint_of(text: Option<&TextConfig>) -> Result<Option<Constraint>, ApiError> {
    let Some(format) = text
        .and_then(|t| t.format.as_ref())
        .filter(|f| !f.is_null())
    else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::JsonSchema(r#"{"type":"object"}"#.into()))),
        Some("json_schema") => {
            let schema = format
                .get("schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| bad("text.format.schema must be a JSON schema object"))?;
            Ok(Some(Constraint::JsonSchema(schema.to_string())))
        }
        other => Err(bad(format!(
            "text.format.type must be \"text\", \"json_object\" or \"json_schema\", got {other:?}"
        ))),
    }
}

/// The chat prompt: `instructions` as the system message, then the input items.
fn prompt_of(instructions: Option<String>, input: Input) -> Result<Prompt, ApiError> {
    let mut chat = Vec::new();
    if let Some(instructions) = instructions {
        chat.push(ChatMessage::new("system", instructions));
    }
    match input {
        Input::Text(text) => chat.push(ChatMessage::new("user", text)),
        Input::Items(items) => {
            if items.is_empty() {
                return Err(bad("input: the list of items is empty"));
            }
            for (i, item) in items.iter().enumerate() {
                let where_ = format!("input[{i}]");
                match item.get("type").and_then(Value::as_str) {
                    Some("function_call") => {
                        responses_tools::push_call(&mut chat, item, &where_).map_err(bad)?
                    }
                    Some("function_call_output") => {
                        let message =
                            responses_tools::result_message(&chat, item, &where_).map_err(bad)?;
                        chat.push(message);
                    }
                    _ => chat.push(message_of(item, &where_)?),
                }
            }
        }
    }
    Ok(Prompt::Chat(chat))
}

/// Keys a message item may carry (`id` and `status` come back from earlier output items).
const MESSAGE_KEYS: &[&str] = &["type", "role", "content", "id", "status"];

fn message_of(item: &Value, where_: &str) -> Result<ChatMessage, ApiError> {
    match item.get("type").and_then(Value::as_str) {
        None | Some("message") => {}
        Some(other) => {
            return Err(bad(format!(
                "{where_}: items of type {other:?} are not supported (message, function_call \
                 and function_call_output items only)"
            )))
        }
    }
    let fields = item
        .as_object()
        .ok_or_else(|| bad(format!("{where_} must be an object")))?;
    if let Some(key) = fields.keys().find(|k| !MESSAGE_KEYS.contains(&k.as_str())) {
        return Err(bad(format!(
            "{where_}: unknown field `{key}` in a message item"
        )));
    }
    let role = match fields.get("role").and_then(Value::as_str) {
        Some(role @ ("user" | "assistant" | "system")) => role,
        // The Responses API's name for instructions-level messages.
        Some("developer") => "system",
        other => {
            return Err(bad(format!(
                "{where_}.role must be user, assistant, system or developer, got {other:?}"
            )))
        }
    };
    let text = match fields.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts_text(parts, &format!("{where_}.content"))?,
        _ => {
            return Err(bad(format!(
                "{where_}.content must be a string or a list of input_text parts"
            )))
        }
    };
    Ok(ChatMessage::new(role, text))
}

/// The text of content parts: `input_text`, or `output_text` from an earlier answer.
fn parts_text(parts: &[Value], where_: &str) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "input_text" | "output_text" => {}
            "input_image" | "input_file" | "input_audio" => {
                return Err(bad(format!(
                    "{where_}[{j}]: {kind} parts are not supported by this server (text only)"
                )))
            }
            other => {
                return Err(bad(format!(
                    "{where_}[{j}]: parts of type {other:?} are not supported (input_text only)"
                )))
            }
        }
        let piece = part.get("text").and_then(Value::as_str).ok_or_else(|| {
            bad(format!(
                "{where_}[{j}]: a {kind} part needs a string `text`"
            ))
        })?;
        text.push_str(piece);
    }
    Ok(text)
}

/// What every response object of one request shares.
struct Shape {
    id: String,
    item_id: String,
    created_at: u64,
    model: String,
    instructions: Option<String>,
    max_output_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    metadata: Value,
    text_format: Value,
    tools: Value,
    tool_choice: Value,
    parallel_tool_calls: bool,
}

impl Shape {
    fn new(request: &ResponsesRequest) -> Shape {
        let text_format = request
            .text
            .as_ref()
            .and_then(|t| t.format.clone())
            .filter(|f| !f.is_null())
            .unwrap_or_else(|| json!({ "type": "text" }));
        Shape {
            id: new_id("resp"),
            item_id: new_id("msg"),
            created_at: unix_now(),
            model: request.model.clone(),
            instructions: request.instructions.clone(),
            max_output_tokens: request.max_output_tokens,
            temperature: request.temperature,
            top_p: request.top_p,
            metadata: request.metadata.clone().unwrap_or_else(|| json!({})),
            text_format,
            tools: responses_tools::echo(request.tools.as_ref()),
            tool_choice: request
                .tool_choice
                .clone()
                .filter(|c| !c.is_null())
                .unwrap_or_else(|| json!("auto")),
            parallel_tool_calls: request.parallel_tool_calls.unwrap_or(true),
        }
    }

    /// The response object with `status`, `output` and (when finished) `usage`.
    fn response(&self, status: &str, output: Value, done: Option<&Completion>) -> Value {
        let incomplete = if status == "incomplete" {
            json!({ "reason": "max_output_tokens" })
        } else {
            Value::Null
        };
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": null,
            "incomplete_details": incomplete,
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": null,
            "reasoning": null,
            "store": false,
            "temperature": self.temperature,
            "text": { "format": self.text_format },
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "top_p": self.top_p,
            "truncation": "disabled",
            "usage": done.map(usage),
            "metadata": self.metadata,
        })
    }

    /// The one output item: an assistant message with one `output_text` part.
    fn message(&self, status: &str, text: Option<&str>) -> Value {
        let content = match text {
            Some(text) => json!([output_text(text)]),
            None => json!([]),
        };
        json!({
            "id": self.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        })
    }
}

impl Shape {
    /// The output items of a whole answer: the message (when it has text, or nothing was
    /// called), then one `function_call` item per call.
    fn output(&self, status: &str, answer: &Parsed) -> Value {
        let mut items = Vec::new();
        if !answer.content.is_empty() || answer.calls.is_empty() {
            items.push(self.message(status, Some(&answer.content)));
        }
        for call in &answer.calls {
            let arguments = call.arguments.to_string();
            let id = new_id("fc");
            items.push(responses_tools::call_item(
                &id,
                call,
                &arguments,
                "completed",
            ));
        }
        Value::Array(items)
    }
}

fn output_text(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] })
}

/// `completed`, or `incomplete` when the output was cut off by a limit.
fn status_of(done: &Completion) -> &'static str {
    match done.finish_reason {
        FinishReason::Stop => "completed",
        FinishReason::Length | FinishReason::ContextFull => "incomplete",
    }
}

/// The Responses usage; `input_tokens` counts every prompt token, cached or not.
fn usage(done: &Completion) -> Value {
    json!({
        "input_tokens": done.prompt_tokens,
        "input_tokens_details": { "cached_tokens": done.cached_tokens },
        "output_tokens": done.completion_tokens,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    })
}

/// `POST /v1/responses`
pub async fn create(
    State(state): State<AppState>,
    mutation: Mutation,
    JsonBody(request): JsonBody<ResponsesRequest>,
) -> Result<Response, ApiError> {
    request.refuse_unsupported()?;
    mutation.allow_downloads(&state, &request.model, None, Flavor::OpenAi)?;
    let mut config = request
        .params()?
        .into_config(state.settings.max_tokens_cap, "max_output_tokens")?;
    config.tools = request.tools()?;
    let call_tools = config.tools.clone();
    let shape = Shape::new(&request);
    let prompt = prompt_of(request.instructions, request.input)?;
    let tokens = state
        .engine
        .generate(&shape.model, prompt, config)
        .await
        .map_err(|err| ApiError::engine(&err, Flavor::OpenAi))?;
    if request.stream {
        let framer = ResponseFramer {
            shape,
            sequence: 0,
            text: String::new(),
            calls: tools::call_buffer(call_tools.as_ref()),
            opened: false,
        };
        return Ok(events::response(streaming::body(tokens, framer)));
    }
    let (text, done) = tokens
        .collect_text()
        .await
        .map_err(|err| ApiError::engine(&err, Flavor::OpenAi))?;
    let status = status_of(&done);
    let answer = tools::parse_answer(text, call_tools.as_ref());
    let output = shape.output(status, &answer);
    Ok(Json(shape.response(status, output, Some(&done))).into_response())
}

/// The Responses stream: the response created and in progress, the message item and its
/// text part opened, text deltas, both closed, then each call's `function_call` item (added,
/// its arguments, done), and the response completed (or incomplete, or failed), each event
/// numbered. With tools the message opens only once there is text that is not a call.
struct ResponseFramer {
    shape: Shape,
    sequence: u64,
    /// The text so far, for the closing events that repeat it whole.
    text: String,
    /// With tools: holds back text that may be a call (see [`CallBuffer`]).
    calls: Option<CallBuffer>,
    /// Whether the message item was opened.
    opened: bool,
}

impl ResponseFramer {
    fn event(&mut self, kind: &str, mut fields: Value) -> String {
        fields["type"] = json!(kind);
        fields["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        events::named(kind, &fields)
    }

    fn part_fields(&self) -> Value {
        json!({ "item_id": self.shape.item_id, "output_index": 0, "content_index": 0 })
    }

    /// The message item and its text part, added.
    fn open_message(&mut self) -> Vec<String> {
        self.opened = true;
        let item = self.shape.message("in_progress", None);
        let mut part = self.part_fields();
        part["part"] = output_text("");
        vec![
            self.event(
                "response.output_item.added",
                json!({ "output_index": 0, "item": item }),
            ),
            self.event("response.content_part.added", part),
        ]
    }

    /// The text part and the message item, done; returns the finished item too.
    fn close_message(&mut self, status: &str) -> (Vec<String>, Value) {
        let text = std::mem::take(&mut self.text);
        let item = self.shape.message(status, Some(&text));
        let mut text_done = self.part_fields();
        text_done["text"] = json!(text);
        text_done["logprobs"] = json!([]);
        let mut part_done = self.part_fields();
        part_done["part"] = output_text(&text);
        let frames = vec![
            self.event("response.output_text.done", text_done),
            self.event("response.content_part.done", part_done),
            self.event(
                "response.output_item.done",
                json!({ "output_index": 0, "item": item }),
            ),
        ];
        (frames, item)
    }

    /// One call's item: added, its arguments (whole, in one delta), done.
    fn call_events(
        &mut self,
        index: usize,
        call: &crate::engine::ToolCall,
    ) -> (Vec<String>, Value) {
        let id = new_id("fc");
        let arguments = call.arguments.to_string();
        let added = responses_tools::call_item(&id, call, "", "in_progress");
        let item = responses_tools::call_item(&id, call, &arguments, "completed");
        let at = json!({ "item_id": id, "output_index": index });
        let mut delta = at.clone();
        delta["delta"] = json!(arguments);
        let mut done = at;
        done["arguments"] = json!(arguments);
        done["name"] = json!(call.name);
        let frames = vec![
            self.event(
                "response.output_item.added",
                json!({ "output_index": index, "item": added }),
            ),
            self.event("response.function_call_arguments.delta", delta),
            self.event("response.function_call_arguments.done", done),
            self.event(
                "response.output_item.done",
                json!({ "output_index": index, "item": item }),
            ),
        ];
        (frames, item)
    }
}

impl Framer for ResponseFramer {
    fn start(&mut self) -> Vec<String> {
        let response = self.shape.response("in_progress", json!([]), None);
        let mut frames = vec![
            self.event("response.created", json!({ "response": response })),
            self.event("response.in_progress", json!({ "response": response })),
        ];
        if self.calls.is_none() {
            frames.extend(self.open_message());
        }
        frames
    }

    fn text(&mut self, text: &str) -> Vec<String> {
        let Some(released) = tools::release(&mut self.calls, text) else {
            return Vec::new();
        };
        let mut frames = match self.opened {
            true => Vec::new(),
            false => self.open_message(),
        };
        self.text.push_str(&released);
        let mut fields = self.part_fields();
        fields["delta"] = json!(released);
        fields["logprobs"] = json!([]);
        frames.push(self.event("response.output_text.delta", fields));
        frames
    }

    fn done(&mut self, done: &Completion) -> Vec<String> {
        let status = status_of(done);
        let mut frames = Vec::new();
        let mut calls = Vec::new();
        if let Some(buffer) = self.calls.take() {
            let answer = buffer.finish();
            if !answer.content.is_empty() {
                frames.extend(self.text(&answer.content));
            }
            calls = answer.calls;
        }
        // An empty answer without calls is still one (empty) message.
        if !self.opened && calls.is_empty() {
            frames.extend(self.open_message());
        }
        let mut output = Vec::new();
        if self.opened {
            let (closing, item) = self.close_message(status);
            frames.extend(closing);
            output.push(item);
        }
        for call in &calls {
            let (events, item) = self.call_events(output.len(), call);
            frames.extend(events);
            output.push(item);
        }
        let response = self
            .shape
            .response(status, Value::Array(output), Some(done));
        let last = match status {
            "completed" => "response.completed",
            _ => "response.incomplete",
        };
        frames.push(self.event(last, json!({ "response": response })));
        frames
    }

    fn error(&mut self, err: &EngineError) -> Vec<String> {
        let api = ApiError::engine(err, Flavor::OpenAi);
        let mut response = self.shape.response("failed", json!([]), None);
        response["error"] = json!({ "code": api.code, "message": api.message });
        vec![
            self.event(
                "error",
                json!({ "code": api.code, "message": api.message, "param": null }),
            ),
            self.event("response.failed", json!({ "response": response })),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(value: Value) -> Input {
        Input::Items(value.as_array().cloned().unwrap_or_default())
    }

    #[test]
    fn input_items_become_chat_messages() {
        let prompt = prompt_of(
            Some("be brief".into()),
            items(json!([
                {"role": "developer", "content": "rules"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi "}, {"type": "input_text", "text": "there"}]},
                {"id": "msg_1", "status": "completed", "type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "yo", "annotations": []}]},
                {"role": "user", "content": "again"},
            ])),
        );
        let Ok(Prompt::Chat(chat)) = prompt else {
            panic!("{prompt:?}")
        };
        let pairs: Vec<(&str, &str)> = chat
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("system", "be brief"),
                ("system", "rules"),
                ("user", "hi there"),
                ("assistant", "yo"),
                ("user", "again")
            ]
        );
    }

    #[test]
    fn unsupported_input_is_named() {
        let err = |v: Value| {
            prompt_of(None, items(v))
                .err()
                .map(|e| e.message)
                .unwrap_or_default()
        };
        assert!(err(
            json!([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}])
        )
        .contains("input_image"));
        assert!(err(json!([{"type": "computer_call", "call_id": "c"}])).contains("computer_call"));
        assert!(err(json!([{"role": "user", "content": "x", "name": "n"}])).contains("`name`"));
        assert!(err(json!([])).contains("empty"));
    }
}
