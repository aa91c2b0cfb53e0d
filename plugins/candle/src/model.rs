//! A loaded model: the network, its tokenizer and what the files say about it.

use crate::error::Result;
use crate::generation::CandleGeneration;
use crate::net::Net;
use crate::net::Session;
use crate::prefix::{Checkpoints, Hit, Kv, PrefixCache};
use crate::tokenizer::Vocab;
use candle_core::Device;
use llmlocal_plugin_api::{
    abi_stable::std_types::{ROption, RString, RVec},
    model_info, AdapterRequest, EmbedRequest, ExtValue, Extension, GenerateRequest, Generation,
    Model, ModelMetadata, PluginError,
};
use std::sync::{Arc, Mutex};

/// Default prompt chunk: long prompts are fed in pieces of this many tokens.
pub const DEFAULT_BATCH: usize = 512;

/// The numbers a loader reads from the files.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub architecture: String,
    pub name: String,
    pub context_length: usize,
    pub train_context_length: usize,
    /// Rows of the output layer (logits per step).
    pub vocab_size: usize,
    pub embedding_length: usize,
    pub layer_count: usize,
    pub parameter_count: u64,
    pub size_bytes: u64,
}

/// What generations share: read-only after load.
pub struct Shared {
    pub net: Net,
    pub vocab: Vocab,
    pub info: ModelInfo,
    pub device: Device,
    pub device_name: String,
    pub batch: usize,
    pub load_ms: f64,
    /// The LoRA adapters merged into the weights at load (path, scale).
    pub adapters: Vec<(String, f32)>,
    /// JSON-schema masks' token tables, built on the first constrained generation.
    pub guidance: crate::constraint::GuidanceCache,
    /// The network embeddings run on (see [`crate::embed`]).
    pub embedder: crate::embed::Embedder,
    /// KV caches kept from finished generations (see [`crate::prefix`]).
    pub prefix: Mutex<PrefixCache<Session>>,
}

impl Shared {
    /// The kept cache sharing the longest prefix with `prompt`, if any.
    pub fn prefix_hit(&self, prompt: &[u32]) -> Option<Hit<Session>> {
        self.prefix_cache().take(prompt)
    }

    /// Keeps the cache of a generation that ended normally.
    pub fn keep_prefix(
        &self,
        tokens: Vec<u32>,
        session: Session,
        checkpoints: Checkpoints<Session>,
    ) {
        self.prefix_cache().put(tokens, session, checkpoints);
    }

    /// Bytes the kept caches hold now (reported in the metadata at every call).
    pub fn prefix_cache_bytes(&self) -> usize {
        self.prefix_cache().bytes()
    }

    fn prefix_cache(&self) -> std::sync::MutexGuard<'_, PrefixCache<Session>> {
        // A panic while the lock was held (caught by the export glue) may have left an entry
        // half-written: start over empty rather than reuse it.
        self.prefix.lock().unwrap_or_else(|poisoned| {
            let mut cache = poisoned.into_inner();
            cache.clear();
            cache
        })
    }

    /// Refuses a generation asking for adapters other than those merged at load: the weights
    /// hold one merge, so the host loads another instance for another set.
    pub fn check_adapters(&self, asked: &[AdapterRequest]) -> Result<()> {
        let same = asked.len() == self.adapters.len()
            && asked
                .iter()
                .zip(&self.adapters)
                .all(|(a, (path, scale))| a.path.as_str() == path && a.scale == *scale);
        if same {
            return Ok(());
        }
        Err(PluginError::unsupported(
            "the candle backend merges LoRA adapters into the weights at load, so a generation \
             cannot choose other adapters; load the model again with the adapters it needs",
        ))
    }

    /// Ids the network can take.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let vocab = self.info.vocab_size;
        match tokens.iter().find(|&&t| t as usize >= vocab) {
            Some(t) => Err(PluginError::invalid_request(format!(
                "token id {t} is outside the vocabulary of {vocab} tokens"
            ))),
            None => Ok(()),
        }
    }

    /// Runs `history[start..]` through `session` as a generation of a `prompt_len`-token
    /// prompt does: stopping at the prefix cache's snapshot positions (see [`crate::prefix::stops`])
    /// for networks that keep snapshots, whether or not this run keeps them, so a run from a
    /// checkpoint computes exactly what a run from empty does. `at_stop` sees each position
    /// reached; the logits after the last token.
    pub fn prefill_as_generation(
        &self,
        session: &mut Session,
        history: &[u32],
        start: usize,
        prompt_len: usize,
        mut at_stop: impl FnMut(usize, &mut Session),
    ) -> Result<Vec<f32>> {
        let end = history.len();
        let stops = match session.can_share() {
            true => crate::prefix::stops(start, end, prompt_len),
            false => Vec::new(),
        };
        let mut logits = Vec::new();
        let mut pos = start;
        for stop in stops.into_iter().chain([end]) {
            logits = self.prefill(session, &history[pos..stop], pos)?;
            pos = stop;
            at_stop(pos, session);
        }
        Ok(logits)
    }

    /// Runs `tokens` through a fresh session in chunks; the logits after the last one.
    pub fn prefill(&self, session: &mut Session, tokens: &[u32], start: usize) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        let mut pos = start;
        for chunk in tokens.chunks(self.batch.max(1)) {
            logits = session.forward(chunk, pos, &self.device)?;
            pos += chunk.len();
        }
        Ok(logits)
    }
}

