//! Server-Sent Events with an `event:` name, as Anthropic's Messages API and OpenAI's
//! Responses API send them (the chat routes send bare `data:` lines instead).

use axum::{
    body::Body,
    http::header,
    response::{IntoResponse, Response},
};
use serde_json::Value;

/// One event: its name, then its JSON.
pub fn named(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// A streamed `text/event-stream` answer.
pub fn response(body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
