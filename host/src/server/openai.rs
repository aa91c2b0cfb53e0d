//! OpenAI-compatible routes: `GET /v1/models`, `POST /v1/chat/completions`,
//! `POST /v1/completions` (SSE streaming with `data: [DONE]`, or one JSON answer).

use super::{
    error::{ApiError, Flavor},
    extract::JsonBody,
    guard::Mutation,
    llama_server, logprobs,
    params::{new_id, unix_now, Params, StopField},
    streaming::{self, sse, Framer, Slotted, SLOT, SSE_DONE},
    tools::{self, OpenAiTools},
    AppState,
};
use crate::engine::tools::stream::CallBuffer;
use crate::engine::{
    ChatMessage, Completion, Constraint, EngineError, Prompt, TokenLogprobs, TokenStream,
};
use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// Message content: a string, or a list of parts of which the text ones are used.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct InMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant message's calls; `tool_call_id` and `name`: a `tool` message's.
    #[serde(default)]
    pub tool_calls: Option<Vec<tools::OpenAiCall>>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields both completion routes take.
#[derive(Debug, Deserialize)]
pub struct Common {
    /// May be left out when the server serves one model (llama-server's rule).
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub n: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    /// `{"type": "text" | "json_object" | "json_schema", "json_schema": {"schema": ...}}`.
    pub response_format: Option<Value>,
    /// Chat: `true`/`false`; completions: the number of alternatives (0 to 20).
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<Value>,
    /// Extensions (llama-server spellings): a GBNF grammar, a JSON schema, typical_p.
    pub grammar: Option<String>,
    pub json_schema: Option<Value>,
    pub typical_p: Option<f64>,
    /// Extensions (llama.cpp server spellings).
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    #[serde(default)]
    pub ignore_eos: bool,
    /// Extension: the backend plugin to run the model with.
    pub backend: Option<String>,
    /// Extension: LoRA adapters for this request, `"SPEC[:scale]"` strings.
    pub adapters: Option<Vec<String>>,
    /// Extension (llama-server): `false` = do not reuse a kept prompt prefix.
    pub cache_prompt: Option<bool>,
    /// Every other field: a documented no-op ([`NO_OPS`]) or a 400 naming it.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// OpenAI fields accepted and ignored, with the reason (README "OpenAI"): `user` and
/// `metadata` label requests for OpenAI's dashboards, `store: false` asks for no storage
/// (nothing is stored here), `service_tier` picks OpenAI's capacity.
pub const NO_OPS: &[&str] = &["user", "metadata", "service_tier", "store"];

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<InMessage>,
    /// `tools`, `tool_choice`, `parallel_tool_calls`.
    #[serde(flatten)]
    pub tools: OpenAiTools,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// Read by [`prompt_of`] rather than an untagged enum, whose only error is "did not
    /// match any variant".
    pub prompt: Value,
    /// Chat only: read to refuse it with a 400 rather than ignore it.
    #[serde(flatten)]
    pub tools: OpenAiTools,
    #[serde(flatten)]
    pub common: Common,
}

