//! PEFT LoRA adapters, merged into the base weights at load: W' = W + s · (alpha / r) · B·A
//! (alpha / sqrt(r) with `use_rslora`), where s is the request's scale. candle has no LoRA
//! layers, and a merged model runs at full speed with no per-token cost.

use crate::error::{read_file, Result, ResultExt};
use crate::hf::weights::Weights;
use candle_core::{DType, Device, Tensor};
use llmlocal_formats::peft::{split_tensor_name, LoraHalf, PeftConfig, PeftError};
use llmlocal_formats::peft::{CONFIG_FILE, WEIGHTS_FILE};
use llmlocal_plugin_api::PluginError;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One adapter matrix pair for one base weight.
struct Pair {
    a: Option<Tensor>,
    b: Option<Tensor>,
}

/// A PEFT adapter folder (or its adapter_config.json / adapter_model.safetensors).
pub struct Adapter {
    pub dir: PathBuf,
    pub config: PeftConfig,
    /// Base weight name (`model.layers.0.self_attn.q_proj.weight`) -> (A, B).
    pairs: BTreeMap<String, Pair>,
}

fn incompatible(dir: &Path, what: String) -> PluginError {
    PluginError::adapter_incompatible(format!("adapter {}: {what}", dir.display()))
}

/// A config or tensor-name problem naming `file`: a feature the merge does not do is
/// `AdapterIncompatible`, a malformed file `UnsupportedFormat`.
fn peft_error(file: &Path, e: PeftError) -> PluginError {
    let message = format!("adapter {}: {e}", file.display());
    if e.is_unsupported_feature() {
        PluginError::adapter_incompatible(message)
    } else {
        PluginError::unsupported_format(message)
    }
}

impl Adapter {
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(PluginError::not_found(format!(
                "adapter {} does not exist",
                path.display()
            )));
        }
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        let config_path = dir.join(CONFIG_FILE);
        if !config_path.exists() {
            return Err(PluginError::unsupported_format(format!(
                "{} is not a PEFT adapter folder (no adapter_config.json); the candle backend reads PEFT LoRA adapters",
                path.display()
            )));
        }
        let config = PeftConfig::parse(&read_file(&config_path)?)
            .map_err(|e| peft_error(&config_path, e))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let bytes = read_file(&weights_path)?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .format_err(|| format!("{} is not a valid safetensors file", weights_path.display()))?;
        let pairs = collect_pairs(&weights_path, tensors)?;
        if pairs.is_empty() {
            return Err(incompatible(
                &dir,
                "it holds no lora_A/lora_B tensors".into(),
            ));
        }
        Ok(Adapter { dir, config, pairs })
    }

    /// Checks the adapter against the base model, then merges it into `weights`.
    pub fn merge_into(&self, weights: &mut Weights, arch: &str, scale: f32) -> Result<()> {
        self.check_model_type(arch)?;
        self.check_targets(weights)?;
        let mut merged = Vec::new();
        for (name, pair) in &self.pairs {
            let (a, b) = match (&pair.a, &pair.b) {
                (Some(a), Some(b)) => (a, b),
                _ => {
                    return Err(incompatible(
                        &self.dir,
                        format!("`{name}` has only one of lora_A / lora_B"),
                    ))
                }
            };
            let base = weights.get(name).ok_or_else(|| {
                incompatible(
                    &self.dir,
                    format!("it targets `{name}`, which the {arch} model does not have"),
                )
            })?;
            let factor = self.factor(name, a, b, base)? * f64::from(scale);
            merged.push((
                name.clone(),
                merge_one(base, a, b, factor)
                    .internal_err(|| format!("merging the adapter into `{name}`"))?,
            ));
        }
        for (name, tensor) in merged {
            weights.insert(name, tensor);
        }
        Ok(())
    }

    fn check_model_type(&self, arch: &str) -> Result<()> {
        match &self.config.model_type {
            Some(t) if t != arch => Err(incompatible(
                &self.dir,
                format!("it was trained for a `{t}` model, the base model is `{arch}`"),
            )),
            _ => Ok(()),
        }
    }

    /// Every `target_modules` entry must name a linear layer the base model has.
    fn check_targets(&self, weights: &Weights) -> Result<()> {
        let Some(targets) = &self.config.target_modules else {
            return Ok(());
        };
        for target in targets {
            let suffix = format!("{target}.weight");
            let found = weights
                .keys()
                .any(|k| k == &suffix || k.ends_with(&format!(".{suffix}")));
            if !found {
                return Err(incompatible(
                    &self.dir,
                    format!("target module `{target}` does not exist in the base model"),
                ));
            }
        }
        Ok(())
    }

    /// (alpha / r) for one weight, after checking A [r, in] and B [out, r] against W [out, in].
    fn factor(&self, name: &str, a: &Tensor, b: &Tensor, base: &Tensor) -> Result<f64> {
        let dims = |t: &Tensor| t.dims().to_vec();
        let (ad, bd, wd) = (dims(a), dims(b), dims(base));
        if ad.len() != 2 || bd.len() != 2 || wd.len() != 2 {
            return Err(incompatible(&self.dir, format!("`{name}`: lora_A {ad:?}, lora_B {bd:?} and the base weight {wd:?} must all be matrices")));
        }
        let module = name.trim_end_matches(".weight");
        let rank = self.config.rank_of(module);
        if ad[0] != rank || bd[1] != rank {
            return Err(incompatible(&self.dir, format!("`{name}`: rank r = {rank} in adapter_config.json, but lora_A is {ad:?} and lora_B is {bd:?}")));
        }
        if ad[1] != wd[1] {
            return Err(incompatible(
                &self.dir,
                format!(
                    "`{name}`: lora_A takes {} inputs, the base weight {wd:?} takes {}",
                    ad[1], wd[1]
                ),
            ));
        }
        if bd[0] != wd[0] {
            return Err(incompatible(
                &self.dir,
                format!(
                    "`{name}`: lora_B gives {} outputs, the base weight {wd:?} gives {}",
                    bd[0], wd[0]
                ),
            ));
        }
        Ok(self.config.scaling(module))
    }
}

