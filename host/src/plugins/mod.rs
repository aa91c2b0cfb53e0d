//! The plugin subsystem: find backend libraries ([`search_dirs`], [`discover`]), load and
//! check each one on its own ([`PluginRegistry`]), and call the loaded backends through safe
//! handles ([`LoadedBackend`], [`LoadedModel`], [`RunningGeneration`]).

mod crash;
mod discover;
mod error;
mod handles;
mod load;
mod log_sink;
mod registry;
pub mod version;
mod worker;

pub use crash::install_fatal_signal_report;
pub use discover::{
    backend_name_of_file, discover, library_file_name, search_dirs, PLUGIN_PATH_ENV,
};
pub use error::{BackendError, PluginError, Refusal};
pub use handles::{Isolation, LoadedBackend, LoadedModel, RunningGeneration};
pub use log_sink::PLUGIN_LOG_TARGET;
pub use registry::{
    set_isolation_policy, IsolationPolicy, PluginEntry, PluginRegistry, PluginStatus,
};
pub use worker::{run_worker, WorkerSettings, WORKER_EXE_ENV};

pub use llmlocal_plugin_api::{
    capability, Constraint, ConstraintKind, EmbedRequest, ErrorKind, FinishReason, Finished,
    GenerateRequest, GenerationStats, LoadRequest, LogitBias, Manifest, ModelFormat, ModelMetadata,
    Sampling, Step, Token, TokenLogprobs,
};
