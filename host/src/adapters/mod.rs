//! The adapter manager: LoRA adapters from GitHub releases, Hugging Face or local disk.
//!
//! - [`AdapterSpec`]: `gh:OWNER/REPO@TAG/ASSET`, `hf:ORG/REPO[@REV][/FILE]`, a local path;
//!   each with an optional `:SCALE`.
//! - [`AdapterManager`]: fetches and caches (GitHub assets versioned by tag; Hugging Face
//!   through the model manager), checks the adapter against the base model
//!   ([`AdapterError::Incompatible`] names what differs) before any backend sees it, and
//!   converts PEFT to GGUF LoRA for llama.cpp ([`convert`]; cached by content hash).
//! - [`stack`]: several GGUF LoRAs with their scales as one exact GGUF LoRA (rank
//!   concatenation), for backends that activate one adapter at a time; cached by content hash
//!   and scales.
//! - [`cli`]: `llmlocal adapter pull|list|rm`.

mod base;
pub mod cli;
mod compat;
pub mod convert;
mod error;
pub mod gguf;
mod github;
mod manager;
mod peft;
mod spec;
pub mod stack;

pub use base::{arch_from_model_type, permutes_qk, BaseModel, Module};
pub use compat::{check_gguf, check_peft};
pub use error::{AdapterError, Result};
pub use github::{GitHub, GitHubConfig, ReleaseAsset, DEFAULT_API};
pub use manager::{
    check, AdapterConfig, AdapterFormat, AdapterManager, CachedAdapter, ResolvedAdapter,
};
pub use peft::{is_peft_dir, Matrix, PeftAdapter, PeftConfig, PeftPair};
pub use spec::{AdapterSource, AdapterSpec, GitHubAsset, DEFAULT_SCALE};
