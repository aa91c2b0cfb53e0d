//! Whether `DELETE /api/delete` may remove a model: never one the operator configured, one
//! that is loaded, or a cache folder that a configured or loaded model also reads (the cache
//! is removed a whole repository at a time).

use crate::{
    engine::{Engine, ModelEntry},
    models::{ModelSource, ModelSpec},
};
use std::path::PathBuf;

/// Why `name` may not be deleted now, as a message saying what to do; `None` = it may.
pub fn conflict(engine: &Engine, name: &str, entry: &ModelEntry) -> Option<String> {
    if engine.settings().models.contains_key(name) {
        return Some(format!(
            "model `{name}` is configured (--model or the config file) and cannot be deleted \
             while the server runs; remove it from the configuration, then delete its files \
             with `llmlocal rm`"
        ));
    }
    let files = files_of(engine, &entry.spec);
    let loaded = engine
        .loaded()
        .into_iter()
        .find(|l| l.name == name || files.as_ref().is_some_and(|f| l.path.starts_with(f)));
    if let Some(loaded) = loaded {
        return Some(format!(
            "model `{name}` is loaded (as `{}`); unload it first (POST /api/generate with \
             {{\"model\": \"{}\", \"keep_alive\": 0}}) and retry",
            loaded.name, loaded.name
        ));
    }
    let files = files?;
    let sharing = engine.settings().models.iter().find(|(other, e)| {
        other.as_str() != name && files_of(engine, &e.spec).is_some_and(|f| f == files)
    });
    sharing.map(|(other, _)| {
        format!(
            "model `{name}` is stored in {} with configured model `{other}`, which deleting \
             it would remove too",
            files.display()
        )
    })
}

/// The files deleting the model removes: its repository folder in the cache; `None` for a
/// local file (which is only forgotten) or an unparsable spec.
fn files_of(engine: &Engine, spec: &str) -> Option<PathBuf> {
    let ModelSource::HuggingFace(hf) = ModelSpec::parse(spec).ok()?.source else {
        return None;
    };
    let manager = engine.model_manager()?;
    Some(manager.cache().repo_dir(&hf.repo))
}
