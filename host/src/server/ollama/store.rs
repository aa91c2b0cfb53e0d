//! Model names made through the API (`/api/copy`, `/api/create`): each one a model spec
//! plus the defaults its requests get (system prompt, sampling options, adapters). They are
//! kept in one JSON file of ours (`<data dir>/llmlocal/ollama-models.json` for `serve`), so
//! they outlive a restart; nothing else is written, and no model file is copied.

use crate::engine::{Engine, ModelEntry};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

/// The most names the store holds (each write rewrites the file).
pub const MAX_MODELS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot save the model names to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("this server holds {MAX_MODELS} created or copied models already; delete some first")]
    Full,
}

/// One created or copied name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredModel {
    /// The model spec it stands for (a local path or a Hugging Face spec).
    pub spec: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u32>,
    /// LoRA adapter specs applied by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapters: Vec<String>,
    /// The system prompt of requests that send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Ollama options; a request's own options win.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
}

impl StoredModel {
    /// A name for what `entry` serves, with no defaults of its own yet.
    pub fn of_entry(entry: &ModelEntry) -> StoredModel {
        StoredModel {
            spec: entry.spec.clone(),
            backend: entry.backend.clone(),
            context_length: entry.context_length,
            adapters: entry.adapters.clone(),
            ..StoredModel::default()
        }
    }

    /// The engine's entry for this name.
    pub fn entry(&self) -> ModelEntry {
        ModelEntry {
            backend: self.backend.clone(),
            context_length: self.context_length,
            adapters: self.adapters.clone(),
            ..ModelEntry::new(self.spec.clone())
        }
    }
}

/// The names, in memory and (when a file is set) on disk.
#[derive(Debug, Default)]
pub struct Store {
    path: Option<PathBuf>,
    models: Mutex<BTreeMap<String, StoredModel>>,
}

impl Store {
    /// Reads the file (absent: empty; unreadable: empty, with a warning, and left as it is
    /// until the next change rewrites it).
    pub fn open(path: Option<PathBuf>) -> Store {
        let models = path.as_deref().map(read_file).unwrap_or_default();
        Store {
            path,
            models: Mutex::new(models),
        }
    }

    /// Names every stored model in the engine; a name the configuration uses keeps the
    /// configured model.
    pub fn register(&self, engine: &Engine) {
        let configured = &engine.settings().models;
        for (name, model) in self.all() {
            if configured.contains_key(&name) {
                tracing::warn!(
                    "created model `{name}` is shadowed by the configured model of that name"
                );
                continue;
            }
            engine.add_model(&name, model.entry());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StoredModel>> {
        self.models.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn all(&self) -> BTreeMap<String, StoredModel> {
        self.lock().clone()
    }

    pub fn get(&self, name: &str) -> Option<StoredModel> {
        self.lock().get(name).cloned()
    }

    /// Adds or replaces `name`, then saves.
    pub fn put(&self, name: &str, model: StoredModel) -> Result<(), StoreError> {
        let mut models = self.lock();
        if models.len() >= MAX_MODELS && !models.contains_key(name) {
            return Err(StoreError::Full);
        }
        let mut next = models.clone();
        next.insert(name.to_string(), model);
        self.save(&next)?;
        *models = next;
        Ok(())
    }

    /// Forgets `name`, then saves; false if it was not stored.
    pub fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let mut models = self.lock();
        if !models.contains_key(name) {
            return Ok(false);
        }
        let mut next = models.clone();
        next.remove(name);
        self.save(&next)?;
        *models = next;
        Ok(true)
    }

    /// Writes a temporary file beside the file and renames it over, so a crash never leaves
    /// half a file.
    fn save(&self, models: &BTreeMap<String, StoredModel>) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let error = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(error)?;
        }
        let text = serde_json::to_string_pretty(models).map_err(|e| error(e.into()))?;
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, text).map_err(error)?;
        std::fs::rename(&temporary, path).map_err(error)
    }
}

fn read_file(path: &Path) -> BTreeMap<String, StoredModel> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(err) => {
            tracing::warn!(
                "cannot read the created models in {}: {err}",
                path.display()
            );
            return BTreeMap::new();
        }
    };
    serde_json::from_str(&text).unwrap_or_else(|err| {
        tracing::warn!(
            "{} is not a valid model list ({err}); starting without it",
            path.display()
        );
        BTreeMap::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_survive_a_reopen_and_removal_is_saved() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub/models.json");
        let store = Store::open(Some(path.clone()));
        let model = StoredModel {
            spec: "/m.gguf".into(),
            system: Some("Be brief.".into()),
            ..StoredModel::default()
        };
        store.put("a", model.clone()).expect("put");
        store.put("b", model.clone()).expect("put");
        assert!(store.remove("b").expect("remove"));
        assert!(!store.remove("b").expect("remove again"));
        let reopened = Store::open(Some(path));
        assert_eq!(
            reopened.all().into_iter().collect::<Vec<_>>(),
            vec![("a".to_string(), model)]
        );
    }
}
