//! New model names: `/api/copy` (another name for a model) and `/api/create` (a name for a
//! GGUF file or a model, with a system prompt, sampling options and adapters its requests
//! get). Both only record a name ([`super::store`]); no model file is written. The guard
//! ([`crate::server::guard`]) lets only callers who may change models reach these handlers.

use super::{
    bad_request,
    chat::Options,
    modelfile, ndjson_response, not_found,
    store::{StoreError, StoredModel},
};
use crate::server::{
    error::{ApiError, Flavor},
    extract::JsonBody,
    AppState,
};
use axum::{
    body::Body,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::path::Path;

/// The longest model name (Ollama's names are short too).
const MAX_NAME: usize = 256;
/// The most entries in `parameters`.
const MAX_PARAMETERS: usize = 64;
/// The most adapters one created model applies.
const MAX_ADAPTERS: usize = 16;

/// A name a client may give: letters, digits and `._:/-`, starting with a letter or digit
/// (so it never reads as a local path).
fn check_name(name: &str, field: &str) -> Result<(), ApiError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:/-".contains(c));
    if valid {
        return Ok(());
    }
    Err(bad_request(format!(
        "`{field}` {name:?} is not a valid model name: use up to {MAX_NAME} letters, digits \
         and `._:/-`, starting with a letter or digit"
    )))
}

/// A name the configuration defines is the operator's: never replaced through the API.
fn refuse_configured(state: &AppState, name: &str) -> Result<(), ApiError> {
    if !state.engine.settings().models.contains_key(name) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "invalid_request_error",
        "model_configured",
        format!("model `{name}` is configured (--model or the config file); choose another name"),
    )
    .flavor(Flavor::Ollama))
}

