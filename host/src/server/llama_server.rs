//! llama-server's native routes, for apps written against llama.cpp's server:
//! `POST /completion`, `/tokenize`, `/detokenize`, `/apply-template`, `GET /props`, `/slots`
//! (read-only) and `/v1/models/{id}`; plus llama-server's rule that `model` may be left out
//! when this server serves exactly one model ([`model_name`]).
//!
//! Field names and response shapes follow llama.cpp's `tools/server/README.md`. Request
//! bodies refuse unknown fields (a 400 naming the field) rather than ignore them: llama-server
//! has many sampler knobs (`mirostat`, `dry_*`, `samplers`, …) this server does not have.

use super::{
    error::{ApiError, Flavor},
    extract::JsonBody,
    guard::Mutation,
    logprobs,
    openai::{self, InMessage},
    params::{unix_now, Params},
    streaming::{self, sse, Framer},
    AppState,
};
use crate::{
    engine::{Completion, EngineError, FinishReason, GenerationConfig, TokenLogprobs},
    plugins::Sampling,
};
use axum::{
    extract::{Path, Query, State},
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The names this server serves: configured models, then loaded ones not configured.
pub fn served_models(state: &AppState) -> Vec<String> {
    let mut names: Vec<String> = state.engine.models().into_keys().collect();
    for loaded in state.engine.loaded() {
        if !names.contains(&loaded.name) {
            names.push(loaded.name);
        }
    }
    names
}

/// The model a request means. A name given is used as given (an unknown one is the
/// engine's 404); none (or `""`) means the one model served, as llama-server has it, and is
/// a 400 when there are several or none.
pub fn model_name(state: &AppState, asked: Option<&str>) -> Result<String, ApiError> {
    if let Some(name) = asked.filter(|n| !n.is_empty()) {
        return Ok(name.to_string());
    }
    match served_models(state).as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ApiError::bad_request(
            "missing `model`, and this server has no model configured or loaded",
        )),
        many => Err(ApiError::bad_request(format!(
            "missing `model`: this server serves {} models ({}); name one",
            many.len(),
            many.join(", ")
        ))),
    }
}

fn engine_error(err: EngineError) -> ApiError {
    ApiError::engine(&err, Flavor::OpenAi)
}

/// `POST /completion` as llama-server reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    /// A string, a list of token ids, or a list holding one of them.
    pub prompt: Value,
    #[serde(default)]
    pub model: Option<String>,
    /// The most tokens to generate; -1 (the default) = up to the server's cap.
    pub n_predict: Option<i64>,
    /// Alternatives per token in `completion_probabilities` (0 to 20).
    pub n_probs: Option<i64>,
    pub cache_prompt: Option<bool>,
    #[serde(default)]
    pub stream: bool,
    pub stop: Option<Vec<String>>,
    pub temperature: Option<f64>,
    pub top_k: Option<i64>,
    pub top_p: Option<f64>,
    pub min_p: Option<f64>,
    pub typical_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    /// The penalties' window (0 to 65536; -1, the whole context, is a 400).
    pub repeat_last_n: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// -1 = random.
    pub seed: Option<i64>,
    #[serde(default)]
    pub ignore_eos: bool,
    pub grammar: Option<String>,
    pub json_schema: Option<Value>,
    /// `[[id, bias]]` (`false` bans the token) or `{"id": bias}`.
    pub logit_bias: Option<Value>,
    /// Return the generated token ids in `tokens`.
    #[serde(default)]
    pub return_tokens: bool,
}

impl CompletionRequest {
    fn params(&self) -> Result<(Params, u32), ApiError> {
        let n_probs = match self.n_probs {
            None => 0,
            Some(n) => logprobs::top_count("n_probs", n)?,
        };
        let constraint = match (&self.grammar, &self.json_schema) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "give at most one of grammar and json_schema",
                ))
            }
            (Some(g), None) => Some(crate::engine::Constraint::Grammar(g.clone())),
            (None, Some(s)) => Some(crate::engine::Constraint::JsonSchema(s.to_string())),
            (None, None) => None,
        };
        let params = Params {
            // -1: no limit of its own (the server's cap applies).
            max_tokens: self.n_predict.filter(|&n| n != -1),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            typical_p: self.typical_p,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: logit_bias(self.logit_bias.as_ref())?,
            constraint,
            seed: self.seed,
            stop: self.stop.clone().unwrap_or_default(),
            backend: None,
            ignore_eos: self.ignore_eos,
            adapters: None,
            cache_prompt: self.cache_prompt,
            logprobs: (n_probs > 0).then_some(n_probs),
        };
        Ok((params, n_probs))
    }
}

