//! `/dashboard`: one self-contained HTML page, fed over a WebSocket with a snapshot of
//! nodes, load and recent requests every second. When an admin key is set, the socket
//! needs it (`?key=`; the page reads it from its `#key=` fragment).

use super::{auth, RouterState};
use axum::{
    extract::{
        ws::{Message, WebSocket, WebSocketUpgrade},
        Query, State,
    },
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
};
use serde_json::json;
use std::time::Duration;

const PAGE: &str = include_str!("dashboard.html");
const PERIOD: Duration = Duration::from_millis(1000);
const RECENT: usize = 50;

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self' ws: wss:",
            ),
        ],
        Html(PAGE),
    )
}

#[derive(serde::Deserialize)]
pub struct KeyQuery {
    key: Option<String>,
}

pub async fn socket(
    State(state): State<RouterState>,
    Query(query): Query<KeyQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some(admin) = &state.settings.admin_key {
        let ok = query
            .key
            .as_deref()
            .is_some_and(|k| auth::secret_eq(k, admin));
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                "admin key needed: open /dashboard#key=KEY",
            )
                .into_response();
        }
    }
    upgrade.on_upgrade(move |ws| feed(ws, state))
}

/// The state the page draws.
pub fn snapshot(state: &RouterState) -> serde_json::Value {
    json!({
        "strategy": state.settings.strategy.to_string(),
        "offline_after_ms": state.settings.offline_after.as_millis() as u64,
        "nodes": state.nodes.views(),
        "stats": state.history.stats(),
        "recent": state.history.recent(RECENT),
    })
}

async fn feed(mut ws: WebSocket, state: RouterState) {
    let mut ticker = tokio::time::interval(PERIOD);
    loop {
        tokio::select! {
            () = state.closing.cancelled() => {
                let _ = ws.send(Message::Close(None)).await;
                return;
            }
            _ = ticker.tick() => {
                let text = snapshot(&state).to_string();
                if ws.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            incoming = ws.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
