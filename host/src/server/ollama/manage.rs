//! Changing what the server holds, Ollama's way: `/api/pull` (download through the model
//! manager) and `/api/delete` (of a created or copied name: the name only). The guard ([`crate::server::guard`]) lets only callers who may
//! change models reach these handlers.

use super::{bad_request, ndjson_response, not_found};
use crate::{
    models::{ModelSource, ModelSpec},
    server::{
        error::{ApiError, Flavor},
        extract::JsonBody,
        AppState,
    },
};
use axum::{
    body::Body,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub struct NameRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
}

impl NameRequest {
    fn name(&self) -> Result<String, ApiError> {
        self.model
            .clone()
            .or_else(|| self.name.clone())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad_request("missing `model`"))
    }
}

/// `DELETE /api/delete`: removes a downloaded model from the cache and forgets its name; a
/// model that is a local file is forgotten but its file is left alone. A configured or
/// loaded model is refused (409, see [`crate::server::removal`]).
pub async fn delete(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<NameRequest>,
) -> Result<Response, ApiError> {
    let name = request.name()?;
    let missing = || not_found(format!("model `{name}` not found"));
    let entry = state
        .engine
        .models()
        .get(&name)
        .cloned()
        .ok_or_else(missing)?;
    // A configured model of the same name shadows a created one: that is what the name is.
    let configured = state.engine.settings().models.contains_key(&name);
    if state.created.get(&name).is_some() && !configured {
        return forget_created(&state, &name);
    }
    let cached = matches!(
        ModelSpec::parse(&entry.spec),
        Ok(ModelSpec {
            source: ModelSource::HuggingFace(_),
            ..
        })
    );
    if let Some(copy) = copy_of(&state, &entry.spec).filter(|_| cached) {
        return Err(conflict(format!(
            "model `{copy}` is a copy of `{name}`; delete `{copy}` first"
        )));
    }
    if let Some(message) = crate::server::removal::conflict(&state.engine, &name, &entry) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "model_in_use",
            message,
        )
        .flavor(Flavor::Ollama));
    }
    if let Ok(ModelSpec {
        source: ModelSource::HuggingFace(hf),
        ..
    }) = ModelSpec::parse(&entry.spec)
    {
        let manager = state.engine.model_manager().cloned().ok_or_else(|| {
            ApiError::unavailable("this server has no model cache").flavor(Flavor::Ollama)
        })?;
        let repo = hf.repo.clone();
        let removed = tokio::task::spawn_blocking(move || manager.remove(&repo)).await;
        match removed {
            Ok(Ok(bytes)) => tracing::info!("deleted `{}` from the cache ({bytes} bytes)", hf.repo),
            Ok(Err(err)) => tracing::warn!("cannot delete `{}` from the cache: {err}", hf.repo),
            Err(err) => tracing::warn!("the delete task failed: {err}"),
        }
    }
    state.engine.remove_model(&name);
    Ok(StatusCode::OK.into_response())
}

fn conflict(message: String) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "invalid_request_error",
        "model_in_use",
        message,
    )
    .flavor(Flavor::Ollama)
}

/// A created or copied name that uses the same model (deleting its cached files would
/// break it).
fn copy_of(state: &AppState, spec: &str) -> Option<String> {
    state
        .created
        .all()
        .into_iter()
        .find(|(_, m)| m.spec == spec)
        .map(|(name, _)| name)
}

/// Deletes a created or copied name: only the name (and its defaults); the files stay.
fn forget_created(state: &AppState, name: &str) -> Result<Response, ApiError> {
    if state.engine.loaded().iter().any(|l| l.name == name) {
        return Err(conflict(format!(
            "model `{name}` is loaded; unload it first (POST /api/generate with \
             {{\"model\": \"{name}\", \"keep_alive\": 0}}) and retry"
        )));
    }
    state.created.remove(name).map_err(|err| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "store_failed",
            err.to_string(),
        )
        .flavor(Flavor::Ollama)
    })?;
    state.engine.remove_model(name);
    Ok(StatusCode::OK.into_response())
}

/// `POST /api/pull`: downloads through the model manager, progress as NDJSON; the name
/// becomes usable by later requests.
pub async fn pull(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<NameRequest>,
) -> Result<Response, ApiError> {
    let name = request.name()?;
    let spec_text = state
        .engine
        .models()
        .get(&name)
        .map(|e| e.spec.clone())
        .unwrap_or_else(|| name.clone());
    let spec = ModelSpec::parse(&spec_text).map_err(|err| bad_request(err.to_string()))?;
    let configured = state.engine.models().contains_key(&name);
    if matches!(spec.source, ModelSource::Local(_))
        && !configured
        && !state.engine.settings().open_specs
    {
        // Otherwise any client could make the server load any model file on this machine.
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "local_path_forbidden",
            format!("`{name}` is a local path; serving paths a client names needs `llmlocal serve --allow-any-model`"),
        )
        .flavor(Flavor::Ollama));
    }
    let manager = state.engine.model_manager().cloned().ok_or_else(|| {
        ApiError::unavailable("this server has no model manager").flavor(Flavor::Ollama)
    })?;
    let (lines, receiver) = tokio::sync::mpsc::channel::<Value>(64);
    let engine = state.engine.clone();
    tokio::spawn(crate::server::pull::run(
        manager, engine, name, spec, spec_text, lines,
    ));
    let stream = request.stream.unwrap_or(true);
    if stream {
        let body = Body::from_stream(crate::server::pull::ndjson_stream(receiver));
        return Ok(ndjson_response(body));
    }
    let last = crate::server::pull::last_line(receiver).await;
    match last.get("error").and_then(|e| e.as_str()) {
        Some(message) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "pull_failed",
            message,
        )
        .flavor(Flavor::Ollama)),
        None => Ok(Json(last).into_response()),
    }
}