/// llama-server's `logit_bias` forms as OpenAI's map (`false` = -100, a ban).
fn logit_bias(value: Option<&Value>) -> Result<Option<Map<String, Value>>, ApiError> {
    let bias_of = |v: &Value| match v {
        Value::Bool(false) => Ok(json!(-100)),
        Value::Number(_) => Ok(v.clone()),
        other => Err(ApiError::bad_request(format!(
            "logit_bias: a bias must be a number or false, got {other}"
        ))),
    };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map.clone())),
        Some(Value::Array(pairs)) => pairs
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([Value::Number(id), bias]) => Ok((id.to_string(), bias_of(bias)?)),
                _ => Err(ApiError::bad_request(format!(
                    "logit_bias entries must be [token id, bias] pairs (token strings are not \
                     supported), got {pair}"
                ))),
            })
            .collect::<Result<Map<_, _>, _>>()
            .map(Some),
        Some(other) => Err(ApiError::bad_request(format!(
            "logit_bias must be a list of [token id, bias] pairs or an object, got {other}"
        ))),
    }
}

/// What the answer reports besides the text.
struct Answer {
    model: String,
    settings: Value,
    n_probs: u32,
    return_tokens: bool,
}

impl Answer {
    /// The final object (streamed as the last event with `content: ""`).
    fn last(&self, content: &str, tokens: &[TokenLogprobs], done: &Completion) -> Value {
        let (stop_type, word) = match (done.finish_reason, &done.stop_sequence) {
            (FinishReason::Stop, Some(word)) => ("word", word.as_str()),
            (FinishReason::Stop, None) => ("eos", ""),
            (FinishReason::Length | FinishReason::ContextFull, _) => ("limit", ""),
        };
        let mut value = json!({
            "index": 0,
            "content": content,
            "tokens": self.ids(tokens),
            "id_slot": 0,
            "stop": true,
            "model": self.model,
            "tokens_predicted": done.completion_tokens,
            "tokens_evaluated": done.prompt_tokens,
            "tokens_cached": done.cached_tokens,
            "generation_settings": self.settings,
            "has_new_line": content.contains('\n'),
            "truncated": done.finish_reason == FinishReason::ContextFull,
            "stop_type": stop_type,
            "stopping_word": word,
            "timings": openai::timings(done),
        });
        if self.n_probs > 0 {
            value["completion_probabilities"] = logprobs::llama_server(tokens);
        }
        value
    }

    fn ids(&self, tokens: &[TokenLogprobs]) -> Vec<u32> {
        match self.return_tokens {
            true => tokens.iter().map(|t| t.chosen.id).collect(),
            false => Vec::new(),
        }
    }
}

/// Streams `data: {...}` events as llama-server does: one per piece, then the final object;
/// no `[DONE]`.
struct LlamaFramer {
    answer: Answer,
    pending: Vec<TokenLogprobs>,
    prompt_tokens: u32,
}

impl Framer for LlamaFramer {
    fn logprobs(&mut self, tokens: Vec<TokenLogprobs>) -> Vec<String> {
        self.pending.extend(tokens);
        Vec::new()
    }

    fn text(&mut self, text: &str) -> Vec<String> {
        let tokens = std::mem::take(&mut self.pending);
        let mut value = json!({
            "index": 0,
            "content": text,
            "tokens": tokens.iter().map(|t| t.chosen.id).collect::<Vec<_>>(),
            "stop": false,
            "id_slot": 0,
            "tokens_evaluated": self.prompt_tokens,
        });
        if self.answer.n_probs > 0 {
            value["completion_probabilities"] = logprobs::llama_server(&tokens);
        }
        vec![sse(&value)]
    }

