//! Safe host-side handles over a loaded plugin: the FFI objects of a library loaded in this
//! process, or the same calls to a worker process (process isolation). Callers cannot tell
//! the two apart. Every call converts the plugin's `RResult` into `Result<_, BackendError>`
//! naming the backend.

use super::{
    error::BackendError,
    worker::{
        remote::{RemoteGeneration, RemoteModel},
        supervisor::Supervisor,
    },
};
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
    backend: BackendImpl,
}

/// Where the backend runs.
enum BackendImpl {
    /// Shared with every model it loads, so no model outlives its backend.
    InProcess(Arc<BackendBox>),
    Worker(Arc<Supervisor>),
}

/// How a plugin is run: loaded into this process, or in a worker process of its own.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    InProcess,
    Process,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::InProcess => "in-process",
            Isolation::Process => "process",
        }
    }
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
            backend: BackendImpl::InProcess(Arc::new(backend)),
        }
    }

    pub(crate) fn in_worker(path: PathBuf, manifest: Manifest, supervisor: Supervisor) -> Self {
        LoadedBackend {
            path,
            manifest,
            backend: BackendImpl::Worker(Arc::new(supervisor)),
        }
    }

    pub fn name(&self) -> &str {
        self.manifest.name.as_str()
    }

    pub fn isolation(&self) -> Isolation {
        match self.backend {
            BackendImpl::InProcess(_) => Isolation::InProcess,
            BackendImpl::Worker(_) => Isolation::Process,
        }
    }

    /// Process isolation: why the backend was refused after its worker crashed in a loop.
    pub fn refused(&self) -> Option<String> {
        match &self.backend {
            BackendImpl::InProcess(_) => None,
            BackendImpl::Worker(supervisor) => supervisor.refused(),
        }
    }

    /// Process isolation: the pid of the current worker process.
    pub fn worker_pid(&self) -> Option<u32> {
        match &self.backend {
            BackendImpl::InProcess(_) => None,
            BackendImpl::Worker(supervisor) => Some(supervisor.pid()),
        }
    }

    /// Fails with a `missing_capability` error for the first of `needs` (see
    /// `GenerateRequest::required_capabilities`) this backend did not declare: lets the host
    /// refuse a request before loading a model for it.
    pub fn check_capabilities(&self, needs: &[&str]) -> Result<(), BackendError> {
        first_missing(&self.manifest.capabilities, self.name(), needs)
    }

    pub fn load_model(&self, request: LoadRequest) -> Result<LoadedModel, BackendError> {
        let name: Arc<str> = Arc::from(self.name());
        let model = match &self.backend {
            BackendImpl::InProcess(backend) => ModelImpl::InProcess {
                model: check(&name, backend.load(request))?,
                _backend: Arc::clone(backend),
            },
            BackendImpl::Worker(supervisor) => {
                ModelImpl::Worker(RemoteModel::load(Arc::clone(supervisor), request)?)
            }
        };
        Ok(LoadedModel {
            inner: Arc::new(ModelInner {
                model,
                backend_name: name,
                capabilities: self.manifest.capabilities.clone(),
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
    model: ModelImpl,
    backend_name: Arc<str>,
    /// What the manifest declared: the host never sends a request needing anything else.
    capabilities: Capabilities,
}

enum ModelImpl {
    InProcess {
        // Field order is drop order: the model goes before the backend that made it.
        model: ModelBox,
        _backend: Arc<BackendBox>,
    },
    Worker(RemoteModel),
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
        match &self.inner.model {
            ModelImpl::InProcess { model, .. } => self.check(model.metadata()),
            ModelImpl::Worker(remote) => remote.metadata(),
        }
    }

    pub fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, BackendError> {
        match &self.inner.model {
            ModelImpl::InProcess { model, .. } => {
                let tokens = model.tokenize(RStr::from_str(text), add_special, parse_special);
                self.check(tokens).map(Into::into)
            }
            ModelImpl::Worker(remote) => remote.tokenize(text, add_special, parse_special),
        }
    }

    pub fn detokenize(&self, tokens: &[u32], skip_special: bool) -> Result<String, BackendError> {
        match &self.inner.model {
            ModelImpl::InProcess { model, .. } => {
                let text = model.detokenize(RSlice::from_slice(tokens), skip_special);
                self.check(text).map(Into::into)
            }
            ModelImpl::Worker(remote) => remote.detokenize(tokens, skip_special),
        }
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
        let generation = match &self.inner.model {
            ModelImpl::InProcess { model, .. } => {
                GenerationImpl::InProcess(self.check(model.generate(request))?)
            }
            ModelImpl::Worker(remote) => GenerationImpl::Worker(remote.generate(&request)?),
        };
        Ok(RunningGeneration {
            generation,
            model: self.clone(),
        })
    }

    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        match &self.inner.model {
            ModelImpl::InProcess { model, .. } => {
                let logits = model.logits(RSlice::from_slice(tokens));
                self.check(logits).map(Into::into)
            }
            ModelImpl::Worker(remote) => remote.logits(tokens),
        }
    }

    /// One vector per input; a backend without the `embeddings` capability is not called.
    pub fn embed(&self, request: EmbedRequest) -> Result<Vec<Vec<f32>>, BackendError> {
        if !self.has_capability(capability::EMBEDDINGS) {
            return Err(BackendError::missing_capability(
                self.backend_name(),
                capability::EMBEDDINGS,
            ));
        }
        match &self.inner.model {
            ModelImpl::InProcess { model, .. } => {
                let vectors = self.check(model.embed(request))?;
                Ok(vectors.into_iter().map(Into::into).collect())
            }
            ModelImpl::Worker(remote) => remote.embed(&request),
        }
    }
}

/// A generation in progress. Dropping it cancels the generation.
pub struct RunningGeneration {
    // Dropped first: the generation, then our hold on its model.
    generation: GenerationImpl,
    model: LoadedModel,
}

enum GenerationImpl {
    InProcess(GenerationBox),
    Worker(RemoteGeneration),
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
        match &mut self.generation {
            GenerationImpl::InProcess(generation) => {
                check(&self.model.inner.backend_name, generation.next())
            }
            GenerationImpl::Worker(remote) => remote.next(),
        }
    }

    pub fn stats(&self) -> Result<GenerationStats, BackendError> {
        match &self.generation {
            GenerationImpl::InProcess(generation) => {
                check(&self.model.inner.backend_name, generation.stats())
            }
            GenerationImpl::Worker(remote) => remote.stats(),
        }
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
