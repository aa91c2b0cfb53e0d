//! Per-request LoRA adapters: the adapters a generation uses, resolved for the backend that
//! runs the model, and the loaded instance ("variant") that serves them.
//!
//! - Backends whose manifest says `lora_per_generation` (llama.cpp) get the adapters with
//!   each generation and read new adapter files into the already loaded model at run time:
//!   every request is served by the model's one instance (same pool key, no second copy of
//!   the weights). They activate one adapter at a time, so several adapters are first
//!   stacked into one exact GGUF LoRA ([`crate::adapters::stack`], cached) passed at scale
//!   1.0.
//! - candle merges adapters into the weights at load: one instance ("variant") per adapter
//!   set *and* scales. Variants are ordinary pool entries: unloaded by the LRU and the
//!   keep-alive like any model.

use super::error::EngineError;
use crate::{
    adapters::{
        AdapterConfig, AdapterFormat, AdapterManager, AdapterSource, AdapterSpec, BaseModel,
        ResolvedAdapter,
    },
    api::AdapterRequest,
    models::ModelManager,
    plugins::{capability, LoadedBackend},
};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

/// What a generation's adapters mean for the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// The pool key of the instance that serves it: the model name when there are no adapters
    /// or the backend takes adapters per generation.
    pub key: String,
    /// The adapters the instance is loaded with.
    pub load: Vec<AdapterRequest>,
    /// The adapters passed with each generation; `None` = the instance's load set.
    pub generation: Option<Vec<AdapterRequest>>,
}

impl Variant {
    pub fn base(name: &str) -> Variant {
        Variant {
            key: name.to_string(),
            load: Vec::new(),
            generation: None,
        }
    }
}

/// The pool key of `name` with adapters labelled `labels`.
fn variant_key(name: &str, labels: &[String]) -> String {
    format!("{}{}]", variant_prefix(name), labels.join(", "))
}

fn variant_prefix(name: &str) -> String {
    format!("{name} +lora[")
}

/// Whether `key` is an adapter variant of model `name`.
pub fn is_variant_of(key: &str, name: &str) -> bool {
    key.starts_with(&variant_prefix(name)) && key.ends_with(']')
}

/// Parses adapter spec strings; `from_request` ones naming local paths are refused unless the
/// engine accepts any model spec (a client could otherwise make the server read any file).
pub fn parse_specs(
    specs: &[String],
    from_request: bool,
    open_specs: bool,
) -> Result<Vec<AdapterSpec>, EngineError> {
    let mut out = Vec::with_capacity(specs.len());
    for text in specs {
        let spec = AdapterSpec::parse(text)?;
        if from_request && !open_specs && matches!(spec.source, AdapterSource::Local(_)) {
            return Err(EngineError::InvalidRequest(format!(
                "adapter `{text}` is a local path, which requests may not name on this server \
                 (start it with --allow-any-model, or configure the adapter in the model's \
                 `adapters`); use gh:OWNER/REPO@TAG/ASSET or hf:ORG/REPO"
            )));
        }
        out.push(spec);
    }
    Ok(out)
}

type PlanKey = (String, Option<String>, Vec<String>);

/// A resolved adapter file, and the modification time of its source when it is local.
#[derive(Debug, Clone)]
struct Cached {
    stamp: Option<SystemTime>,
    path: PathBuf,
    format: AdapterFormat,
}

/// Resolves adapters (fetch, check, convert) once per source, model file and backend, and
/// remembers which variant serves which request.
pub struct Adapters {
    manager: Mutex<Option<Arc<AdapterManager>>>,
    models: Option<Arc<ModelManager>>,
    resolved: Mutex<HashMap<(String, PathBuf, String), Cached>>,
    plans: Mutex<HashMap<PlanKey, (Variant, String)>>,
    /// Stacked adapter files by their parts (path, scale bits), with the parts' modification
    /// times when stacked: a repeated set costs a few `stat`s, not re-hashing every part.
    stacked: Mutex<HashMap<StackKey, Stacked>>,
}

/// The parts of a stacked adapter: each file with its scale's bits.
type StackKey = Vec<(PathBuf, u32)>;

