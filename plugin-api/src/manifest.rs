//! Who a plugin is and what it can do.

use crate::extension::Extension;
use abi_stable::{
    std_types::{RString, RVec},
    StableAbi,
};

/// Capability names a plugin may declare. An open set: the host never calls (or sends a
/// request field) needing a capability the plugin did not declare, and answers such a request
/// with a 400 naming the backend and the capability. Unknown names are kept and shown.
pub mod capability {
    /// Accepts LoRA adapters at load (`LoadRequest::adapters`).
    pub const LORA: &str = "lora";
    /// Takes adapters per generation without reloading (`GenerateRequest::adapters`), also
    /// ones not given at load. Without it the host loads one model instance per adapter set.
    pub const LORA_PER_GENERATION: &str = "lora-per-generation";
    /// `GenerateRequest::constraint` with `ConstraintKind::GRAMMAR` (GBNF).
    pub const GRAMMAR: &str = "grammar";
    /// `GenerateRequest::constraint` with `ConstraintKind::JSON_SCHEMA`.
    pub const JSON_SCHEMA: &str = "json-schema";
    /// `GenerateRequest::logprobs`: each token carries its logprob and the top alternatives.
    pub const LOGPROBS: &str = "logprobs";
    /// `GenerateRequest::logit_bias`.
    pub const LOGIT_BIAS: &str = "logit-bias";
    /// The penalties and filters beyond temperature/top_k/top_p/min_p/repeat: typical_p,
    /// presence and frequency penalties.
    pub const FULL_SAMPLING: &str = "full-sampling";
    /// Keeps KV state between generations and reuses the longest common prompt prefix
    /// (`GenerationStats::cached_prompt_tokens`).
    pub const PREFIX_CACHE: &str = "prefix-cache";
    /// `Model::embed`.
    pub const EMBEDDINGS: &str = "embeddings";
    /// Since 2.1: takes the KV cache's element types at load
    /// ([`crate::load_option::CACHE_TYPE_K`], [`crate::load_option::CACHE_TYPE_V`]).
    pub const KV_CACHE_TYPES: &str = "kv-cache-types";
    /// Since 2.1: takes a flash-attention policy at load ([`crate::load_option::FLASH_ATTN`]).
    pub const FLASH_ATTENTION: &str = "flash-attention";
    /// Since 2.3: keeps the KV state of prompts pushed out of its sequence slots in host RAM
    /// and restores it for a later prompt with the same prefix; takes the cache's size at
    /// load ([`crate::load_option::CACHE_RAM_MIB`]).
    pub const HOST_RAM_PROMPT_CACHE: &str = "host-ram-prompt-cache";

    /// Every name this version of the contract defines.
    pub const ALL: &[&str] = &[
        LORA,
        LORA_PER_GENERATION,
        GRAMMAR,
        JSON_SCHEMA,
        LOGPROBS,
        LOGIT_BIAS,
        FULL_SAMPLING,
        PREFIX_CACHE,
        EMBEDDINGS,
        KV_CACHE_TYPES,
        FLASH_ATTENTION,
        HOST_RAM_PROMPT_CACHE,
    ];
}

/// Model file formats the in-tree plugins read. Formats are an open set of names
/// ([`Manifest::formats`]): a plugin may declare its own (`onnx`, ...).
pub mod format {
    /// A single `.gguf` file.
    pub const GGUF: &str = "gguf";
    /// A Hugging Face folder: config.json + *.safetensors (+ tokenizer.json).
    pub const SAFETENSORS: &str = "safetensors";
}

/// The formats the host itself recognises from files, as a Rust enum for host code. Plugins
/// declare formats by name ([`Manifest::formats`]), which may include others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFormat {
    Gguf,
    Safetensors,
}

impl ModelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Gguf => format::GGUF,
            ModelFormat::Safetensors => format::SAFETENSORS,
        }
    }
}

/// What a backend can do beyond plain generation.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Capability names, see [`capability`].
    pub names: RVec<RString>,
    /// How many generations one loaded model runs at the same time (1 = one at a time).
    pub parallel_generations: u32,
}

impl Capabilities {
    pub fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.as_str() == name)
    }

    /// Declares `name` (once).
    pub fn insert(&mut self, name: &str) {
        if !self.has(name) {
            self.names.push(RString::from(name));
        }
    }
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
    /// Format names it reads, see [`format`]. The host offers a model to the backends that
    /// claim its format, trying the next one when a backend answers `UnsupportedFormat`.
    pub formats: RVec<RString>,
    pub capabilities: Capabilities,
    pub extensions: RVec<Extension>,
}

impl Manifest {
    /// A manifest for a CPU-only backend with no formats and no extra capabilities; adjust
    /// the fields after.
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        Manifest {
            name: RString::from(name),
            version: RString::from(version),
            api_version: RString::from(crate::PLUGIN_API_VERSION),
            description: RString::from(description),
            devices: RVec::from(vec![RString::from("cpu")]),
            formats: RVec::new(),
            capabilities: Capabilities {
                names: RVec::new(),
                parallel_generations: 1,
            },
            extensions: RVec::new(),
        }
    }

    /// Declares a format it reads (once).
    pub fn add_format(&mut self, format: &str) {
        if !self.reads(format) {
            self.formats.push(RString::from(format));
        }
    }

    pub fn reads(&self, format: &str) -> bool {
        self.formats.iter().any(|f| f.as_str() == format)
    }
}
