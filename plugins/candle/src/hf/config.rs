//! config.json: which architecture, and the numbers the tensor shapes follow from.

use crate::error::{read_file, Result};
use llmlocal_plugin_api::PluginError;
use serde_json::{Map, Value};
use std::path::Path;

/// The architectures this backend runs from safetensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Phi3,
    Gemma3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Phi3 => "phi3",
            Arch::Gemma3 => "gemma3",
        }
    }

    fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" => Some(Arch::Llama),
            "mistral" => Some(Arch::Mistral),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            "phi3" => Some(Arch::Phi3),
            // Text-only Gemma 3 (1B, or a text model extracted from 4B+); `gemma3` is the
            // multimodal wrapper, whose config nests the text one.
            "gemma3_text" => Some(Arch::Gemma3),
            _ => None,
        }
    }

    fn from_class(class: &str) -> Option<Self> {
        match class {
            "LlamaForCausalLM" => Some(Arch::Llama),
            "MistralForCausalLM" => Some(Arch::Mistral),
            "Qwen2ForCausalLM" => Some(Arch::Qwen2),
            "Qwen3ForCausalLM" => Some(Arch::Qwen3),
            "Phi3ForCausalLM" => Some(Arch::Phi3),
            "Gemma3ForCausalLM" => Some(Arch::Gemma3),
            _ => None,
        }
    }
}

/// The parsed config.json: its raw JSON (for candle's own config structs) and the common
/// dimensions.
#[derive(Debug, Clone)]
pub struct HfConfig {
    pub arch: Arch,
    pub json: Map<String, Value>,
    pub hidden: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub max_positions: usize,
    pub tie_embeddings: bool,
}

impl HfConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = read_file(path)?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            PluginError::unsupported_format(format!("{} is not valid JSON: {e}", path.display()))
        })?;
        let Value::Object(json) = value else {
            return Err(PluginError::unsupported_format(format!(
                "{} is not a JSON object",
                path.display()
            )));
        };
        Self::from_json(json)
    }

    pub fn from_json(json: Map<String, Value>) -> Result<Self> {
        let arch = detect_arch(&json)?;
        let key = |name: &str| required_usize(&json, name);
        let hidden = key("hidden_size")?;
        let heads = key("num_attention_heads")?;
        if heads == 0 || hidden % heads != 0 {
            return Err(PluginError::unsupported_format(format!(
                "config.json: hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
            )));
        }
        let kv_heads = optional_usize(&json, "num_key_value_heads")?.unwrap_or(heads);
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(PluginError::unsupported_format(format!(
                "config.json: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )));
        }
        let head_dim = optional_usize(&json, "head_dim")?.unwrap_or(hidden / heads);
        // candle's llama, qwen2 and phi3 derive head_dim as hidden_size / heads; mistral,
        // qwen3 and gemma3 read the `head_dim` key.
        if !matches!(arch, Arch::Mistral | Arch::Qwen3 | Arch::Gemma3) && head_dim != hidden / heads
        {
            return Err(PluginError::unsupported_architecture(format!(
                "{} with head_dim {head_dim} != hidden_size / num_attention_heads ({})",
                arch.name(),
                hidden / heads
            )));
        }
        let tie_default = matches!(arch, Arch::Qwen2 | Arch::Gemma3);
        Ok(HfConfig {
            arch,
            hidden,
            intermediate: key("intermediate_size")?,
            vocab: key("vocab_size")?,
            layers: key("num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim,
            max_positions: key("max_position_embeddings")?,
            tie_embeddings: json
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(tie_default),
            json,
        })
    }

    /// `torch_dtype` (or the newer `dtype`), if stated.
    pub fn torch_dtype(&self) -> Option<&str> {
        self.json
            .get("torch_dtype")
            .or_else(|| self.json.get("dtype"))
            .and_then(Value::as_str)
    }

    pub fn bool_flag(&self, key: &str) -> bool {
        self.json.get(key).and_then(Value::as_bool).unwrap_or(false)
    }
}

fn detect_arch(json: &Map<String, Value>) -> Result<Arch> {
    let model_type = json.get("model_type").and_then(Value::as_str);
    let class = json
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    if let Some(arch) = model_type.and_then(Arch::from_model_type) {
        return Ok(arch);
    }
    if let Some(arch) = class.and_then(Arch::from_class) {
        return Ok(arch);
    }
    match model_type.or(class) {
        Some(name) => Err(PluginError::unsupported_architecture(format!(
            "architecture `{name}` is not supported by the candle backend (it runs llama, mistral, qwen2, qwen3, phi3, gemma3_text and, for embeddings, bert)"
        ))),
        None => Err(PluginError::unsupported_format(
            "config.json has neither `model_type` nor `architectures`",
        )),
    }
}

pub(crate) fn optional_usize(json: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                PluginError::unsupported_format(format!(
                    "config.json key `{key}` is not a non-negative integer: {v}"
                ))
            }),
    }
}

pub(crate) fn required_usize(json: &Map<String, Value>, key: &str) -> Result<usize> {
    optional_usize(json, key)?.ok_or_else(|| {
        PluginError::unsupported_format(format!("config.json is missing the key `{key}`"))
    })
}
