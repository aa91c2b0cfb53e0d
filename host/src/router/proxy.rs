//! Forwarding `/v1/*` and `/api/*` to nodes: model-aware node choice, failover before the
//! first response byte, streaming pass-through after it.

use super::{
    error::RouterError,
    history::now_ms,
    nodes::{Pick, Target},
    stream::{ErrorFlavor, Recorder, RelayStream, Watch},
    RouterState,
};
use axum::{
    body::{Body, Bytes},
    http::{header, HeaderMap, HeaderName, Method, Response, StatusCode, Uri},
};
use std::{sync::atomic::Ordering, time::Instant};

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus the ones the
/// HTTP client sets itself.
const HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// The client's credentials for the router: never passed on to a node (a node would learn
/// the router's keys, and a node's own keys are the router's business: `--node-key`).
const CLIENT_CREDENTIALS: &[&str] = &["authorization", "cookie", "x-api-key"];

/// Set on every forwarded request: a router receiving it is talking to itself (a node
/// advertised a router's address), and refuses instead of looping forever.
pub const HOP_MARK: &str = "x-llmlocal-routed";

/// Names the node that answered, on every proxied response.
const NODE_HEADER: &str = "x-llmlocal-node";

/// The request as read from the client, ready to send to any node.
pub struct Outgoing {
    pub method: Method,
    pub uri: Uri,
    /// Already without hop-by-hop headers, with [`HOP_MARK`] (see [`Outgoing::new`]).
    pub headers: HeaderMap,
    pub body: Bytes,
    pub model: Option<String>,
}

