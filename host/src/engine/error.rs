//! Errors of the engine facade, each with a [`ErrorClass`] the server maps to an HTTP status.

use crate::{
    adapters::AdapterError,
    models::ModelError,
    plugins::{BackendError, ErrorKind, PluginError},
};

/// What kind of failure an [`EngineError`] is, independent of the protocol that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is wrong (bad parameters, unknown backend, prompt too long).
    BadRequest,
    /// The model (or a file of it) does not exist.
    NotFound,
    /// Too many requests wait for this model; retry later.
    Busy,
    /// The engine cannot serve now (no backends, shutting down, not enough memory).
    Unavailable,
    /// A bug or an unexpected backend failure.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model `{name}` is not known: {hint}")]
    UnknownModel { name: String, hint: String },
    #[error("{0}")]
    Plugin(#[from] PluginError),
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("{0}")]
    Backend(#[from] BackendError),
    /// A LoRA adapter of the request cannot be used (bad spec, not found, incompatible).
    #[error("{0}")]
    Adapter(#[from] AdapterError),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The prompt leaves no room for a token (llama-server's `exceed_context_size_error`).
    #[error(
        "invalid request: the prompt has {n_prompt_tokens} tokens but the context of `{model}` \
         holds {n_ctx}; shorten it or load the model with a larger context_length"
    )]
    ContextExceeded {
        model: String,
        n_prompt_tokens: u32,
        n_ctx: u32,
    },
    #[error("chat template of `{model}` failed: {message}")]
    Template { model: String, message: String },
    #[error(
        "not enough memory to load `{model}`: it needs about {need_mib} MiB (weights + KV cache \
         for a {context_length}-token context) but only {available_mib} MiB are available after \
         unloading idle models; use a smaller model or context_length, or unload other models"
    )]
    OutOfMemory {
        model: String,
        need_mib: u64,
        available_mib: u64,
        context_length: u32,
    },
    #[error("the queue for model `{model}` is full ({depth} requests waiting); retry in a moment")]
    QueueFull { model: String, depth: usize },
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    pub fn class(&self) -> ErrorClass {
        match self {
            EngineError::UnknownModel { .. } => ErrorClass::NotFound,
            EngineError::Plugin(PluginError::NoSuchBackend { .. })
            | EngineError::Plugin(PluginError::BackendRefused { .. })
            | EngineError::Plugin(PluginError::NoBackendForFormat { .. }) => ErrorClass::BadRequest,
            EngineError::Plugin(PluginError::NoBackends) => ErrorClass::Unavailable,
            EngineError::Model(err) => model_error_class(err),
            EngineError::Backend(err) => backend_error_class(err.kind()),
            EngineError::Adapter(err) => adapter_error_class(err),
            EngineError::InvalidRequest(_)
            | EngineError::ContextExceeded { .. }
            | EngineError::Template { .. } => ErrorClass::BadRequest,
            EngineError::OutOfMemory { .. } | EngineError::ShuttingDown => ErrorClass::Unavailable,
            EngineError::QueueFull { .. } => ErrorClass::Busy,
            EngineError::Internal(_) => ErrorClass::Internal,
        }
    }

    /// A short machine-readable code (OpenAI's `error.code`).
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::UnknownModel { .. } => "model_not_found",
            EngineError::Plugin(_) => "backend_unavailable",
            EngineError::Model(_) => "model_unavailable",
            EngineError::Backend(err) if err.kind() == ErrorKind::InvalidRequest => {
                "invalid_request"
            }
            EngineError::Backend(_) => "backend_error",
            EngineError::Adapter(AdapterError::Incompatible { .. }) => "adapter_incompatible",
            EngineError::Adapter(_) => "invalid_adapter",
            EngineError::InvalidRequest(_) => "invalid_request",
            // OpenAI's code for the same case.
            EngineError::ContextExceeded { .. } => "context_length_exceeded",
            EngineError::Template { .. } => "chat_template_error",
            EngineError::OutOfMemory { .. } => "insufficient_memory",
            EngineError::QueueFull { .. } => "queue_full",
            EngineError::ShuttingDown => "shutting_down",
            EngineError::Internal(_) => "internal_error",
        }
    }
}

fn model_error_class(err: &ModelError) -> ErrorClass {
    match err {
        ModelError::InvalidSpec { .. } => ErrorClass::BadRequest,
        ModelError::RepoNotFound { .. }
        | ModelError::RevisionNotFound { .. }
        | ModelError::FileNotFound { .. }
        | ModelError::NotInCache { .. }
        | ModelError::NotCachedOffline { .. }
        | ModelError::NoModelFiles { .. }
        | ModelError::LocalPath { .. } => ErrorClass::NotFound,
        ModelError::NothingFits { .. } => ErrorClass::Unavailable,
        _ => ErrorClass::Unavailable,
    }
}

/// A request naming an adapter that is malformed, missing or incompatible is the client's
/// mistake (400); a download that fails for network reasons is not.
fn adapter_error_class(err: &AdapterError) -> ErrorClass {
    match err {
        AdapterError::Network { .. } | AdapterError::Http { .. } | AdapterError::Corrupt { .. } => {
            ErrorClass::Unavailable
        }
        AdapterError::Io { source, .. } if source.kind() != std::io::ErrorKind::NotFound => {
            ErrorClass::Internal
        }
        AdapterError::Model(err) => match model_error_class(err) {
            ErrorClass::NotFound => ErrorClass::BadRequest,
            other => other,
        },
        _ => ErrorClass::BadRequest,
    }
}

fn backend_error_class(kind: ErrorKind) -> ErrorClass {
    match kind {
        ErrorKind::NotFound => ErrorClass::NotFound,
        ErrorKind::InvalidRequest
        | ErrorKind::UnsupportedFormat
        | ErrorKind::UnsupportedArchitecture
        | ErrorKind::AdapterIncompatible
        | ErrorKind::Unsupported => ErrorClass::BadRequest,
        ErrorKind::OutOfMemory
        | ErrorKind::Cancelled
        | ErrorKind::Unavailable
        | ErrorKind::Timeout => ErrorClass::Unavailable,
        // Internal, and kinds of a newer contract minor (a plugin is never newer than us).
        _ => ErrorClass::Internal,
    }
}
