//! Embedding routes: OpenAI `POST /v1/embeddings`, Ollama `POST /api/embed` and the legacy
//! `POST /api/embeddings`. Each translates its request into the engine's [`EmbedInput`] and
//! [`EmbedConfig`] and its answer back; input limits, tokenizing, truncation and the
//! capability check live in the engine (`engine::embedding`). Unknown fields are a 400.
//!
//! Vectors are mean-pooled (or the model's own pooling) hidden states. `/v1/embeddings` and
//! `/api/embed` return them L2-normalised (as OpenAI's models and Ollama do), the legacy
//! `/api/embeddings` raw (as Ollama does).

use super::{
    error::{ApiError, Flavor},
    extract::JsonBody,
    guard::Mutation,
    keep_alive::{KeepAlive, KeepAliveGuard},
    openai::token_ids,
    AppState,
};
use crate::engine::{EmbedConfig, EmbedInput, EngineError};
use axum::{extract::State, Json};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// `POST /v1/embeddings` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiRequest {
    pub model: String,
    /// A string, a list of strings, a list of token ids, or a list of lists of token ids.
    pub input: Value,
    /// `float` (default) or `base64` (little-endian f32 bytes).
    pub encoding_format: Option<String>,
    /// Accepted only when equal to the model's dimension (no vector is shortened).
    pub dimensions: Option<u64>,
    /// Accepted and ignored: an end-user id OpenAI uses for abuse monitoring.
    #[allow(dead_code)]
    pub user: Option<String>,
    /// Extension: the backend plugin to run the model with.
    pub backend: Option<String>,
}

/// `POST /api/embed` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OllamaRequest {
    pub model: String,
    /// A string or a list of strings.
    pub input: Value,
    /// Cut inputs longer than the context (default); `false`: a 400 instead.
    pub truncate: Option<bool>,
    pub options: Option<Value>,
    pub keep_alive: Option<Value>,
    /// Extension: the backend plugin to run the model with.
    pub backend: Option<String>,
}

/// `POST /api/embeddings` (legacy) body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyRequest {
    pub model: String,
    /// One text; empty only loads the model (`{"embedding": []}`), as Ollama does.
    #[serde(default)]
    pub prompt: String,
    pub options: Option<Value>,
    pub keep_alive: Option<Value>,
    /// Extension: the backend plugin to run the model with.
    pub backend: Option<String>,
}

/// Ollama options that only steer sampling: accepted (embeddings do not sample) so that
/// clients sending their usual options still work; any other option is a 400.
const SAMPLING_OPTIONS: &[&str] = &[
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "seed",
    "num_predict",
    "stop",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
];

/// `POST /v1/embeddings`
pub async fn openai(
    State(state): State<AppState>,
    mutation: Mutation,
    JsonBody(request): JsonBody<OpenAiRequest>,
) -> Result<Json<Value>, ApiError> {
    let bad = |m: String| ApiError::bad_request(m);
    mutation.allow_downloads(&state, &request.model, None, Flavor::OpenAi)?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(bad(format!(
                "encoding_format {other:?} is not supported: use \"float\" or \"base64\""
            )))
        }
    };
    let input = openai_input(request.input)?;
    let config = EmbedConfig {
        normalize: true,
        truncate: false,
        backend: request.backend,
    };
    let done = state
        .engine
        .embed(&request.model, input, config)
        .await
        .map_err(|e| ApiError::engine(&e, Flavor::OpenAi))?;
    let dimension = done.vectors.first().map_or(0, Vec::len);
    if let Some(asked) = request.dimensions.filter(|&d| d != dimension as u64) {
        return Err(bad(format!(
            "dimensions {asked} is not supported: `{}` gives vectors of {dimension} values \
             (leave `dimensions` out or set it to {dimension})",
            request.model
        )));
    }
    let data: Vec<Value> = done
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = match base64 {
                true => json!(encode_base64(v)),
                false => json!(v),
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": { "prompt_tokens": done.prompt_tokens, "total_tokens": done.prompt_tokens },
    })))
}

/// `POST /api/embed`
pub async fn ollama(
    State(state): State<AppState>,
    mutation: Mutation,
    JsonBody(request): JsonBody<OllamaRequest>,
) -> Result<Json<Value>, ApiError> {
    let bad = |m: String| ApiError::bad_request(m).flavor(Flavor::Ollama);
    mutation.allow_downloads(&state, &request.model, None, Flavor::Ollama)?;
    check_options(request.options.as_ref()).map_err(bad)?;
    let texts = match request.input {
        Value::String(text) => vec![text],
        Value::Array(list) => list
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(text) => Ok(text),
                other => Err(bad(format!("input[{i}] must be a string, got {other}"))),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(bad(format!(
                "input must be a string or a list of strings, got {other}"
            )))
        }
    };
    let _keep = keep_alive(&state, &request.model, request.keep_alive.as_ref())?;
    let config = EmbedConfig {
        normalize: true,
        truncate: request.truncate.unwrap_or(true),
        backend: request.backend,
    };
    let done = state
        .engine
        .embed(&request.model, EmbedInput::Texts(texts), config)
        .await
        .map_err(ollama_error)?;
    Ok(Json(json!({
        "model": request.model,
        "embeddings": done.vectors,
        "total_duration": ns(done.total_ms),
        "load_duration": ns(done.load_ms),
        "prompt_eval_count": done.prompt_tokens,
    })))
}

