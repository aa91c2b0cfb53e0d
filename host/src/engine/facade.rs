//! [`Engine`]: ensure cached -> ensure loaded -> generate, over the plugins and the model
//! manager, with several models loaded at once.

use super::{
    embedding::{self, EmbedConfig, EmbedInput, Embeddings},
    error::EngineError,
    kv_cache, limits,
    lora::{self, Adapters, Variant},
    memory,
    metrics::Metrics,
    pool::{BusyGuard, Gate, LoadedInfo, Pool, Slot},
    prompt_cache,
    request::{Completion, Constraint, GenerationConfig, Prompt, TokenStream},
    runner::{self, Job, OnEnd, CHANNEL_CAPACITY},
    settings::{EngineSettings, ModelEntry},
    stop::StopMatcher,
    template::{read_tokenizer_config, ChatTemplate},
    template_override,
    tools::{self, ToolSpec, Tools},
    view::ModelView,
};
use crate::{
    adapters::{AdapterManager, AdapterSpec},
    api::AdapterRequest,
    models::{format_of_path, ModelError, ModelManager, ModelSource, ModelSpec},
    plugins::{
        self, capability, BackendError, ConstraintKind, EmbedRequest, GenerateRequest, LoadRequest,
        LoadedBackend, LoadedModel, LogitBias, ModelFormat, ModelMetadata, PluginRegistry,
        Sampling,
    },
};
use abi_stable::std_types::{RString, RVec};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, RwLock, Weak},
    time::{Duration, Instant, SystemTime},
};
use tokio::sync::mpsc;

/// The engine: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    settings: EngineSettings,
    aliases: RwLock<BTreeMap<String, ModelEntry>>,
    registry: Arc<PluginRegistry>,
    manager: Option<Arc<ModelManager>>,
    /// Also holds one load slot per model: two requests for one model load it once, while
    /// different models load side by side.
    pool: Arc<Mutex<Pool>>,
    metrics: Arc<Metrics>,
    last_stats: Mutex<Option<Completion>>,
    total_memory: u64,
    adapters: Adapters,
}

/// A loaded instance ready for a generation.
struct Ready {
    slot: Slot,
    busy: BusyGuard,
    load_ms: f64,
    /// The adapters to pass with the generation (`None` = the instance's own).
    adapters: Option<Vec<AdapterRequest>>,
}

