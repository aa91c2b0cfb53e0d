//! Plain data crossing the boundary: manifest, requests, metadata, tokens, stats.
//!
//! All `#[repr(C)]` + `StableAbi`. Adding a field to one of these structs changes its layout
//! and therefore needs a new major version; new *behaviour* is added as new root-module
//! fields or new trait methods after `last_prefix_field` (minor versions).

use abi_stable::{
    std_types::{ROption, RString, RVec},
    StableAbi,
};

/// A model file format a backend reads.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFormat {
    /// A single `.gguf` file.
    Gguf,
    /// A Hugging Face folder: config.json + *.safetensors (+ tokenizer.json).
    Safetensors,
}

impl ModelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Gguf => "gguf",
            ModelFormat::Safetensors => "safetensors",
        }
    }
}

/// What a backend can do beyond plain generation.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Accepts LoRA adapters at load ([`LoadRequest::adapters`]).
    pub lora: bool,
    /// Takes adapters per generation without reloading ([`GenerateRequest::adapters`]): any
    /// adapter file, also one not given at load (the backend reads it at run time). The host
    /// then serves every adapter set from the one loaded model; without this flag it loads a
    /// model instance per adapter set instead.
    pub lora_per_generation: bool,
    /// Implements [`crate::Model::embed`].
    pub embeddings: bool,
    /// How many generations one loaded model runs at the same time (1 = one at a time).
    pub parallel_generations: u32,
}

/// Who the plugin is and what it can do. `devices` lists the devices usable *now*
/// (e.g. `cpu`, `cuda:0`), not those the build could support in theory.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The backend name users select it by (`llama-cpp`, `candle`). Unique among loaded plugins.
    pub name: RString,
    /// The plugin's own version (semver).
    pub version: RString,
    /// The plugin-api version it was built against (the same as the root module's field).
    pub api_version: RString,
    pub description: RString,
    pub devices: RVec<RString>,
    pub formats: RVec<ModelFormat>,
    pub capabilities: Capabilities,
}

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
}

impl LoadRequest {
    /// A CPU load of one model path with every other setting at its default.
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
        }
    }
}

/// Sampling settings. `temperature == 0` means greedy (argmax); the other filters then have
/// no effect. Disabled values: top_k 0, top_p 1.0, min_p 0.0, repeat_penalty 1.0.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at.
    pub repeat_last_n: u32,
    pub seed: u64,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 0,
    };

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

impl Default for Sampling {
    /// The defaults llama.cpp and Ollama use.
    fn default() -> Self {
        Sampling {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// One generation: a tokenized prompt and how to continue it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The prompt, already tokenized by [`crate::Model::tokenize`]. Must not be empty.
    pub prompt_tokens: RVec<u32>,
    /// The most tokens to generate; the generation then ends with [`FinishReason::Length`].
    pub max_tokens: u32,
    pub sampling: Sampling,
    /// Keep going after an end-of-generation token (benchmarks).
    pub ignore_eos: bool,
    /// Adapters for this generation only; `None` = those given at load.
    pub adapters: ROption<RVec<AdapterRequest>>,
}

impl GenerateRequest {
    pub fn greedy(prompt_tokens: Vec<u32>, max_tokens: u32) -> Self {
        GenerateRequest {
            prompt_tokens: RVec::from(prompt_tokens),
            max_tokens,
            sampling: Sampling::GREEDY,
            ignore_eos: false,
            adapters: ROption::RNone,
        }
    }
}

/// What a loaded model is, read from its files.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ModelMetadata {
    /// `llama`, `qwen2`, ... as named by the file.
    pub architecture: RString,
    pub name: RString,
    /// The context length of this load (per sequence).
    pub context_length: u32,
    /// The context length the model was trained with, as the file says.
    pub train_context_length: u32,
    pub vocab_size: u32,
    pub embedding_length: u32,
    pub layer_count: u32,
    pub parameter_count: u64,
    /// Bytes of weights held in memory.
    pub size_bytes: u64,
    pub bos_token: ROption<u32>,
    pub eos_token: ROption<u32>,
    /// Every token that ends a generation (EOS, EOT, `<|im_end|>`, ...).
    pub end_of_generation_tokens: RVec<u32>,
    /// The Jinja chat template stored with the model, if any.
    pub chat_template: ROption<RString>,
    /// The device the model runs on (`cpu`, `cuda:0`, ...).
    pub device: RString,
    /// Wall time the load took, in milliseconds.
    pub load_ms: f64,
}

/// One generated token and the text it completes. `text` is always valid UTF-8: a character
/// split over several tokens arrives whole with the token that completes it (the tokens
/// before carry an empty `text`).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Token {
    pub id: u32,
    pub text: RString,
}

