//! `adapter_config.json`: the keys that decide the math and the compatibility.

use std::collections::HashMap;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::pattern::{self, Patterns};
use super::PeftError;

/// The parts of a PEFT LoRA `adapter_config.json` the engine uses.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftConfig {
    /// `r`: the rank of every module `rank_pattern` does not name.
    pub rank: usize,
    /// `lora_alpha`: the alpha of every module `alpha_pattern` does not name.
    pub alpha: f64,
    /// `None` when the config gives a regex string (or nothing) instead of a list.
    pub target_modules: Option<Vec<String>>,
    /// rsLoRA: scale by alpha / sqrt(r) instead of alpha / r.
    pub use_rslora: bool,
    /// Per-module ranks, in file order (PEFT uses the first key that matches).
    pub rank_pattern: Patterns<usize>,
    /// Per-module alphas, in file order.
    pub alpha_pattern: Patterns<f64>,
    /// `base_model_name_or_path`.
    pub base_model: Option<String>,
    /// `model_type` (or `base_model_type`): the architecture the adapter was trained for, when
    /// the file says.
    pub model_type: Option<String>,
}

impl PeftConfig {
    /// Parses and checks `adapter_config.json`; refuses what the engine cannot apply exactly
    /// (other PEFT methods, DoRA, Conv1D fan-in-fan-out layers, regex patterns).
    pub fn parse(bytes: &[u8]) -> Result<Self, PeftError> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(PeftError::Json)?;
        raw.check_supported()?;
        let rank = raw.rank()?;
        Ok(PeftConfig {
            rank,
            alpha: raw
                .get("lora_alpha")
                .map(|v| number("lora_alpha", v))
                .ok_or(PeftError::Missing("lora_alpha"))??,
            target_modules: raw.target_modules()?,
            use_rslora: raw.flag("use_rslora")?,
            rank_pattern: pattern::read("rank_pattern", &raw.rank_pattern, positive)?,
            alpha_pattern: pattern::read("alpha_pattern", &raw.alpha_pattern, number)?,
            base_model: raw.string("base_model_name_or_path")?,
            model_type: match raw.string("model_type")? {
                Some(t) => Some(t),
                None => raw.string("base_model_type")?,
            },
        })
    }

    /// The rank of `module` (an HF module path such as `model.layers.0.self_attn.q_proj`).
    pub fn rank_of(&self, module: &str) -> usize {
        self.rank_pattern.lookup(module).unwrap_or(self.rank)
    }

    /// The alpha of `module`.
    pub fn alpha_of(&self, module: &str) -> f64 {
        self.alpha_pattern.lookup(module).unwrap_or(self.alpha)
    }

    /// PEFT's scaling of `module`: alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub fn scaling(&self, module: &str) -> f64 {
        let r = self.rank_of(module) as f64;
        let alpha = self.alpha_of(module);
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }
}

/// The file as read: every key as a [`Value`], except the two pattern tables, which keep
/// their file order (a `serde_json::Map` may sort its keys).
#[derive(Default)]
struct RawConfig {
    fields: Map<String, Value>,
    rank_pattern: Vec<(String, Value)>,
    alpha_pattern: Vec<(String, Value)>,
}

impl RawConfig {
    /// The value of `key`; `null` counts as absent, as PEFT writes unset options as `null`.
    fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key).filter(|v| !v.is_null())
    }

    fn flag(&self, key: &str) -> Result<bool, PeftError> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(bad_type(key, "true or false", other)),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, PeftError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad_type(key, "a string", other)),
        }
    }

    fn check_supported(&self) -> Result<(), PeftError> {
        if let Some(kind) = self.string("peft_type")? {
            if kind != "LORA" {
                return Err(PeftError::NotLora(kind));
            }
        }
        if self.flag("use_dora")? {
            return Err(PeftError::Unsupported("DoRA adapters (use_dora)"));
        }
        if self.flag("fan_in_fan_out")? {
            return Err(PeftError::Unsupported(
                "fan_in_fan_out adapters (Conv1D models such as GPT-2)",
            ));
        }
        Ok(())
    }

    fn rank(&self) -> Result<usize, PeftError> {
        let value = self.get("r").ok_or(PeftError::Missing("r"))?;
        match value.as_u64() {
            Some(0) => Err(PeftError::ZeroRank),
            Some(r) => usize::try_from(r).map_err(|_| bad_type("r", "a rank", value)),
            None => Err(bad_type("r", "a positive integer", value)),
        }
    }

    fn target_modules(&self) -> Result<Option<Vec<String>>, PeftError> {
        match self.get("target_modules") {
            // A regex string (PEFT full-matches it): there is no list to check.
            None | Some(Value::String(_)) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(bad_type("target_modules", "a list of module names", other)),
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(other) => Err(bad_type(
                "target_modules",
                "a list of module names or a regex string",
                other,
            )),
        }
    }
}

fn number(key: &str, value: &Value) -> Result<f64, PeftError> {
    value
        .as_f64()
        .ok_or_else(|| bad_type(key, "a number", value))
}

fn positive(key: &str, value: &Value) -> Result<usize, PeftError> {
    match value.as_u64().and_then(|r| usize::try_from(r).ok()) {
        Some(r) if r > 0 => Ok(r),
        _ => Err(bad_type(key, "a positive integer", value)),
    }
}

pub(super) fn bad_type(key: &str, expected: &'static str, found: &Value) -> PeftError {
    let mut shown = found.to_string();
    if shown.len() > 40 {
        let cut = (0..=40)
            .rev()
            .find(|i| shown.is_char_boundary(*i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push_str("...");
    }
    PeftError::BadType {
        key: key.to_string(),
        expected,
        found: shown,
    }
}

impl<'de> Deserialize<'de> for RawConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawConfig;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawConfig, A::Error> {
        let mut raw = RawConfig::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "rank_pattern" => raw.rank_pattern = map.next_value::<Ordered>()?.0,
                "alpha_pattern" => raw.alpha_pattern = map.next_value::<Ordered>()?.0,
                _ => {
                    raw.fields.insert(key, map.next_value()?);
                }
            }
        }
        Ok(raw)
    }
}

/// A JSON object's entries in file order (`null` reads as empty). A repeated key keeps its
/// first place and its last value, as Python's `json` does.
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OrderedVisitor)
    }
}

struct OrderedVisitor;

impl<'de> Visitor<'de> for OrderedVisitor {
    type Value = Ordered;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object mapping module names to numbers")
    }

    fn visit_unit<E>(self) -> Result<Ordered, E> {
        Ok(Ordered(Vec::new()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
        let mut entries: Vec<(String, Value)> = Vec::new();
        // Where each key sits in `entries`: a linear search per key made a config with many
        // keys take quadratic time (40,000 keys, 430 KB: 9 s).
        let mut index: HashMap<String, usize> = HashMap::new();
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            match index.get(&key) {
                Some(&i) => entries[i].1 = value,
                None => {
                    index.insert(key.clone(), entries.len());
                    entries.push((key, value));
                }
            }
        }
        Ok(Ordered(entries))
    }
}
