//! The error value every fallible plugin call returns.

use abi_stable::{std_types::RString, StableAbi};
use std::fmt;

/// What went wrong, so the host can map it to a status (404, 400, 507, ...) without parsing
/// the message. New kinds need a new major version (the enum is exhaustive across the ABI).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A model or adapter file does not exist.
    NotFound,
    /// The file is not in a format this backend reads (or is corrupt/truncated).
    UnsupportedFormat,
    /// The format is fine but the model architecture is not implemented.
    UnsupportedArchitecture,
    /// Not enough memory (host RAM or device memory) for the request.
    OutOfMemory,
    /// A LoRA adapter does not fit the base model.
    AdapterIncompatible,
    /// The operation was cancelled.
    Cancelled,
    /// The request itself is wrong (empty prompt, context too long, bad sampling values).
    InvalidRequest,
    /// The backend does not implement this operation (e.g. embeddings).
    Unsupported,
    /// A bug or an unexpected failure inside the backend, including a caught panic.
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::UnsupportedFormat => "unsupported format",
            ErrorKind::UnsupportedArchitecture => "unsupported architecture",
            ErrorKind::OutOfMemory => "out of memory",
            ErrorKind::AdapterIncompatible => "adapter incompatible",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::InvalidRequest => "invalid request",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Internal => "internal error",
        }
    }
}

/// An error crossing the plugin boundary: a kind plus a message a user can act on.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    pub kind: ErrorKind,
    pub message: RString,
}

impl PluginError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PluginError {
            kind,
            message: RString::from(message.into()),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn unsupported_format(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UnsupportedFormat, message)
    }
    pub fn unsupported_architecture(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UnsupportedArchitecture, message)
    }
    pub fn out_of_memory(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::OutOfMemory, message)
    }
    pub fn adapter_incompatible(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AdapterIncompatible, message)
    }
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Cancelled, message)
    }
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for PluginError {}
