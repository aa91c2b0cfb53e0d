//! Ollama's completion routes: `/api/generate` and `/api/chat` (NDJSON streaming by
//! default, `"stream": false` for one answer).

use super::{engine_error, ndjson_response};
use crate::{
    engine::{
        tools::{parse::Parsed, stream::CallBuffer},
        ChatMessage, Completion, Constraint, EngineError, Prompt, TokenLogprobs, Tools,
    },
    server::{
        error::{ApiError, Flavor},
        extract::JsonBody,
        guard::Mutation,
        keep_alive::{KeepAlive, KeepAliveGuard},
        logprobs,
        params::{Params, StopField},
        streaming::{self, ndjson, Framer},
        tools, AppState,
    },
};
use axum::{
    extract::State,
    response::{IntoResponse, Response},
    Json,
};
use chrono::{SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize, Default)]
pub struct Options {
    pub num_predict: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub typical_p: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub repeat_last_n: Option<i64>,
    /// Every other option: a load setting the server's config decides ([`LOAD_OPTIONS`], a
    /// documented no-op) or a 400 naming it.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// Ollama options that set how a model is loaded (context, threads, GPU layers, batch,
/// memory mapping). A loaded model here is shared by every request, so these come from the
/// server's config (`context_length`, `threads`, ...) and a request's are ignored (README).
pub const LOAD_OPTIONS: &[&str] = &[
    "num_ctx",
    "num_thread",
    "num_gpu",
    "main_gpu",
    "num_batch",
    "use_mmap",
    "use_mlock",
    "numa",
    "low_vram",
    "num_keep",
];

impl Options {
    /// A created model's stored options (`/api/create` `parameters`), parsed as a request's.
    pub fn stored(parameters: &serde_json::Map<String, Value>) -> Result<Options, String> {
        let options: Options = serde_json::from_value(Value::Object(parameters.clone()))
            .map_err(|e| format!("parameters: {e}"))?;
        options.check().map_err(|e| e.message)?;
        Ok(options)
    }

    /// These options over `defaults` (a created model's): each option this request sets wins.
    fn over(mut self, defaults: Options) -> Options {
        macro_rules! fill {
            ($($field:ident),*) => { $( self.$field = self.$field.or(defaults.$field); )* };
        }
        fill!(
            num_predict,
            temperature,
            top_p,
            top_k,
            min_p,
            repeat_penalty,
            typical_p,
            presence_penalty,
            frequency_penalty,
            seed,
            stop,
            repeat_last_n
        );
        for (key, value) in defaults.other {
            self.other.entry(key).or_insert(value);
        }
        self
    }

