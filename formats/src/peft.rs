//! PEFT LoRA adapters: `adapter_config.json` and the tensor names of
//! `adapter_model.safetensors`.
//!
//! The host (compatibility checks, conversion to GGUF) and the candle plugin (merging at load)
//! read the same config, so the rank, alpha and rsLoRA rules live here once. Reading the
//! safetensors file itself stays with each caller (each has its own tensor type).

mod config;
mod pattern;
#[cfg(test)]
mod tests;

pub use config::PeftConfig;

/// The config file of a PEFT adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file of a PEFT adapter folder.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Why an adapter config or tensor name cannot be used. The caller adds the file's path.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error("{}", json_message(.0))]
    Json(#[source] serde_json::Error),

    #[error("the key `{0}` is missing")]
    Missing(&'static str),

    #[error("`{key}` must be {expected}, but it is {found}")]
    BadType {
        key: String,
        expected: &'static str,
        found: String,
    },

    #[error("peft_type `{0}` is not LORA: only LoRA adapters are supported")]
    NotLora(String),

    #[error("{0} are not supported")]
    Unsupported(&'static str),

    #[error("rank r is 0 (a LoRA rank must be at least 1)")]
    ZeroRank,

    #[error("{table} key `{key}` is a regular expression; only module names (e.g. `q_proj` or `model.layers.0.self_attn.q_proj`, optionally starting with `^`) are supported: list the modules instead")]
    RegexPattern { table: &'static str, key: String },

    #[error("tensor `{0}` is not a lora_A/lora_B matrix (embedding LoRA, DoRA and modules_to_save are not supported)")]
    NotLoraTensor(String),
}

impl PeftError {
    /// True when the file is well-formed but asks for something the engine does not do
    /// (another PEFT method, DoRA, ...), false when the file itself is malformed.
    pub fn is_unsupported_feature(&self) -> bool {
        !matches!(
            self,
            PeftError::Json(_) | PeftError::Missing(_) | PeftError::BadType { .. }
        )
    }
}

fn json_message(e: &serde_json::Error) -> String {
    if e.is_syntax() || e.is_eof() {
        format!("not valid JSON ({e})")
    } else {
        format!("not a PEFT adapter config ({e})")
    }
}

/// Which matrix of a LoRA pair a tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraHalf {
    /// `lora_A`, shape `[r, in]`.
    A,
    /// `lora_B`, shape `[out, r]`.
    B,
}

/// Splits `base_model.model.<module>.lora_{A,B}[.<adapter>].weight` into the HF module path
/// (e.g. `model.layers.0.self_attn.q_proj`) and the half it holds.
pub fn split_tensor_name(key: &str) -> Result<(&str, LoraHalf), PeftError> {
    let name = key.strip_prefix("base_model.model.").unwrap_or(key);
    if let Some((module, _)) = name.split_once(".lora_A.") {
        Ok((module, LoraHalf::A))
    } else if let Some((module, _)) = name.split_once(".lora_B.") {
        Ok((module, LoraHalf::B))
    } else {
        Err(PeftError::NotLoraTensor(key.to_string()))
    }
}