/// W + factor · B·A, computed in f32 and stored back in W's dtype.
fn merge_one(base: &Tensor, a: &Tensor, b: &Tensor, factor: f64) -> candle_core::Result<Tensor> {
    let delta = b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)?;
    let merged = (base.to_dtype(DType::F32)? + (delta * factor)?)?;
    merged.to_dtype(base.dtype())
}

/// Groups `base_model.model.<module>.lora_{A,B}[.<adapter>].weight` tensors by base weight.
fn collect_pairs(file: &Path, tensors: HashMap<String, Tensor>) -> Result<BTreeMap<String, Pair>> {
    let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
    for (key, tensor) in tensors {
        let (module, half) = split_tensor_name(&key).map_err(|e| peft_error(file, e))?;
        let entry = pairs
            .entry(format!("{module}.weight"))
            .or_insert(Pair { a: None, b: None });
        if half == LoraHalf::A {
            entry.a = Some(tensor);
        } else {
            entry.b = Some(tensor);
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlocal_plugin_api::ErrorKind;

    /// Opens a folder holding only `config` as adapter_config.json (the config is read first).
    fn open_with_config(config: &str) -> PluginError {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(CONFIG_FILE), config).expect("write config");
        match Adapter::open(dir.path()) {
            Ok(_) => panic!("the config {config} should be refused"),
            Err(e) => {
                assert!(e.message.contains(CONFIG_FILE), "names the file: {e}");
                e
            }
        }
    }

    #[test]
    fn a_malformed_config_is_a_format_error_naming_the_file() {
        for (config, needle) in [
            ("{\"r\": 8,", "not valid JSON"),
            (r#"{"lora_alpha": 16}"#, "the key `r` is missing"),
            (
                r#"{"r": "8", "lora_alpha": 16}"#,
                "`r` must be a positive integer",
            ),
        ] {
            let e = open_with_config(config);
            assert_eq!(e.kind, ErrorKind::UnsupportedFormat, "{e}");
            assert!(e.message.contains(needle), "{e} (expected `{needle}`)");
        }
    }

    #[test]
    fn an_unsupported_lora_variant_is_incompatible() {
        for (config, needle) in [
            (r#"{"r": 8, "lora_alpha": 16, "use_dora": true}"#, "DoRA"),
            (r#"{"r": 8, "lora_alpha": 16, "peft_type": "IA3"}"#, "IA3"),
            (r#"{"r": 0, "lora_alpha": 16}"#, "rank r is 0"),
            (
                r#"{"r": 8, "lora_alpha": 16, "rank_pattern": {".*q_proj": 4}}"#,
                "regular expression",
            ),
        ] {
            let e = open_with_config(config);
            assert_eq!(e.kind, ErrorKind::AdapterIncompatible, "{e}");
            assert!(e.message.contains(needle), "{e} (expected `{needle}`)");
        }
    }
}
