//! Safe host-side handles over the FFI objects of a loaded plugin. Every call converts the
//! plugin's `RResult` into `Result<_, BackendError>` naming the backend.

use super::error::BackendError;
use abi_stable::std_types::{RResult, RSlice, RStr};
use llmlocal_plugin_api::{
    capability,
    ffi::{BackendBox, GenerationBox, ModelBox},
    Capabilities, EmbedRequest, GenerateRequest, GenerationStats, LoadRequest, Manifest,
    ModelMetadata, Step,
};
use std::{path::PathBuf, sync::Arc};

/// A backend whose library passed every check and whose constructor succeeded.
pub struct LoadedBackend {
    /// The library it came from.
    pub path: PathBuf,
    pub manifest: Manifest,
    /// Shared with every model it loads, so no model outlives its backend.
    backend: Arc<BackendBox>,
}

impl std::fmt::Debug for LoadedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedBackend")
            .field("name", &self.name())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LoadedBackend {
    pub(crate) fn new(path: PathBuf, manifest: Manifest, backend: BackendBox) -> Self {
        LoadedBackend {
            path,
            manifest,
            backend: Arc::new(backend),
        }
    }

    pub fn name(&self) -> &str {
        self.manifest.name.as_str()
    }

    /// Fails with a `missing_capability` error for the first of `needs` (see
    /// `GenerateRequest::required_capabilities`) this backend did not declare: lets the host
    /// refuse a request before loading a model for it.
    pub fn check_capabilities(&self, needs: &[&str]) -> Result<(), BackendError> {
        first_missing(&self.manifest.capabilities, self.name(), needs)
    }

    pub fn load_model(&self, request: LoadRequest) -> Result<LoadedModel, BackendError> {
        let name: Arc<str> = Arc::from(self.name());
        let model = check(&name, self.backend.load(request))?;
        Ok(LoadedModel {
            inner: Arc::new(ModelInner {
                model,
                backend_name: name,
                capabilities: self.manifest.capabilities.clone(),
                _backend: Arc::clone(&self.backend),
            }),
        })
    }
}

fn first_missing(
    declared: &Capabilities,
    backend: &str,
    needs: &[&str],
) -> Result<(), BackendError> {
    match needs.iter().find(|c| !declared.has(c)) {
        Some(missing) => Err(BackendError::missing_capability(backend, missing)),
        None => Ok(()),
    }
}

struct ModelInner {
    // Field order is drop order: the model goes before the backend that made it.
    model: ModelBox,
    backend_name: Arc<str>,
    /// What the manifest declared: the host never sends a request needing anything else.
    capabilities: Capabilities,
    _backend: Arc<BackendBox>,
}

/// A loaded model, cheap to clone and usable from several threads at once.
#[derive(Clone)]
pub struct LoadedModel {
    inner: Arc<ModelInner>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("backend", &self.backend_name())
            .finish_non_exhaustive()
    }
}

impl LoadedModel {
    pub fn backend_name(&self) -> &str {
        &self.inner.backend_name
    }

    fn check<T>(
        &self,
        result: RResult<T, llmlocal_plugin_api::PluginError>,
    ) -> Result<T, BackendError> {
        check(&self.inner.backend_name, result)
    }

    pub fn metadata(&self) -> Result<ModelMetadata, BackendError> {
        self.check(self.inner.model.metadata())
    }

    pub fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, BackendError> {
        let tokens = self
            .inner
            .model
            .tokenize(RStr::from_str(text), add_special, parse_special);
        self.check(tokens).map(Into::into)
    }

    pub fn detokenize(&self, tokens: &[u32], skip_special: bool) -> Result<String, BackendError> {
        let text = self
            .inner
            .model
            .detokenize(RSlice::from_slice(tokens), skip_special);
        self.check(text).map(Into::into)
    }

    /// Whether the backend declared `capability` (see [`llmlocal_plugin_api::capability`]).
    pub fn has_capability(&self, capability: &str) -> bool {
        self.inner.capabilities.has(capability)
    }

    /// Fails with a `missing_capability` error for the first capability the request needs and
    /// the backend did not declare.
    pub fn check_capabilities(&self, request: &GenerateRequest) -> Result<(), BackendError> {
        let needs = request.required_capabilities();
        first_missing(&self.inner.capabilities, self.backend_name(), &needs)
    }

    pub fn generate(&self, request: GenerateRequest) -> Result<RunningGeneration, BackendError> {
        self.check_capabilities(&request)?;
        let generation = self.check(self.inner.model.generate(request))?;
        Ok(RunningGeneration {
            generation,
            model: self.clone(),
        })
    }

    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        let logits = self.inner.model.logits(RSlice::from_slice(tokens));
        self.check(logits).map(Into::into)
    }

    /// One vector per input; a backend without the `embeddings` capability is not called.
    pub fn embed(&self, request: EmbedRequest) -> Result<Vec<Vec<f32>>, BackendError> {
        if !self.has_capability(capability::EMBEDDINGS) {
            return Err(BackendError::missing_capability(
                self.backend_name(),
                capability::EMBEDDINGS,
            ));
        }
        let vectors = self.check(self.inner.model.embed(request))?;
        Ok(vectors.into_iter().map(Into::into).collect())
    }
}

/// A generation in progress. Dropping it cancels the generation.
pub struct RunningGeneration {
    // Dropped first: the generation, then our hold on its model.
    generation: GenerationBox,
    model: LoadedModel,
}

impl std::fmt::Debug for RunningGeneration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningGeneration")
            .field("backend", &self.model.backend_name())
            .finish_non_exhaustive()
    }
}

impl RunningGeneration {
    /// The next token or the end. Blocks while the backend computes: call it from a thread
    /// that may block. Named like the contract's `next`; not an `Iterator`, because the end is
    /// a value (`Step::Finished`, repeated) and every call can fail.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Step, BackendError> {
        let step = self.generation.next();
        check(&self.model.inner.backend_name, step)
    }

    pub fn stats(&self) -> Result<GenerationStats, BackendError> {
        check(&self.model.inner.backend_name, self.generation.stats())
    }

    pub fn backend_name(&self) -> &str {
        self.model.backend_name()
    }
}

fn check<T>(
    backend: &str,
    result: RResult<T, llmlocal_plugin_api::PluginError>,
) -> Result<T, BackendError> {
    result.into_result().map_err(|source| BackendError {
        backend: backend.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}

    #[test]
    fn handles_cross_threads() {
        assert_send_sync::<LoadedBackend>();
        assert_send_sync::<LoadedModel>();
        assert_send::<RunningGeneration>();
    }
}
