//! What the host asks of a backend: loads, generations, embeddings.

use crate::{error::PluginError, extension::Extension};
use abi_stable::{
    std_types::{ROption, RString, RVec},
    StableAbi,
};

/// A LoRA adapter file with its scale.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct AdapterRequest {
    /// A local path: a GGUF LoRA file, or a PEFT folder (adapter_config.json +
    /// adapter_model.safetensors); which ones a backend reads is up to the backend.
    pub path: RString,
    pub scale: f32,
}

/// How to load a model. Zero means "backend default" for the numeric fields.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct LoadRequest {
    /// Local paths, already downloaded by the host: one GGUF file, or a Hugging Face folder,
    /// or the files of one (config.json, *.safetensors shards, tokenizer.json).
    pub model_paths: RVec<RString>,
    /// `cpu`, `cuda`, `cuda:1`, `metal`, or `auto` (best usable device).
    pub device: RString,
    /// Context length in tokens for each sequence; 0 = the backend's default.
    pub context_length: u32,
    /// CPU threads; 0 = the backend's choice.
    pub threads: u32,
    /// Prompt-processing batch size in tokens; 0 = default.
    pub batch_size: u32,
    /// Layers to offload to the GPU; -1 = all, 0 = none.
    pub gpu_layers: i32,
    /// Generations the model should be able to run at once; 0 = default.
    pub parallel: u32,
    pub adapters: RVec<AdapterRequest>,
    pub extensions: RVec<Extension>,
}

impl LoadRequest {
    /// A load of one model path on the best device with every other setting at its default.
    pub fn new(path: impl Into<String>) -> Self {
        LoadRequest {
            model_paths: RVec::from(vec![RString::from(path.into())]),
            device: RString::from("auto"),
            context_length: 0,
            threads: 0,
            batch_size: 0,
            gpu_layers: -1,
            parallel: 0,
            adapters: RVec::new(),
            extensions: RVec::new(),
        }
    }
}

/// Extension keys of [`LoadRequest::extensions`] (since 2.1). The host sends one only to a
/// plugin that declared the capability it belongs to; the export glue refuses any other key.
pub mod load_option {
    use crate::capability;

    /// The K cache's element type as llama.cpp names it (`f16`, `q8_0`, `q4_0`, ...), a
    /// `Text` value; capability [`capability::KV_CACHE_TYPES`].
    pub const CACHE_TYPE_K: &str = "cache-type-k";
    /// The V cache's element type, as [`CACHE_TYPE_K`].
    pub const CACHE_TYPE_V: &str = "cache-type-v";
    /// Flash attention: `Text` `on`, `off` or `auto` (the backend decides per device);
    /// capability [`capability::FLASH_ATTENTION`].
    pub const FLASH_ATTN: &str = "flash-attn";
    /// Since 2.3: the most MiB of host RAM the backend may fill with the KV state of prompts
    /// pushed out of its sequence slots (llama-server's `--cache-ram`), an `Int` >= 0 (a
    /// `Text` holding one is read the same); 0 = off, and off when absent. Capability
    /// [`capability::HOST_RAM_PROMPT_CACHE`].
    pub const CACHE_RAM_MIB: &str = "cache-ram-mib";

    /// The cache types of [`CACHE_TYPE_K`] / [`CACHE_TYPE_V`] (llama-server's list) with their
    /// bytes per value: a block's bytes over its values (q8_0 keeps 32 values in 34 bytes).
    /// A plugin may accept fewer; hosts use the sizes for memory estimates.
    pub const CACHE_TYPES: &[(&str, f64)] = &[
        ("f32", 4.0),
        ("f16", 2.0),
        ("bf16", 2.0),
        ("q8_0", 34.0 / 32.0),
        ("q4_0", 18.0 / 32.0),
        ("q4_1", 20.0 / 32.0),
        ("iq4_nl", 18.0 / 32.0),
        ("q5_0", 22.0 / 32.0),
        ("q5_1", 24.0 / 32.0),
    ];

