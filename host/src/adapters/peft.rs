//! Reading a PEFT LoRA folder: adapter_config.json + adapter_model.safetensors.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::error::{format_err, io_err, AdapterError, Result};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The parts of adapter_config.json that decide the math and the compatibility.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftConfig {
    pub rank: usize,
    pub alpha: f64,
    /// `None` when the config gives a regex string instead of a list.
    pub target_modules: Option<Vec<String>>,
    pub use_rslora: bool,
    pub rank_pattern: HashMap<String, usize>,
    pub alpha_pattern: HashMap<String, f64>,
    pub base_model: Option<String>,
}

/// A row-major f32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

/// lora_A `[r, in]` and lora_B `[out, r]` of one module.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftPair {
    /// HF module path without `.weight`, e.g. `model.layers.0.self_attn.q_proj`.
    pub module: String,
    pub a: Matrix,
    pub b: Matrix,
}

/// A PEFT adapter read into memory (adapters are small).
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    pub dir: PathBuf,
    pub config: PeftConfig,
    pub pairs: Vec<PeftPair>,
}

/// Whether `path` is a PEFT folder (it holds adapter_config.json).
pub fn is_peft_dir(path: &Path) -> bool {
    path.is_dir() && path.join(CONFIG_FILE).is_file()
}

impl PeftAdapter {
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read(&config_path).map_err(io_err(&config_path))?;
        let config = parse_config(&config_path, &text)?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&weights_path).map_err(io_err(&weights_path))?;
        let pairs = read_pairs(&weights_path, &bytes)?;
        if pairs.is_empty() {
            return Err(format_err(&weights_path, "holds no lora_A/lora_B tensors"));
        }
        Ok(PeftAdapter {
            dir: dir.to_path_buf(),
            config,
            pairs,
        })
    }

    /// The configured rank of `module` (rank_pattern first).
    pub fn rank_of(&self, module: &str) -> usize {
        pattern_lookup(&self.config.rank_pattern, module).unwrap_or(self.config.rank)
    }

    /// PEFT's scaling of `module`: alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub fn factor(&self, module: &str) -> f64 {
        let alpha = pattern_lookup(&self.config.alpha_pattern, module).unwrap_or(self.config.alpha);
        let r = self.rank_of(module) as f64;
        if self.config.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }
}

/// PEFT's per-module overrides: the longest key that is the module or a dotted suffix of it.
fn pattern_lookup<T: Copy>(patterns: &HashMap<String, T>, module: &str) -> Option<T> {
    patterns
        .iter()
        .filter(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}")))
        .max_by_key(|(k, _)| k.len())
        .map(|(_, v)| *v)
}

fn parse_config(path: &Path, bytes: &[u8]) -> Result<PeftConfig> {
    let json: Value = serde_json::from_slice(bytes)
        .map_err(|e| format_err(path, format!("not valid JSON ({e})")))?;
    let missing = |key: &str| format_err(path, format!("the key `{key}` is missing"));
    if let Some(kind) = json.get("peft_type").and_then(Value::as_str) {
        if kind != "LORA" {
            return Err(format_err(path, format!("peft_type `{kind}` is not LORA")));
        }
    }
    for (key, what) in [
        ("use_dora", "DoRA adapters"),
        ("fan_in_fan_out", "fan_in_fan_out (Conv1D) adapters"),
    ] {
        if json.get(key).and_then(Value::as_bool) == Some(true) {
            return Err(format_err(path, format!("{what} are not supported")));
        }
    }
    let rank = json
        .get("r")
        .and_then(Value::as_u64)
        .ok_or_else(|| missing("r"))? as usize;
    if rank == 0 {
        return Err(format_err(path, "rank r is 0"));
    }
    let alpha = json
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| missing("lora_alpha"))?;
    let target_modules = json
        .get("target_modules")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        });
    let map = |key: &str| {
        json.get(key)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    Ok(PeftConfig {
        rank,
        alpha,
        target_modules,
        use_rslora: json
            .get("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        rank_pattern: map("rank_pattern")
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_u64()? as usize)))
            .collect(),
        alpha_pattern: map("alpha_pattern")
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_f64()?)))
            .collect(),
        base_model: json
            .get("base_model_name_or_path")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

fn to_f32(path: &Path, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    let words = |n: usize| bytes.chunks_exact(n);
    Ok(match dtype {
        Dtype::F32 => words(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => words(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => words(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(format_err(
                path,
                format!(
                    "tensor `{name}` has dtype {other:?}; only F32, F16 and BF16 are supported"
                ),
            ))
        }
    })
}

/// Groups `base_model.model.<module>.lora_{A,B}[.<name>].weight` by module.
fn read_pairs(path: &Path, bytes: &[u8]) -> Result<Vec<PeftPair>> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format_err(path, format!("not a valid safetensors file ({e})")))?;
    let mut halves: BTreeMap<String, (Option<Matrix>, Option<Matrix>)> = BTreeMap::new();
    for (key, view) in st.tensors() {
        let name = key.strip_prefix("base_model.model.").unwrap_or(&key);
        let (module, is_a) = if let Some((m, _)) = name.split_once(".lora_A.") {
            (m, true)
        } else if let Some((m, _)) = name.split_once(".lora_B.") {
            (m, false)
        } else {
            return Err(format_err(path, format!(
                "tensor `{key}` is not a lora_A/lora_B matrix (embedding LoRA, DoRA and modules_to_save are not supported)"
            )));
        };
        let shape = view.shape();
        let [rows, cols] = shape[..] else {
            return Err(format_err(
                path,
                format!("tensor `{key}` has shape {shape:?}, not a matrix"),
            ));
        };
        let m = Matrix {
            rows,
            cols,
            data: to_f32(path, &key, view.dtype(), view.data())?,
        };
        let entry = halves.entry(module.to_string()).or_default();
        if is_a {
            entry.0 = Some(m);
        } else {
            entry.1 = Some(m);
        }
    }
    halves
        .into_iter()
        .map(|(module, pair)| match pair {
            (Some(a), Some(b)) => Ok(PeftPair { module, a, b }),
            _ => Err(AdapterError::Format {
                path: path.to_path_buf(),
                reason: format!("module `{module}` has only one of lora_A / lora_B"),
            }),
        })
        .collect()
}