impl Outgoing {
    /// Strips hop-by-hop headers and client credentials once, whatever the number of
    /// attempts; `node_auth` (the router's key for nodes) replaces the latter.
    pub fn new(
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        body: Bytes,
        node_auth: Option<&header::HeaderValue>,
    ) -> Self {
        for name in HOP_HEADERS.iter().chain(CLIENT_CREDENTIALS) {
            headers.remove(*name);
        }
        if let Some(auth) = node_auth {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
        headers.insert(HOP_MARK, header::HeaderValue::from_static("1"));
        Self {
            model: model_of(&body),
            method,
            uri,
            headers,
            body,
        }
    }
}

/// The `model` (OpenAI, Ollama) or `name` (older Ollama) field of a JSON body.
pub fn model_of(body: &[u8]) -> Option<String> {
    if !body.trim_ascii_start().starts_with(b"{") {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<String>,
        name: Option<String>,
    }
    let named: Named = serde_json::from_slice(body).ok()?;
    named.model.or(named.name).filter(|m| !m.is_empty())
}

/// Sends the request to the best node, failing over to the next ones.
pub async fn forward(state: &RouterState, req: Outgoing) -> Result<Response<Body>, RouterError> {
    let started = Instant::now();
    let ts_ms = now_ms();
    let what = || match &req.model {
        Some(model) => format!("model `{model}`"),
        None => "this request".to_string(),
    };
    let strategy = state.settings.strategy;
    let limit = state.settings.max_attempts.max(1);
    let mut recorder = Recorder::new(state.history.clone(), &req, ts_ms, started);
    let picked = match &req.model {
        Some(model) => match state.nodes.pick(model, strategy, limit) {
            Pick::Nodes(targets) => Ok(targets),
            Pick::NoneHealthy => Err(RouterError::NoNode(what())),
            Pick::UnknownModel => Err(RouterError::UnknownModel(model.clone())),
        },
        None => Ok(state.nodes.any(strategy, limit)),
    };
    let targets = match picked {
        Ok(targets) if !targets.is_empty() => targets,
        Ok(_) => return Err(record(&mut recorder, RouterError::NoNode(what()))),
        Err(err) => return Err(record(&mut recorder, err)),
    };
    let max = targets.len();
    let mut last_error = String::new();
    for (attempt, target) in targets.into_iter().enumerate() {
        let is_last = attempt + 1 == max;
        let node_id = &target.endpoint.node_id;
        target.inflight.fetch_add(1, Ordering::Relaxed);
        match first_byte(state, &req, &target).await {
            Answer::Headers(resp) if resp.status().is_server_error() && !is_last => {
                target.inflight.fetch_sub(1, Ordering::Relaxed);
                last_error = format!("node {node_id} answered {}", resp.status());
                tracing::info!("router: {last_error}; trying another node");
            }
            Answer::Headers(resp) => {
                recorder.attempts = attempt as u32;
                return Ok(relay(state, resp, target, recorder));
            }
            Answer::Failed(err) => {
                target.inflight.fetch_sub(1, Ordering::Relaxed);
                last_error = format!("node {node_id}: {}", describe(&err));
                tracing::info!("router: {last_error}; trying another node");
                if err.is_connect() {
                    // Refused: the node is gone; stop sending it traffic until it is back.
                    if let Some(change) = state.nodes.mark_offline(node_id, now_ms()) {
                        // Saved in the background: the next attempt must not wait on SQLite.
                        let state = state.clone();
                        tokio::spawn(async move { state.persist(change).await });
                    }
                }
            }
            Answer::Silent(why) => {
                // Nothing reached the client yet: another node may answer.
                target.inflight.fetch_sub(1, Ordering::Relaxed);
                last_error = format!("node {node_id} {why}");
                tracing::warn!("router: {last_error}; trying another node");
                state
                    .nodes
                    .mark_suspect(node_id, state.settings.offline_after);
            }
        }
    }
    let err = RouterError::AllNodesFailed {
        what: what(),
        last: last_error,
    };
    recorder.attempts = max as u32;
    recorder.fail(err.status().as_u16(), err.to_string());
    Err(err)
}

/// How waiting for a node's response headers ended.
enum Answer {
    Headers(reqwest::Response),
    Failed(reqwest::Error),
    /// Timed out or went offline: (why) "sent no response within 30 s".
    Silent(String),
}

/// Sends the request and waits for the response headers, at most the first-byte timeout
/// and no longer than the node stays online.
async fn first_byte(state: &RouterState, req: &Outgoing, target: &Target) -> Answer {
    let timeout = state.settings.first_byte_timeout;
    tokio::select! {
        sent = send(state, req, target) => match sent {
            Ok(resp) => Answer::Headers(resp),
            Err(err) => Answer::Failed(err),
        },
        () = tokio::time::sleep(timeout) => {
            Answer::Silent(format!("sent no response within {}", seconds(timeout)))
        }
        () = target.down.cancelled() => Answer::Silent("went offline before answering".into()),
    }
}

/// `1.5 s` for messages.
pub fn seconds(d: std::time::Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Puts a request the router answered itself (no node) into the history.
fn record(recorder: &mut Recorder, err: RouterError) -> RouterError {
    recorder.fail(err.status().as_u16(), err.to_string());
    err
}

async fn send(
    state: &RouterState,
    req: &Outgoing,
    target: &Target,
) -> reqwest::Result<reqwest::Response> {
    let url = target.endpoint.url_for(req.uri.path(), req.uri.query());
    state
        .client
        .request(req.method.clone(), url)
        .headers(req.headers.clone())
        .body(req.body.clone())
        .send()
        .await
}

/// Passes the node's response through: status, headers, and the body chunk by chunk.
fn relay(
    state: &RouterState,
    resp: reqwest::Response,
    target: Target,
    mut recorder: Recorder,
) -> Response<Body> {
    let status = resp.status();
    let flavor = ErrorFlavor::of(resp.headers());
    let mut headers = HeaderMap::with_capacity(resp.headers().len() + 1);
    for (name, value) in resp.headers() {
        if !is_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    // A body of known length keeps it: the client gets the bytes in one plain write instead
    // of chunked framing (whose end marker can be sent as a separate packet). Streams whose
    // failure becomes an error event keep no length: that event would not fit in it.
    if flavor == ErrorFlavor::Abort {
        if let Some(length) = resp.headers().get(header::CONTENT_LENGTH) {
            headers.insert(header::CONTENT_LENGTH, length.clone());
        }
    }
    // The client gets the body of this length: the relay ends when it has passed it on.
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(node) = &target.endpoint.header {
        headers.insert(NODE_HEADER, node.clone());
    }
    recorder.node(&target.endpoint.node_id, status.as_u16());
    let watch = Watch {
        idle: state.settings.idle_timeout,
        down: target.down.clone(),
        on_stall: Box::new({
            let (state, id) = (state.clone(), target.endpoint.node_id.clone());
            move || state.nodes.mark_suspect(&id, state.settings.offline_after)
        }),
    };
    let stream = RelayStream::new(
        resp.bytes_stream(),
        flavor,
        recorder,
        target.inflight,
        watch,
    )
    .with_length(length);
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn is_hop(name: &HeaderName) -> bool {
    HOP_HEADERS.contains(&name.as_str())
}

/// A short reason for a failed upstream request.
pub fn describe(err: &reqwest::Error) -> String {
    if err.is_connect() {
        "connection refused or unreachable".into()
    } else if err.is_timeout() {
        "timed out".into()
    } else {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(inner) = source {
            text = format!("{text}: {inner}");
            source = inner.source();
        }
        text
    }
}

/// Response headers for a JSON body.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_model() {
        assert_eq!(model_of(br#"{"model":"a","x":1}"#).as_deref(), Some("a"));
        assert_eq!(model_of(br#" {"name":"b"}"#).as_deref(), Some("b"));
        assert_eq!(model_of(br#"{"model":""}"#), None);
        assert_eq!(model_of(b"not json"), None);
        assert_eq!(model_of(b""), None);
    }
}