impl Common {
    /// `chat`: the chat route (the two read `logprobs` differently).
    fn params(&self, chat: bool) -> Result<Params, ApiError> {
        if let Some(key) = self.other.keys().find(|k| !NO_OPS.contains(&k.as_str())) {
            return Err(ApiError::bad_request(format!(
                "`{key}` is not supported by this server; leave it out (README: OpenAI fields)"
            )));
        }
        if self.other.get("store").and_then(Value::as_bool) == Some(true) {
            return Err(ApiError::bad_request(
                "store: true: this server keeps no completions; leave it out or send false",
            ));
        }
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(ApiError::bad_request(format!(
                "only n = 1 is supported, got {n}"
            )));
        }
        let logprobs =
            logprobs::openai_request(chat, self.logprobs.as_ref(), self.top_logprobs.as_ref())?;
        Ok(Params {
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            typical_p: self.typical_p,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: self.logit_bias.clone(),
            constraint: self.constraint()?,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: None,
            seed: self.seed,
            stop: self
                .stop
                .clone()
                .map(StopField::into_vec)
                .unwrap_or_default(),
            backend: self.backend.clone(),
            ignore_eos: self.ignore_eos,
            adapters: self.adapters.clone(),
            cache_prompt: self.cache_prompt,
            logprobs,
        })
    }

    /// The one constraint the request asks for: `response_format`, or llama-server's
    /// `grammar` / `json_schema`.
    fn constraint(&self) -> Result<Option<Constraint>, ApiError> {
        let from_format = match &self.response_format {
            None | Some(Value::Null) => None,
            Some(format) => response_format(format)?,
        };
        let asked: Vec<Constraint> = [
            from_format,
            self.grammar.clone().map(Constraint::Grammar),
            self.json_schema
                .as_ref()
                .map(|s| Constraint::JsonSchema(s.to_string())),
        ]
        .into_iter()
        .flatten()
        .collect();
        match <[Constraint; 1]>::try_from(asked) {
            Ok([one]) => Ok(Some(one)),
            Err(none) if none.is_empty() => Ok(None),
            Err(_) => Err(ApiError::bad_request(
                "give at most one of response_format (json), grammar and json_schema",
            )),
        }
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// OpenAI's `response_format` as a constraint (`text`: none).
fn response_format(format: &Value) -> Result<Option<Constraint>, ApiError> {
    let kind = format
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(Constraint::JsonSchema(r#"{"type":"object"}"#.into()))),
        "json_schema" => {
            let schema = format
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .ok_or_else(|| {
                    ApiError::bad_request("response_format json_schema needs json_schema.schema")
                })?;
            Ok(Some(Constraint::JsonSchema(schema.to_string())))
        }
        other => Err(ApiError::bad_request(format!(
            "response_format type {other:?} is not supported: use text, json_object or \
             json_schema"
        ))),
    }
}

/// The largest token id JSON may carry (ids are `u32`).
const MAX_ID: u64 = u32::MAX as u64;

/// `prompt`, as OpenAI takes it: a string, a list with one string, a list of token ids, or
/// a list with one list of token ids. Several prompts (a batch) are refused.
pub(super) fn prompt_of(value: Value) -> Result<Prompt, ApiError> {
    let list = match value {
        Value::String(text) => return Ok(Prompt::Text(text)),
        Value::Array(list) => list,
        other => {
            return Err(ApiError::bad_request(format!(
                "prompt must be a string, a list of token ids or a list with one of them, \
                 got {}",
                kind_of(&other)
            )))
        }
    };
    if list.iter().all(Value::is_number) {
        return token_ids("prompt", &list).map(Prompt::Tokens);
    }
    let batch = list.iter().all(Value::is_string) || list.iter().all(Value::is_array);
    match (list.len(), list.into_iter().next()) {
        (1, Some(Value::String(text))) => Ok(Prompt::Text(text)),
        (1, Some(Value::Array(ids))) => token_ids("prompt[0]", &ids).map(Prompt::Tokens),
        (n, _) if n > 1 && batch => Err(ApiError::bad_request(format!(
            "prompt must be one string or one list of token ids (batches are not supported), \
             got a list of {n} prompts"
        ))),
        _ => Err(ApiError::bad_request(
            "prompt must be a string, a list of token ids, or a list holding one string or \
             one list of token ids (a list may not mix strings, numbers and lists)",
        )),
    }
}

/// Token ids: integers from 0 to `u32::MAX`; the first bad one is named with its index.
pub(super) fn token_ids(name: &str, list: &[Value]) -> Result<Vec<u32>, ApiError> {
    list.iter()
        .enumerate()
        .map(|(index, value)| {
            value
                .as_u64()
                .filter(|&id| id <= MAX_ID)
                .map(|id| id as u32)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{name}[{index}] is {value}: token ids must be integers from 0 to \
                         {MAX_ID}"
                    ))
                })
        })
        .collect()
}

/// A JSON value's type, for error messages.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// OpenAI's usage; `prompt_tokens` counts every prompt token, cached or not.
fn usage(done: &Completion) -> Value {
    json!({
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": done.cached_tokens },
    })
}

/// Server-side timings, named as llama.cpp's server names them, from the plugin's stats
/// clock (which starts when the plugin starts the generation, after tokenizing and queueing):
/// `prompt_ms` is from that start to the first token being ready (prompt processing plus
/// sampling the first token), `predicted_ms` from the first token to the last.
/// `predicted_n` counts every generated token; `predicted_per_second` is the plugin's decode
/// rate, the tokens after the first over `predicted_ms`. As in llama-server, `prompt_n`
/// counts the prompt tokens evaluated and `cache_n` those reused from the prompt cache.
pub(super) fn timings(done: &Completion) -> Value {
    json!({
        "cache_n": done.cached_tokens,
        "prompt_n": done.prompt_tokens - done.cached_tokens,
        "prompt_ms": done.prompt_ms(),
        "prompt_per_second": done.stats.prompt_tokens_per_second,
        "predicted_n": done.completion_tokens,
        "predicted_ms": done.decode_ms(),
        "predicted_per_second": done.stats.tokens_per_second,
    })
}