    /// Bytes per value of a cache type named in [`CACHE_TYPES`] (case-insensitive).
    pub fn cache_type_bytes(name: &str) -> Option<f64> {
        CACHE_TYPES
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name.trim()))
            .map(|&(_, bytes)| bytes)
    }

    /// The keys a plugin declaring `capabilities` accepts.
    pub fn accepted(capabilities: &[impl AsRef<str>]) -> Vec<&'static str> {
        let has = |name: &str| capabilities.iter().any(|c| c.as_ref() == name);
        let mut keys = Vec::new();
        if has(capability::KV_CACHE_TYPES) {
            keys.extend([CACHE_TYPE_K, CACHE_TYPE_V]);
        }
        if has(capability::FLASH_ATTENTION) {
            keys.push(FLASH_ATTN);
        }
        if has(capability::HOST_RAM_PROMPT_CACHE) {
            keys.push(CACHE_RAM_MIB);
        }
        keys
    }
}

/// Sampling settings, applied by the backend on the model's real logits in this order
/// (docs/contract.md, "Sampling"): logit_bias -> penalties (repeat, frequency, presence over
/// the last `repeat_last_n` tokens of prompt + output) -> constraint mask -> top_k ->
/// typical_p -> top_p -> min_p -> temperature -> draw with the seeded generator.
///
/// `temperature == 0` is greedy: argmax after logit_bias, penalties and the constraint; the
/// truncation filters then have no effect. Disabled values: top_k 0, top_p 1, min_p 0,
/// typical_p 1, repeat_penalty 1, presence/frequency 0.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    /// Locally typical sampling (Meister et al. 2022); 1 = off.
    pub typical_p: f32,
    /// Divides positive logits (multiplies negative ones) of tokens seen in the window.
    pub repeat_penalty: f32,
    /// Subtracts `frequency_penalty * count` from the logit of each token seen in the window.
    pub frequency_penalty: f32,
    /// Subtracts `presence_penalty` once from the logit of each token seen in the window.
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at; 0 = none.
    pub repeat_last_n: u32,
    /// A fixed seed reproduces the same tokens for the same request on the same backend and
    /// device. `None` draws a random seed (the API edge maps a negative seed to `None`).
    pub seed: ROption<u64>,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        typical_p: 1.0,
        repeat_penalty: 1.0,
        frequency_penalty: 0.0,
        presence_penalty: 0.0,
        repeat_last_n: 64,
        seed: ROption::RSome(0),
    };

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Any penalty active (they need the token history).
    pub fn has_penalties(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0)
    }

    /// The seed to use: the fixed one, or a fresh random one.
    pub fn seed_or_random(&self) -> u64 {
        match self.seed {
            ROption::RSome(seed) => seed,
            ROption::RNone => random_seed(),
        }
    }

    /// The contract's ranges; every backend applies the same checks (the export glue runs
    /// this before `Model::generate`).
    pub fn validate(&self) -> Result<(), PluginError> {
        let bad = |what: &str| Err(PluginError::invalid_request(format!("sampling: {what}")));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad("temperature must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p must be in [0, 1]");
        }
        if !(self.typical_p > 0.0 && self.typical_p <= 1.0) {
            return bad("typical_p must be in (0, 1]");
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return bad("repeat_penalty must be a finite number > 0");
        }
        if !self.frequency_penalty.is_finite() || !self.presence_penalty.is_finite() {
            return bad("frequency_penalty and presence_penalty must be finite numbers");
        }
        Ok(())
    }
}

impl Default for Sampling {
    /// The defaults llama.cpp and Ollama use, with a random seed.
    fn default() -> Self {
        Sampling {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            typical_p: 1.0,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repeat_last_n: 64,
            seed: ROption::RNone,
        }
    }
}

/// A seed from the clock and a per-process counter: distinct per call, no dependency.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// Adds `bias` to the logit of `token` before sampling; `f32::NEG_INFINITY` bans it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct LogitBias {
    pub token: u32,
    pub bias: f32,
}

/// The kind of a [`Constraint`]. Read across the boundary as a number: unknown values are
/// refused by the plugin (`InvalidRequest`), so kinds can be added in minor versions.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConstraintKind(pub u8);

#[allow(non_upper_case_globals)]
impl ConstraintKind {
    /// A GBNF grammar (llama.cpp's form), root rule `root`.
    pub const Grammar: ConstraintKind = ConstraintKind(1);
    /// A JSON schema (draft 2020-12 subset as the backend's grammar library reads it); the
    /// output is one JSON value that validates against it.
    pub const JsonSchema: ConstraintKind = ConstraintKind(2);