    fn done(&mut self, done: &Completion) -> Vec<String> {
        let tokens = std::mem::take(&mut self.pending);
        let mut frames = Vec::new();
        if !tokens.is_empty() {
            // Tokens of a character cut short at the end: their own event, as text would be.
            self.pending = tokens;
            frames.extend(self.text(""));
        }
        frames.push(sse(&self.answer.last("", &[], done)));
        frames
    }

    fn error(&mut self, err: &EngineError) -> Vec<String> {
        vec![sse(&ApiError::engine(err, Flavor::OpenAi).body())]
    }
}

/// llama-server's `generation_settings`: the sampling the request ran with.
fn generation_settings(
    config: &GenerationConfig,
    model: &str,
    n_ctx: Option<u32>,
    n_probs: u32,
    stream: bool,
) -> Value {
    let d = Sampling::default();
    json!({
        "model": model,
        "n_ctx": n_ctx,
        "n_predict": config.max_tokens.map_or(-1, i64::from),
        // llama-server's spelling of "random": u32::MAX.
        "seed": config.seed.unwrap_or(u64::from(u32::MAX)),
        "temperature": config.temperature.unwrap_or(d.temperature),
        "top_k": config.top_k.unwrap_or(d.top_k),
        "top_p": config.top_p.unwrap_or(d.top_p),
        "min_p": config.min_p.unwrap_or(d.min_p),
        "typical_p": config.typical_p.unwrap_or(d.typical_p),
        "repeat_last_n": d.repeat_last_n,
        "repeat_penalty": config.repeat_penalty.unwrap_or(d.repeat_penalty),
        "presence_penalty": config.presence_penalty.unwrap_or(d.presence_penalty),
        "frequency_penalty": config.frequency_penalty.unwrap_or(d.frequency_penalty),
        "stop": config.stop,
        "ignore_eos": config.ignore_eos,
        "stream": stream,
        "n_probs": n_probs,
        "cache_prompt": config.cache_prompt.unwrap_or(true),
    })
}

fn context_of(state: &AppState, model: &str) -> Option<u32> {
    state
        .engine
        .loaded()
        .into_iter()
        .find(|l| l.name == model)
        .map(|l| l.metadata.context_length)
}

