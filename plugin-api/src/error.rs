//! The error value every fallible plugin call returns.

use abi_stable::{std_types::RString, StableAbi};
use std::fmt;

/// What went wrong, so the host can map it to a status (404, 400, 503, ...) without parsing
/// the message. A number across the boundary, so kinds can be added in minor versions: a
/// host reading a kind it does not know treats it as `Internal`.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u16);

impl fmt::Debug for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ErrorKind::NotFound => f.write_str("NotFound"),
            ErrorKind::UnsupportedFormat => f.write_str("UnsupportedFormat"),
            ErrorKind::UnsupportedArchitecture => f.write_str("UnsupportedArchitecture"),
            ErrorKind::OutOfMemory => f.write_str("OutOfMemory"),
            ErrorKind::AdapterIncompatible => f.write_str("AdapterIncompatible"),
            ErrorKind::Cancelled => f.write_str("Cancelled"),
            ErrorKind::InvalidRequest => f.write_str("InvalidRequest"),
            ErrorKind::Unsupported => f.write_str("Unsupported"),
            ErrorKind::Internal => f.write_str("Internal"),
            ErrorKind::Unavailable => f.write_str("Unavailable"),
            ErrorKind::Timeout => f.write_str("Timeout"),
            ErrorKind(other) => write!(f, "ErrorKind({other})"),
        }
    }
}

#[allow(non_upper_case_globals)]
impl ErrorKind {
    /// A model or adapter file does not exist.
    pub const NotFound: ErrorKind = ErrorKind(1);
    /// The file is not in a format this backend reads (or is corrupt/truncated). The host may
    /// try the next backend that claims the format.
    pub const UnsupportedFormat: ErrorKind = ErrorKind(2);
    /// The format is fine but the model architecture is not implemented.
    pub const UnsupportedArchitecture: ErrorKind = ErrorKind(3);
    /// Not enough memory (host RAM or device memory) for the request.
    pub const OutOfMemory: ErrorKind = ErrorKind(4);
    /// A LoRA adapter does not fit the base model.
    pub const AdapterIncompatible: ErrorKind = ErrorKind(5);
    /// The operation was cancelled.
    pub const Cancelled: ErrorKind = ErrorKind(6);
    /// The request itself is wrong (empty prompt, out-of-vocabulary ids, context too long,
    /// bad sampling values, an invalid grammar or schema).
    pub const InvalidRequest: ErrorKind = ErrorKind(7);
    /// The backend does not implement this operation (e.g. embeddings).
    pub const Unsupported: ErrorKind = ErrorKind(8);
    /// A bug or an unexpected failure inside the backend, including a caught panic.
    pub const Internal: ErrorKind = ErrorKind(9);
    /// The backend (a worker process, a remote server, a device) cannot serve now; a retry
    /// later may succeed.
    pub const Unavailable: ErrorKind = ErrorKind(10);
    /// The operation did not finish within its deadline.
    pub const Timeout: ErrorKind = ErrorKind(11);

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
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            _ => "internal error",
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
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for PluginError {}