    /// Refuses sampling options no backend implements (mirostat, tfs_z, ...) by name.
    fn check(&self) -> Result<(), ApiError> {
        match self
            .other
            .keys()
            .find(|k| !LOAD_OPTIONS.contains(&k.as_str()))
        {
            Some(key) => Err(ApiError::bad_request(format!(
                "options.{key} is not supported by this server; leave it out"
            ))
            .flavor(Flavor::Ollama)),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    pub model: String,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub raw: bool,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub options: Option<Options>,
    /// Seconds or a duration (`"5m"`): how long the model stays loaded after this request;
    /// 0 unloads it, negative keeps it.
    #[serde(default)]
    pub keep_alive: Option<Value>,
    /// JSON mode (`"json"`) or structured outputs (a JSON schema).
    #[serde(default)]
    pub format: Option<Value>,
    /// Extension: the backend plugin to run the model with.
    #[serde(default)]
    pub backend: Option<String>,
    /// Extension: LoRA adapters for this request, `"SPEC[:scale]"` strings.
    #[serde(default)]
    pub adapters: Option<Vec<String>>,
    /// Chat only: read to refuse it with a 400 rather than ignore it.
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(flatten)]
    pub logprobs: LogprobsFields,
}

/// Ollama's `logprobs: true` and `top_logprobs: 0..=20` (chat and generate).
#[derive(Debug, Deserialize, Default)]
pub struct LogprobsFields {
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<i64>,
}

impl LogprobsFields {
    fn count(&self) -> Result<Option<u32>, ApiError> {
        let bad = |e: ApiError| e.flavor(Flavor::Ollama);
        let top = match self.top_logprobs {
            None => 0,
            Some(n) => logprobs::top_count("top_logprobs", n).map_err(bad)?,
        };
        match (self.logprobs.unwrap_or(false), self.top_logprobs.is_some()) {
            (true, _) => Ok(Some(top)),
            (false, true) => Err(bad(ApiError::bad_request(
                "top_logprobs needs logprobs: true",
            ))),
            (false, false) => Ok(None),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct InMessage {
    pub role: String,
    /// `null` in an assistant message that only calls tools.
    #[serde(default)]
    pub content: Option<String>,
    /// An assistant message's calls (`arguments` as an object).
    #[serde(default)]
    pub tool_calls: Option<Vec<tools::OllamaCall>>,
    /// A `tool` message: the function the result is from.
    #[serde(default)]
    pub tool_name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    #[serde(default)]
    pub messages: Vec<InMessage>,
    /// Functions the model may call (OpenAI's shape); the model decides whether to.
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub options: Option<Options>,
    /// Seconds or a duration (`"5m"`): how long the model stays loaded after this request;
    /// 0 unloads it, negative keeps it.
    #[serde(default)]
    pub keep_alive: Option<Value>,
    /// JSON mode (`"json"`) or structured outputs (a JSON schema).
    #[serde(default)]
    pub format: Option<Value>,
    #[serde(default)]
    pub backend: Option<String>,
    /// Extension: LoRA adapters for this request, `"SPEC[:scale]"` strings.
    #[serde(default)]
    pub adapters: Option<Vec<String>>,
    #[serde(flatten)]
    pub logprobs: LogprobsFields,
}

fn params(
    options: Option<Options>,
    backend: Option<String>,
    adapters: Option<Vec<String>>,
) -> Result<Params, ApiError> {
    let o = options.unwrap_or_default();
    o.check()?;
    Ok(Params {
        // Ollama: -1 = no limit, -2 = fill the context; both mean "up to the cap" here.
        max_tokens: o.num_predict.filter(|&n| n > 0),
        temperature: o.temperature,
        top_p: o.top_p,
        top_k: o.top_k,
        min_p: o.min_p,
        repeat_penalty: o.repeat_penalty,
        repeat_last_n: o.repeat_last_n,
        typical_p: o.typical_p,
        presence_penalty: o.presence_penalty,
        frequency_penalty: o.frequency_penalty,
        logit_bias: None,
        constraint: None,
        seed: o.seed,
        stop: o.stop.map(StopField::into_vec).unwrap_or_default(),
        backend,
        ignore_eos: false,
        adapters,
        cache_prompt: None,
        logprobs: None,
    })
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn ns(ms: f64) -> u64 {
    (ms * 1_000_000.0).max(0.0) as u64
}

/// The final fields Ollama reports (durations in nanoseconds).
fn final_fields(done: &Completion) -> Value {
    json!({
        "done": true,
        "done_reason": done.finish_reason.as_openai(),
        "total_duration": ns(done.total_ms),
        "load_duration": ns(done.load_ms),
        // As Ollama: every prompt token, cached or not; the cached ones also on their own.
        "prompt_eval_count": done.prompt_tokens,
        "prompt_eval_cached_count": done.cached_tokens,
        "prompt_eval_duration": ns(done.prompt_ms()),
        "eval_count": done.completion_tokens,
        "eval_duration": ns(done.decode_ms()),
    })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

/// How a chat or generate answer carries text.
#[derive(Clone, Copy)]
enum Shape {
    Generate,
    Chat,
}

struct OllamaFramer {
    model: String,
    shape: Shape,
    /// Applies the request's keep_alive when the answer is done (the body is dropped).
    _keep: Option<KeepAliveGuard>,
    /// Tokens of the next piece (when logprobs were asked for).
    logprobs: Vec<TokenLogprobs>,
    /// With tools: holds back text that may be a call (see [`CallBuffer`]).
    calls: Option<CallBuffer>,
}

impl OllamaFramer {
    fn piece(&self, text: &str, done: bool) -> Value {
        let mut value = json!({ "model": self.model, "created_at": now_rfc3339(), "done": done });
        match self.shape {
            Shape::Generate => value["response"] = json!(text),
            Shape::Chat => value["message"] = json!({ "role": "assistant", "content": text }),
        }
        value
    }

    /// A chat piece that carries the answer's calls, as Ollama sends them.
    fn answer(&self, answer: &Parsed, done: bool) -> Value {
        let mut value = self.piece(&answer.content, done);
        if !answer.calls.is_empty() {
            value["message"]["tool_calls"] = tools::ollama_calls(&answer.calls);
        }
        value
    }
}

impl OllamaFramer {
    /// A piece with the tokens that produced it, when logprobs were asked for.
    fn piece_with_logprobs(&mut self, text: &str, done: bool) -> Value {
        let mut value = self.piece(text, done);
        if !self.logprobs.is_empty() {
            value["logprobs"] = logprobs::ollama(&self.logprobs);
            self.logprobs.clear();
        }
        value
    }
}

impl Framer for OllamaFramer {
    fn logprobs(&mut self, tokens: Vec<TokenLogprobs>) -> Vec<String> {
        self.logprobs.extend(tokens);
        Vec::new()
    }

    fn text(&mut self, text: &str) -> Vec<String> {
        if self.calls.is_none() {
            return vec![ndjson(&self.piece_with_logprobs(text, false))];
        }
        match tools::release(&mut self.calls, text) {
            Some(released) => vec![ndjson(&self.piece(&released, false))],
            None => Vec::new(),
        }
    }

    fn done(&mut self, done: &Completion) -> Vec<String> {
        let mut frames = Vec::new();
        if let Some(calls) = self.calls.take() {
            let answer = calls.finish();
            if !answer.content.is_empty() || !answer.calls.is_empty() {
                frames.push(ndjson(&self.answer(&answer, false)));
            }
        }
        let last = self.piece_with_logprobs("", true);
        frames.push(ndjson(&merge(last, final_fields(done))));
        frames
    }

    fn error(&mut self, err: &EngineError) -> Vec<String> {
        vec![ndjson(&json!({ "error": err.to_string() }))]
    }
}

async fn run(
    state: &AppState,
    model: String,
    prompt: Prompt,
    (params, call_tools): (Params, Option<Tools>),
    stream: bool,
    shape: Shape,
    keep: Option<KeepAliveGuard>,
) -> Result<Response, ApiError> {
    let mut config = params
        .into_config(state.settings.max_tokens_cap, "num_predict")
        .map_err(|e| e.flavor(Flavor::Ollama))?;
    let wants_logprobs = config.logprobs.is_some();
    config.tools = call_tools.clone();
    let tokens = state
        .engine
        .generate(&model, prompt, config)
        .await
        .map_err(engine_error)?;
    let framer = OllamaFramer {
        model,
        shape,
        _keep: keep,
        logprobs: Vec::new(),
        calls: tools::call_buffer(call_tools.as_ref()),
    };
    if stream {
        return Ok(ndjson_response(streaming::body(tokens, framer)));
    }
    let (text, tokens, done) = tokens.collect().await.map_err(engine_error)?;
    let answer = tools::parse_answer(text, call_tools.as_ref());
    let mut value = merge(framer.answer(&answer, true), final_fields(&done));
    if wants_logprobs {
        value["logprobs"] = logprobs::ollama(&tokens);
    }
    Ok(Json(value).into_response())
}

/// An empty prompt only loads the model (`done_reason: "load"`), as Ollama does.
async fn load_only(
    state: &AppState,
    model: &str,
    backend: Option<&str>,
    adapters: Option<&[String]>,
    shape: Shape,
) -> Result<Response, ApiError> {
    let engine = &state.engine;
    match adapters {
        Some(adapters) => engine.load_with_adapters(model, backend, adapters).await,
        None => engine.load(model, backend).await,
    }
    .map_err(engine_error)?;
    let framer = OllamaFramer {
        model: model.to_string(),
        shape,
        _keep: None,
        logprobs: Vec::new(),
        calls: None,
    };
    let value = merge(framer.piece("", true), json!({ "done_reason": "load" }));
    Ok(Json(value).into_response())
}

/// `format`: JSON mode (`"json"`: one JSON object) or structured outputs (a JSON schema),
/// both as a JSON-schema constraint for the backend.
fn format_constraint(format: Option<&Value>) -> Result<Option<Constraint>, String> {
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        // Ollama's JSON mode: one JSON object.
        Some(Value::String(s)) if s == "json" => Ok(Some(Constraint::JsonSchema(
            r#"{"type":"object"}"#.to_string(),
        ))),
        // Structured outputs: the value is the schema.
        Some(schema @ Value::Object(_)) => Ok(Some(Constraint::JsonSchema(schema.to_string()))),
        Some(other) => Err(format!(
            "format {other} is not supported: use \"json\" or a JSON schema object"
        )),
    }
}

/// The request's keep-alive, applied when the returned guard drops.
fn keep_alive_of(
    state: &AppState,
    model: &str,
    keep_alive: Option<&Value>,
) -> Result<Option<KeepAliveGuard>, ApiError> {
    let bad = |message: String| ApiError::bad_request(message).flavor(Flavor::Ollama);
    let keep = KeepAlive::from_field(keep_alive).map_err(bad)?;
    Ok(keep.map(|k| KeepAliveGuard::new(&state.engine, model, k)))
}

/// A load-only request with `keep_alive: 0`: unload, as Ollama does (`done_reason: "unload"`).
fn unload_now(state: &AppState, model: &str, shape: Shape) -> Response {
    state.engine.unload(model);
    let framer = OllamaFramer {
        model: model.to_string(),
        shape,
        _keep: None,
        logprobs: Vec::new(),
        calls: None,
    };
    let value = merge(framer.piece("", true), json!({ "done_reason": "unload" }));
    Json(value).into_response()
}

/// What a created model (`/api/create`) gives requests that do not say otherwise.
#[derive(Default)]
struct Defaults {
    system: Option<String>,
    options: Options,
}

impl Defaults {
    fn of(state: &AppState, model: &str) -> Result<Defaults, ApiError> {
        // A configured model of the same name shadows a created one (see `Store::register`).
        let configured = state.engine.settings().models.contains_key(model);
        let Some(stored) = state.created.get(model).filter(|_| !configured) else {
            return Ok(Defaults::default());
        };
        let options = Options::stored(&stored.parameters).map_err(|e| {
            ApiError::bad_request(format!("created model `{model}` has invalid {e}"))
                .flavor(Flavor::Ollama)
        })?;
        Ok(Defaults {
            system: stored.system,
            options,
        })
    }

    /// The stored system prompt first, unless the conversation has its own.
    fn with_system(&mut self, mut messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
        match self.system.take() {
            Some(system) if !messages.iter().any(|m| m.role == "system") => {
                messages.insert(0, ChatMessage::new("system", system));
                messages
            }
            _ => messages,
        }
    }
}

/// `POST /api/generate`
pub async fn generate(
    State(state): State<AppState>,
    mutation: Mutation,
    JsonBody(request): JsonBody<GenerateRequest>,
) -> Result<Response, ApiError> {
    mutation.allow_downloads(
        &state,
        &request.model,
        request.adapters.as_deref(),
        Flavor::Ollama,
    )?;
    if request.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(ApiError::bad_request(
            "`tools` is only for /api/chat (a generate prompt has no conversation to call \
             tools in)",
        )
        .flavor(Flavor::Ollama));
    }
    let defaults = Defaults::of(&state, &request.model)?;
    let prompt_text = request.prompt.unwrap_or_default();
    let load_only_request = prompt_text.is_empty() && request.system.is_none();
    let system = request.system.or(defaults.system);
    let constraint = format_constraint(request.format.as_ref())
        .map_err(|m| ApiError::bad_request(m).flavor(Flavor::Ollama))?;
    let keep = keep_alive_of(&state, &request.model, request.keep_alive.as_ref())?;
    if load_only_request && keep.as_ref().is_some_and(|k| k.unloads()) {
        return Ok(unload_now(&state, &request.model, Shape::Generate));
    }
    if load_only_request {
        return load_only(
            &state,
            &request.model,
            request.backend.as_deref(),
            request.adapters.as_deref(),
            Shape::Generate,
        )
        .await;
    }
    let prompt = if request.raw {
        Prompt::Text(prompt_text)
    } else {
        // The engine picks the model's chat template, or Ollama's `{{ .Prompt }}` for a
        // model without one.
        Prompt::Completion {
            system,
            prompt: prompt_text,
        }
    };
    let options = request.options.unwrap_or_default().over(defaults.options);
    let mut params = params(Some(options), request.backend, request.adapters)?;
    params.constraint = constraint;
    params.logprobs = request.logprobs.count()?;
    let stream = request.stream.unwrap_or(true);
    run(
        &state,
        request.model,
        prompt,
        (params, None),
        stream,
        Shape::Generate,
        keep,
    )
    .await
}

/// `POST /api/chat`
pub async fn chat(
    State(state): State<AppState>,
    mutation: Mutation,
    JsonBody(request): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    mutation.allow_downloads(
        &state,
        &request.model,
        request.adapters.as_deref(),
        Flavor::Ollama,
    )?;
    let constraint = format_constraint(request.format.as_ref())
        .map_err(|m| ApiError::bad_request(m).flavor(Flavor::Ollama))?;
    let keep = keep_alive_of(&state, &request.model, request.keep_alive.as_ref())?;
    if request.messages.is_empty() && keep.as_ref().is_some_and(|k| k.unloads()) {
        return Ok(unload_now(&state, &request.model, Shape::Chat));
    }
    if request.messages.is_empty() {
        return load_only(
            &state,
            &request.model,
            request.backend.as_deref(),
            request.adapters.as_deref(),
            Shape::Chat,
        )
        .await;
    }
    let mut defaults = Defaults::of(&state, &request.model)?;
    let bad = |m: String| ApiError::bad_request(m).flavor(Flavor::Ollama);
    let call_tools = tools::ollama_tools(request.tools.as_ref()).map_err(bad)?;
    let messages = request
        .messages
        .into_iter()
        .enumerate()
        .map(|(index, m)| {
            let mut message = ChatMessage::new(m.role, m.content.unwrap_or_default());
            tools::ollama_message_tools(&mut message, index, m.tool_calls, m.tool_name)
                .map(|()| message)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let messages = defaults.with_system(messages);
    let options = request.options.unwrap_or_default().over(defaults.options);
    let mut params = params(Some(options), request.backend, request.adapters)?;
    params.constraint = constraint;
    params.logprobs = request.logprobs.count()?;
    let stream = request.stream.unwrap_or(true);
    run(
        &state,
        request.model,
        Prompt::Chat(messages),
        (params, call_tools),
        stream,
        Shape::Chat,
        keep,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_becomes_a_json_schema_constraint() {
        assert_eq!(format_constraint(None), Ok(None));
        assert_eq!(format_constraint(Some(&json!(""))), Ok(None));
        assert_eq!(format_constraint(Some(&json!(null))), Ok(None));
        assert_eq!(
            format_constraint(Some(&json!("json"))),
            Ok(Some(Constraint::JsonSchema(r#"{"type":"object"}"#.into())))
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(
            format_constraint(Some(&schema)),
            Ok(Some(Constraint::JsonSchema(schema.to_string())))
        );
        let err = format_constraint(Some(&json!("yaml"))).expect_err("not a format");
        assert!(err.contains("\"json\" or a JSON schema"), "{err}");
    }
}