pub struct CandleModel {
    shared: Arc<Shared>,
}

impl CandleModel {
    pub fn new(shared: Shared) -> Self {
        CandleModel {
            shared: Arc::new(shared),
        }
    }
}

/// The `model_info` extensions: whether the model keeps prefixes (only said when it does
/// not) and the bytes its kept caches hold now.
fn model_facts(s: &Shared) -> RVec<Extension> {
    let mut facts = RVec::new();
    if !s.net.keeps_prefixes() {
        facts.push(Extension {
            key: model_info::PREFIX_CACHE.into(),
            value: ExtValue::Bool(false),
        });
    }
    facts.push(Extension {
        key: model_info::PROMPT_CACHE_BYTES.into(),
        value: ExtValue::Int(i64::try_from(s.prefix_cache_bytes()).unwrap_or(i64::MAX)),
    });
    facts
}

impl Model for CandleModel {
    fn metadata(&self) -> ModelMetadata {
        let s = &self.shared;
        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        ModelMetadata {
            architecture: RString::from(s.info.architecture.as_str()),
            name: RString::from(s.info.name.as_str()),
            context_length: to_u32(s.info.context_length),
            train_context_length: to_u32(s.info.train_context_length),
            vocab_size: to_u32(s.info.vocab_size),
            embedding_length: to_u32(s.info.embedding_length),
            layer_count: to_u32(s.info.layer_count),
            parameter_count: s.info.parameter_count,
            size_bytes: s.info.size_bytes,
            bos_token: s.vocab.bos.into(),
            eos_token: s.vocab.eos.into(),
            end_of_generation_tokens: RVec::from(s.vocab.eog.clone()),
            chat_template: match &s.vocab.chat_template {
                Some(t) => ROption::RSome(RString::from(t.as_str())),
                None => ROption::RNone,
            },
            device: RString::from(s.device_name.as_str()),
            load_ms: s.load_ms,
            pooling: s
                .embedder
                .own_pooling()
                .map_or_else(RString::new, |p| RString::from(p.name())),
            extensions: model_facts(s),
        }
    }

    fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        self.shared.vocab.tokenize(text, add_special, parse_special)
    }

    fn detokenize(&self, tokens: &[u32], skip_special: bool) -> Result<String> {
        if let Some(t) = tokens
            .iter()
            .find(|&&t| t as usize >= self.shared.vocab.len())
        {
            return Err(PluginError::invalid_request(format!(
                "token id {t} is outside the tokenizer's {} tokens",
                self.shared.vocab.len()
            )));
        }
        self.shared.vocab.detokenize(tokens, skip_special)
    }

    fn generate(&self, request: GenerateRequest) -> Result<Box<dyn Generation>> {
        Ok(Box::new(CandleGeneration::new(
            self.shared.clone(),
            request,
        )?))
    }

    fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let s = &self.shared;
        if tokens.is_empty() {
            return Err(PluginError::invalid_request(
                "logits need at least one token",
            ));
        }
        s.check_tokens(tokens)?;
        if tokens.len() > s.info.context_length {
            return Err(PluginError::invalid_request(format!(
                "{} tokens do not fit in the context of {}",
                tokens.len(),
                s.info.context_length
            )));
        }
        let mut session = s.net.session(&s.device)?;
        // In the chunks a generation from empty runs, so these are the logits its first token
        // is chosen from (snapshot networks stop before the last token: with quantized
        // weights a one-token step rounds differently from a batch).
        s.prefill_as_generation(&mut session, tokens, 0, tokens.len(), |_, _| {})
    }

    fn embed(&self, request: EmbedRequest) -> Result<Vec<Vec<f32>>> {
        self.shared.embedder.embed(&request)
    }
}
