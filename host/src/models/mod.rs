//! The model manager: model specs, the Hugging Face hub cache, downloads.
//!
//! - [`ModelSpec`] says what to run (`org/repo`, `org/repo:Q4_K_M`, `org/repo@rev`,
//!   `hf://org/repo/file.gguf`, `./model.gguf`).
//! - [`HubCache`] is the local cache in the Hugging Face hub layout, shared both ways with
//!   Python's `huggingface_hub` (same folder, same `blobs/snapshots/refs`, same `.incomplete`
//!   partial files).
//! - [`ModelManager`] resolves a spec to local paths, downloading with progress, cancellation,
//!   Range resume, sha256 verification and retries.
//!
//! hf-hub choice: we use hf-hub **0.5** (not 1.0). 0.5 is the last release with the
//! `api::tokio::Api` interface and it shares reqwest 0.12 with us; 1.0 is a rewrite around
//! `HFClient` that pulls hf-xet and reqwest 0.13 (a second HTTP stack). From hf-hub we take the
//! cache layout types (`Cache`, `Repo`, `CacheRepo`: folder names, blob/snapshot paths, refs)
//! and the repository-info request. The file transfer is our own small layer on the same layout
//! (`download.rs` says why): hf-hub 0.5 has no progress stream, no cancellation, no sha256
//! check, and no retry policy that tells a 404 from a reset.

mod cache;
mod cached;
pub mod cli;
mod config;
mod disk;
mod download;
pub mod embedded;
mod error;
mod hub_input;
mod manager;
mod manifest;
mod pipeline;
pub mod presets;
mod progress;
pub mod quant;
mod remote;
mod spec;
mod state;

pub use cache::{
    cache_dir_from, cache_dir_from_env, CachedFile, CachedRepo, CachedRevision, HubCache,
};
pub use config::{is_truthy, ManagerConfig, DEFAULT_ENDPOINT};
pub use error::{ModelError, Result};
pub use manager::{ModelManager, ResolvedModel};
pub use presets::{Preset, PresetSource, PRESETS, PRESETS_VERSION};
pub use progress::{Progress, ProgressSender, EMIT_EVERY};
pub use quant::PickedQuant;
pub use remote::{backoff_delay, normalize_etag, FileMeta, LfsInfo, RepoInfo, Sibling};
pub use spec::{
    format_of_path, validate_repo, FileSelector, HfSource, ModelSource, ModelSpec, DEFAULT_REVISION,
};
pub use tokio_util::sync::CancellationToken;