impl Ready {
    fn new((slot, busy, load_ms): (Slot, BusyGuard, f64), variant: &Variant) -> Ready {
        Ready {
            slot,
            busy,
            load_ms,
            adapters: variant.generation.clone(),
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backends", &self.inner.registry.backend_names())
            .finish_non_exhaustive()
    }
}

/// Where a model's files are.
#[derive(Debug, Clone)]
pub struct ResolvedFiles {
    pub spec: ModelSpec,
    pub path: PathBuf,
    pub format: Option<ModelFormat>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Engine {
    /// An engine over the loaded plugins; `manager` resolves Hugging Face specs (without one,
    /// only local paths work).
    pub fn new(
        settings: EngineSettings,
        registry: Arc<PluginRegistry>,
        manager: Option<Arc<ModelManager>>,
    ) -> Engine {
        let aliases = RwLock::new(settings.models.clone());
        let adapters = Adapters::new(manager.clone());
        Engine {
            inner: Arc::new(Inner {
                settings,
                aliases,
                registry,
                manager,
                pool: Arc::new(Mutex::new(Pool::default())),
                metrics: Arc::new(Metrics::new()),
                last_stats: Mutex::new(None),
                total_memory: memory::read().total,
                adapters,
            }),
        }
    }

    /// Uses `manager` for LoRA adapters (default: one from the environment, made at first use).
    pub fn with_adapter_manager(self, manager: Arc<AdapterManager>) -> Engine {
        self.inner.adapters.set_manager(manager);
        self
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.inner.settings
    }

    pub fn registry(&self) -> &PluginRegistry {
        &self.inner.registry
    }

    pub fn model_manager(&self) -> Option<&Arc<ModelManager>> {
        self.inner.manager.as_ref()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The named models (aliases), configured or added since.
    pub fn models(&self) -> BTreeMap<String, ModelEntry> {
        self.inner
            .aliases
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Names a model (a later request may use `name`).
    pub fn add_model(&self, name: &str, entry: ModelEntry) {
        let mut aliases = self
            .inner
            .aliases
            .write()
            .unwrap_or_else(|p| p.into_inner());
        aliases.insert(name.to_string(), entry);
    }

    /// Forgets a name and unloads the model; returns its entry.
    pub fn remove_model(&self, name: &str) -> Option<ModelEntry> {
        self.unload(name);
        let mut aliases = self
            .inner
            .aliases
            .write()
            .unwrap_or_else(|p| p.into_inner());
        aliases.remove(name)
    }

    /// The models loaded now.
    pub fn loaded(&self) -> Vec<LoadedInfo> {
        lock(&self.inner.pool).infos()
    }

    /// Bytes each loaded model's prompt caches hold now, by model name (see
    /// [`super::prompt_cache`]): asked of the live models, not the metadata kept from the
    /// load. 0 for a model whose backend does not say or whose call failed.
    pub async fn prompt_cache_bytes(&self) -> Vec<(String, u64)> {
        let models = lock(&self.inner.pool).handles();
        let ask = move || {
            models
                .iter()
                .map(|(name, model)| (name.clone(), prompt_cache::now(name, model)))
                .collect()
        };
        tokio::task::spawn_blocking(ask)
            .await
            .unwrap_or_else(|err| {
                tracing::debug!("the prompt cache size thread failed: {err}");
                Vec::new()
            })
    }

    /// The completion of the last generation that finished.
    pub fn last_stats(&self) -> Option<Completion> {
        lock(&self.inner.last_stats).clone()
    }

    /// The spec a model name stands for: an alias, else (with `open_specs`) the name itself.
    pub fn spec_for(&self, name: &str) -> Result<(ModelSpec, ModelEntry), EngineError> {
        if let Some(entry) = self.models().get(name) {
            let mut spec = ModelSpec::parse(&entry.spec)?.with_name(name);
            spec.backend = entry.backend.clone().or(spec.backend);
            spec.context_length = entry.context_length.or(spec.context_length);
            return Ok((spec, entry.clone()));
        }
        if self.inner.settings.open_specs {
            let spec = ModelSpec::parse(name)?;
            return Ok((spec, ModelEntry::new(name)));
        }
        let known: Vec<String> = self.models().into_keys().collect();
        Err(EngineError::UnknownModel {
            name: name.to_string(),
            hint: if known.is_empty() {
                "no models are configured; add one with --model NAME=SPEC or [models.NAME] in the config".to_string()
            } else {
                format!("available models: {}", known.join(", "))
            },
        })
    }

    /// Ensures the model's files are on disk (downloading them if needed) without loading it.
    pub async fn prefetch(&self, name: &str) -> Result<ResolvedFiles, EngineError> {
        let (spec, _) = self.spec_for(name)?;
        self.resolve_files(spec).await
    }

    /// Whether the model's files are on disk already.
    pub fn is_cached(&self, name: &str) -> bool {
        let Ok((spec, _)) = self.spec_for(name) else {
            return false;
        };
        match (&spec.source, &self.inner.manager) {
            (ModelSource::Local(path), _) => path.exists(),
            (_, Some(manager)) => manager.is_cached(&spec),
            (_, None) => false,
        }
    }

    async fn resolve_files(&self, spec: ModelSpec) -> Result<ResolvedFiles, EngineError> {
        if let ModelSource::Local(path) = &spec.source {
            if !path.exists() {
                return Err(ModelError::LocalPath {
                    path: path.clone(),
                    reason: "does not exist".to_string(),
                }
                .into());
            }
            let format = spec.format.or_else(|| format_of_path(path));
            let path = path.clone();
            return Ok(ResolvedFiles { spec, path, format });
        }
        let manager = self.inner.manager.as_ref().ok_or_else(|| {
            EngineError::Internal(format!(
                "model `{}` needs a download but the engine has no model manager",
                spec.name
            ))
        })?;
        let resolved = manager.resolve(&spec).await?;
        Ok(ResolvedFiles {
            spec,
            path: resolved.path,
            format: Some(resolved.format),
        })
    }

    /// Loads the model (if it is not loaded) and returns what is loaded.
    pub async fn load(&self, name: &str, backend: Option<&str>) -> Result<LoadedInfo, EngineError> {
        let ready = self.ensure_loaded(name, backend, None, &[]).await?;
        Ok(LoadedInfo::from(&ready.slot))
    }

    /// Loads the model with LoRA adapters (adapter specs `SPEC[:scale]`), as a generation
    /// naming them would; returns what is loaded. On a backend that takes adapters per
    /// generation that is the model's own instance, with the adapters fetched, converted and
    /// stacked here and read into the model by its first generation that names them.
    pub async fn load_with_adapters(
        &self,
        name: &str,
        backend: Option<&str>,
        adapters: &[String],
    ) -> Result<LoadedInfo, EngineError> {
        let ready = self
            .ensure_loaded(name, backend, Some(adapters), &[])
            .await?;
        Ok(LoadedInfo::from(&ready.slot))
    }

    /// Unloads every instance of the model, adapter variants included (running generations
    /// finish first); true if any.
    pub fn unload(&self, name: &str) -> bool {
        let mut pool = lock(&self.inner.pool);
        let mut removed = pool.remove(name);
        for info in pool.infos() {
            if lora::is_variant_of(&info.name, name) {
                removed += pool.remove(&info.name);
            }
        }
        self.inner.metrics.loaded_models.set(pool.len() as i64);
        removed > 0
    }

    /// How long a loaded model stays when idle (`None` = until unloaded); false if not loaded.
    pub fn set_keep_alive(&self, name: &str, keep_alive: Option<Duration>) -> bool {
        lock(&self.inner.pool).set_keep_alive(name, keep_alive)
    }

    /// Pins (never unloaded for memory or idleness) or unpins a model, loaded or not.
    pub fn pin(&self, name: &str, pinned: bool) -> bool {
        let found = lock(&self.inner.pool).set_pinned(name, pinned);
        let mut aliases = self
            .inner
            .aliases
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match aliases.get_mut(name) {
            Some(entry) => {
                entry.pinned = pinned;
                true
            }
            None => found,
        }
    }

    /// The loaded instance for `name` with `adapters` (`None` = the model's configured
    /// ones), loading it first if needed; marked busy.
    /// `needs`: capabilities the request requires; a backend lacking one is refused before
    /// any model file is read or loaded.
    async fn ensure_loaded(
        &self,
        name: &str,
        backend: Option<&str>,
        adapters: Option<&[String]>,
        needs: &[&str],
    ) -> Result<Ready, EngineError> {
        let (spec, entry) = self.spec_for(name)?;
        let open = self.inner.settings.open_specs;
        let specs = match adapters {
            Some(asked) => lora::parse_specs(asked, true, open)?,
            None => lora::parse_specs(&entry.adapters, false, open)?,
        };
        let wanted = backend.or(entry.backend.as_deref());
        if let Some(found) = self.find_ready(name, wanted, &specs) {
            return Ok(found);
        }
        let _loading = Pool::begin_load(&self.inner.pool, name).await;
        if let Some(found) = self.find_ready(name, wanted, &specs) {
            return Ok(found);
        }
        let started = Instant::now();
        let files = self.resolve_files(spec).await?;
        let default_backend = self.inner.settings.default_backend.as_deref();
        let chosen = Arc::clone(self.inner.registry.choose(
            wanted,
            default_backend,
            files.format,
        )?);
        chosen.check_capabilities(needs)?;
        let variant = (self.inner.adapters)
            .plan(name, wanted, &specs, &files.path, &chosen)
            .await?;
        if let Some(found) = self.find_busy(&variant.key, Some(chosen.name())) {
            return Ok(Ready::new(found, &variant));
        }
        // A merged variant a request asked for is not pinned: only what the entry configures
        // is, and the model's own instance (which per-generation backends always use).
        let own_instance = variant.key == name;
        let pinned = entry.pinned
            && (own_instance || adapters.is_none_or(|a| a == entry.adapters.as_slice()));
        let slot = self
            .load_slot(name, &variant, pinned, &entry, &files, chosen)
            .await?;
        let load_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.inner
            .metrics
            .load_seconds
            .get_or_create(&Metrics::model(name))
            .observe(load_ms / 1000.0);
        let busy = slot.gate.busy();
        let mut pool = lock(&self.inner.pool);
        pool.insert(slot.clone());
        self.inner.metrics.loaded_models.set(pool.len() as i64);
        Ok(Ready {
            slot,
            busy,
            load_ms,
            adapters: variant.generation,
        })
    }

    /// A loaded instance serving `specs` on `name`, without resolving anything.
    fn find_ready(&self, name: &str, wanted: Option<&str>, specs: &[AdapterSpec]) -> Option<Ready> {
        if specs.is_empty() {
            let base = Variant::base(name);
            return self
                .find_busy(name, wanted)
                .map(|found| Ready::new(found, &base));
        }
        let (variant, backend) = self.inner.adapters.remembered(name, wanted, specs)?;
        self.find_busy(&variant.key, Some(&backend))
            .map(|found| Ready::new(found, &variant))
    }

    fn find_busy(&self, name: &str, backend: Option<&str>) -> Option<(Slot, BusyGuard, f64)> {
        let mut pool = lock(&self.inner.pool);
        let slot = pool.find(name, backend)?;
        let busy = slot.gate.busy();
        Some((slot, busy, 0.0))
    }

    async fn load_slot(
        &self,
        model: &str,
        variant: &Variant,
        pinned: bool,
        entry: &ModelEntry,
        files: &ResolvedFiles,
        backend: Arc<LoadedBackend>,
    ) -> Result<Slot, EngineError> {
        let settings = &self.inner.settings;
        let name = variant.key.as_str();
        let model_max = memory::model_max_context(&files.path);
        let explicit = entry.context_length.or(settings.context_length);
        let context_length = explicit
            .unwrap_or_else(|| memory::default_context_length(self.inner.total_memory, model_max));
        if let (Some(asked), Some(max)) = (explicit, model_max) {
            if asked > max {
                tracing::warn!(
                    "model `{name}`: context_length {asked} is over the {max} tokens it was trained with; \
                     quality may drop beyond {max}"
                );
            }
        }
        let parallel = settings
            .parallel
            .unwrap_or(backend.manifest.capabilities.parallel_generations)
            .max(1);
        let kv_cache = entry.kv_cache(&settings.kv_cache);
        let cache_ram_default = kv_cache::default_cache_ram_mib(self.inner.total_memory);
        let extensions = kv_cache
            .extensions(|c| backend.manifest.capabilities.has(c), cache_ram_default)
            .map_err(|(option, needs)| {
                EngineError::InvalidRequest(format!(
                    "model `{model}` sets {option}, but its backend `{}` does not declare the \
                     capability `{needs}`; remove the option or use a backend that has it \
                     (`llmlocal plugins` lists them)",
                    backend.name()
                ))
            })?;
        let plan = memory::LoadPlan {
            context_length,
            parallel,
            kv_cache: &kv_cache,
        };
        let bytes = memory::estimate_load_bytes(&files.path, plan);
        // Reserved under the model's name: its load turn (held by the caller) frees that.
        self.make_room(model, bytes, context_length)?;
        let request = LoadRequest {
            model_paths: RVec::from(vec![RString::from(
                files.path.to_string_lossy().into_owned(),
            )]),
            device: RString::from(settings.device.as_str()),
            context_length,
            threads: settings.threads,
            parallel,
            adapters: RVec::from(variant.load.clone()),
            extensions,
            ..LoadRequest::new("")
        };
        // The RAM prompt cache is outside the memory estimate: say what it may take.
        let cache_ram = match backend
            .manifest
            .capabilities
            .has(capability::HOST_RAM_PROMPT_CACHE)
        {
            true => format!(
                ", host-RAM prompt cache up to {} MiB",
                kv_cache.cache_ram_or(cache_ram_default)
            ),
            false => String::new(),
        };
        tracing::info!(
            "loading `{name}` from {} with backend `{}` (context {context_length}{cache_ram})",
            files.path.display(),
            backend.name()
        );
        let path = files.path.clone();
        // The model's own template unless the model's entry or the server overrides it.
        let chosen = entry
            .chat_template
            .clone()
            .or_else(|| settings.chat_template.clone());
        let shown_name = model.to_string();
        let (model, metadata, template) =
            tokio::task::spawn_blocking(move || {
                let model = backend.load_model(request)?;
                let metadata = model.metadata()?;
                let template = build_template(&model, &metadata, &path, chosen.as_deref())
                    .map_err(|message| EngineError::Template {
                        model: shown_name,
                        message,
                    })?;
                Ok::<_, EngineError>((model, metadata, template))
            })
            .await
            .map_err(|err| EngineError::Internal(format!("the load thread failed: {err}")))??;
        let keep_alive = match entry.keep_alive_secs {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => settings.keep_alive,
        };
        Ok(Slot {
            name: name.to_string(),
            backend: model.backend_name().to_string(),
            model,
            metadata,
            template: Arc::new(template),
            path: files.path.clone(),
            bytes,
            pinned,
            keep_alive,
            last_used: Instant::now(),
            loaded_at: SystemTime::now(),
            gate: Gate::new(parallel, settings.queue_depth),
        })
    }

    /// Unloads idle models, least recently used first, until `need` bytes fit.
    fn make_room(&self, name: &str, need: u64, context_length: u32) -> Result<(), EngineError> {
        let settings = &self.inner.settings;
        let mut pool = lock(&self.inner.pool);
        loop {
            let available = match settings.memory_limit {
                Some(limit) => limit.saturating_sub(pool.bytes()),
                None => memory::read()
                    .available
                    .saturating_sub(settings.low_memory_threshold)
                    .saturating_sub(pool.reserved()),
            };
            if need <= available {
                pool.reserve(name, need);
                return Ok(());
            }
            match pool.evict_lru() {
                Some(slot) => {
                    tracing::info!(
                        "unloading `{}` ({}) to make room for `{name}`",
                        slot.name,
                        slot.backend
                    );
                    self.inner.metrics.loaded_models.set(pool.len() as i64);
                }
                None => {
                    return Err(EngineError::OutOfMemory {
                        model: name.to_string(),
                        need_mib: need >> 20,
                        available_mib: available >> 20,
                        context_length,
                    })
                }
            }
        }
    }

    /// `config` with what it leaves out taken from model `name`'s sampling defaults, then the
    /// server-wide ones, then its `max_tokens_cap` (see [`super::defaults`]). [`Self::generate`]
    /// applies this itself; a dialect calls it only to report the settings used.
    pub fn with_defaults(&self, name: &str, mut config: GenerationConfig) -> GenerationConfig {
        let model = self
            .inner
            .aliases
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(ModelEntry::sampling)
            .unwrap_or_default();
        model.or(&self.inner.settings.sampling).apply(&mut config);
        config
    }

    /// Starts a generation. Errors before the first token (unknown model, bad parameters,
    /// full queue) come back here; later ones arrive in the stream.
    pub async fn generate(
        &self,
        name: &str,
        prompt: Prompt,
        config: GenerationConfig,
    ) -> Result<TokenStream, EngineError> {
        let received = Instant::now();
        let config = self.with_defaults(name, config);
        validate(&config)?;
        limits::check(&prompt, &config).map_err(EngineError::InvalidRequest)?;
        tools::check(&config).map_err(EngineError::InvalidRequest)?;
        let mut config = config;
        tools::force_call(&mut config);
        // Only a chat prompt goes through the template that shows the tools.
        let shown: Option<Vec<ToolSpec>> = config
            .tools
            .as_ref()
            .and_then(|t| t.active())
            .filter(|_| matches!(prompt, Prompt::Chat(_)))
            .map(<[ToolSpec]>::to_vec);
        let needs = request_of(&config, Vec::new(), 0).required_capabilities();
        let Ready {
            slot,
            busy,
            load_ms,
            adapters,
        } = self
            .ensure_loaded(
                name,
                config.backend.as_deref(),
                config.adapters.as_deref(),
                &needs,
            )
            .await?;
        let queued = Instant::now();
        let permit = slot.gate.enter(name, &self.inner.metrics).await?;
        let queue_ms = queued.elapsed().as_secs_f64() * 1000.0;
        let is_chat = match &prompt {
            Prompt::Chat(_) => true,
            Prompt::Completion { .. } => !slot.template.is_fallback(),
            _ => false,
        };
        let prepared = match prompt {
            // Only a range check: no reason to hop to a blocking thread.
            Prompt::Tokens(_) => prepare_prompt(&slot, &prompt, None)?,
            _ => {
                let slot = slot.clone();
                tokio::task::spawn_blocking(move || {
                    prepare_prompt(&slot, &prompt, shown.as_deref())
                })
                .await
                .map_err(|err| {
                    EngineError::Internal(format!("the tokenizer thread failed: {err}"))
                })??
            }
        };
        let context = slot.metadata.context_length;
        let prompt_len = prepared.len() as u32;
        let room = context.saturating_sub(prompt_len);
        let mut stops = config.stop.clone();
        if is_chat {
            stops.extend(slot.template.stop_sequences());
        }
        let max_tokens = config.max_tokens.unwrap_or(room).min(room.max(1));
        let request = GenerateRequest {
            adapters: adapters.map(RVec::from).into(),
            ..request_of(&config, prepared, max_tokens)
        };
        // A 400 naming the backend and the capability, before any work is queued.
        slot.model.check_capabilities(&request)?;
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        let job = Job {
            model: slot.model.clone(),
            name: name.to_string(),
            request,
            stop: StopMatcher::new(stops),
            logprobs: (config.logprobs.is_some() || config.token_ids).then(|| {
                let bos = slot.metadata.bos_token.into_option();
                runner::LogprobTrack::new(slot.model.clone(), bos)
            }),
            metrics: Arc::clone(&self.inner.metrics),
            received,
            load_ms,
            queue_ms,
            permit,
            busy,
            on_end: on_end(Arc::downgrade(&self.inner), &slot.name, &slot.backend),
        };
        runner::spawn(job, sender);
        Ok(TokenStream {
            receiver,
            model: name.to_string(),
            backend: slot.backend.clone(),
            prompt_tokens: prompt_len,
            received,
        })
    }

    /// How many tokens `prompt` is for model `name` (loading it first), through the same
    /// preparation a generation uses (chat template, BOS): what Anthropic's
    /// `count_tokens` reports. Takes no run slot: tokenizing does not wait for generations.
    pub async fn count_tokens(
        &self,
        name: &str,
        prompt: Prompt,
        tools: Option<Tools>,
        backend: Option<&str>,
    ) -> Result<u32, EngineError> {
        let config = GenerationConfig {
            tools,
            ..GenerationConfig::default()
        };
        limits::check(&prompt, &config).map_err(EngineError::InvalidRequest)?;
        tools::check(&config).map_err(EngineError::InvalidRequest)?;
        let ready = self.ensure_loaded(name, backend, None, &[]).await?;
        let slot = ready.slot.clone();
        let tokens = tokio::task::spawn_blocking(move || {
            let specs = config.tools.as_ref().and_then(Tools::active);
            prepare_prompt(&slot, &prompt, specs)
        })
        .await
        .map_err(|err| EngineError::Internal(format!("the tokenizer thread failed: {err}")))??;
        drop(ready);
        Ok(tokens.len() as u32)
    }

    /// Model `name` (loaded first if needed, with its configured adapters) for requests that
    /// need its tokenizer, template or metadata but no generation.
    pub async fn view(&self, name: &str) -> Result<ModelView, EngineError> {
        let Ready { slot, busy, .. } = self.ensure_loaded(name, None, None, &[]).await?;
        Ok(ModelView {
            name: name.to_string(),
            backend: slot.backend.clone(),
            model: slot.model.clone(),
            metadata: slot.metadata.clone(),
            parallel: slot.gate.parallel(),
            template: Arc::clone(&slot.template),
            path: slot.path.clone(),
            _busy: busy,
        })
    }

    /// Generations running or queued on model `name` (`None` when it is not loaded).
    pub fn busy_count(&self, name: &str) -> Option<usize> {
        let mut pool = lock(&self.inner.pool);
        pool.find(name, None).map(|slot| slot.gate.busy_count())
    }

    /// Embeds `input` with model `name` (loading it first): one vector per input, in order.
    /// A backend without the `embeddings` capability gets a 400 naming it and the capability.
    pub async fn embed(
        &self,
        name: &str,
        input: EmbedInput,
        config: EmbedConfig,
    ) -> Result<Embeddings, EngineError> {
        let received = Instant::now();
        embedding::check_count(&input)?;
        let ready = self
            .ensure_loaded(
                name,
                config.backend.as_deref(),
                None,
                &[capability::EMBEDDINGS],
            )
            .await?;
        let (slot, busy, load_ms) = (ready.slot, ready.busy, ready.load_ms);
        if !slot.model.has_capability(capability::EMBEDDINGS) {
            let backend = slot.model.backend_name();
            return Err(BackendError::missing_capability(backend, capability::EMBEDDINGS).into());
        }
        // Embeddings take a run slot like a generation: they use the same cores.
        let permit = slot.gate.enter(name, &self.inner.metrics).await?;
        let (model, metadata, slot_name) =
            (slot.model.clone(), slot.metadata.clone(), slot.name.clone());
        let (vectors, prompt_tokens) = tokio::task::spawn_blocking(move || {
            let inputs = embedding::prepare(
                &model,
                &slot_name,
                metadata.vocab_size,
                metadata.context_length,
                input,
                config.truncate,
            )?;
            let tokens = inputs.iter().map(|i| i.len() as u64).sum::<u64>();
            let mut request = EmbedRequest::new(inputs);
            request.normalize = config.normalize;
            Ok::<_, EngineError>((model.embed(request)?, tokens))
        })
        .await
        .map_err(|err| EngineError::Internal(format!("the embedding thread failed: {err}")))??;
        drop((permit, busy));
        lock(&self.inner.pool).touch(&slot.name, &slot.backend);
        self.inner
            .metrics
            .embeddings
            .get_or_create(&Metrics::model(name))
            .inc_by(vectors.len() as u64);
        Ok(Embeddings {
            model: name.to_string(),
            vectors,
            prompt_tokens,
            load_ms,
            total_ms: received.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// Unloads models idle past their keep-alive, and one idle model when the OS's available
    /// memory is under the threshold; returns what was unloaded.
    pub fn reap(&self) -> Vec<String> {
        let settings = &self.inner.settings;
        let mut pool = lock(&self.inner.pool);
        let mut gone = pool.evict_expired(Instant::now());
        if settings.memory_limit.is_none() && !pool.is_empty() {
            let available = memory::read().available;
            if available < settings.low_memory_threshold {
                if let Some(slot) = pool.evict_lru() {
                    tracing::warn!(
                        "available memory is low ({} MiB): unloading `{}`",
                        available >> 20,
                        slot.name
                    );
                    gone.push(format!("{} ({})", slot.name, slot.backend));
                }
            }
        }
        self.inner.metrics.loaded_models.set(pool.len() as i64);
        for name in &gone {
            tracing::info!("unloaded {name}");
        }
        gone
    }

    /// Runs [`Engine::reap`] periodically until the engine is dropped.
    pub fn spawn_maintenance(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        let tick = self
            .inner
            .settings
            .keep_alive
            .map(|k| (k / 4).clamp(Duration::from_millis(50), Duration::from_secs(5)))
            .unwrap_or(Duration::from_secs(5));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            loop {
                interval.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                Engine { inner }.reap();
            }
        })
    }
}

/// Touches the instance (pool key `name`) and records the completion when a generation ends.
fn on_end(weak: Weak<Inner>, name: &str, backend: &str) -> OnEnd {
    let (name, backend) = (name.to_string(), backend.to_string());
    Box::new(move |completion| {
        let Some(inner) = weak.upgrade() else { return };
        lock(&inner.pool).touch(&name, &backend);
        if let Some(done) = completion {
            *lock(&inner.last_stats) = Some(done.clone());
        }
    })
}

fn validate(config: &GenerationConfig) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::InvalidRequest(m));
    if config.max_tokens == Some(0) {
        return bad("max_tokens must be at least 1".into());
    }
    if let Some(t) = config.temperature {
        if !(0.0..=100.0).contains(&t) {
            return bad(format!("temperature must be between 0 and 100, got {t}"));
        }
    }
    if let Some(p) = config.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {p}"));
        }
    }
    if let Some(p) = config.min_p {
        if !(0.0..=1.0).contains(&p) {
            return bad(format!("min_p must be in [0, 1], got {p}"));
        }
    }
    if let Some(r) = config.repeat_penalty {
        if !(r > 0.0 && r.is_finite()) {
            return bad(format!("repeat_penalty must be positive, got {r}"));
        }
    }
    Ok(())
}

/// The backend request for `config` (without per-generation adapters, which the load decides).
fn request_of(config: &GenerationConfig, prompt: Vec<u32>, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        sampling: sampling_of(config),
        ignore_eos: config.ignore_eos,
        logit_bias: config
            .logit_bias
            .iter()
            .map(|&(token, bias)| LogitBias { token, bias })
            .collect(),
        constraint: config.constraint.as_ref().map(constraint_of).into(),
        logprobs: config.logprobs.into(),
        cache_prompt: config.cache_prompt.unwrap_or(true),
        ..GenerateRequest::greedy(prompt, max_tokens)
    }
}

