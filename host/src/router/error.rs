//! Router errors: each maps to an HTTP status and a JSON body a client can act on.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("invalid or missing join token")]
    BadJoinToken,
    #[error("invalid or missing admin key (send `Authorization: Bearer KEY`)")]
    BadAdminKey,
    #[error(
        "admin routes (node admin, dashboard, pull/delete/copy/create and other model \
         changes) are off: start the router with --admin-key KEY \
         (or LLMLOCAL_ROUTER_ADMIN_KEY, or admin_key in [router])"
    )]
    AdminDisabled,
    #[error("admin key needed for the dashboard feed: open /dashboard#key=KEY")]
    DashboardKey,
    #[error(
        "dashboard socket from origin `{0}` refused: only the router's own origin may connect \
         (add others with --dashboard-origin)"
    )]
    ForeignOrigin(String),
    #[error("invalid or missing API key (send `Authorization: Bearer KEY`)")]
    BadApiKey,
    #[error("invalid registration: {0}")]
    BadRegistration(String),
    #[error(
        "node id `{0}` belongs to a node with another node secret: restart that node with \
         its secret file, pick another --node-id, or remove the old node (admin: DELETE \
         /api/nodes/{0})"
    )]
    NodeSecret(String),
    #[error("node `{0}` must register again to get a node secret")]
    NodeUnclaimed(String),
    #[error("unknown node `{0}`: register it first")]
    UnknownNode(String),
    #[error("model `{0}` is not served by any registered node")]
    UnknownModel(String),
    #[error("no healthy node can serve {0} right now; retry later")]
    NoNode(String),
    #[error("every node that serves {what} failed: {last}")]
    AllNodesFailed { what: String, last: String },
    #[error("routing loop: a node's advertised address leads back to a router")]
    Loop,
    #[error("request body too large (limit {0} bytes)")]
    TooLarge(usize),
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("{0}")]
    Internal(String),
}

impl RouterError {
    pub fn status(&self) -> StatusCode {
        match self {
            RouterError::BadJoinToken
            | RouterError::BadAdminKey
            | RouterError::BadApiKey
            | RouterError::DashboardKey
            | RouterError::NodeUnclaimed(_) => StatusCode::UNAUTHORIZED,
            RouterError::AdminDisabled
            | RouterError::ForeignOrigin(_)
            | RouterError::NodeSecret(_) => StatusCode::FORBIDDEN,
            RouterError::BadRegistration(_) => StatusCode::BAD_REQUEST,
            RouterError::UnknownNode(_) | RouterError::UnknownModel(_) => StatusCode::NOT_FOUND,
            RouterError::NoNode(_) => StatusCode::SERVICE_UNAVAILABLE,
            // Every candidate refused or failed: to the client, no node is available.
            RouterError::AllNodesFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            RouterError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RouterError::Loop => StatusCode::LOOP_DETECTED,
            RouterError::Database(_) | RouterError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            RouterError::BadJoinToken
            | RouterError::BadAdminKey
            | RouterError::BadApiKey
            | RouterError::DashboardKey
            | RouterError::ForeignOrigin(_)
            | RouterError::NodeSecret(_)
            | RouterError::NodeUnclaimed(_)
            | RouterError::AdminDisabled => "authentication_error",
            RouterError::UnknownNode(_) | RouterError::UnknownModel(_) => "not_found_error",
            RouterError::NoNode(_) | RouterError::AllNodesFailed { .. } => "unavailable_error",
            RouterError::Database(_) | RouterError::Internal(_) => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for RouterError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!("router: {self}");
        }
        // OpenAI's error shape (`error.message`); Ollama clients show the whole `error`.
        let body = json!({ "error": { "message": self.to_string(), "type": self.kind() } });
        (status, Json(body)).into_response()
    }
}

pub type Result<T> = std::result::Result<T, RouterError>;