pub(super) fn messages_of(input: Vec<InMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    if input.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty"));
    }
    input
        .into_iter()
        .enumerate()
        .map(|(index, m)| {
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(text)) => text,
                Some(Content::Parts(parts)) => parts
                    .into_iter()
                    .filter(|p| p.kind == "text")
                    .filter_map(|p| p.text)
                    .collect::<Vec<_>>()
                    .join(""),
            };
            let mut message = ChatMessage::new(m.role, content);
            tools::openai_message_tools(&mut message, index, m.tool_calls, m.tool_call_id, m.name)
                .map_err(ApiError::bad_request)?;
            Ok(message)
        })
        .collect()
}

pub(super) fn sse_response(body: axum::body::Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn engine_error(err: EngineError) -> ApiError {
    ApiError::engine(&err, Flavor::OpenAi)
}

/// `POST /v1/chat/completions`
pub async fn chat_completions(
    State(state): State<AppState>,
    mutation: Mutation,
    JsonBody(request): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    let mut common = request.common;
    common.model = llama_server::model_name(&state, Some(&common.model))?;
    mutation.allow_downloads(
        &state,
        &common.model,
        common.adapters.as_deref(),
        Flavor::OpenAi,
    )?;
    let mut config = common
        .params(true)?
        .into_config(state.settings.max_tokens_cap, "max_tokens")?;
    let wants_logprobs = config.logprobs.is_some();
    config.tools = request.tools.canonical().map_err(ApiError::bad_request)?;
    let call_tools = config.tools.clone();
    let messages = messages_of(request.messages)?;
    let tokens = state
        .engine
        .generate(&common.model, Prompt::Chat(messages), config)
        .await
        .map_err(engine_error)?;
    let id = new_id("chatcmpl");
    if common.stream {
        let framer = ChatFramer {
            id,
            created: unix_now(),
            model: common.model.clone(),
            include_usage: common.include_usage(),
            content: None,
            logprobs: Vec::new(),
            calls: tools::call_buffer(call_tools.as_ref()),
        };
        return Ok(sse_response(streaming::body(tokens, framer)));
    }
    let (text, tokens, done) = tokens.collect().await.map_err(engine_error)?;
    let logprobs = match wants_logprobs {
        true => logprobs::openai_chat(&tokens),
        false => Value::Null,
    };
    let answer = tools::parse_answer(text, call_tools.as_ref());
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": common.model,
        "system_fingerprint": done.backend,
        "choices": [{
            "index": 0,
            "message": tools::openai_message(&answer),
            "logprobs": logprobs,
            "finish_reason": tools::openai_finish(&answer, done.finish_reason.as_openai()),
        }],
        "usage": usage(&done),
        "timings": timings(&done),
    }))
    .into_response())
}

struct ChatFramer {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    content: Option<Slotted>,
    /// Tokens of the next text delta (when logprobs were asked for).
    logprobs: Vec<TokenLogprobs>,
    /// With tools: holds back text that may be a call (see [`CallBuffer`]).
    calls: Option<CallBuffer>,
}

impl ChatFramer {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }
}

impl Framer for ChatFramer {
    fn start(&mut self) -> Vec<String> {
        vec![sse(
            // `content: null` with the role, as OpenAI's first delta has it.
            &self.chunk(json!({ "role": "assistant", "content": null }), None),
        )]
    }

    fn logprobs(&mut self, tokens: Vec<TokenLogprobs>) -> Vec<String> {
        self.logprobs.extend(tokens);
        Vec::new()
    }

    fn text(&mut self, text: &str) -> Vec<String> {
        if !self.logprobs.is_empty() {
            let mut chunk = self.chunk(json!({ "content": text }), None);
            chunk["choices"][0]["logprobs"] = logprobs::openai_chat(&self.logprobs);
            self.logprobs.clear();
            return vec![sse(&chunk)];
        }
        let Some(released) = tools::release(&mut self.calls, text) else {
            return Vec::new();
        };
        let text = released.as_ref();
        let frame = match &self.content {
            Some(slotted) => slotted,
            None => {
                let frame = sse(&self.chunk(json!({ "content": SLOT }), None));
                self.content.insert(Slotted::new(&frame))
            }
        };
        vec![frame.fill(text)]
    }

    fn done(&mut self, done: &Completion) -> Vec<String> {
        // Tokens whose text was empty (a character cut short at the end) still count.
        let mut frames = match self.logprobs.is_empty() {
            true => Vec::new(),
            false => self.text(""),
        };
        let mut finish = done.finish_reason.as_openai();
        if let Some(calls) = self.calls.take() {
            let answer = calls.finish();
            if !answer.content.is_empty() {
                frames.extend(self.text(&answer.content));
            }
            finish = tools::openai_finish(&answer, finish);
            // One delta per call with its whole arguments; clients concatenate by index.
            for (index, call) in answer.calls.iter().enumerate() {
                let delta = json!({ "tool_calls": [tools::openai_call(index, call)] });
                frames.push(sse(&self.chunk(delta, None)));
            }
        }
        let mut last = self.chunk(json!({}), Some(finish));
        last["timings"] = timings(done);
        frames.push(sse(&last));
        if self.include_usage {
            frames.push(sse(&json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage(done),
            })));
        }
        frames.push(SSE_DONE.to_string());
        frames
    }

    fn error(&mut self, err: &EngineError) -> Vec<String> {
        vec![
            sse(&ApiError::engine(err, Flavor::OpenAi).body()),
            SSE_DONE.to_string(),
        ]
    }
}

