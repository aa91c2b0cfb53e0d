//! `GET /v1/models` and `GET /api/tags`: the union of what healthy nodes serve, asked of
//! the nodes in parallel (a node that does not answer in time contributes its registered
//! model names).

use super::{api::check_client, types::NodeState, RouterState};
use axum::{extract::State, http::HeaderMap, response::IntoResponse, Json};
use futures_util::future::join_all;
use serde_json::{json, Value};
use std::{collections::BTreeMap, time::Duration};

const ASK_TIMEOUT: Duration = Duration::from_secs(3);

struct Api {
    path: &'static str,
    /// The array of models in the answer.
    list_key: &'static str,
    /// The name field of each model.
    id_key: &'static str,
}

const OPENAI: Api = Api {
    path: "/v1/models",
    list_key: "data",
    id_key: "id",
};
const OLLAMA: Api = Api {
    path: "/api/tags",
    list_key: "models",
    id_key: "name",
};

pub async fn openai_models(
    State(state): State<RouterState>,
    headers: HeaderMap,
) -> impl IntoResponse {
    if let Err(err) = check_client(&state, &headers) {
        return err.into_response();
    }
    let models = union(&state, &OPENAI).await;
    Json(json!({ "object": "list", "data": models })).into_response()
}

pub async fn ollama_tags(
    State(state): State<RouterState>,
    headers: HeaderMap,
) -> impl IntoResponse {
    if let Err(err) = check_client(&state, &headers) {
        return err.into_response();
    }
    let models = union(&state, &OLLAMA).await;
    Json(json!({ "models": models })).into_response()
}

async fn union(state: &RouterState, api: &Api) -> Vec<Value> {
    let nodes: Vec<_> = state
        .nodes
        .views()
        .into_iter()
        .filter(|n| n.status == NodeState::Online)
        .collect();
    let asks = nodes.iter().map(|n| ask(state, &n.url, api));
    let answers = join_all(asks).await;
    let mut merged: BTreeMap<String, Value> = BTreeMap::new();
    for (node, answer) in nodes.iter().zip(answers) {
        let list = answer.unwrap_or_else(|| {
            // Fall back to the names the node registered.
            node.models_available
                .iter()
                .map(|m| fallback_entry(api, m))
                .collect()
        });
        for model in list {
            if let Some(id) = model.get(api.id_key).and_then(Value::as_str) {
                merged.entry(id.to_string()).or_insert(model);
            }
        }
    }
    merged.into_values().collect()
}

fn fallback_entry(api: &Api, name: &str) -> Value {
    if api.id_key == "id" {
        json!({ "id": name, "object": "model", "owned_by": "llmlocal" })
    } else {
        json!({ "name": name, "model": name })
    }
}

async fn ask(state: &RouterState, base: &str, api: &Api) -> Option<Vec<Value>> {
    let mut req = state
        .client
        .get(format!("{base}{}", api.path))
        .timeout(ASK_TIMEOUT);
    // The router's key for nodes, never the client's credentials.
    if let Some(auth) = &state.node_auth {
        req = req.header(axum::http::header::AUTHORIZATION, auth);
    }
    let resp = req.send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let bytes = resp.bytes().await.ok()?;
    let body: Value = serde_json::from_slice(&bytes).ok()?;
    body.get(api.list_key)?.as_array().cloned()
}