fn sampling_of(config: &GenerationConfig) -> Sampling {
    let d = Sampling::default();
    Sampling {
        temperature: config.temperature.unwrap_or(d.temperature),
        top_k: config.top_k.unwrap_or(d.top_k),
        top_p: config.top_p.unwrap_or(d.top_p),
        min_p: config.min_p.unwrap_or(d.min_p),
        repeat_penalty: config.repeat_penalty.unwrap_or(d.repeat_penalty),
        typical_p: config.typical_p.unwrap_or(d.typical_p),
        frequency_penalty: config.frequency_penalty.unwrap_or(d.frequency_penalty),
        presence_penalty: config.presence_penalty.unwrap_or(d.presence_penalty),
        repeat_last_n: config.repeat_last_n.unwrap_or(d.repeat_last_n),
        // `None`: the backend draws a random seed (the contract's rule).
        seed: config.seed.into(),
    }
}

fn constraint_of(constraint: &Constraint) -> plugins::Constraint {
    let (kind, text) = match constraint {
        Constraint::Grammar(text) => (ConstraintKind::Grammar, text),
        Constraint::JsonSchema(text) => (ConstraintKind::JsonSchema, text),
    };
    plugins::Constraint {
        kind,
        text: text.as_str().into(),
    }
}

/// Tokenizes the prompt: raw text as given (plus the backend's BOS), chat messages through
/// the model's chat template (special tokens in the rendered text are parsed); token ids
/// are checked against the vocabulary and used as given.
fn prepare_prompt(
    slot: &Slot,
    prompt: &Prompt,
    tools: Option<&[ToolSpec]>,
) -> Result<Vec<u32>, EngineError> {
    let model = &slot.model;
    let mut tokens = match prompt {
        Prompt::Tokens(ids) => checked_ids(slot, ids)?,
        Prompt::Text(text) => model.tokenize(text, true, false)?,
        Prompt::Completion { system, prompt } if slot.template.is_fallback() => {
            let text = match system {
                Some(system) => format!("{system}\n\n{prompt}"),
                None => prompt.clone(),
            };
            model.tokenize(&text, true, false)?
        }
        Prompt::Completion { system, prompt } => {
            let mut messages: Vec<super::ChatMessage> = system
                .iter()
                .map(|s| super::ChatMessage::new("system", s.as_str()))
                .collect();
            messages.push(super::ChatMessage::new("user", prompt.as_str()));
            return prepare_prompt(slot, &Prompt::Chat(messages), tools);
        }
        Prompt::Chat(messages) => {
            if messages.is_empty() {
                return Err(EngineError::InvalidRequest(
                    "messages must not be empty".into(),
                ));
            }
            let text = slot
                .template
                .render_with_tools(messages, tools, true)
                .map_err(|message| EngineError::Template {
                    model: slot.name.clone(),
                    message,
                })?;
            model.tokenize(&text, true, true)?
        }
    };
    // A template that writes BOS itself plus the tokenizer adding one gives two. Token-id
    // prompts are the caller's exact input and are left alone.
    let tokenized = !matches!(prompt, Prompt::Tokens(_));
    if let Some(bos) = slot.metadata.bos_token.into_option().filter(|_| tokenized) {
        if tokens.len() >= 2 && tokens[0] == bos && tokens[1] == bos {
            tokens.remove(0);
        }
    }
    if tokens.is_empty() {
        return Err(EngineError::InvalidRequest("the prompt is empty".into()));
    }
    let context = slot.metadata.context_length;
    if tokens.len() as u64 >= u64::from(context) {
        return Err(EngineError::ContextExceeded {
            model: slot.name.clone(),
            n_prompt_tokens: u32::try_from(tokens.len()).unwrap_or(u32::MAX),
            n_ctx: context,
        });
    }
    Ok(tokens)
}

