//! Errors of the plugin subsystem: choosing a backend, calling one, and why a library was
//! refused.

use llmlocal_plugin_api::{ErrorKind, ModelFormat};
use std::path::PathBuf;

/// Choosing a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(
        "no backend plugin is loaded: put a plugin library (libllmlocal_backend_<name>.so) in a \
         plugin directory or pass --plugin-dir DIR; `llmlocal plugins` lists what was found"
    )]
    NoBackends,
    #[error("no backend named `{name}` is loaded (loaded: {}); `llmlocal plugins` lists what was found", list(.available))]
    NoSuchBackend {
        name: String,
        available: Vec<String>,
    },
    #[error("backend `{name}` was found in {} but refused: {reason}", .path.display())]
    BackendRefused {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("no loaded backend reads {} models (loaded: {}); choose one with --backend NAME", .format.as_str(), list(.available))]
    NoBackendForFormat {
        format: ModelFormat,
        available: Vec<String>,
    },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// An error from a backend call: which backend, and the plugin's error (kind + message).
#[derive(Debug, thiserror::Error)]
#[error("backend `{backend}`: {source}")]
pub struct BackendError {
    pub backend: String,
    #[source]
    pub source: llmlocal_plugin_api::PluginError,
}

impl BackendError {
    pub fn kind(&self) -> ErrorKind {
        self.source.kind
    }

    /// The backend did not declare a capability the request needs: refused by the host before
    /// the plugin is called (a 400 naming the backend and the capability).
    pub fn missing_capability(backend: &str, capability: &str) -> Self {
        BackendError {
            backend: backend.to_string(),
            source: llmlocal_plugin_api::PluginError::unsupported(format!(
                "this request needs the capability `{capability}`, which the backend does not \
                 declare (`llmlocal plugins` lists what each backend can do)"
            )),
        }
    }
}

/// Why a library was not loaded. The `Display` text is the reason users see in
/// `llmlocal plugins`; the path is shown next to it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("not a loadable library: {0}")]
    NotALibrary(String),
    #[error("not an llmlocal backend plugin: it exports no llmlocal root module")]
    NoRootModule,
    #[error(
        "built with an incompatible abi_stable or Rust C ABI: rebuild it against \
         llmlocal-plugin-api {host} ({detail})",
        host = llmlocal_plugin_api::PLUGIN_API_VERSION
    )]
    AbiHeader { detail: String },
    #[error(
        "its types do not match this llmlocal's plugin API (abi_stable layout check): rebuild it \
         against llmlocal-plugin-api {host}: {detail}",
        host = llmlocal_plugin_api::PLUGIN_API_VERSION
    )]
    Layout { detail: String },
    #[error("{0}")]
    Version(#[from] super::version::VersionError),
    #[error("its root module failed to initialise: {0}")]
    RootModule(String),
    #[error("its manifest could not be read: {0}")]
    Manifest(llmlocal_plugin_api::PluginError),
    #[error("its manifest is invalid: {0}")]
    InvalidManifest(String),
    #[error("its constructor failed: {0}")]
    Constructor(llmlocal_plugin_api::PluginError),
    /// Refused by (or while starting) its worker process (process isolation); the text is
    /// the worker's reason.
    #[error("{0}")]
    Worker(String),
    #[error("backend name `{name}` is already provided by {}", .by.display())]
    DuplicateName { name: String, by: PathBuf },
}
