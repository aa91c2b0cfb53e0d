//! What the server holds, as Ollama shows it: `/api/tags` (every named model), `/api/ps`
//! (the loaded ones) and `/api/show` (one model in detail). Figures come from the files
//! ([`super::facts`]) and from the engine's loaded instances.

use super::{
    bad_request, facts,
    facts::{Facts, Located},
    not_found, rfc3339,
    store::StoredModel,
};
use crate::{
    engine::{tools::prompt::template_knows_tools, LoadedInfo, ModelEntry},
    plugins::capability,
    plugins::ModelFormat,
    server::{error::ApiError, extract::JsonBody, AppState},
};
use axum::{extract::State, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// `expires_at` of a model that never expires (pinned, or `keep_alive` < 0): the last second
/// of year 9999, far in the future as Ollama shows it.
const NEVER: Duration = Duration::from_secs(253_402_300_799);

/// The facts of each model whose files are here, read on a blocking thread (headers, and a
/// digest the first time a file is seen).
async fn read_all(located: Vec<Option<Located>>) -> Vec<Option<Facts>> {
    let read = move || {
        located
            .iter()
            .map(|l| l.as_ref().map(facts::read))
            .collect::<Vec<_>>()
    };
    match tokio::task::spawn_blocking(read).await {
        Ok(all) => all,
        Err(err) => {
            tracing::warn!("reading model files failed: {err}");
            Vec::new()
        }
    }
}

/// One model of `/api/tags`. A model whose files are not here yet (a Hugging Face model
/// downloaded on first use) shows size 0 and its name's digest.
fn tag(name: &str, entry: &ModelEntry, facts: Option<&Facts>) -> Value {
    let empty = Facts::default();
    let facts = facts.unwrap_or(&empty);
    let digest = if facts.digest.is_empty() {
        name_digest(name, &entry.spec)
    } else {
        facts.digest.clone()
    };
    json!({
        "name": name,
        "model": name,
        "modified_at": rfc3339(facts.modified.unwrap_or_else(SystemTime::now)),
        "size": facts.size,
        "digest": digest,
        "details": facts::details(facts),
    })
}

/// A stable digest for a model with no files here yet: of its name and spec.
fn name_digest(name: &str, spec: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(format!("{name}\n{spec}").as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// `GET /api/tags`
pub async fn tags(State(state): State<AppState>) -> Json<Value> {
    let models = state.engine.models();
    let located = models
        .values()
        .map(|entry| facts::locate(&state.engine, entry))
        .collect();
    let all = read_all(located).await;
    let listed: Vec<Value> = models
        .iter()
        .enumerate()
        .map(|(i, (name, entry))| tag(name, entry, all.get(i).and_then(Option::as_ref)))
        .collect();
    Json(json!({ "models": listed }))
}

/// One loaded model of `/api/ps`: the engine's memory figure for it (weights, KV cache and
/// compute buffers), all of it in VRAM when the backend put it on a GPU, and apart from it
/// the bytes its prompt caches hold now.
fn running(loaded: &LoadedInfo, facts: Option<&Facts>, prompt_cache_bytes: u64) -> Value {
    let mut facts = facts.cloned().unwrap_or_default();
    fill_from_loaded(&mut facts, loaded);
    let device = loaded.metadata.device.as_str();
    let on_gpu = !device.is_empty() && !device.eq_ignore_ascii_case("cpu");
    json!({
        "name": loaded.name,
        "model": loaded.name,
        "size": loaded.bytes,
        "digest": facts.digest,
        "details": facts::details(&facts),
        "expires_at": rfc3339(loaded.expires_at.unwrap_or(SystemTime::UNIX_EPOCH + NEVER)),
        "size_vram": if on_gpu { loaded.bytes } else { 0 },
        "context_length": loaded.metadata.context_length,
        // Extensions: which backend and device run it, and its prompt caches now.
        "backend": loaded.backend,
        "device": device,
        "prompt_cache_bytes": prompt_cache_bytes,
    })
}

/// `GET /api/ps`
pub async fn ps(State(state): State<AppState>) -> Json<Value> {
    let loaded = state.engine.loaded();
    let located = loaded
        .iter()
        .map(|l| Some(facts::locate_path(&l.path)))
        .collect();
    let all = read_all(located).await;
    let prompt_caches = state.engine.prompt_cache_bytes().await;
    let cache_of = |name: &str| {
        prompt_caches
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, bytes)| *bytes)
    };
    let listed: Vec<Value> = loaded
        .iter()
        .enumerate()
        .map(|(i, l)| running(l, all.get(i).and_then(Option::as_ref), cache_of(&l.name)))
        .collect();
    Json(json!({ "models": listed }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Accepted; long arrays (vocabulary, merges) stay `null` in `model_info` (README).
    #[serde(default)]
    #[allow(dead_code)]
    pub verbose: Option<bool>,
}

/// What `/api/show` says a model can do, in Ollama's names: `completion` always;
/// `tools` when its chat template renders tools; `embedding` when the backend that runs it
/// declares embeddings. No `vision` or `insert`: requests take no images and no suffix.
fn capabilities(
    state: &AppState,
    entry: Option<&ModelEntry>,
    loaded: Option<&LoadedInfo>,
    facts: &Facts,
    template: &str,
) -> Vec<&'static str> {
    let mut found = vec!["completion"];
    if template_knows_tools(template) {
        found.push("tools");
    }
    let registry = state.engine.registry();
    let backend = match loaded {
        Some(l) => registry.backend(&l.backend).ok(),
        None => {
            let wanted = entry.and_then(|e| e.backend.as_deref());
            let default = state.engine.settings().default_backend.as_deref();
            let format = match facts.format {
                "gguf" => Some(ModelFormat::Gguf),
                "safetensors" => Some(ModelFormat::Safetensors),
                _ => None,
            };
            registry.choose(wanted, default, format).ok()
        }
    };
    if backend.is_some_and(|b| b.manifest.capabilities.has(capability::EMBEDDINGS)) {
        found.push("embedding");
    }
    found
}

/// What the backend reported at load, for a file whose header did not say it (a format the
/// host cannot read, such as a plugin's own).
fn fill_from_loaded(facts: &mut Facts, loaded: &LoadedInfo) {
    let m = &loaded.metadata;
    let arch = m.architecture.to_string();
    if facts.family.is_empty() {
        facts.family = arch.clone();
    }
    if facts.parameter_count == 0 {
        facts.parameter_count = m.parameter_count;
    }
    let known = [
        ("general.architecture".to_string(), json!(arch)),
        (
            "general.parameter_count".to_string(),
            json!(m.parameter_count),
        ),
        (
            format!("{arch}.context_length"),
            json!(m.train_context_length),
        ),
        (
            format!("{arch}.embedding_length"),
            json!(m.embedding_length),
        ),
        (format!("{arch}.block_count"), json!(m.layer_count)),
        (format!("{arch}.vocab_size"), json!(m.vocab_size)),
    ];
    for (key, value) in known {
        facts.model_info.entry(key).or_insert(value);
    }
}

/// Ollama's `parameters` text: one `name value` line per option (`stop` once per item).
fn parameters_text(created: &StoredModel) -> String {
    let mut lines = Vec::new();
    for (key, value) in &created.parameters {
        let items = match value {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        lines.extend(items.iter().map(|v| format!("{key:<30} {v}")));
    }
    lines.join("\n")
}

/// A Modelfile that would make this model again (`/api/create`'s subset).
fn modelfile_text(spec: &str, created: &StoredModel, parameters: &str) -> String {
    let mut text = format!("FROM {spec}\n");
    for adapter in &created.adapters {
        text.push_str(&format!("ADAPTER {adapter}\n"));
    }
    for line in parameters.lines() {
        text.push_str(&format!("PARAMETER {line}\n"));
    }
    if let Some(system) = &created.system {
        text.push_str(&format!("SYSTEM \"\"\"{system}\"\"\"\n"));
    }
    text
}

/// `POST /api/show`
pub async fn show(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<ShowRequest>,
) -> Result<Json<Value>, ApiError> {
    let name = request
        .model
        .or(request.name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad_request("missing `model`"))?;
    let entry = state.engine.models().get(&name).cloned();
    let loaded = state.engine.loaded().into_iter().find(|l| l.name == name);
    let located = match (&entry, &loaded) {
        (_, Some(l)) => Some(facts::locate_path(&l.path)),
        (Some(e), None) => facts::locate(&state.engine, e),
        (None, None) => return Err(not_found(format!("model `{name}` not found"))),
    };
    let mut facts = read_all(vec![located])
        .await
        .pop()
        .flatten()
        .unwrap_or_default();
    if let Some(l) = &loaded {
        fill_from_loaded(&mut facts, l);
    }
    // The file's template; a loaded model without one shows the ChatML chats get.
    let template = facts
        .template
        .clone()
        .or_else(|| loaded.as_ref().map(|l| l.chat_template.clone()))
        .unwrap_or_default();
    let spec = entry.as_ref().map(|e| e.spec.as_str()).unwrap_or_default();
    let configured = state.engine.settings().models.contains_key(&name);
    let created = (state.created.get(&name))
        .filter(|_| !configured)
        .unwrap_or_default();
    let parameters = parameters_text(&created);
    Ok(Json(json!({
        "license": created.license.clone().unwrap_or_default(),
        "modelfile": modelfile_text(spec, &created, &parameters),
        "parameters": parameters,
        "system": created.system,
        "template": template,
        "details": facts::details(&facts),
        "model_info": facts.model_info,
        "modified_at": rfc3339(facts.modified.unwrap_or_else(SystemTime::now)),
        "capabilities": capabilities(&state, entry.as_ref(), loaded.as_ref(), &facts, &template),
    })))
}
