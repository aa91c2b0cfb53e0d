//! What an application embedding the engine needs beyond the server's calls: an engine built
//! from the config file the way `llmlocal serve` builds it, a prefetch that reports download
//! progress to a callback, and unloading everything when the app is told memory is short.
//! Thin wrappers over the facade; the work stays there and in the model manager.

use std::{path::PathBuf, sync::Arc};

use tokio_util::sync::CancellationToken;

use super::{facade::ResolvedFiles, Engine, EngineError, EngineSettings};
use crate::{
    config::Config,
    models::{ModelManager, ModelSource, Progress},
    plugins::{self, PluginRegistry},
};

/// Why an engine could not be built from a config.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid config file {path}: {message}")]
    Config { path: PathBuf, message: String },
}

impl Engine {
    /// An engine as `llmlocal serve` builds one: the config file's `[engine]` and `[models.*]`
    /// sections and `default_backend`; the backend plugins found in `extra_plugin_dirs`, the
    /// config's `plugins.dirs` and the standard places; the Hugging Face cache from the
    /// environment (without one, only local paths and the built-in `stories` work).
    ///
    /// Any model spec or preset works as a model name (`open_specs`), as in a library the
    /// caller, not a remote client, chooses the names.
    pub fn from_config(
        config: &Config,
        extra_plugin_dirs: &[PathBuf],
    ) -> Result<Engine, SetupError> {
        let mut settings = EngineSettings {
            default_backend: config.default_backend.clone(),
            ..EngineSettings::default()
        };
        if let Some(path) = &config.path {
            settings
                .apply_config_file(path)
                .map_err(|message| SetupError::Config {
                    path: path.clone(),
                    message,
                })?;
        }
        let dirs: Vec<PathBuf> = extra_plugin_dirs
            .iter()
            .chain(&config.plugins.dirs)
            .cloned()
            .collect();
        let registry = Arc::new(PluginRegistry::load(&plugins::search_dirs(&dirs)));
        let manager = ModelManager::from_env().ok().map(Arc::new);
        Ok(Engine::new(settings, registry, manager))
    }

    /// [`Engine::prefetch`] that calls `on_progress` as the files download (at most every
    /// 100 ms per file, fraction never decreasing, 1.0 at the end) and stops when `cancel`
    /// fires, keeping the partial data so the next call resumes. A model already on disk
    /// returns at once without progress events.
    pub async fn prefetch_with_progress(
        &self,
        name: &str,
        mut on_progress: impl FnMut(&Progress) + Send + 'static,
        cancel: CancellationToken,
    ) -> Result<ResolvedFiles, EngineError> {
        let (spec, _) = self.spec_for(name)?;
        let manager = match (&spec.source, self.model_manager()) {
            (ModelSource::HuggingFace(_), Some(manager)) => manager.clone(),
            // Local files, or no cache: nothing to report.
            _ => return self.prefetch(name).await,
        };
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Progress>();
        let reporter = tokio::spawn(async move {
            while let Some(progress) = receiver.recv().await {
                on_progress(&progress);
            }
        });
        let pulled = manager.pull(&spec, Some(sender), cancel).await;
        // The sender is gone with pull(): the reporter drains what is left and ends.
        let _ = reporter.await;
        let resolved = pulled?;
        Ok(ResolvedFiles {
            spec,
            path: resolved.path,
            format: Some(resolved.format),
        })
    }

    /// Unloads every loaded model, pinned ones included (running generations finish first);
    /// returns their names. For an app told by its OS that memory is short; the next
    /// generation loads its model again.
    pub fn unload_all(&self) -> Vec<String> {
        let names: Vec<String> = self.loaded().into_iter().map(|info| info.name).collect();
        names.into_iter().filter(|name| self.unload(name)).collect()
    }
}
