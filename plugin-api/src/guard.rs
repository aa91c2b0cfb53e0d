//! Panic-safe adapters from the author traits to the FFI objects. abi_stable aborts the
//! process if a panic reaches an exported function or a `#[sabi_trait]` shim, so every call
//! into author code runs under `catch_unwind` and a panic becomes an `Internal` error.

use crate::{
    author::{Backend, Generation, Model},
    error::PluginError,
    ffi::{
        BackendBox, FfiBackend, FfiBackend_TO, FfiGeneration, FfiGeneration_TO, FfiModel,
        FfiModel_TO, GenerationBox, ModelBox,
    },
    log::{self, BackendConfig},
    manifest::{capability, Capabilities, Manifest},
    metadata::ModelMetadata,
    request::{EmbedRequest, GenerateRequest, LoadRequest},
    step::{GenerationStats, Step},
};
use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RResult, RSlice, RStr, RString, RVec},
};
use std::{
    any::Any,
    panic::{catch_unwind, AssertUnwindSafe},
};

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs `f`; the outer `Err` is a caught panic, as an `Internal` error that names the call.
fn catch_panic<T>(call: &str, f: impl FnOnce() -> T) -> Result<T, PluginError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        PluginError::internal(format!(
            "the plugin panicked in {call}: {}",
            panic_message(payload.as_ref())
        ))
    })
}

/// Runs `f`, turning a panic into an `Internal` error that names the call.
fn guarded<T>(call: &str, f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    catch_panic(call, f).and_then(|result| result).into()
}

/// Drops author objects under a panic guard too: a panicking destructor must not abort.
fn drop_guarded<T>(value: Option<T>) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(value)));
}

#[doc(hidden)]
pub fn export_manifest(
    api_version: &str,
    f: impl FnOnce() -> Manifest,
) -> RResult<Manifest, PluginError> {
    guarded("manifest", || {
        let mut manifest = f();
        manifest.api_version = RString::from(api_version);
        Ok(manifest)
    })
}

#[doc(hidden)]
pub fn export_new_backend<B: Backend>(
    config: BackendConfig,
    manifest: impl FnOnce() -> Manifest,
    f: impl FnOnce() -> Result<B, PluginError>,
) -> RResult<BackendBox, PluginError> {
    guarded("new_backend", || {
        log::install(&config);
        // The plugin's own std has its own panic hook: report panics through the host's log
        // instead of printing to the terminal (the error value carries the message anyway).
        std::panic::set_hook(Box::new(|info| {
            tracing::debug!(target: "llmlocal_plugin", "panic caught at the plugin boundary: {info}");
        }));
        let capabilities = manifest().capabilities;
        let backend = f()?;
        Ok(FfiBackend_TO::from_value(
            BackendAdapter {
                inner: Some(Box::new(backend)),
                capabilities,
            },
            TD_Opaque,
        ))
    })
}

struct BackendAdapter {
    inner: Option<Box<dyn Backend>>,
    /// What the manifest declared: requests needing anything else are refused here too, so a
    /// host that skips its own check still never reaches code the author did not write.
    capabilities: Capabilities,
}

impl BackendAdapter {
    fn inner(&self) -> Result<&dyn Backend, PluginError> {
        self.inner
            .as_deref()
            .ok_or_else(|| PluginError::internal("backend already dropped"))
    }
}

impl FfiBackend for BackendAdapter {
    fn load(&self, request: LoadRequest) -> RResult<ModelBox, PluginError> {
        guarded("load", || {
            let accepted = crate::request::load_option::accepted(&self.capabilities.names);
            crate::extension::reject_unknown(&request.extensions, &accepted)?;
            let model = self.inner()?.load(request)?;
            let vocab_size = model.metadata().vocab_size;
            Ok(FfiModel_TO::from_value(
                ModelAdapter {
                    inner: Some(model),
                    capabilities: self.capabilities.clone(),
                    vocab_size,
                },
                TD_Opaque,
            ))
        })
    }
}

impl Drop for BackendAdapter {
    fn drop(&mut self) {
        drop_guarded(self.inner.take());
    }
}

struct ModelAdapter {
    inner: Option<Box<dyn Model>>,
    capabilities: Capabilities,
    vocab_size: u32,
}

impl ModelAdapter {
    fn inner(&self) -> Result<&dyn Model, PluginError> {
        self.inner
            .as_deref()
            .ok_or_else(|| PluginError::internal("model already dropped"))
    }

    fn require(&self, name: &str, what: &str) -> Result<(), PluginError> {
        if self.capabilities.has(name) {
            Ok(())
        } else {
            Err(PluginError::unsupported(format!(
                "{what} needs the capability `{name}`, which this backend does not declare"
            )))
        }
    }

