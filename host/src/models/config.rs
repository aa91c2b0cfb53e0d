//! Settings of the model manager, from the standard Hugging Face environment variables or set
//! directly (tests point `endpoint` at a loopback mock).

use std::path::PathBuf;
use std::time::Duration;

use super::cache::cache_dir_from_env;
use super::error::{ModelError, Result};

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Settings of a [`super::ModelManager`].
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The hub-layout cache folder.
    pub cache_dir: PathBuf,
    /// Where llmlocal keeps its own records about the cache (last-used times, file lists);
    /// `None`: `<parent of cache_dir>/llmlocal/<cache folder name>` (`$HF_HOME/llmlocal/hub`).
    pub state_dir: Option<PathBuf>,
    /// Base URL of the hub (`HF_ENDPOINT`).
    pub endpoint: String,
    /// Bearer token (`HF_TOKEN`, else the token file `huggingface-cli login` writes).
    pub token: Option<String>,
    /// Resolve from the cache only (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Retries after the first attempt on timeouts, resets and 5xx.
    pub max_retries: u32,
    /// First backoff delay; doubles each retry, with jitter.
    pub retry_base_delay: Duration,
    pub connect_timeout: Duration,
    /// A transfer that receives nothing for this long is retried (resuming where it stopped).
    pub read_timeout: Duration,
    /// Memory to plan for when picking a GGUF quantization (default: the OS's available memory).
    pub memory_limit: Option<u64>,
    /// Context length used for the KV-cache allowance when the spec names none.
    pub default_context_length: u32,
}

impl ManagerConfig {
    /// Defaults for a cache folder, talking to the public hub.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        ManagerConfig {
            cache_dir: cache_dir.into(),
            state_dir: None,
            endpoint: DEFAULT_ENDPOINT.to_string(),
            token: None,
            offline: false,
            max_retries: 5,
            retry_base_delay: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            memory_limit: None,
            default_context_length: 4096,
        }
    }

    /// From `HF_HUB_CACHE`/`HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`.
    pub fn from_env() -> Result<Self> {
        let cache_dir = cache_dir_from_env().ok_or(ModelError::NoCacheDir)?;
        let mut config = ManagerConfig::new(cache_dir.clone());
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(endpoint) = var("HF_ENDPOINT") {
            config.endpoint = endpoint.trim_end_matches('/').to_string();
        }
        config.token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| hf_hub::Cache::new(cache_dir).token());
        config.offline = var("HF_HUB_OFFLINE").is_some_and(|v| is_truthy(&v));
        Ok(config)
    }
}

/// `1`, `true`, `yes`, `on` (any case), as huggingface_hub reads boolean variables.
pub fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}