fn store_error(err: StoreError) -> ApiError {
    let status = match err {
        StoreError::Full => StatusCode::INSUFFICIENT_STORAGE,
        StoreError::Write { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, "server_error", "store_failed", err.to_string()).flavor(Flavor::Ollama)
}

/// Records `name` and names it in the engine; an instance loaded under the old meaning of
/// the name is unloaded, so the next request gets the new one.
fn save(state: &AppState, name: &str, model: StoredModel) -> Result<(), ApiError> {
    state
        .created
        .put(name, model.clone())
        .map_err(store_error)?;
    state.engine.unload(name);
    state.engine.add_model(name, model.entry());
    Ok(())
}

/// What `name` stands for now, as a stored model (its own defaults, if it was created).
fn stored_of(state: &AppState, name: &str) -> Option<StoredModel> {
    let entry = state.engine.models().get(name).cloned()?;
    Some(
        state
            .created
            .get(name)
            .unwrap_or_else(|| StoredModel::of_entry(&entry)),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyRequest {
    pub source: String,
    pub destination: String,
}

/// `POST /api/copy`: `destination` becomes another name for `source` (with its defaults).
pub async fn copy(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CopyRequest>,
) -> Result<Response, ApiError> {
    check_name(&request.destination, "destination")?;
    let source = stored_of(&state, &request.source)
        .ok_or_else(|| not_found(format!("model `{}` not found", request.source)))?;
    refuse_configured(&state, &request.destination)?;
    save(&state, &request.destination, source)?;
    Ok(StatusCode::OK.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// Older clients' name for `model`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default)]
    pub license: Option<Value>,
    /// The legacy Modelfile text (see [`modelfile`]).
    #[serde(default)]
    pub modelfile: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// Read to refuse with a message (see [`refuse_unsupported`]).
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub quantize: Option<String>,
    #[serde(default)]
    pub files: Option<Value>,
    #[serde(default)]
    pub adapters: Option<Value>,
    #[serde(default)]
    pub messages: Option<Value>,
}

/// Fields of Ollama's create that this server cannot honour: a 400 naming each.
fn refuse_unsupported(request: &CreateRequest, template: bool) -> Result<(), ApiError> {
    let set = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    let refusal = if request.quantize.as_deref().is_some_and(|q| !q.is_empty()) {
        "`quantize` is not supported: quantize with llama.cpp's llama-quantize, then create \
         FROM the quantized GGUF"
    } else if set(&request.files) || set(&request.adapters) {
        "`files` and `adapters` (blob digests) are not supported: this server has no \
         /api/blobs; give `from` a GGUF path, and adapters as ADAPTER lines of a `modelfile`"
    } else if set(&request.messages) {
        "`messages` is not supported: send the conversation with each /api/chat request"
    } else if template {
        "`template` (TEMPLATE) is not supported: the model's own chat template is used"
    } else {
        return Ok(());
    };
    Err(bad_request(refusal))
}

/// A local path a client names: only with `--allow-any-model`, as `/api/pull` rules.
fn allow_path(state: &AppState, what: &str) -> Result<(), ApiError> {
    if state.engine.settings().open_specs {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "permission_error",
        "local_path_forbidden",
        format!("{what} is a local path; serving paths a client names needs `llmlocal serve --allow-any-model`"),
    )
    .flavor(Flavor::Ollama))
}

/// `FROM`: a model this server knows, or an absolute path to a readable GGUF file.
fn base_model(state: &AppState, from: &str) -> Result<StoredModel, ApiError> {
    if let Some(known) = stored_of(state, from) {
        return Ok(known);
    }
    let path = Path::new(from);
    if !path.is_absolute() {
        return Err(bad_request(format!(
            "FROM `{from}` is neither a model this server knows nor an absolute path to a GGUF file"
        )));
    }
    allow_path(state, &format!("FROM `{from}`"))?;
    llmlocal_formats::gguf::read_file_header(path)
        .map_err(|err| bad_request(format!("FROM `{from}` is not a readable GGUF file: {err}")))?;
    Ok(StoredModel {
        spec: from.to_string(),
        ..StoredModel::default()
    })
}

/// The request and its Modelfile as one model: the request's own fields win.
fn build(state: &AppState, request: CreateRequest) -> Result<(String, StoredModel), ApiError> {
    let name = request
        .model
        .clone()
        .or(request.name.clone())
        .ok_or_else(|| bad_request("missing `model`"))?;
    check_name(&name, "model")?;
    let file = match &request.modelfile {
        Some(text) => modelfile::parse(text).map_err(|e| bad_request(format!("modelfile: {e}")))?,
        None => modelfile::Modelfile::default(),
    };
    refuse_unsupported(
        &request,
        request.template.is_some() || file.template.is_some(),
    )?;
    let from = request
        .from
        .clone()
        .or(file.from)
        .ok_or_else(|| bad_request("missing `from` (or a FROM line in `modelfile`)"))?;
    let mut model = base_model(state, &from)?;
    if !file.adapters.is_empty() {
        if file.adapters.len() > MAX_ADAPTERS {
            return Err(bad_request(format!("at most {MAX_ADAPTERS} ADAPTER lines")));
        }
        allow_path(state, "ADAPTER")?;
        model.adapters = file.adapters;
    }
    let mut parameters = file.parameters;
    parameters.extend(request.parameters.unwrap_or_default());
    if parameters.len() > MAX_PARAMETERS {
        return Err(bad_request(format!(
            "at most {MAX_PARAMETERS} `parameters`"
        )));
    }
    Options::stored(&parameters).map_err(bad_request)?;
    model.parameters.extend(parameters);
    model.system = request.system.or(file.system).or(model.system);
    model.license = license_text(request.license.as_ref())?
        .or(file.license)
        .or(model.license);
    Ok((name, model))
}

/// `license`: a string or a list of strings.
fn license_text(value: Option<&Value>) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(|all| Some(all.join("\n")))
            .ok_or_else(|| bad_request("`license` must be a string or a list of strings")),
        Some(_) => Err(bad_request(
            "`license` must be a string or a list of strings",
        )),
    }
}

/// `POST /api/create`: status lines as Ollama sends them, then `success`.
pub async fn create(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    let stream = request.stream.unwrap_or(true);
    let (name, model) = build(&state, request)?;
    refuse_configured(&state, &name)?;
    save(&state, &name, model)?;
    if !stream {
        return Ok(Json(json!({"status": "success"})).into_response());
    }
    let lines: String = ["gathering model components", "writing manifest", "success"]
        .iter()
        .map(|status| format!("{}\n", json!({ "status": status })))
        .collect();
    Ok(ndjson_response(Body::from(lines)))
}
