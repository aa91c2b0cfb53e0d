//! Reading a PEFT LoRA folder: adapter_config.json + adapter_model.safetensors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use llmlocal_formats::peft::{split_tensor_name, LoraHalf, PeftError};
use safetensors::{Dtype, SafeTensors};

use super::error::{format_err, io_err, AdapterError, Result};

pub use llmlocal_formats::peft::{PeftConfig, CONFIG_FILE, WEIGHTS_FILE};

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
        let config = PeftConfig::parse(&text).map_err(|e| peft_err(&config_path, e))?;
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
        self.config.rank_of(module)
    }

    /// PEFT's scaling of `module`: alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub fn factor(&self, module: &str) -> f64 {
        self.config.scaling(module)
    }
}

/// A config or tensor-name problem, as a format error naming `path`.
fn peft_err(path: &Path, e: PeftError) -> AdapterError {
    format_err(path, e.to_string())
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
        let (module, half) = split_tensor_name(&key).map_err(|e| peft_err(path, e))?;
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
        if half == LoraHalf::A {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_config_is_a_format_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join(CONFIG_FILE);
        for (text, needle) in [
            ("{\"r\": 8,", "not valid JSON"),
            (r#"{"r": 8}"#, "the key `lora_alpha` is missing"),
            (r#"{"r": 8, "lora_alpha": 8, "use_dora": true}"#, "DoRA"),
        ] {
            std::fs::write(&config, text).expect("write config");
            match PeftAdapter::open(dir.path()) {
                Err(AdapterError::Format { path, reason }) => {
                    assert_eq!(path, config);
                    assert!(reason.contains(needle), "{reason} (expected `{needle}`)");
                }
                other => panic!("{text}: expected a format error, got {other:?}"),
            }
        }
    }
}