/// A stacked adapter file and its parts' modification times when it was made.
struct Stacked {
    stamps: Vec<Option<SystemTime>>,
    path: PathBuf,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Adapters {
    pub fn new(models: Option<Arc<ModelManager>>) -> Adapters {
        Adapters {
            manager: Mutex::new(None),
            models,
            resolved: Mutex::new(HashMap::new()),
            plans: Mutex::new(HashMap::new()),
            stacked: Mutex::new(HashMap::new()),
        }
    }

    /// Uses `manager` (instead of one made from the environment at first use).
    pub fn set_manager(&self, manager: Arc<AdapterManager>) {
        *lock(&self.manager) = Some(manager);
    }

    fn manager(&self) -> Result<Arc<AdapterManager>, EngineError> {
        let mut slot = lock(&self.manager);
        if let Some(manager) = &*slot {
            return Ok(Arc::clone(manager));
        }
        let mut manager = AdapterManager::new(AdapterConfig::from_env())?;
        if let Some(models) = &self.models {
            manager = manager.with_shared_model_manager(Arc::clone(models));
        }
        let manager = Arc::new(manager);
        *slot = Some(Arc::clone(&manager));
        Ok(manager)
    }

    /// The variant serving `specs` on `name` with backend `wanted`, as planned last time.
    pub fn remembered(
        &self,
        name: &str,
        wanted: Option<&str>,
        specs: &[AdapterSpec],
    ) -> Option<(Variant, String)> {
        lock(&self.plans)
            .get(&plan_key(name, wanted, specs))
            .cloned()
    }

    /// Resolves `specs` for the model at `model_path` run by `backend`: the variant to use.
    pub async fn plan(
        &self,
        name: &str,
        wanted: Option<&str>,
        specs: &[AdapterSpec],
        model_path: &Path,
        backend: &LoadedBackend,
    ) -> Result<Variant, EngineError> {
        if specs.is_empty() {
            return Ok(Variant::base(name));
        }
        let caps = &backend.manifest.capabilities;
        if !caps.has(capability::LORA) {
            return Err(EngineError::InvalidRequest(format!(
                "backend `{}` does not support LoRA adapters; run the model with a backend \
                 that does (llama-cpp, candle)",
                backend.name()
            )));
        }
        let mut resolved = Vec::with_capacity(specs.len());
        for spec in specs {
            resolved.push(self.resolve(spec, model_path, backend.name()).await?);
        }
        let variant = if caps.has(capability::LORA_PER_GENERATION) {
            per_generation_variant(name, self.one_adapter(&resolved).await?)
        } else {
            merged_variant(name, &resolved)
        };
        lock(&self.plans).insert(
            plan_key(name, wanted, specs),
            (variant.clone(), backend.name().to_string()),
        );
        Ok(variant)
    }

    /// The single adapter request equal to `resolved`: the adapter itself, or several stacked
    /// into one file (applied at scale 1.0).
    async fn one_adapter(
        &self,
        resolved: &[ResolvedAdapter],
    ) -> Result<AdapterRequest, EngineError> {
        if let [one] = resolved {
            return Ok(one.request());
        }
        let parts: Vec<(PathBuf, f32)> = resolved
            .iter()
            .map(|r| (r.path.clone(), r.spec.scale))
            .collect();
        let key: StackKey = parts
            .iter()
            .map(|(path, scale)| (path.clone(), scale.to_bits()))
            .collect();
        let stamps: Vec<Option<SystemTime>> = parts.iter().map(|(p, _)| modified(p)).collect();
        let known = lock(&self.stacked)
            .get(&key)
            .filter(|known| known.stamps == stamps && known.path.is_file())
            .map(|known| known.path.clone());
        let stacked = match known {
            Some(out) => out,
            None => {
                let manager = self.manager()?;
                // Reading and writing adapter tensors: off the runtime.
                let out = tokio::task::spawn_blocking(move || manager.stack(&parts))
                    .await
                    .map_err(|err| {
                        EngineError::Internal(format!("the adapter thread failed: {err}"))
                    })??;
                tracing::info!(
                    adapters = resolved.len(), path = %out.display(),
                    "adapters stacked into one for the backend"
                );
                lock(&self.stacked).insert(
                    key,
                    Stacked {
                        stamps,
                        path: out.clone(),
                    },
                );
                out
            }
        };
        Ok(AdapterRequest {
            path: stacked.to_string_lossy().into_owned().into(),
            scale: 1.0,
        })
    }

    /// One adapter, fetched, checked against the model and in a format `backend` reads.
    async fn resolve(
        &self,
        spec: &AdapterSpec,
        model_path: &Path,
        backend: &str,
    ) -> Result<ResolvedAdapter, EngineError> {
        let key = (
            spec.source.to_string(),
            model_path.to_path_buf(),
            backend.to_string(),
        );
        let stamp = source_stamp(&spec.source);
        if let Some(hit) = lock(&self.resolved).get(&key) {
            if hit.stamp == stamp {
                return Ok(ResolvedAdapter {
                    spec: spec.clone(),
                    path: hit.path.clone(),
                    format: hit.format,
                });
            }
        }
        let manager = self.manager()?;
        let path = manager.fetch(spec).await?;
        let (spec_owned, model) = (spec.clone(), model_path.to_path_buf());
        let formats = AdapterFormat::read_by(backend);
        // Checking reads the adapter's tensors and converting writes a file: off the runtime.
        let adapter = tokio::task::spawn_blocking(move || {
            let base = BaseModel::from_path(&model)?;
            manager.prepare(&spec_owned, &path, &base, formats)
        })
        .await
        .map_err(|err| EngineError::Internal(format!("the adapter thread failed: {err}")))??;
        tracing::info!(
            adapter = %spec, path = %adapter.path.display(), backend,
            "adapter ready for {}", model_path.display()
        );
        lock(&self.resolved).insert(
            key,
            Cached {
                stamp,
                path: adapter.path.clone(),
                format: adapter.format,
            },
        );
        Ok(adapter)
    }
}

fn plan_key(name: &str, wanted: Option<&str>, specs: &[AdapterSpec]) -> PlanKey {
    (
        name.to_string(),
        wanted.map(str::to_string),
        specs.iter().map(ToString::to_string).collect(),
    )
}

/// Per-generation backends: the model's one instance (loaded without adapters), `adapter`
/// passed with each generation.
fn per_generation_variant(name: &str, adapter: AdapterRequest) -> Variant {
    Variant {
        key: name.to_string(),
        load: Vec::new(),
        generation: Some(vec![adapter]),
    }
}

/// Merging backends: an instance loaded with the exact set and scales.
fn merged_variant(name: &str, resolved: &[ResolvedAdapter]) -> Variant {
    let labels: Vec<String> = resolved.iter().map(|r| r.spec.to_string()).collect();
    Variant {
        key: variant_key(name, &labels),
        load: resolved.iter().map(ResolvedAdapter::request).collect(),
        generation: None,
    }
}

/// When a local adapter last changed (the newest of a folder's files), so an edited adapter is
/// resolved again; `None` for downloads (their cache paths are versioned).
fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn source_stamp(source: &AdapterSource) -> Option<SystemTime> {
    let AdapterSource::Local(path) = source else {
        return None;
    };
    let mut newest = modified(path);
    if path.is_dir() {
        let entries = std::fs::read_dir(path).into_iter().flatten().flatten();
        for entry in entries {
            newest = newest.max(modified(&entry.path()));
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(source: &str, scale: f32) -> ResolvedAdapter {
        ResolvedAdapter {
            spec: AdapterSpec::parse(source).expect("spec").with_scale(scale),
            path: PathBuf::from(format!("/cache/{source}.gguf")),
            format: AdapterFormat::Gguf,
        }
    }

    #[test]
    fn per_generation_variants_share_the_base_instance_and_merged_ones_keep_scales() {
        let half = resolved("a", 0.5);
        let per_gen = per_generation_variant("m", half.request());
        assert_eq!(per_gen.key, "m", "the base model's pool key");
        assert!(
            per_gen.load.is_empty(),
            "the instance is loaded without adapters"
        );
        assert_eq!(per_gen.generation.expect("adapters")[0].scale, 0.5);
        let merged = (
            merged_variant("m", &[half]),
            merged_variant("m", &[resolved("a", 1.0)]),
        );
        assert_ne!(merged.0.key, merged.1.key);
        assert_eq!(merged.0.load[0].scale, 0.5);
        assert_eq!(merged.0.generation, None);
        assert!(is_variant_of(&merged.0.key, "m"));
        assert!(!is_variant_of(&merged.0.key, "m2"));
        assert!(!is_variant_of("m", "m"));
    }

    #[test]
    fn local_paths_from_requests_need_open_specs() {
        let specs = vec!["./x.gguf:0.5".to_string()];
        assert!(parse_specs(&specs, true, false).is_err());
        assert!(parse_specs(&specs, false, false).is_ok());
        assert_eq!(parse_specs(&specs, true, true).expect("ok")[0].scale, 0.5);
        assert!(parse_specs(&["gh:o/r@v1/a.gguf".to_string()], true, false).is_ok());
        assert!(parse_specs(&["gh:bad".to_string()], true, true).is_err());
    }
}
