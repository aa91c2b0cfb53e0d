//! `/dashboard`: one self-contained HTML page, fed over a WebSocket with a snapshot of
//! nodes, load and recent requests every second. The socket needs the admin key as `?key=`
//! (browsers cannot set headers on a WebSocket; the page reads the key from its `#key=`
//! fragment, which never leaves the browser), and a browser's `Origin` must be the router's
//! own (its `Host`) or one of `--dashboard-origin`: a page elsewhere cannot read the feed
//! with a key it tricked out of a user (cross-site WebSocket hijacking).

use super::{auth, error::RouterError, RouterState};
use axum::{
    extract::{
        ws::{Message, WebSocket, WebSocketUpgrade},
        Query, State,
    },
    http::{header, HeaderMap},
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
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Err(err) = authorize(&state, query.key.as_deref(), &headers) {
        return err.into_response();
    }
    upgrade.on_upgrade(move |ws| feed(ws, state))
}

/// The admin key (always needed: the feed shows node URLs and traffic), then the origin.
fn authorize(
    state: &RouterState,
    key: Option<&str>,
    headers: &HeaderMap,
) -> Result<(), RouterError> {
    let admin = state
        .settings
        .admin_key
        .as_deref()
        .ok_or(RouterError::AdminDisabled)?;
    if !key.is_some_and(|k| auth::secret_eq(k, admin)) {
        return Err(RouterError::DashboardKey);
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        // Not a browser (browsers always send Origin on a WebSocket): the key is enough.
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if same_authority(origin, host) || state.settings.dashboard_origins.iter().any(|o| o == origin)
    {
        Ok(())
    } else {
        Err(RouterError::ForeignOrigin(origin.to_string()))
    }
}

/// `http://HOST:PORT` (any scheme: TLS may end at a proxy in front) names `host`.
fn same_authority(origin: &str, host: &str) -> bool {
    let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
    !host.is_empty() && authority.eq_ignore_ascii_case(host)
}

/// The state the page draws.
pub fn snapshot(state: &RouterState) -> serde_json::Value {
    json!({
        "strategy": state.settings.strategy.to_string(),
        "offline_after_ms": state.settings.offline_after.as_millis() as u64,
        "nodes": state.nodes.views(),
        "stats": state.history.stats(),
        "recent": state.history.recent(RECENT),
        "series": state.history.series(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_the_host() {
        assert!(same_authority("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(same_authority("https://Router.lan", "router.lan"));
        assert!(!same_authority("http://evil.example", "127.0.0.1:8080"));
        assert!(!same_authority("null", "127.0.0.1:8080"));
        assert!(!same_authority("http://127.0.0.1:8080", ""));
    }
}
