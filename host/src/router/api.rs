//! HTTP handlers: node registration and heartbeats (join token), admin endpoints (admin
//! key), and the proxy entry point (client API keys).

use super::{
    access, auth,
    error::{Result, RouterError},
    history::now_ms,
    proxy::{self, Outgoing},
    types::{Heartbeat, NodeState, RegisterReply, Registration, NODE_SECRET_HEADER},
    validate, RouterState,
};
use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, Request, State},
    http::{HeaderMap, StatusCode},
    response::Response,
    Json,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

fn check_join(state: &RouterState, headers: &HeaderMap) -> Result<()> {
    match auth::bearer(headers) {
        Some(token) if auth::secret_eq(token, &state.join_token) => Ok(()),
        _ => Err(RouterError::BadJoinToken),
    }
}

fn check_admin(state: &RouterState, headers: &HeaderMap) -> Result<()> {
    let Some(key) = &state.settings.admin_key else {
        return Err(RouterError::AdminDisabled);
    };
    match auth::bearer(headers) {
        Some(given) if auth::secret_eq(given, key) => Ok(()),
        _ => Err(RouterError::BadAdminKey),
    }
}

/// Client keys for the proxied API (open when none are configured).
pub(super) fn check_client(state: &RouterState, headers: &HeaderMap) -> Result<()> {
    let keys = &state.settings.api_keys;
    if keys.is_empty() {
        return Ok(());
    }
    match auth::bearer(headers) {
        Some(given) if auth::any_matches(given, keys) => Ok(()),
        _ => Err(RouterError::BadApiKey),
    }
}

/// JSON with an error that says what is wrong (axum's `Json` rejection is plain text).
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|err| RouterError::BadRegistration(err.to_string()))
}

pub async fn register(
    State(state): State<RouterState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RegisterReply>> {
    check_join(&state, &headers)?;
    let registration: Registration = parse(&body)?;
    let url = validate::registration(&registration, &state.settings.node_allow_hosts)?;
    let node_id = registration.node_id.clone();
    let secret = node_secret(&headers);
    let (change, issued) = state.nodes.register(registration, url, secret, now_ms())?;
    state.persist(change).await;
    Ok(Json(RegisterReply {
        node_id,
        heartbeat_interval_ms: state.settings.heartbeat_interval.as_millis() as u64,
        node_secret: issued,
    }))
}

fn node_secret(headers: &HeaderMap) -> Option<&str> {
    headers.get(NODE_SECRET_HEADER)?.to_str().ok()
}

pub async fn heartbeat(
    State(state): State<RouterState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>> {
    check_join(&state, &headers)?;
    let beat: Heartbeat = parse(&body)?;
    validate::names("models_loaded", &beat.models_loaded)?;
    if let Some(models) = &beat.models_available {
        validate::names("models_available", models)?;
    }
    let secret = node_secret(&headers);
    if let Some(change) = state.nodes.heartbeat(&id, beat, secret, now_ms())? {
        state.persist(change).await;
    }
    Ok(Json(json!({ "ok": true })))
}

pub async fn list_nodes(
    State(state): State<RouterState>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    check_admin(&state, &headers)?;
    Ok(Json(json!({ "nodes": state.nodes.views() })))
}

pub async fn get_node(
    State(state): State<RouterState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    check_admin(&state, &headers)?;
    let view = state.nodes.view(&id).ok_or(RouterError::UnknownNode(id))?;
    Ok(Json(json!(view)))
}

async fn set_drain(
    state: RouterState,
    id: String,
    headers: HeaderMap,
    on: bool,
) -> Result<Json<Value>> {
    check_admin(&state, &headers)?;
    let change = state
        .nodes
        .set_drained(&id, on, now_ms())
        .ok_or_else(|| RouterError::UnknownNode(id.clone()))?;
    state.persist(change).await;
    Ok(Json(json!({ "node_id": id, "drained": on })))
}

/// Stops new requests to the node; running ones finish.
pub async fn drain(
    State(state): State<RouterState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    set_drain(state, id, headers, true).await
}

pub async fn undrain(
    State(state): State<RouterState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    set_drain(state, id, headers, false).await
}

/// Forgets a node. A node whose agent still runs registers again on its next heartbeat
/// (drain it first to stop traffic for good).
pub async fn remove_node(
    State(state): State<RouterState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    check_admin(&state, &headers)?;
    let known = state.nodes.remove(&id);
    let key = id.clone();
    let stored = state.db(move |store| Ok(store.delete_node(&key)?)).await?;
    if !known && !stored {
        return Err(RouterError::UnknownNode(id));
    }
    Ok(Json(json!({ "node_id": id, "removed": true })))
}

#[derive(serde::Deserialize)]
pub struct Limit {
    limit: Option<u32>,
}

/// The request history from the database, newest last.
pub async fn requests(
    State(state): State<RouterState>,
    Query(limit): Query<Limit>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    check_admin(&state, &headers)?;
    let limit = limit.limit.unwrap_or(100).min(10_000);
    let rows = state
        .db(move |store| Ok(store.recent_requests(limit)?))
        .await?;
    Ok(Json(json!({ "requests": rows })))
}

pub async fn health(State(state): State<RouterState>) -> Json<Value> {
    let views = state.nodes.views();
    let online = views
        .iter()
        .filter(|n| n.status == NodeState::Online)
        .count();
    Json(json!({ "status": "ok", "nodes": views.len(), "nodes_online": online }))
}

/// Everything not routed above: `/v1/*` and `/api/*` go to a node, the rest is 404.
pub async fn proxy(State(state): State<RouterState>, req: Request) -> Response {
    let ollama = req.uri().path().starts_with("/api/");
    match proxy_inner(state, req).await {
        Ok(resp) => resp,
        // Ollama clients read `error` as a string.
        Err(err) if ollama => {
            proxy::json_response(err.status(), &json!({ "error": err.to_string() }))
        }
        Err(err) => axum::response::IntoResponse::into_response(err),
    }
}

async fn proxy_inner(state: RouterState, req: Request) -> Result<Response> {
    let path = req.uri().path();
    let proxied = (path.starts_with("/v1/") || path.starts_with("/api/"))
        && !(path == "/api/nodes" || path.starts_with("/api/nodes/"));
    if !proxied {
        let body = json!({ "error": { "message": format!("no route for {path}"), "type": "not_found_error" } });
        return Ok(proxy::json_response(StatusCode::NOT_FOUND, &body));
    }
    // A router's own forwarded request (never carrying the client's key): a loop.
    if req.headers().contains_key(proxy::HOP_MARK) {
        return Err(RouterError::Loop);
    }
    // Mutating routes need the admin key: a client key (or none) never reaches them.
    if access::is_client_route(req.method(), path) {
        check_client(&state, req.headers())?;
    } else {
        check_admin(&state, req.headers())?;
    }
    let (parts, body) = req.into_parts();
    let limit = state.settings.max_body_bytes;
    let body = axum::body::to_bytes(Body::new(body), limit)
        .await
        .map_err(|_| RouterError::TooLarge(limit))?;
    let outgoing = Outgoing::new(
        parts.method,
        parts.uri,
        parts.headers,
        body,
        state.node_auth.as_ref(),
    );
    proxy::forward(&state, outgoing).await
}
