//! Errors of the adapter manager, with messages a user can act on.

use std::path::PathBuf;

use crate::models::ModelError;

/// What can go wrong while resolving, downloading, checking or converting an adapter.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("invalid adapter spec `{input}`: {reason} (expected gh:OWNER/REPO@TAG/ASSET, hf:ORG/REPO[@REV][/FILE] or a local path, each optionally followed by :SCALE)")]
    InvalidSpec { input: String, reason: String },

    #[error("adapter {adapter} does not fit the base model {base}: {}", .reasons.join("; "))]
    Incompatible {
        adapter: String,
        base: String,
        reasons: Vec<String>,
    },

    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("GitHub release `{tag}` of {owner}/{repo} not found at {url} (check the repository name and tag; a private repository needs GITHUB_TOKEN)")]
    ReleaseNotFound {
        owner: String,
        repo: String,
        tag: String,
        url: String,
    },

    #[error("release `{tag}` has no asset named `{asset}`; its assets are: {}", if .available.is_empty() { "(none)".to_string() } else { .available.join(", ") })]
    AssetNotFound {
        tag: String,
        asset: String,
        available: Vec<String>,
    },

    #[error("GitHub refused {url} with HTTP {status}: set GITHUB_TOKEN to a token that can read this repository")]
    Unauthorized { url: String, status: u16 },

    #[error("HTTP {status} from {url}{}", .detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Http {
        url: String,
        status: u16,
        detail: Option<String>,
    },

    #[error("request to {url} failed: {source} (is the API base URL right and the network up?)")]
    Network {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("invalid API base URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },

    #[error("download of {asset} is corrupt: {reason}; nothing was kept in the cache, try again")]
    Corrupt { asset: String, reason: String },

    #[error("no cached adapter matches `{0}` (see `llmlocal adapter list`)")]
    NotCached(String),

    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Shorthand used across the adapter manager.
pub type Result<T, E = AdapterError> = std::result::Result<T, E>;

/// Maps an io error to [`AdapterError::Io`] for `path`.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AdapterError {
    let path = path.into();
    move |source| AdapterError::Io { path, source }
}

/// A [`AdapterError::Format`] for `path`.
pub(crate) fn format_err(path: impl Into<PathBuf>, reason: impl Into<String>) -> AdapterError {
    AdapterError::Format {
        path: path.into(),
        reason: reason.into(),
    }
}
