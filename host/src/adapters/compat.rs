//! The compatibility check that runs before any backend sees an adapter: architecture,
//! hidden sizes, layer count, target modules and rank. Every mismatch is collected so the
//! error names all that differs.

use super::base::{BaseModel, Module};
use super::error::{AdapterError, Result};
use super::gguf::GgufInfo;
use super::peft::{PeftAdapter, PeftPair};

/// Reasons beyond this many are summarized (one wrong hidden size repeats per layer).
const MAX_REASONS: usize = 8;

/// Architectures whose block layout matches [`Module`]'s names.
const SUPPORTED: [&str; 3] = ["llama", "qwen2", "qwen3"];

fn finish(adapter: &str, base: &BaseModel, reasons: Vec<String>) -> Result<()> {
    if reasons.is_empty() {
        return Ok(());
    }
    // Same text from several layers once; one reason of each kind (`hidden size:`,
    // `layer count:`, ...) before the rest, so a long list still names every kind.
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<String> = reasons
        .into_iter()
        .filter(|r| seen.insert(r.clone()))
        .collect();
    let kind = |r: &str| r.split(':').next().unwrap_or_default().to_string();
    let mut kinds = std::collections::HashSet::new();
    let (mut shown, rest): (Vec<String>, Vec<String>) =
        unique.into_iter().partition(|r| kinds.insert(kind(r)));
    shown.extend(rest);
    if shown.len() > MAX_REASONS {
        let more = shown.len() - MAX_REASONS;
        shown.truncate(MAX_REASONS);
        shown.push(format!("and {more} more"));
    }
    Err(AdapterError::Incompatible {
        adapter: adapter.to_string(),
        base: base.name.clone(),
        reasons: shown,
    })
}

fn check_arch(base: &BaseModel, reasons: &mut Vec<String>) {
    if !SUPPORTED.contains(&base.architecture.as_str()) {
        reasons.push(format!(
            "architecture: the base model is `{}`; LoRA adapters are supported for {}",
            base.architecture,
            SUPPORTED.join(", ")
        ));
    }
}

/// One adapted module as found in the file.
struct Found<'a> {
    what: &'a str,
    layer: usize,
    module: Module,
    /// lora_A `[r, in]` and lora_B `[out, r]`.
    a: (usize, usize),
    b: (usize, usize),
    /// The rank the config declares (PEFT only).
    rank: Option<usize>,
}

/// Layer index, and the `[out, in]` of B·A against the base weight.
fn check_shapes(found: &Found<'_>, base: &BaseModel, reasons: &mut Vec<String>) {
    let Found {
        what,
        layer,
        module,
        a,
        b,
        rank,
    } = *found;
    if layer >= base.num_layers {
        reasons.push(format!(
            "layer count: `{what}` is in layer {layer}, the base model has {} layers",
            base.num_layers
        ));
        return;
    }
    let (out, inp) = base.shape(module);
    let name = module.short_name();
    if a.1 != inp {
        reasons.push(format!(
            "hidden size: {name} lora_A takes {} inputs, the base {name} takes {inp}",
            a.1
        ));
    }
    if b.0 != out {
        reasons.push(format!(
            "hidden size: {name} lora_B gives {} outputs, the base {name} gives {out}",
            b.0
        ));
    }
    if a.0 != b.1 {
        reasons.push(format!(
            "rank: `{what}` has lora_A rank {} but lora_B rank {}",
            a.0, b.1
        ));
    }
    if let Some(r) = rank.filter(|r| *r != a.0) {
        reasons.push(format!(
            "rank: adapter_config.json says r = {r}, `{what}` lora_A has rank {}",
            a.0
        ));
    }
}

fn check_pair(adapter: &PeftAdapter, pair: &PeftPair, base: &BaseModel, reasons: &mut Vec<String>) {
    let Some((layer, module)) = Module::parse_hf(&pair.module) else {
        reasons.push(format!(
            "target modules: `{}` is not a linear layer of a {} block",
            pair.module, base.architecture
        ));
        return;
    };
    let found = Found {
        what: &pair.module,
        layer,
        module,
        a: (pair.a.rows, pair.a.cols),
        b: (pair.b.rows, pair.b.cols),
        rank: Some(adapter.rank_of(&pair.module)),
    };
    check_shapes(&found, base, reasons);
}

/// Checks a PEFT adapter against `base`.
pub fn check_peft(adapter: &PeftAdapter, base: &BaseModel) -> Result<()> {
    let mut reasons = Vec::new();
    check_arch(base, &mut reasons);
    for target in adapter.config.target_modules.iter().flatten() {
        if Module::from_short(target).is_none() {
            reasons.push(format!(
                "target modules: `{target}` is not a linear layer of a {} block (supported: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)",
                base.architecture
            ));
        }
    }
    for pair in &adapter.pairs {
        check_pair(adapter, pair, base, &mut reasons);
    }
    finish(&adapter.dir.display().to_string(), base, reasons)
}

/// Checks a GGUF LoRA file's header against `base`.
pub fn check_gguf(label: &str, info: &GgufInfo, base: &BaseModel) -> Result<()> {
    let mut reasons = Vec::new();
    if info.str("general.type") != Some("adapter") || info.str("adapter.type") != Some("lora") {
        reasons.push("format: the GGUF file is not a LoRA adapter (general.type = adapter, adapter.type = lora)".into());
    }
    match info.str("general.architecture") {
        Some(arch) if arch == base.architecture => {}
        Some(arch) => reasons.push(format!(
            "architecture: the adapter is for `{arch}`, the base model is `{}`",
            base.architecture
        )),
        None => reasons.push("architecture: the adapter names none (general.architecture)".into()),
    }
    let mut found = false;
    for (name, shape) in &info.tensors {
        let Some((layer, module, true)) = Module::parse_gguf(name) else {
            if Module::parse_gguf(name).is_none() {
                reasons.push(format!(
                    "target modules: `{name}` is not a LoRA tensor of a linear layer"
                ));
            }
            continue;
        };
        found = true;
        let b_name = format!("{}.lora_b", module.gguf_name(layer));
        let Some(b) = info.tensors.get(&b_name) else {
            reasons.push(format!("format: `{name}` has no matching `{b_name}`"));
            continue;
        };
        let (Some(a), Some(b)) = (matrix(shape), matrix(b)) else {
            reasons.push(format!("format: `{name}` / `{b_name}` are not matrices"));
            continue;
        };
        let found = Found {
            what: name,
            layer,
            module,
            a,
            b,
            rank: None,
        };
        check_shapes(&found, base, &mut reasons);
    }
    if !found {
        reasons.push("format: the adapter holds no lora_a tensors".into());
    }
    finish(label, base, reasons)
}

fn matrix(shape: &[usize]) -> Option<(usize, usize)> {
    match shape {
        [r, c] => Some((*r, *c)),
        _ => None,
    }
}
