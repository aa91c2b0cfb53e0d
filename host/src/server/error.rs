//! API errors in the shape each protocol's clients expect: OpenAI's
//! `{"error":{"message","type","param","code"}}` under `/v1`, Ollama's `{"error":"..."}` under
//! `/api`, Anthropic's `{"type":"error","error":{"type","message"}}` under `/v1/messages`.

use crate::engine::{EngineError, ErrorClass};
use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

/// Which protocol's error shape to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Ollama,
    Anthropic,
}

impl Flavor {
    pub fn of_path(path: &str) -> Flavor {
        if path.starts_with("/api/") {
            Flavor::Ollama
        } else if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Flavor::Anthropic
        } else {
            Flavor::OpenAi
        }
    }
}

/// Anthropic's error `type` for a status, as its API documents them (its clients pick the
/// exception class by status; the type is what a user reads).
fn anthropic_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// The error code of a response, for the error counter in `/metrics`.
#[derive(Debug, Clone)]
pub struct ErrorCode(pub &'static str);

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`.
    pub kind: &'static str,
    pub code: &'static str,
    pub retry_after: Option<u64>,
    pub flavor: Flavor,
    /// More fields for OpenAI's error object (llama-server's `n_prompt_tokens`, `n_ctx`);
    /// boxed, so the error every handler returns stays small.
    pub details: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            code,
            retry_after: None,
            flavor: Flavor::OpenAi,
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            message,
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "unavailable",
            message,
        )
    }

    pub fn flavor(mut self, flavor: Flavor) -> Self {
        self.flavor = flavor;
        self
    }

    pub fn engine(err: &EngineError, flavor: Flavor) -> Self {
        let (status, kind) = match err.class() {
            ErrorClass::BadRequest => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            ErrorClass::NotFound => (StatusCode::NOT_FOUND, "invalid_request_error"),
            ErrorClass::Busy => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
            ErrorClass::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "server_error"),
            ErrorClass::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        };
        let mut api = Self::new(status, kind, err.code(), err.to_string()).flavor(flavor);
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            api.retry_after = Some(1);
        }
        if let EngineError::ContextExceeded {
            n_prompt_tokens,
            n_ctx,
            ..
        } = err
        {
            // As llama-server: clients read the two numbers to trim their prompt.
            api.kind = "exceed_context_size_error";
            let details = api.details.get_or_insert_with(Default::default);
            details.insert("n_prompt_tokens".into(), json!(n_prompt_tokens));
            details.insert("n_ctx".into(), json!(n_ctx));
        }
        api
    }

    /// The JSON body (also used for errors inside a stream).
    pub fn body(&self) -> serde_json::Value {
        match self.flavor {
            Flavor::OpenAi => {
                let mut error = json!({
                    "message": self.message,
                    "type": self.kind,
                    "param": null,
                    "code": self.code,
                });
                if let (Some(object), Some(details)) = (error.as_object_mut(), &self.details) {
                    object.extend(details.as_ref().clone());
                }
                json!({ "error": error })
            }
            Flavor::Ollama => json!({ "error": self.message }),
            Flavor::Anthropic => json!({
                "type": "error",
                "error": { "type": anthropic_kind(self.status), "message": self.message },
            }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}
