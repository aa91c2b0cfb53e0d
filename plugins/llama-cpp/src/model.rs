//! The loaded model: metadata, tokenizer, and requests handed to the decode thread.

use crate::{
    adapters::AdapterSet,
    embed::Embedder,
    engine::{Command, Engine, EngineConfig, GenerateJob, Job, JobKind, OUTPUT_CHANNEL_CAPACITY},
    generation::LlamaGeneration,
    runtime::Device,
    sampler::{GuidanceCache, SamplerChain, SamplingPlan},
};
use llama_cpp_2::{model::LlamaModel, token::LlamaToken};
use llmlocal_plugin_api::{
    abi_stable::std_types::{ROption, RString, RVec},
    metadata::model_info,
    EmbedRequest, ExtValue, Extension, GenerateRequest, Generation, Model, ModelMetadata,
    PluginError, StatsClock,
};
use std::sync::{
    atomic::{AtomicBool, AtomicU32},
    Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError,
};
use std::time::Instant;

/// The loaded model, shared by callers (tokenizing under short read locks) and the decode
/// thread (a read lock for its context's life; the write lock only to read a LoRA adapter
/// into the model, which llama-cpp-2 allows only through `&mut LlamaModel`, or to reload the
/// model to free its adapters). The slot is empty while a reload runs (under the write
/// lock, so no reader sees that) and for good once a reload failed (the decode thread has
/// then stopped; readers get [`gone`]).
pub type SharedModel = Arc<RwLock<Option<LlamaModel>>>;

/// A read lock on a model that is there.
pub struct ModelGuard<'a>(RwLockReadGuard<'a, Option<LlamaModel>>);

impl std::ops::Deref for ModelGuard<'_> {
    type Target = LlamaModel;

    fn deref(&self) -> &LlamaModel {
        match self.0.as_ref() {
            Some(model) => model,
            // `read` hands out a guard only for `Some`, and a read guard keeps it so.
            None => unreachable!("a ModelGuard always holds a model"),
        }
    }
}

/// A read lock on the model. Only the decode thread writes, and a panic there cannot leave a
/// half-changed Rust value behind (the slot holds a whole model or none): a poisoned lock is
/// safe to read through.
pub fn read(model: &RwLock<Option<LlamaModel>>) -> Result<ModelGuard<'_>, PluginError> {
    let guard = model
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if guard.is_none() {
        return Err(gone());
    }
    Ok(ModelGuard(guard))
}

/// Whether a failed reload left the slot empty. Never waits: while the decode thread holds
/// the write lock (reading an adapter, reloading) the answer is "not gone", and a failed
/// reload reaches the queued jobs itself.
fn is_gone(model: &RwLock<Option<LlamaModel>>) -> bool {
    match model.try_read() {
        Ok(guard) => guard.is_none(),
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner().is_none(),
        Err(TryLockError::WouldBlock) => false,
    }
}

/// The write lock on the model slot (the decode thread's, see [`read`] about poisoning).
pub fn write(model: &RwLock<Option<LlamaModel>>) -> RwLockWriteGuard<'_, Option<LlamaModel>> {
    model
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The error once the model is gone.
pub fn gone() -> PluginError {
    PluginError::internal(
        "this model is no longer loaded: reloading it (to free the LoRA adapters it had read) \
         failed, the log says why; unload it and load it again",
    )
}

/// Everything `load` hands over.
pub struct Parts {
    pub model: SharedModel,
    pub engine: Arc<Engine>,
    pub config: EngineConfig,
    pub device: Device,
    pub name: String,
    pub load_ms: f64,
    pub load_set: AdapterSet,
}

pub struct LlamaCppModel {
    model: SharedModel,
    engine: Arc<Engine>,
    metadata: ModelMetadata,
    n_vocab: i32,
    context_per_sequence: u32,
    load_set: AdapterSet,
    guidance: GuidanceCache,
    embedder: Embedder,
}

impl LlamaCppModel {
    pub fn new(parts: Parts) -> Result<Self, PluginError> {
        let (metadata, n_vocab) = {
            let model = read(&parts.model)?;
            (read_metadata(&model, &parts), model.n_vocab())
        };
        let embedder = Embedder {
            model: Arc::clone(&parts.model),
            context_length: parts.config.context_per_sequence,
            threads: parts.config.threads,
            model_pooling: metadata.pooling.to_string(),
            has_adapters: !parts.load_set.is_empty(),
        };
        Ok(LlamaCppModel {
            embedder,
            n_vocab,
            model: parts.model,
            engine: parts.engine,
            metadata,
            context_per_sequence: parts.config.context_per_sequence,
            load_set: parts.load_set,
            guidance: GuidanceCache::default(),
        })
    }

