//! The chat page at `/` (`llmlocal serve --no-chat-page` turns it off): one static HTML file
//! with its script inline, compiled into the binary, that talks only to this server's
//! `/v1/models` and `/v1/chat/completions`. No CDN, no other origin.

use axum::{
    http::header,
    response::{IntoResponse, Response},
};

const PAGE: &str = include_str!("chat_page.html");

/// The page may run its own inline script and call this origin, nothing else: model output
/// is escaped before it is shown, and this policy is the second line if that ever fails.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                      connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}
