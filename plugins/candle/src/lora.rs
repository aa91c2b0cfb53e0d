//! PEFT LoRA adapters, merged into the base weights at load: W' = W + s · (alpha / r) · B·A
//! (alpha / sqrt(r) with `use_rslora`), where s is the request's scale. candle has no LoRA
//! layers, and a merged model runs at full speed with no per-token cost.

use crate::error::{read_file, Result, ResultExt};
use crate::hf::weights::Weights;
use candle_core::{DType, Device, Tensor};
use llmlocal_plugin_api::PluginError;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// adapter_config.json, the parts that decide the merge.
#[derive(Debug, Clone)]
pub struct AdapterConfig {
    pub rank: usize,
    pub alpha: f64,
    pub target_modules: Option<Vec<String>>,
    pub use_rslora: bool,
    pub rank_pattern: HashMap<String, usize>,
    pub alpha_pattern: HashMap<String, f64>,
    pub model_type: Option<String>,
}

/// One adapter matrix pair for one base weight.
struct Pair {
    a: Option<Tensor>,
    b: Option<Tensor>,
}

/// A PEFT adapter folder (or its adapter_config.json / adapter_model.safetensors).
pub struct Adapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    /// Base weight name (`model.layers.0.self_attn.q_proj.weight`) -> (A, B).
    pairs: BTreeMap<String, Pair>,
}

fn incompatible(dir: &Path, what: String) -> PluginError {
    PluginError::adapter_incompatible(format!("adapter {}: {what}", dir.display()))
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
        let config_path = dir.join("adapter_config.json");
        if !config_path.exists() {
            return Err(PluginError::unsupported_format(format!(
                "{} is not a PEFT adapter folder (no adapter_config.json); the candle backend reads PEFT LoRA adapters",
                path.display()
            )));
        }
        let config = parse_config(&dir, &read_file(&config_path)?)?;
        let weights_path = dir.join("adapter_model.safetensors");
        let bytes = read_file(&weights_path)?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .format_err(|| format!("{} is not a valid safetensors file", weights_path.display()))?;
        let pairs = collect_pairs(&dir, tensors)?;
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
        let rank = pattern_lookup(&self.config.rank_pattern, module).unwrap_or(self.config.rank);
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
        let alpha = pattern_lookup(&self.config.alpha_pattern, module).unwrap_or(self.config.alpha);
        let r = rank as f64;
        Ok(if self.config.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        })
    }
}

/// W + factor · B·A, computed in f32 and stored back in W's dtype.
fn merge_one(base: &Tensor, a: &Tensor, b: &Tensor, factor: f64) -> candle_core::Result<Tensor> {
    let delta = b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)?;
    let merged = (base.to_dtype(DType::F32)? + (delta * factor)?)?;
    merged.to_dtype(base.dtype())
}

/// PEFT's per-module overrides: a key matches a module whose name ends with it.
fn pattern_lookup<T: Copy>(patterns: &HashMap<String, T>, module: &str) -> Option<T> {
    patterns
        .iter()
        .filter(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}")))
        .max_by_key(|(k, _)| k.len())
        .map(|(_, v)| *v)
}

fn parse_config(dir: &Path, bytes: &[u8]) -> Result<AdapterConfig> {
    let json: Value = serde_json::from_slice(bytes)
        .format_err(|| format!("{}/adapter_config.json is not valid JSON", dir.display()))?;
    let missing = |key: &str| {
        PluginError::unsupported_format(format!(
            "{}/adapter_config.json is missing the key `{key}`",
            dir.display()
        ))
    };
    if let Some(kind) = json.get("peft_type").and_then(Value::as_str) {
        if kind != "LORA" {
            return Err(incompatible(dir, format!("peft_type `{kind}` is not LoRA")));
        }
    }
    if json.get("use_dora").and_then(Value::as_bool) == Some(true) {
        return Err(incompatible(
            dir,
            "DoRA adapters (use_dora) are not supported".into(),
        ));
    }
    if json.get("fan_in_fan_out").and_then(Value::as_bool) == Some(true) {
        return Err(incompatible(
            dir,
            "fan_in_fan_out adapters (Conv1D models) do not fit these linear layers".into(),
        ));
    }
    let rank = json
        .get("r")
        .and_then(Value::as_u64)
        .ok_or_else(|| missing("r"))? as usize;
    if rank == 0 {
        return Err(incompatible(dir, "rank r is 0".into()));
    }
    let alpha = json
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| missing("lora_alpha"))?;
    let target_modules = match json.get("target_modules") {
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        ),
        // A regex string: the per-tensor checks below still apply.
        _ => None,
    };
    let map = |key: &str| {
        json.get(key)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    Ok(AdapterConfig {
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
        model_type: json
            .get("model_type")
            .or_else(|| json.get("base_model_type"))
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// Groups `base_model.model.<module>.lora_{A,B}[.<adapter>].weight` tensors by base weight.
fn collect_pairs(dir: &Path, tensors: HashMap<String, Tensor>) -> Result<BTreeMap<String, Pair>> {
    let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
    for (key, tensor) in tensors {
        let name = key.strip_prefix("base_model.model.").unwrap_or(&key);
        let (module, is_a) = if let Some((m, _)) = name.split_once(".lora_A.") {
            (m, true)
        } else if let Some((m, _)) = name.split_once(".lora_B.") {
            (m, false)
        } else {
            return Err(incompatible(dir, format!(
                "tensor `{key}` is not a lora_A/lora_B matrix (embedding LoRA, DoRA and modules_to_save are not supported)"
            )));
        };
        let entry = pairs
            .entry(format!("{module}.weight"))
            .or_insert(Pair { a: None, b: None });
        if is_a {
            entry.a = Some(tensor);
        } else {
            entry.b = Some(tensor);
        }
    }
    Ok(pairs)
}
