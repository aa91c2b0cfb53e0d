//! Ollama-compatible routes, one module per concern: completions (`/api/generate`,
//! `/api/chat`), what the server holds (`/api/tags`, `/api/ps`, `/api/show`, from the
//! model files' [`facts`]), and changing it (`/api/pull`, `/api/delete`, and `/api/copy`,
//! `/api/create`, whose names live in the [`store`]), plus `/api/version`.

mod chat;
mod create;
mod facts;
mod manage;
mod modelfile;
mod models;
mod store;

pub use chat::{chat, generate};
pub use create::{copy, create};
pub use manage::{delete, pull};
pub use models::{ps, show, tags};
pub use store::Store;

use super::error::{ApiError, Flavor};
use crate::engine::EngineError;
use axum::{
    body::Body,
    http::header,
    response::{IntoResponse, Response},
    Json,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use std::time::SystemTime;

/// `GET /api/version`
pub async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

fn rfc3339(time: SystemTime) -> String {
    DateTime::<Utc>::from(time).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn engine_error(err: EngineError) -> ApiError {
    ApiError::engine(&err, Flavor::Ollama)
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message).flavor(Flavor::Ollama)
}

fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::not_found(message).flavor(Flavor::Ollama)
}

fn ndjson_response(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}