/// `POST /completion`
pub async fn completion(
    State(state): State<AppState>,
    mutation: Mutation,
    JsonBody(request): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    let model = model_name(&state, request.model.as_deref())?;
    mutation.allow_downloads(&state, &model, None, Flavor::OpenAi)?;
    let (params, n_probs) = request.params()?;
    let mut config = params.into_config(state.settings.max_tokens_cap, "n_predict")?;
    // Streamed events always carry their token ids, as llama-server's do.
    config.token_ids = request.return_tokens || request.stream;
    let prompt = openai::prompt_of(request.prompt)?;
    let settings_config = state.engine.with_defaults(&model, config.clone());
    let tokens = state
        .engine
        .generate(&model, prompt, config)
        .await
        .map_err(engine_error)?;
    let settings = generation_settings(
        &settings_config,
        &model,
        context_of(&state, &model),
        n_probs,
        request.stream,
    );
    let answer = Answer {
        model,
        settings,
        n_probs,
        return_tokens: request.return_tokens,
    };
    if request.stream {
        let framer = LlamaFramer {
            answer,
            pending: Vec::new(),
            prompt_tokens: tokens.prompt_tokens,
        };
        return Ok(openai::sse_response(streaming::body(tokens, framer)));
    }
    let (text, tokens, done) = tokens.collect().await.map_err(engine_error)?;
    Ok(Json(answer.last(&text, &tokens, &done)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    pub content: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub add_special: bool,
    #[serde(default = "yes")]
    pub parse_special: bool,
    #[serde(default)]
    pub with_pieces: bool,
}

fn yes() -> bool {
    true
}

/// Runs blocking model work (tokenizer, template) off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ApiError::engine(&EngineError::Internal(err.to_string()), Flavor::OpenAi))?
        .map_err(engine_error)
}

/// `POST /tokenize`
pub async fn tokenize(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<TokenizeRequest>,
) -> Result<Response, ApiError> {
    let model = model_name(&state, request.model.as_deref())?;
    let view = state.engine.view(&model).await.map_err(engine_error)?;
    let tokens = blocking(move || {
        let ids = view.tokenize(&request.content, request.add_special, request.parse_special)?;
        if !request.with_pieces {
            return Ok(json!(ids));
        }
        let pieces = view.pieces(&ids);
        Ok(ids
            .iter()
            .zip(pieces)
            .map(|(id, piece)| json!({ "id": id, "piece": piece }))
            .collect())
    })
    .await?;
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    pub tokens: Vec<Value>,
    #[serde(default)]
    pub model: Option<String>,
}

/// `POST /detokenize`
pub async fn detokenize(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<DetokenizeRequest>,
) -> Result<Response, ApiError> {
    let model = model_name(&state, request.model.as_deref())?;
    let ids = openai::token_ids("tokens", &request.tokens)?;
    let view = state.engine.view(&model).await.map_err(engine_error)?;
    let content = blocking(move || view.detokenize(&ids)).await?;
    Ok(Json(json!({ "content": content })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyTemplateRequest {
    pub messages: Vec<InMessage>,
    #[serde(default)]
    pub model: Option<String>,
}

/// `POST /apply-template`: the prompt the model's chat template makes of `messages`.
pub async fn apply_template(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<ApplyTemplateRequest>,
) -> Result<Response, ApiError> {
    let model = model_name(&state, request.model.as_deref())?;
    let messages = openai::messages_of(request.messages)?;
    let view = state.engine.view(&model).await.map_err(engine_error)?;
    let prompt = blocking(move || view.apply_template(&messages)).await?;
    Ok(Json(json!({ "prompt": prompt })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelQuery {
    #[serde(default)]
    pub model: Option<String>,
}

/// The defaults a `/completion` without sampling fields runs with.
fn default_params(state: &AppState, model: &str, n_ctx: u32) -> Value {
    let config = GenerationConfig {
        max_tokens_cap: Some(state.settings.max_tokens_cap),
        ..GenerationConfig::default()
    };
    let config = state.engine.with_defaults(model, config);
    generation_settings(&config, model, Some(n_ctx), 0, false)
}

/// `GET /props` (read-only), for the one model served or `?model=NAME`.
pub async fn props(
    State(state): State<AppState>,
    Query(query): Query<ModelQuery>,
) -> Result<Response, ApiError> {
    let model = model_name(&state, query.model.as_deref())?;
    let view = state.engine.view(&model).await.map_err(engine_error)?;
    let n_ctx = view.metadata.context_length;
    Ok(Json(json!({
        "default_generation_settings": {
            "id": 0,
            "n_ctx": n_ctx,
            "is_processing": false,
            "params": default_params(&state, &model, n_ctx),
        },
        "total_slots": view.parallel,
        "model_path": view.path.display().to_string(),
        "model_alias": model,
        "chat_template": view.template.source(),
        "modalities": { "vision": false, "audio": false },
        "build_info": format!("llmlocal {}", env!("CARGO_PKG_VERSION")),
    }))
    .into_response())
}

/// `GET /slots` (read-only): one entry per generation the model runs at once.
pub async fn slots(
    State(state): State<AppState>,
    Query(query): Query<ModelQuery>,
) -> Result<Response, ApiError> {
    let model = model_name(&state, query.model.as_deref())?;
    let view = state.engine.view(&model).await.map_err(engine_error)?;
    let n_ctx = view.metadata.context_length;
    // Requests running or queued, less this one's own hold on the model.
    let busy = state
        .engine
        .busy_count(&model)
        .unwrap_or(0)
        .saturating_sub(1);
    let params = default_params(&state, &model, n_ctx);
    let slots: Vec<Value> = (0..view.parallel)
        .map(|id| {
            json!({
                "id": id,
                "n_ctx": n_ctx,
                "is_processing": id < busy,
                "params": params,
            })
        })
        .collect();
    Ok(Json(Value::Array(slots)).into_response())
}

/// `GET /v1/models/{id}` (also `/models/{id}`).
pub async fn model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !served_models(&state).contains(&id) {
        return Err(ApiError::not_found(format!(
            "model `{id}` is not served here; GET /v1/models lists those that are"
        )));
    }
    Ok(Json(json!({
        "id": id,
        "object": "model",
        "created": unix_now(),
        "owned_by": "llmlocal",
    }))
    .into_response())
}