/// Why a generation ended.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    /// `max_tokens` were generated.
    Length,
    /// The context is full.
    ContextFull,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::EndOfGeneration => "stop",
            FinishReason::Length => "length",
            FinishReason::ContextFull => "context_full",
        }
    }
}

/// One step of a generation.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub enum Step {
    Token(Token),
    /// The end; every later call to `next` returns the same.
    Finished(FinishReason),
}

/// Counters of one generation, valid at any time (partial while it runs).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Default)]
pub struct GenerationStats {
    pub prompt_tokens: u32,
    /// Tokens returned by `next` so far.
    pub generated_tokens: u32,
    /// From the start of the generation to the first token being ready.
    pub time_to_first_token_ms: f64,
    /// Prompt tokens / prompt-processing time.
    pub prompt_tokens_per_second: f64,
    /// Generated tokens after the first / time since the first.
    pub tokens_per_second: f64,
    /// From the start to the last token (or now).
    pub total_ms: f64,
}

impl Manifest {
    /// A manifest for a CPU-only backend with no extra capabilities; adjust the fields after.
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        Manifest {
            name: RString::from(name),
            version: RString::from(version),
            api_version: RString::from(crate::PLUGIN_API_VERSION),
            description: RString::from(description),
            devices: RVec::from(vec![RString::from("cpu")]),
            formats: RVec::new(),
            capabilities: Capabilities {
                lora: false,
                lora_per_generation: false,
                embeddings: false,
                parallel_generations: 1,
            },
        }
    }
}

/// Keeps the clock of one generation so every backend reports stats the same way.
#[derive(Debug, Clone)]
pub struct StatsClock {
    start: std::time::Instant,
    first_token: Option<std::time::Instant>,
    last_token: Option<std::time::Instant>,
    prompt_tokens: u32,
    generated_tokens: u32,
}

impl StatsClock {
    /// Starts the clock when the generation starts.
    pub fn start(prompt_tokens: u32) -> Self {
        StatsClock {
            start: std::time::Instant::now(),
            first_token: None,
            last_token: None,
            prompt_tokens,
            generated_tokens: 0,
        }
    }

    /// Records one token handed to the caller.
    pub fn token(&mut self) {
        let now = std::time::Instant::now();
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        self.generated_tokens += 1;
    }

    pub fn stats(&self) -> GenerationStats {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let ttft = self.first_token.map(|t| ms(t - self.start)).unwrap_or(0.0);
        let end = self.last_token.unwrap_or_else(std::time::Instant::now);
        let decode_ms = match self.first_token {
            Some(first) => ms(end - first),
            None => 0.0,
        };
        let per_second = |n: f64, ms: f64| if ms > 0.0 { n * 1000.0 / ms } else { 0.0 };
        GenerationStats {
            prompt_tokens: self.prompt_tokens,
            generated_tokens: self.generated_tokens,
            time_to_first_token_ms: ttft,
            prompt_tokens_per_second: per_second(f64::from(self.prompt_tokens), ttft),
            tokens_per_second: per_second(
                f64::from(self.generated_tokens.saturating_sub(1)),
                decode_ms,
            ),
            total_ms: ms(end - self.start),
        }
    }
}