    /// The contract's checks and the capabilities a request needs, before author code runs.
    fn check_generate(&self, request: &GenerateRequest) -> Result<(), PluginError> {
        request.validate(self.vocab_size)?;
        crate::extension::reject_unknown(&request.extensions, &[])?;
        for name in request.required_capabilities() {
            self.require(name, "this request")?;
        }
        Ok(())
    }
}

impl FfiModel for ModelAdapter {
    fn metadata(&self) -> RResult<ModelMetadata, PluginError> {
        guarded("metadata", || Ok(self.inner()?.metadata()))
    }

    fn tokenize(
        &self,
        text: RStr<'_>,
        add_special: bool,
        parse_special: bool,
    ) -> RResult<RVec<u32>, PluginError> {
        guarded("tokenize", || {
            let tokens = self
                .inner()?
                .tokenize(text.as_str(), add_special, parse_special)?;
            Ok(RVec::from(tokens))
        })
    }

    fn detokenize(
        &self,
        tokens: RSlice<'_, u32>,
        skip_special: bool,
    ) -> RResult<RString, PluginError> {
        guarded("detokenize", || {
            let text = self.inner()?.detokenize(tokens.as_slice(), skip_special)?;
            Ok(RString::from(text))
        })
    }

    fn generate(&self, request: GenerateRequest) -> RResult<GenerationBox, PluginError> {
        guarded("generate", || {
            self.check_generate(&request)?;
            let generation = self.inner()?.generate(request)?;
            Ok(FfiGeneration_TO::from_value(
                GenerationAdapter {
                    inner: Some(generation),
                    poisoned: None,
                },
                TD_Opaque,
            ))
        })
    }

    fn logits(&self, tokens: RSlice<'_, u32>) -> RResult<RVec<f32>, PluginError> {
        guarded("logits", || {
            if tokens.is_empty() {
                return Err(PluginError::invalid_request(
                    "logits need at least one token",
                ));
            }
            if let Some(bad) = tokens.iter().find(|&&t| t >= self.vocab_size) {
                return Err(PluginError::invalid_request(format!(
                    "token id {bad} is outside the vocabulary (size {})",
                    self.vocab_size
                )));
            }
            Ok(RVec::from(self.inner()?.logits(tokens.as_slice())?))
        })
    }

    fn embed(&self, request: EmbedRequest) -> RResult<RVec<RVec<f32>>, PluginError> {
        guarded("embed", || {
            self.require(capability::EMBEDDINGS, "embeddings")?;
            crate::extension::reject_unknown(&request.extensions, &[])?;
            if request.inputs.is_empty() || request.inputs.iter().any(|i| i.is_empty()) {
                return Err(PluginError::invalid_request(
                    "embeddings need at least one input, each with at least one token",
                ));
            }
            let out_of_vocab = request
                .inputs
                .iter()
                .flatten()
                .find(|&&t| t >= self.vocab_size);
            if let Some(bad) = out_of_vocab {
                return Err(PluginError::invalid_request(format!(
                    "token id {bad} is outside the vocabulary (size {})",
                    self.vocab_size
                )));
            }
            let vectors = self.inner()?.embed(request)?;
            Ok(vectors.into_iter().map(RVec::from).collect())
        })
    }
}

impl Drop for ModelAdapter {
    fn drop(&mut self) {
        drop_guarded(self.inner.take());
    }
}

struct GenerationAdapter {
    inner: Option<Box<dyn Generation>>,
    /// Set once the author's generation panicked: it is not touched again.
    poisoned: Option<PluginError>,
}

impl FfiGeneration for GenerationAdapter {
    fn next(&mut self) -> RResult<Step, PluginError> {
        if let Some(err) = &self.poisoned {
            return RResult::RErr(err.clone());
        }
        let Some(inner) = self.inner.as_mut() else {
            return RResult::RErr(PluginError::internal("generation already dropped"));
        };
        match catch_panic("next", || inner.next()) {
            Ok(result) => result.into(),
            Err(panic) => {
                self.poisoned = Some(panic.clone());
                drop_guarded(self.inner.take());
                RResult::RErr(panic)
            }
        }
    }

    fn stats(&self) -> RResult<GenerationStats, PluginError> {
        match &self.inner {
            Some(inner) => guarded("stats", || Ok(inner.stats())),
            None => RResult::RErr(PluginError::internal("generation is no longer running")),
        }
    }
}

impl Drop for GenerationAdapter {
    fn drop(&mut self) {
        drop_guarded(self.inner.take());
    }
}