    /// Token ids from the caller, checked against the vocabulary: llama.cpp aborts the process
    /// on an out-of-range id.
    fn to_llama_tokens(&self, tokens: &[u32]) -> Result<Vec<LlamaToken>, PluginError> {
        tokens
            .iter()
            .map(|&id| match i32::try_from(id) {
                Ok(id) if id < self.n_vocab => Ok(LlamaToken::new(id)),
                _ => Err(PluginError::invalid_request(format!(
                    "token id {id} is outside the vocabulary (size {})",
                    self.n_vocab
                ))),
            })
            .collect()
    }

    /// A checked prompt for the decode thread; fails at once when the model is gone (the
    /// thread has then stopped, a job sent now would only find its channel closed).
    fn check_prompt(&self, tokens: &[u32]) -> Result<Vec<LlamaToken>, PluginError> {
        if is_gone(&self.model) {
            return Err(gone());
        }
        if tokens.is_empty() {
            return Err(PluginError::invalid_request("the prompt is empty"));
        }
        let len = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        if len >= self.context_per_sequence {
            return Err(PluginError::invalid_request(format!(
                "the prompt has {len} tokens but the context holds {} per sequence; shorten the \
                 prompt or load the model with a longer context_length",
                self.context_per_sequence
            )));
        }
        self.to_llama_tokens(tokens)
    }

    /// The adapter set a generation asks for. Files the model has not read yet are read by
    /// the decode thread; the cheap checks (exists, GGUF, has tensors) run here so a bad path
    /// fails this call at once.
    fn adapters_for(&self, request: &GenerateRequest) -> Result<Option<AdapterSet>, PluginError> {
        let ROption::RSome(requests) = &request.adapters else {
            return Ok(None);
        };
        let set = AdapterSet::from_requests(requests.as_slice())?;
        for path in set.paths() {
            crate::adapters::check_file(path)?;
        }
        Ok(if set == self.load_set {
            None
        } else {
            Some(set)
        })
    }
}

fn read_metadata(model: &LlamaModel, parts: &Parts) -> ModelMetadata {
    let vocab = model.vocab();
    let token = |t: LlamaToken| match u32::try_from(t.0) {
        Ok(id) if t.0 < vocab.n_tokens() => ROption::RSome(id),
        _ => ROption::RNone,
    };
    // One pass over the vocabulary at load: every token llama.cpp treats as end of generation.
    let eog: Vec<u32> = vocab
        .tokens()
        .filter(|&t| vocab.is_eog(t))
        .filter_map(|t| u32::try_from(t.0).ok())
        .collect();
    let architecture = model
        .meta_val_str("general.architecture")
        .unwrap_or_default();
    let chat_template = model
        .meta_val_str("tokenizer.chat_template")
        .ok()
        .or_else(|| {
            model
                .chat_template(None)
                .ok()
                .and_then(|t| t.to_string().ok())
        });
    ModelMetadata {
        architecture: RString::from(architecture),
        name: RString::from(parts.name.clone()),
        context_length: parts.config.context_per_sequence,
        train_context_length: model.n_ctx_train(),
        vocab_size: u32::try_from(vocab.n_tokens()).unwrap_or(0),
        embedding_length: u32::try_from(model.n_embd()).unwrap_or(0),
        layer_count: model.n_layer(),
        parameter_count: model.n_params(),
        size_bytes: model.size(),
        bos_token: token(vocab.bos()),
        eos_token: token(vocab.eos()),
        end_of_generation_tokens: RVec::from(eog),
        chat_template: chat_template.map(RString::from).into(),
        device: RString::from(parts.device.name.clone()),
        load_ms: parts.load_ms,
        pooling: RString::from(pooling(model)),
        extensions: RVec::new(),
    }
}

/// The pooling an embedding GGUF asks for (`<arch>.pooling_type`: 0 none, 1 mean, 2 cls,
/// 3 last, as llama.cpp numbers them); empty when the file says nothing.
fn pooling(model: &LlamaModel) -> &'static str {
    let arch = model
        .meta_val_str("general.architecture")
        .unwrap_or_default();
    match model
        .meta_val_str(&format!("{arch}.pooling_type"))
        .ok()
        .as_deref()
    {
        Some("0") => "none",
        Some("1") => "mean",
        Some("2") => "cls",
        Some("3") => "last",
        _ => "",
    }
}

