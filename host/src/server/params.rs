//! Request parameters shared by the OpenAI and Ollama routes, checked and turned into a
//! [`GenerationConfig`].

use super::error::ApiError;
use crate::engine::{Constraint, GenerationConfig};
use serde::Deserialize;
use serde_json::Value;

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
    /// The penalties' window in tokens (Ollama's and llama-server's `repeat_last_n`).
    pub repeat_last_n: Option<i64>,
    pub typical_p: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// Token id (as a JSON object key, as OpenAI sends it) -> bias in [-100, 100].
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    pub constraint: Option<Constraint>,
    pub seed: Option<i64>,
    pub stop: Vec<String>,
    pub backend: Option<String>,
    pub ignore_eos: bool,
    /// Extension: LoRA adapters, `SPEC[:scale]` strings; `None` = the model's configured ones.
    pub adapters: Option<Vec<String>>,
    /// llama-server's `cache_prompt`: may the backend reuse a kept prompt prefix.
    pub cache_prompt: Option<bool>,
    /// Per-token logprobs with this many alternatives (checked by [`super::logprobs`]).
    pub logprobs: Option<u32>,
}

impl Params {
    /// Checks ranges and the server's `max_tokens` cap (the engine applies it, and the
    /// configured sampling defaults, to what the request leaves out).
    pub fn into_config(
        self,
        max_tokens_cap: u32,
        max_tokens_name: &str,
    ) -> Result<GenerationConfig, ApiError> {
        // Absent: the engine fills in the model's or the server's default, else the cap.
        let max_tokens = match self.max_tokens {
            None => None,
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
            Some(n) => Some(n as u32),
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
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if let Some(v) = value.filter(|v| !(-2.0..=2.0).contains(v)) {
                return Err(ApiError::bad_request(format!(
                    "{name} must be between -2 and 2, got {v}"
                )));
            }
        }
        if let Some(p) = self.typical_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return Err(ApiError::bad_request(format!(
                "typical_p must be in (0, 1], got {p}"
            )));
        }
        let logit_bias = logit_bias(self.logit_bias.as_ref())?;
        let repeat_last_n = match self.repeat_last_n {
            None => None,
            Some(n @ 0..=MAX_REPEAT_LAST_N) => Some(n as u32),
            // -1 is Ollama's and llama-server's "the whole context", which the backends
            // would size a penalty buffer by.
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "repeat_last_n must be a window of 0 to {MAX_REPEAT_LAST_N} tokens, got {n} \
                     (-1, the whole context, is not supported: give the window)"
                )))
            }
        };
        if let Some(bad) = self.adapters.iter().flatten().find(|a| a.trim().is_empty()) {
            return Err(ApiError::bad_request(format!(
                "adapters must be non-empty \"SPEC[:scale]\" strings, got {bad:?}"
            )));
        }
        Ok(GenerationConfig {
            max_tokens,
            max_tokens_cap: Some(max_tokens_cap),
            temperature: self.temperature.map(|t| t as f32),
            top_p: self.top_p.map(|p| p as f32),
            top_k,
            min_p: self.min_p.map(|p| p as f32),
            repeat_penalty: self.repeat_penalty.map(|r| r as f32),
            repeat_last_n,
            typical_p: self.typical_p.map(|p| p as f32),
            presence_penalty: self.presence_penalty.map(|p| p as f32),
            frequency_penalty: self.frequency_penalty.map(|p| p as f32),
            logit_bias,
            constraint: self.constraint,
            // A negative seed means a random one (llama.cpp's and Ollama's -1).
            seed: self.seed.and_then(|s| u64::try_from(s).ok()),
            random_seed: self.seed.is_some_and(|s| s < 0),
            stop: self.stop,
            ignore_eos: self.ignore_eos,
            backend: self.backend,
            adapters: self.adapters,
            cache_prompt: self.cache_prompt,
            logprobs: self.logprobs,
            ..GenerationConfig::default()
        })
    }
}

/// The widest `repeat_last_n` window.
pub const MAX_REPEAT_LAST_N: i64 = 65_536;

/// The most entries a `logit_bias` may have (OpenAI's limit is 300).
pub const MAX_LOGIT_BIAS: usize = 1024;

/// `logit_bias` as OpenAI sends it: `{"<token id>": bias}`, bias in [-100, 100]; -100 bans
/// the token (as OpenAI documents it), so it becomes `-inf`.
fn logit_bias(map: Option<&serde_json::Map<String, Value>>) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(map) = map else {
        return Ok(Vec::new());
    };
    if map.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::bad_request(format!(
            "logit_bias has {} entries; at most {MAX_LOGIT_BIAS}",
            map.len()
        )));
    }
    map.iter()
        .map(|(key, value)| {
            let id: u32 = key.parse().map_err(|_| {
                ApiError::bad_request(format!("logit_bias: key {key:?} is not a token id"))
            })?;
            let bias = value
                .as_f64()
                .filter(|b| (-100.0..=100.0).contains(b))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "logit_bias: the bias of token {id} must be a number in [-100, 100]"
                    ))
                })?;
            let bias = if bias <= -100.0 {
                f32::NEG_INFINITY
            } else {
                bias as f32
            };
            Ok((id, bias))
        })
        .collect()
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
