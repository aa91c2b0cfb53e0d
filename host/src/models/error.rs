//! Errors of the model manager. Every message says what went wrong and what to do about it.

use std::path::PathBuf;

/// An error from parsing a model spec, reading the cache or downloading.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model spec `{input}`: {reason}")]
    InvalidSpec { input: String, reason: String },

    #[error(
        "repository `{repo}` was not found on {endpoint}: check the name, or set HF_TOKEN if it is private"
    )]
    RepoNotFound { repo: String, endpoint: String },

    #[error("revision `{revision}` of `{repo}` was not found: check the branch, tag or commit")]
    RevisionNotFound { repo: String, revision: String },

    #[error("file `{file}` was not found in `{repo}` at revision `{revision}`: list the repository's files and pick one")]
    FileNotFound {
        repo: String,
        revision: String,
        file: String,
    },

    #[error("access to `{repo}` was refused (HTTP {status}): {hint}")]
    Unauthorized {
        repo: String,
        status: u16,
        hint: String,
    },

    #[error(
        "offline mode (HF_HUB_OFFLINE=1): `{file}` of `{repo}` (revision `{revision}`) is not in the cache at {cache}; \
         unset HF_HUB_OFFLINE and run `llmlocal pull {repo}` while online"
    )]
    NotCachedOffline {
        repo: String,
        revision: String,
        file: String,
        cache: PathBuf,
    },

    #[error(
        "`{file}` of `{repo}` (revision `{revision}`) is not in the cache and the hub at {endpoint} could not be reached ({reason}); \
         check the network, the proxy (HTTPS_PROXY) or HF_ENDPOINT, then run `llmlocal pull {repo}` again"
    )]
    HubUnreachable {
        repo: String,
        revision: String,
        file: String,
        endpoint: String,
        reason: String,
    },

    #[error("checksum mismatch for `{file}` of `{repo}`: expected sha256 {expected}, got {actual}; the bad data was deleted, try again")]
    ChecksumMismatch {
        repo: String,
        file: String,
        expected: String,
        actual: String,
    },

    #[error("size mismatch for `{file}` of `{repo}`: expected {expected} bytes, got {actual}; the bad data was deleted, try again")]
    SizeMismatch {
        repo: String,
        file: String,
        expected: u64,
        actual: u64,
    },

    #[error(
        "download of `{file}` was cancelled; the partial data is kept and the next pull resumes it"
    )]
    Cancelled { file: String },

    #[error("HTTP request to {url} failed after {attempts} attempt(s): {reason}")]
    Network {
        url: String,
        attempts: u32,
        reason: String,
    },

    #[error("unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },

    #[error("no GGUF file in `{repo}` fits in memory: {reason}; name a smaller quantization, e.g. `{repo}:Q4_K_M`")]
    NothingFits { repo: String, reason: String },

    #[error("`{repo}` has no model files (.gguf or .safetensors) at revision `{revision}`")]
    NoModelFiles { repo: String, revision: String },

    #[error("local model path {path} {reason}")]
    LocalPath { path: PathBuf, reason: String },

    #[error("`{repo}` is not in the cache at {cache}")]
    NotInCache { repo: String, cache: PathBuf },

    #[error("cannot find a cache folder: set HF_HUB_CACHE or HF_HOME")]
    NoCacheDir,

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("could not set up the HTTP client: {0}")]
    Client(String),

    #[error(
        "not enough disk space to pull `{repo}`: it needs {need} more, but {path} has only {free} free; \
         free some space (e.g. `llmlocal rm` a model you no longer use) or point HF_HUB_CACHE at a larger disk"
    )]
    NoSpace {
        repo: String,
        need: String,
        free: String,
        path: PathBuf,
    },

    #[error(
        "the disk is full: writing `{file}` of `{repo}` to {path} failed ({source}); the partial download was deleted, \
         free some space and pull again"
    )]
    DiskFull {
        repo: String,
        file: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("refusing the {what} {value:?} from {origin}: {reason}; it could name a path outside the cache, so nothing was written")]
    UnsafeValue {
        what: &'static str,
        value: String,
        origin: String,
        reason: String,
    },
}

impl ModelError {
    /// Shorthand for an I/O error with what we were doing and on which path.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ModelError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

impl ModelError {
    /// A value that cannot safely become a path in the cache (at most 200 characters of it
    /// are kept, so a hostile hub cannot flood logs).
    pub(crate) fn unsafe_value(
        what: &'static str,
        value: &str,
        origin: impl Into<String>,
        reason: String,
    ) -> Self {
        ModelError::UnsafeValue {
            what,
            value: value.chars().take(200).collect(),
            origin: origin.into(),
            reason,
        }
    }
}

/// Result alias for the model manager.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