/// `POST /api/embeddings` (legacy)
pub async fn legacy(
    State(state): State<AppState>,
    mutation: Mutation,
    JsonBody(request): JsonBody<LegacyRequest>,
) -> Result<Json<Value>, ApiError> {
    let bad = |m: String| ApiError::bad_request(m).flavor(Flavor::Ollama);
    mutation.allow_downloads(&state, &request.model, None, Flavor::Ollama)?;
    check_options(request.options.as_ref()).map_err(bad)?;
    let _keep = keep_alive(&state, &request.model, request.keep_alive.as_ref())?;
    if request.prompt.is_empty() {
        state
            .engine
            .load(&request.model, request.backend.as_deref())
            .await
            .map_err(ollama_error)?;
        return Ok(Json(json!({ "embedding": [] })));
    }
    let config = EmbedConfig {
        normalize: false,
        truncate: true,
        backend: request.backend,
    };
    let input = EmbedInput::Texts(vec![request.prompt]);
    let mut done = state
        .engine
        .embed(&request.model, input, config)
        .await
        .map_err(ollama_error)?;
    Ok(Json(
        json!({ "embedding": done.vectors.pop().unwrap_or_default() }),
    ))
}

/// OpenAI's `input`: a string, a list of strings, a list of token ids, or a list of lists
/// of token ids.
fn openai_input(value: Value) -> Result<EmbedInput, ApiError> {
    let list = match value {
        Value::String(text) => return Ok(EmbedInput::Texts(vec![text])),
        Value::Array(list) => list,
        other => {
            return Err(ApiError::bad_request(format!(
                "input must be a string, a list of strings, a list of token ids or a list of \
                 lists of token ids, got {other}"
            )))
        }
    };
    if list.is_empty() {
        return Err(ApiError::bad_request("input must not be an empty list"));
    }
    if list.iter().all(Value::is_number) {
        return Ok(EmbedInput::Tokens(vec![token_ids("input", &list)?]));
    }
    if list.iter().all(Value::is_string) {
        let texts = list
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        return Ok(EmbedInput::Texts(texts));
    }
    if list.iter().all(Value::is_array) {
        return list
            .iter()
            .enumerate()
            .map(|(i, ids)| match ids {
                Value::Array(ids) => token_ids(&format!("input[{i}]"), ids),
                _ => Err(ApiError::bad_request("unreachable: checked to be a list")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(EmbedInput::Tokens);
    }
    Err(ApiError::bad_request(
        "input must be a string, a list of strings, a list of token ids or a list of lists of \
         token ids (a list may not mix them)",
    ))
}

/// Ollama `options`: sampling options are no-ops for embeddings; anything else is refused.
fn check_options(options: Option<&Value>) -> Result<(), String> {
    let map: &Map<String, Value> = match options {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(format!("options must be an object, got {other}")),
    };
    match map.keys().find(|k| !SAMPLING_OPTIONS.contains(&k.as_str())) {
        Some(key) => Err(format!(
            "option `{key}` is not supported for embeddings (sampling options are accepted and \
             have no effect)"
        )),
        None => Ok(()),
    }
}

fn keep_alive(
    state: &AppState,
    model: &str,
    field: Option<&Value>,
) -> Result<Option<KeepAliveGuard>, ApiError> {
    let keep = KeepAlive::from_field(field)
        .map_err(|m| ApiError::bad_request(m).flavor(Flavor::Ollama))?;
    Ok(keep.map(|k| KeepAliveGuard::new(&state.engine, model, k)))
}

fn ollama_error(err: EngineError) -> ApiError {
    ApiError::engine(&err, Flavor::Ollama)
}

fn ns(ms: f64) -> u64 {
    (ms * 1_000_000.0).max(0.0) as u64
}

/// OpenAI's base64 encoding: the vector's f32 values as little-endian bytes.
fn encode_base64(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_input_shapes() {
        assert_eq!(
            openai_input(json!("a")).unwrap(),
            EmbedInput::Texts(vec!["a".into()])
        );
        assert_eq!(
            openai_input(json!([1, 2])).unwrap(),
            EmbedInput::Tokens(vec![vec![1, 2]])
        );
        assert_eq!(
            openai_input(json!([[1], [2, 3]])).unwrap(),
            EmbedInput::Tokens(vec![vec![1], vec![2, 3]])
        );
        assert!(openai_input(json!([])).is_err());
        assert!(openai_input(json!(["a", 1])).is_err());
        assert!(openai_input(json!([[1], [-1]])).is_err());
        assert!(openai_input(json!({"a": 1})).is_err());
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let encoded = encode_base64(&[1.0, -2.5]);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(bytes[..4], 1.0f32.to_le_bytes());
        assert_eq!(bytes[4..], (-2.5f32).to_le_bytes());
    }

    #[test]
    fn only_sampling_options_are_accepted() {
        assert!(check_options(Some(&json!({"temperature": 0.5}))).is_ok());
        let err = check_options(Some(&json!({"num_ctx": 8}))).unwrap_err();
        assert!(err.contains("num_ctx"), "{err}");
        assert!(check_options(Some(&json!(3))).is_err());
    }
}