impl Model for LlamaCppModel {
    fn metadata(&self) -> ModelMetadata {
        let mut metadata = self.metadata.clone();
        // Read at every call: the RAM cache grows and shrinks while the model is loaded.
        let bytes = i64::try_from(self.engine.ram_cache_bytes()).unwrap_or(i64::MAX);
        metadata.extensions.push(Extension {
            key: RString::from(model_info::PROMPT_CACHE_BYTES),
            value: ExtValue::Int(bytes),
        });
        metadata
    }

    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, PluginError> {
        if i32::try_from(text.len()).is_err() {
            return Err(PluginError::invalid_request(
                "the text is too long to tokenize (2 GiB at most)",
            ));
        }
        let tokens =
            read(&self.model)?
                .vocab()
                .tokenize(text.as_bytes(), add_special, parse_special);
        Ok(tokens
            .into_iter()
            .filter_map(|t| u32::try_from(t.0).ok())
            .collect())
    }

    fn detokenize(&self, tokens: &[u32], skip_special: bool) -> Result<String, PluginError> {
        if tokens.is_empty() {
            return Ok(String::new());
        }
        let mut tokens = self.to_llama_tokens(tokens)?;
        let model = read(&self.model)?;
        let vocab = model.vocab();
        if skip_special {
            // llama.cpp keeps the SPM space prefix after a BOS it removes itself; dropping
            // leading BOS tokens first makes "<s> Once" detokenize to "Once", as tokenizers do.
            let bos = vocab.bos();
            let leading = tokens.iter().take_while(|&&t| t == bos).count();
            tokens.drain(..leading);
            if tokens.is_empty() {
                return Ok(String::new());
            }
        }
        // skip_special: drop BOS/EOS and render control tokens as nothing; otherwise render
        // special tokens as their text.
        let bytes = vocab.detokenize(&tokens, skip_special, !skip_special);
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn generate(&self, request: GenerateRequest) -> Result<Box<dyn Generation>, PluginError> {
        // The generation starts with this call, before the job is sent: once it is, the decode
        // thread may finish the prompt before this thread runs again.
        let prompt_len = u32::try_from(request.prompt_tokens.len()).unwrap_or(u32::MAX);
        let clock = StatsClock::start(prompt_len);
        // The export glue checks this too; a plugin used as a Rust library checks it here.
        request.validate(self.metadata.vocab_size)?;
        let prompt = self.check_prompt(request.prompt_tokens.as_slice())?;
        let adapters = self.adapters_for(&request)?;
        let plan = SamplingPlan::of(&request);
        if plan.constraint.is_some() {
            // Parse the grammar or schema here, so a bad one fails this call; the decode
            // thread builds its own samplers (see `SamplingPlan`).
            let model = read(&self.model)?;
            SamplerChain::new(&plan, &model, &self.guidance)?;
        }
        let (out, steps) = std::sync::mpsc::sync_channel(OUTPUT_CHANNEL_CAPACITY);
        let cancel = Arc::new(AtomicBool::new(false));
        let cached = Arc::new(AtomicU32::new(0));
        let job = Job {
            prompt,
            cancel: Arc::clone(&cancel),
            adapters,
            kind: JobKind::Generate(GenerateJob {
                plan,
                guidance: self.guidance.clone(),
                max_tokens: request.max_tokens,
                ignore_eos: request.ignore_eos,
                cache_prompt: request.cache_prompt,
                cached: Arc::clone(&cached),
                out,
            }),
            sent: Instant::now(),
        };
        self.engine.send(Command::Start(Box::new(job)))?;
        Ok(Box::new(LlamaGeneration::new(
            steps,
            cancel,
            cached,
            Arc::clone(&self.engine),
            clock,
        )))
    }

    fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>, PluginError> {
        let prompt = self.check_prompt(tokens)?;
        let (reply, result) = std::sync::mpsc::sync_channel(1);
        let job = Job {
            prompt,
            cancel: Arc::new(AtomicBool::new(false)),
            adapters: None,
            kind: JobKind::Logits(reply),
            sent: Instant::now(),
        };
        self.engine.send(Command::Start(Box::new(job)))?;
        result
            .recv()
            .map_err(|_| PluginError::internal("the llama.cpp decode thread stopped"))?
    }

    fn embed(&self, request: EmbedRequest) -> Result<Vec<Vec<f32>>, PluginError> {
        self.embedder.embed(&request)
    }
}