/// A token-id prompt, when it is not empty and every id is in the model's vocabulary.
fn checked_ids(slot: &Slot, ids: &[u32]) -> Result<Vec<u32>, EngineError> {
    if ids.is_empty() {
        return Err(EngineError::InvalidRequest(
            "the prompt is an empty list of token ids".into(),
        ));
    }
    let vocab = slot.metadata.vocab_size;
    // A backend that reports no vocabulary size (0) cannot be checked here; the plugin
    // still rejects ids it cannot embed.
    if vocab > 0 {
        if let Some((index, id)) = ids.iter().enumerate().find(|(_, &id)| id >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "prompt token id {id} (at index {index}) is out of range: `{}` has a \
                 vocabulary of {vocab} tokens (ids 0 to {})",
                slot.name,
                vocab - 1
            )));
        }
    }
    Ok(ids.to_vec())
}

/// The override (`--chat-template`, `chat_template`) if there is one, else the model's chat
/// template (GGUF metadata, else tokenizer_config.json), else ChatML.
fn build_template(
    model: &LoadedModel,
    metadata: &ModelMetadata,
    path: &Path,
    chosen: Option<&str>,
) -> Result<ChatTemplate, String> {
    let config = if path.is_dir() {
        read_tokenizer_config(path)
    } else {
        Default::default()
    };
    let text_of = |id: Option<u32>| {
        id.and_then(|id| model.detokenize(&[id], false).ok())
            .unwrap_or_default()
    };
    let bos = config
        .bos_token
        .unwrap_or_else(|| text_of(metadata.bos_token.into_option()));
    let eos = config
        .eos_token
        .unwrap_or_else(|| text_of(metadata.eos_token.into_option()));
    if let Some(value) = chosen {
        return template_override::compile(value, &bos, &eos)
            .map_err(|err| format!("the chat template override: {err}"));
    }
    let source = metadata
        .chat_template
        .clone()
        .into_option()
        .map(|s| s.to_string())
        .or(config.chat_template);
    Ok(match source {
        Some(source) => ChatTemplate::new(&source, &bos, &eos).unwrap_or_else(|err| {
            tracing::warn!("the model's chat template does not compile ({err}); using ChatML");
            ChatTemplate::fallback(&bos, &eos)
        }),
        None => ChatTemplate::fallback(&bos, &eos),
    })
}
