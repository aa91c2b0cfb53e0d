//! The tokenizer of a Hugging Face folder and the special tokens its config files name
//! (tokenizer_config.json, generation_config.json, config.json, chat_template.jinja).

use super::config::HfConfig;
use crate::error::Result;
use crate::files::HfFiles;
use crate::tokenizer::{HfSpecials, Vocab};
use llmlocal_plugin_api::PluginError;
use serde_json::Value;
use std::path::Path;

pub fn load_vocab(files: &HfFiles, config: &HfConfig) -> Result<Vocab> {
    let tokenizer = files.tokenizer.as_ref().ok_or_else(|| {
        PluginError::not_found(format!(
            "no tokenizer.json in {}: the candle backend needs it for safetensors models",
            files.dir.display()
        ))
    })?;
    Vocab::from_tokenizer_json(tokenizer, specials(&files.dir, config))
}

fn read_json(path: &Path) -> Option<Value> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!("ignoring {}: not valid JSON ({e})", path.display());
            None
        }
    }
}

/// `"<s>"` or `{"content": "<s>", ...}`.
fn token_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// An id or a list of ids.
fn ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .into_iter()
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
            .collect(),
        _ => Vec::new(),
    }
}

/// A string template, or the `default` one of a list of named templates.
fn chat_template(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| items.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

fn specials(dir: &Path, config: &HfConfig) -> HfSpecials {
    let tok_config = read_json(&dir.join("tokenizer_config.json"));
    let gen_config = read_json(&dir.join("generation_config.json"));
    let tc = |key: &str| tok_config.as_ref().and_then(|v| v.get(key));
    let gc = |key: &str| gen_config.as_ref().and_then(|v| v.get(key));
    let cc = |key: &str| config.json.get(key);
    let mut eos = ids(gc("eos_token_id"));
    eos.extend(ids(cc("eos_token_id")));
    let bos = ids(gc("bos_token_id"))
        .first()
        .or(ids(cc("bos_token_id")).first())
        .copied();
    let template = std::fs::read_to_string(dir.join("chat_template.jinja"))
        .ok()
        .or_else(|| chat_template(tc("chat_template")));
    HfSpecials {
        bos,
        eos,
        add_bos: tc("add_bos_token").and_then(Value::as_bool),
        chat_template: template,
        bos_text: token_text(tc("bos_token")),
        eos_text: token_text(tc("eos_token")),
    }
}
