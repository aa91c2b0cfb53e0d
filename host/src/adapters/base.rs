//! The base model's dimensions (from config.json or GGUF metadata) and the linear modules a
//! LoRA adapter may target, with their Hugging Face and llama.cpp names and shapes.

use std::path::Path;

use serde_json::Value;

use super::error::{format_err, io_err, Result};
use super::gguf;

/// The dimensions of a base model that decide whether an adapter fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseModel {
    /// For messages: a path or a model name.
    pub name: String,
    /// llama.cpp's architecture name (`llama`, `qwen2`, ...).
    pub architecture: String,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
}

/// A linear layer inside a transformer block that LoRA can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// (module, HF path under `model.layers.N.`, short PEFT name, llama.cpp name).
const MODULES: [(Module, &str, &str, &str); 7] = [
    (Module::Q, "self_attn.q_proj", "q_proj", "attn_q"),
    (Module::K, "self_attn.k_proj", "k_proj", "attn_k"),
    (Module::V, "self_attn.v_proj", "v_proj", "attn_v"),
    (Module::O, "self_attn.o_proj", "o_proj", "attn_output"),
    (Module::Gate, "mlp.gate_proj", "gate_proj", "ffn_gate"),
    (Module::Up, "mlp.up_proj", "up_proj", "ffn_up"),
    (Module::Down, "mlp.down_proj", "down_proj", "ffn_down"),
];

impl Module {
    /// The module for a PEFT `target_modules` entry (`q_proj`) or an HF path suffix.
    pub fn from_short(name: &str) -> Option<Self> {
        MODULES
            .iter()
            .find(|(_, path, short, _)| name == *short || name == *path)
            .map(|m| m.0)
    }

    /// `model.layers.N.self_attn.q_proj` -> (N, Q).
    pub fn parse_hf(path: &str) -> Option<(usize, Self)> {
        let rest = path.strip_prefix("model.layers.")?;
        let (layer, name) = rest.split_once('.')?;
        let module = MODULES.iter().find(|m| m.1 == name)?.0;
        Some((layer.parse().ok()?, module))
    }

    /// `blk.N.attn_q.weight.lora_a` -> (N, Q, true); `lora_b` -> false.
    pub fn parse_gguf(name: &str) -> Option<(usize, Self, bool)> {
        let rest = name.strip_prefix("blk.")?;
        let (layer, rest) = rest.split_once('.')?;
        let (base, is_a) = if let Some(b) = rest.strip_suffix(".weight.lora_a") {
            (b, true)
        } else {
            (rest.strip_suffix(".weight.lora_b")?, false)
        };
        let module = MODULES.iter().find(|m| m.3 == base)?.0;
        Some((layer.parse().ok()?, module, is_a))
    }

    fn row(self) -> &'static (Module, &'static str, &'static str, &'static str) {
        // MODULES lists every variant once.
        &MODULES[self as usize]
    }

    pub fn short_name(self) -> &'static str {
        self.row().2
    }

    /// `blk.N.<name>.weight` base name in GGUF.
    pub fn gguf_name(self, layer: usize) -> String {
        format!("blk.{layer}.{}.weight", self.row().3)
    }
}

/// Maps Hugging Face `model_type` to llama.cpp's architecture name.
pub fn arch_from_model_type(model_type: &str) -> String {
    match model_type {
        // llama.cpp converts Mistral checkpoints to the llama architecture.
        "mistral" => "llama".to_string(),
        other => other.to_string(),
    }
}

/// Whether llama.cpp's converter permutes q/k rows for this architecture (RoPE layout).
pub fn permutes_qk(architecture: &str) -> bool {
    architecture == "llama"
}

impl BaseModel {
    /// From a GGUF file, an HF folder (config.json) or a config.json path.
    pub fn from_path(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Self::from_hf_config(&path.join("config.json"))
        } else if path.file_name().is_some_and(|n| n == "config.json") {
            Self::from_hf_config(path)
        } else {
            Self::from_gguf(path)
        }
    }

    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format_err(path, format!("not valid JSON ({e})")))?;
        let get = |key: &str| {
            json.get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| format_err(path, format!("`{key}` is missing")))
        };
        let model_type = json
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| format_err(path, "`model_type` is missing"))?;
        let hidden_size = get("hidden_size")?;
        let num_heads = get("num_attention_heads")?;
        Ok(BaseModel {
            name: display_name(path),
            architecture: arch_from_model_type(model_type),
            hidden_size,
            num_layers: get("num_hidden_layers")?,
            num_heads,
            num_kv_heads: get("num_key_value_heads").unwrap_or(num_heads),
            head_dim: get("head_dim").unwrap_or(hidden_size / num_heads.max(1)),
            intermediate_size: get("intermediate_size")?,
        })
    }

    pub fn from_gguf(path: &Path) -> Result<Self> {
        let info = gguf::read_info(path)?;
        let arch = info
            .str("general.architecture")
            .ok_or_else(|| format_err(path, "GGUF metadata has no general.architecture"))?
            .to_string();
        let get = |key: &str| {
            info.u64(&format!("{arch}.{key}"))
                .map(|v| v as usize)
                .ok_or_else(|| format_err(path, format!("GGUF metadata has no {arch}.{key}")))
        };
        let hidden_size = get("embedding_length")?;
        let num_heads = get("attention.head_count")?;
        Ok(BaseModel {
            name: display_name(path),
            hidden_size,
            num_layers: get("block_count")?,
            num_heads,
            num_kv_heads: get("attention.head_count_kv").unwrap_or(num_heads),
            head_dim: get("attention.key_length").unwrap_or(hidden_size / num_heads.max(1)),
            intermediate_size: get("feed_forward_length")?,
            architecture: arch,
        })
    }

    /// `[out, in]` of `module`'s weight.
    pub fn shape(&self, module: Module) -> (usize, usize) {
        let (h, q, kv, f) = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.intermediate_size,
        );
        match module {
            Module::Q => (q, h),
            Module::K | Module::V => (kv, h),
            Module::O => (h, q),
            Module::Gate | Module::Up => (f, h),
            Module::Down => (h, f),
        }
    }
}

fn display_name(path: &Path) -> String {
    let shown = if path.file_name().is_some_and(|n| n == "config.json") {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    shown.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_round_trip() {
        for (m, path, short, _) in MODULES {
            assert_eq!(Module::from_short(short), Some(m));
            assert_eq!(m.short_name(), short);
            assert_eq!(
                Module::parse_hf(&format!("model.layers.3.{path}")),
                Some((3, m))
            );
            let g = format!("{}.lora_b", m.gguf_name(5));
            assert_eq!(Module::parse_gguf(&g), Some((5, m, false)));
        }
        assert_eq!(Module::parse_hf("model.embed_tokens"), None);
    }
}