/// `POST /v1/completions`
pub async fn completions(
    State(state): State<AppState>,
    mutation: Mutation,
    JsonBody(request): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    let mut common = request.common;
    common.model = llama_server::model_name(&state, Some(&common.model))?;
    mutation.allow_downloads(
        &state,
        &common.model,
        common.adapters.as_deref(),
        Flavor::OpenAi,
    )?;
    if let Some(field) = request.tools.present() {
        return Err(ApiError::bad_request(format!(
            "`{field}` is only for /v1/chat/completions (a raw prompt has no chat template \
             to show tools with)"
        )));
    }
    let config = common
        .params(false)?
        .into_config(state.settings.max_tokens_cap, "max_tokens")?;
    let wants_logprobs = config.logprobs.is_some();
    let prompt = prompt_of(request.prompt)?;
    let tokens: TokenStream = state
        .engine
        .generate(&common.model, prompt, config)
        .await
        .map_err(engine_error)?;
    let id = new_id("cmpl");
    if common.stream {
        let framer = TextFramer {
            id,
            created: unix_now(),
            model: common.model.clone(),
            include_usage: common.include_usage(),
            text: None,
            logprobs: Vec::new(),
            offset: 0,
        };
        return Ok(sse_response(streaming::body(tokens, framer)));
    }
    let (text, tokens, done) = tokens.collect().await.map_err(engine_error)?;
    let logprobs = match wants_logprobs {
        true => logprobs::openai_completion(&tokens, &mut 0),
        false => Value::Null,
    };
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": unix_now(),
        "model": common.model,
        "system_fingerprint": done.backend,
        "choices": [{
            "index": 0,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": done.finish_reason.as_openai(),
        }],
        "usage": usage(&done),
        "timings": timings(&done),
    }))
    .into_response())
}

struct TextFramer {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    text: Option<Slotted>,
    /// Tokens of the next text chunk (when logprobs were asked for).
    logprobs: Vec<TokenLogprobs>,
    /// Characters of completion text already sent, for `text_offset`.
    offset: usize,
}

impl TextFramer {
    fn chunk(&self, text: &str, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "text": text, "logprobs": null, "finish_reason": finish }],
        })
    }
}

impl Framer for TextFramer {
    fn logprobs(&mut self, tokens: Vec<TokenLogprobs>) -> Vec<String> {
        self.logprobs.extend(tokens);
        Vec::new()
    }

    fn text(&mut self, text: &str) -> Vec<String> {
        if !self.logprobs.is_empty() {
            let mut chunk = self.chunk(text, None);
            chunk["choices"][0]["logprobs"] =
                logprobs::openai_completion(&self.logprobs, &mut self.offset);
            self.logprobs.clear();
            return vec![sse(&chunk)];
        }
        let frame = match &self.text {
            Some(slotted) => slotted,
            None => {
                let frame = sse(&self.chunk(SLOT, None));
                self.text.insert(Slotted::new(&frame))
            }
        };
        vec![frame.fill(text)]
    }

    fn done(&mut self, done: &Completion) -> Vec<String> {
        let mut frames = match self.logprobs.is_empty() {
            true => Vec::new(),
            false => self.text(""),
        };
        let mut last = self.chunk("", Some(done.finish_reason.as_openai()));
        if self.include_usage {
            last["usage"] = usage(done);
        }
        last["timings"] = timings(done);
        frames.extend([sse(&last), SSE_DONE.to_string()]);
        frames
    }

    fn error(&mut self, err: &EngineError) -> Vec<String> {
        vec![
            sse(&ApiError::engine(err, Flavor::OpenAi).body()),
            SSE_DONE.to_string(),
        ]
    }
}

/// `GET /v1/models`
pub async fn list_models(State(state): State<AppState>) -> Json<Value> {
    let created = unix_now();
    let mut names: Vec<String> = state.engine.models().into_keys().collect();
    for loaded in state.engine.loaded() {
        if !names.contains(&loaded.name) {
            names.push(loaded.name);
        }
    }
    let data: Vec<Value> = names
        .into_iter()
        .map(
            |id| json!({ "id": id, "object": "model", "created": created, "owned_by": "llmlocal" }),
        )
        .collect();
    Json(json!({ "object": "list", "data": data }))
}