    pub fn as_str(self) -> &'static str {
        match self {
            ConstraintKind::Grammar => "grammar",
            ConstraintKind::JsonSchema => "json-schema",
            _ => "unknown constraint kind",
        }
    }
}

/// Constrained decoding: only tokens that keep the output a prefix of the language may be
/// sampled; end-of-generation only once the output is complete. An invalid grammar or schema
/// is an `InvalidRequest` from `generate`, before the first token.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Constraint {
    pub kind: ConstraintKind,
    pub text: RString,
}

/// The most alternatives a step may report ([`GenerateRequest::logprobs`]), as OpenAI.
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// One generation: a tokenized prompt and how to continue it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The prompt, already tokenized by [`crate::Model::tokenize`]. Must not be empty; every
    /// id must be below the vocabulary size.
    pub prompt_tokens: RVec<u32>,
    /// The most tokens to generate; the generation then ends with [`crate::FinishReason::Length`].
    /// 0 = no limit: until end of generation or the context is full (docs/contract.md).
    pub max_tokens: u32,
    pub sampling: Sampling,
    /// Keep going after an end-of-generation token (benchmarks).
    pub ignore_eos: bool,
    /// Adapters for this generation only; `None` = those given at load.
    pub adapters: ROption<RVec<AdapterRequest>>,
    /// Needs capability `logit-bias`.
    pub logit_bias: RVec<LogitBias>,
    /// Needs capability `grammar` or `json-schema`.
    pub constraint: ROption<Constraint>,
    /// `Some(n)`: every token carries its logprob and the `n` most likely alternatives
    /// (n <= [`MAX_TOP_LOGPROBS`]), computed from the distribution after logit_bias and
    /// penalties, before the truncation filters, temperature and the constraint (OpenAI's
    /// choice). Needs capability `logprobs`.
    pub logprobs: ROption<u32>,
    /// May reuse KV state of an earlier generation with a common prompt prefix (capability
    /// `prefix-cache`); the output is the same either way.
    pub cache_prompt: bool,
    pub extensions: RVec<Extension>,
}

impl GenerateRequest {
    /// Greedy decoding of `prompt_tokens` with every option off.
    pub fn greedy(prompt_tokens: Vec<u32>, max_tokens: u32) -> Self {
        GenerateRequest {
            prompt_tokens: RVec::from(prompt_tokens),
            max_tokens,
            sampling: Sampling::GREEDY,
            ignore_eos: false,
            adapters: ROption::RNone,
            logit_bias: RVec::new(),
            constraint: ROption::RNone,
            logprobs: ROption::RNone,
            cache_prompt: true,
            extensions: RVec::new(),
        }
    }

    /// The checks every backend applies before generating (the export glue runs them):
    /// non-empty prompt, ids in the vocabulary, sampling ranges, bias ids, logprobs count.
    pub fn validate(&self, vocab_size: u32) -> Result<(), PluginError> {
        if self.prompt_tokens.is_empty() {
            return Err(PluginError::invalid_request(
                "the prompt is empty: a generation needs at least one prompt token",
            ));
        }
        if let Some(bad) = self.prompt_tokens.iter().find(|&&t| t >= vocab_size) {
            return Err(PluginError::invalid_request(format!(
                "prompt token id {bad} is outside the vocabulary (size {vocab_size})"
            )));
        }
        self.sampling.validate()?;
        for b in self.logit_bias.iter() {
            if b.token >= vocab_size {
                return Err(PluginError::invalid_request(format!(
                    "logit_bias: token id {} is outside the vocabulary (size {vocab_size})",
                    b.token
                )));
            }
            if b.bias.is_nan() || b.bias == f32::INFINITY {
                return Err(PluginError::invalid_request(format!(
                    "logit_bias: the bias of token {} must be a number or -inf",
                    b.token
                )));
            }
        }
        if let ROption::RSome(n) = self.logprobs {
            if n > MAX_TOP_LOGPROBS {
                return Err(PluginError::invalid_request(format!(
                    "logprobs: at most {MAX_TOP_LOGPROBS} alternatives per token, not {n}"
                )));
            }
        }
        if let ROption::RSome(c) = &self.constraint {
            if !matches!(c.kind, ConstraintKind::Grammar | ConstraintKind::JsonSchema) {
                return Err(PluginError::invalid_request(format!(
                    "constraint kind {} is not known to this backend",
                    c.kind.0
                )));
            }
        }
        Ok(())
    }

