//! Request parameters shared by the OpenAI and Ollama routes, checked and turned into a
//! [`GenerationConfig`].

use super::error::ApiError;
use crate::engine::GenerationConfig;
use serde::Deserialize;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

/// Sampling parameters as clients send them (wide types, so range errors get our message).
#[derive(Debug, Clone, Default)]
pub struct Params {
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Vec<String>,
    pub backend: Option<String>,
    pub ignore_eos: bool,
    /// Extension: LoRA adapters, `SPEC[:scale]` strings; `None` = the model's configured ones.
    pub adapters: Option<Vec<String>>,
}

impl Params {
    /// Checks ranges and the server's `max_tokens` cap (also the default when none is given).
    pub fn into_config(
        self,
        max_tokens_cap: u32,
        max_tokens_name: &str,
    ) -> Result<GenerationConfig, ApiError> {
        let max_tokens = match self.max_tokens {
            None => max_tokens_cap,
            Some(n) if n < 1 => {
                return Err(ApiError::bad_request(format!(
                    "{max_tokens_name} must be at least 1, got {n}"
                )))
            }
            Some(n) if n > i64::from(max_tokens_cap) => {
                return Err(ApiError::bad_request(format!(
                    "{max_tokens_name} {n} is over this server's limit of {max_tokens_cap}"
                )))
            }
            Some(n) => n as u32,
        };
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::bad_request(format!(
                    "temperature must be between 0 and 2, got {t}"
                )));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ApiError::bad_request(format!(
                    "top_p must be in (0, 1], got {p}"
                )));
            }
        }
        let top_k = match self.top_k {
            Some(k) if k < 0 => {
                return Err(ApiError::bad_request(format!(
                    "top_k must be >= 0, got {k}"
                )))
            }
            Some(k) => Some(u32::try_from(k).unwrap_or(u32::MAX)),
            None => None,
        };
        crate::engine::stop::check_stop_limits(&self.stop).map_err(ApiError::bad_request)?;
        if let Some(bad) = self.adapters.iter().flatten().find(|a| a.trim().is_empty()) {
            return Err(ApiError::bad_request(format!(
                "adapters must be non-empty \"SPEC[:scale]\" strings, got {bad:?}"
            )));
        }
        Ok(GenerationConfig {
            max_tokens: Some(max_tokens),
            temperature: self.temperature.map(|t| t as f32),
            top_p: self.top_p.map(|p| p as f32),
            top_k,
            min_p: self.min_p.map(|p| p as f32),
            repeat_penalty: self.repeat_penalty.map(|r| r as f32),
            seed: self.seed.map(|s| s as u64),
            stop: self.stop,
            ignore_eos: self.ignore_eos,
            backend: self.backend,
            adapters: self.adapters,
        })
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random id with a prefix (`chatcmpl-...`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
}