    /// The capabilities this request needs beyond plain generation (see
    /// [`crate::capability`]); the host and the export glue both refuse a request needing one
    /// the backend did not declare.
    pub fn required_capabilities(&self) -> Vec<&'static str> {
        use crate::capability as cap;
        let mut needs = Vec::new();
        if !self.logit_bias.is_empty() {
            needs.push(cap::LOGIT_BIAS);
        }
        if self.logprobs.is_some() {
            needs.push(cap::LOGPROBS);
        }
        let s = &self.sampling;
        if s.typical_p != 1.0 || s.frequency_penalty != 0.0 || s.presence_penalty != 0.0 {
            needs.push(cap::FULL_SAMPLING);
        }
        if let ROption::RSome(c) = &self.constraint {
            needs.push(match c.kind {
                ConstraintKind::Grammar => cap::GRAMMAR,
                _ => cap::JSON_SCHEMA,
            });
        }
        if self.adapters.is_some() {
            needs.push(cap::LORA_PER_GENERATION);
        }
        needs
    }
}

/// How token vectors become one vector per input. An open set of names: `mean`, `cls`,
/// `last`, `none` (every token's vector, concatenated); empty = the model's own pooling.
pub mod pooling {
    pub const MEAN: &str = "mean";
    pub const CLS: &str = "cls";
    pub const LAST: &str = "last";
    pub const NONE: &str = "none";
}

/// Embeddings of a batch of tokenized inputs.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct EmbedRequest {
    pub inputs: RVec<RVec<u32>>,
    /// See [`pooling`]; empty = the model's own.
    pub pooling: RString,
    /// Scale each vector to unit L2 norm.
    pub normalize: bool,
    pub extensions: RVec<Extension>,
}

impl EmbedRequest {
    pub fn new(inputs: Vec<Vec<u32>>) -> Self {
        EmbedRequest {
            inputs: inputs.into_iter().map(RVec::from).collect(),
            pooling: RString::new(),
            normalize: false,
            extensions: RVec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_vocab_and_bad_values_are_invalid_requests() {
        let ok = GenerateRequest::greedy(vec![1, 2], 4);
        assert!(ok.validate(10).is_ok());
        assert!(GenerateRequest::greedy(vec![], 4).validate(10).is_err());
        assert!(GenerateRequest::greedy(vec![10], 4).validate(10).is_err());
        let mut r = ok.clone();
        r.logit_bias.push(LogitBias {
            token: 3,
            bias: f32::NEG_INFINITY,
        });
        assert!(r.validate(10).is_ok());
        r.logit_bias.push(LogitBias {
            token: 3,
            bias: f32::NAN,
        });
        assert!(r.validate(10).is_err());
        let mut r = ok.clone();
        r.logprobs = ROption::RSome(21);
        assert!(r.validate(10).is_err());
        let mut r = ok.clone();
        r.constraint = ROption::RSome(Constraint {
            kind: ConstraintKind(9),
            text: "x".into(),
        });
        assert!(r.validate(10).is_err());
        let mut r = ok;
        r.sampling.temperature = -1.0;
        assert!(r.validate(10).is_err());
    }

    #[test]
    fn load_options_follow_the_declared_capabilities() {
        use crate::capability;
        let none: [&str; 0] = [];
        assert!(load_option::accepted(&none).is_empty());
        assert_eq!(
            load_option::accepted(&[capability::HOST_RAM_PROMPT_CACHE]),
            [load_option::CACHE_RAM_MIB]
        );
        assert_eq!(
            load_option::accepted(&[capability::KV_CACHE_TYPES]),
            [load_option::CACHE_TYPE_K, load_option::CACHE_TYPE_V]
        );
    }

    #[test]
    fn a_missing_seed_draws_different_seeds() {
        let s = Sampling::default();
        assert_ne!(s.seed_or_random(), s.seed_or_random());
        assert_eq!(Sampling::GREEDY.seed_or_random(), 0);
    }
}
