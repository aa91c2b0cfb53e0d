//! Picking a GGUF quantization that fits this machine when the spec names none.
//!
//! Rule: among the repository's `.gguf` files (split files `-00001-of-0000N` grouped, `mmproj`
//! projectors left out), take the first of [`QUANT_PREFERENCE`] whose size plus a KV-cache
//! allowance fits the memory budget; if none of those is present and fits, the largest other
//! GGUF (F16, F32, ...) that fits.

use std::collections::BTreeMap;

use super::remote::Sibling;

/// The usual quantizations, best quality first.
pub const QUANT_PREFERENCE: &[&str] = &[
    "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_0", "IQ4_XS", "IQ4_NL",
    "Q3_K_L", "Q3_K_M", "Q3_K_S", "IQ3_M", "IQ3_XS", "Q2_K", "IQ2_M",
];

/// Tags that are recognised in file names but are not in the preference list.
const OTHER_TAGS: &[&str] = &[
    "BF16", "F16", "F32", "Q4_1", "Q5_1", "Q2_K_S", "IQ3_XXS", "IQ2_XS", "IQ2_XXS", "IQ1_M",
    "IQ1_S", "Q4_0_4_4",
];

/// A GGUF model in a repository: one file, or the parts of a split file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantCandidate {
    /// The quantization tag found in the file name (upper case), if any.
    pub quant: Option<String>,
    /// Files, in part order.
    pub files: Vec<String>,
    pub size: u64,
}

/// The quantization chosen and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickedQuant {
    pub quant: Option<String>,
    pub files: Vec<String>,
    pub size: u64,
    /// The memory budget it was checked against (None: unknown, not checked).
    pub budget: Option<u64>,
    /// Size + KV-cache allowance that had to fit.
    pub needed: u64,
}

/// The quantization tag in a file name (`Llama-3-8B.Q4_K_M.gguf` -> `Q4_K_M`).
pub fn quant_of(file: &str) -> Option<String> {
    let name = file.rsplit('/').next().unwrap_or(file).to_ascii_uppercase();
    let stem = name.strip_suffix(".GGUF").unwrap_or(&name);
    let is_sep = |c: Option<char>| c.is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_');
    QUANT_PREFERENCE
        .iter()
        .chain(OTHER_TAGS)
        .filter(|tag| {
            stem.match_indices(**tag).any(|(i, _)| {
                is_sep(stem[..i].chars().next_back())
                    && is_sep(stem[i + tag.len()..].chars().next())
            })
        })
        .max_by_key(|tag| tag.len())
        .map(|t| t.to_string())
}

/// `name-00001-of-00003.gguf` -> (`name.gguf`, 1).
fn split_part(file: &str) -> (String, u32) {
    let Some(stem) = file.strip_suffix(".gguf") else {
        return (file.into(), 0);
    };
    let parts: Vec<&str> = stem.rsplitn(4, '-').collect();
    if parts.len() == 4 && parts[1] == "of" && parts[0].chars().all(|c| c.is_ascii_digit()) {
        if let Ok(n) = parts[2].parse::<u32>() {
            return (format!("{}.gguf", parts[3]), n);
        }
    }
    (file.into(), 0)
}

/// The GGUF models among a repository's files.
pub fn candidates(siblings: &[Sibling]) -> Vec<QuantCandidate> {
    let mut groups: BTreeMap<String, Vec<(u32, &Sibling)>> = BTreeMap::new();
    for s in siblings {
        let lower = s.rfilename.to_ascii_lowercase();
        if !lower.ends_with(".gguf") || lower.contains("mmproj") {
            continue;
        }
        let (base, part) = split_part(&s.rfilename);
        groups.entry(base).or_default().push((part, s));
    }
    groups
        .into_iter()
        .map(|(base, mut parts)| {
            parts.sort_by_key(|(n, _)| *n);
            QuantCandidate {
                quant: quant_of(&base),
                files: parts.iter().map(|(_, s)| s.rfilename.clone()).collect(),
                size: parts.iter().map(|(_, s)| sibling_size(s)).sum(),
            }
        })
        .collect()
}

pub(crate) fn sibling_size(s: &Sibling) -> u64 {
    s.lfs.as_ref().map(|l| l.size).or(s.size).unwrap_or(0)
}

/// Memory to leave for the KV cache and compute buffers: 256 MiB plus, per token of context,
/// about size/50 000 bytes (a heuristic: ~80 KiB/token for a 4 GB 7B model, in line with its
/// f16 KV cache under grouped-query attention).
pub fn kv_allowance(model_size: u64, context_length: u32) -> u64 {
    COMPUTE_ALLOWANCE + u64::from(context_length) * (model_size / 50_000)
}

/// Compute buffers and other per-context memory besides the KV cache.
pub const COMPUTE_ALLOWANCE: u64 = 256 << 20;

/// Picks per the module rule; `Err` says why nothing fits.
pub fn pick(
    cands: &[QuantCandidate],
    budget: Option<u64>,
    context_length: u32,
) -> Result<PickedQuant, String> {
    if cands.is_empty() {
        return Err("the repository has no .gguf files".into());
    }
    let needed = |c: &QuantCandidate| c.size + kv_allowance(c.size, context_length);
    let fits = |c: &&QuantCandidate| budget.is_none_or(|b| needed(c) <= b);
    let preferred = QUANT_PREFERENCE.iter().find_map(|tag| {
        cands
            .iter()
            .filter(|c| c.quant.as_deref() == Some(tag))
            .find(fits)
    });
    let chosen = preferred.or_else(|| {
        cands
            .iter()
            .filter(|c| {
                c.quant
                    .as_deref()
                    .is_none_or(|q| !QUANT_PREFERENCE.contains(&q))
            })
            .filter(fits)
            .max_by_key(|c| c.size)
    });
    match chosen {
        Some(c) => Ok(PickedQuant {
            quant: c.quant.clone(),
            files: c.files.clone(),
            size: c.size,
            budget,
            needed: needed(c),
        }),
        None => {
            let smallest = cands
                .iter()
                .min_by_key(|c| c.size)
                .map(|c| (c.files[0].clone(), needed(c)));
            let (file, need) = smallest.unwrap_or_default();
            Err(format!(
                "the smallest, `{file}`, needs about {} MiB with a {context_length}-token context, {} MiB are available",
                need >> 20,
                budget.unwrap_or(0) >> 20
            ))
        }
    }
}

/// Memory available for a model now: `MemAvailable` from /proc/meminfo (Linux); None elsewhere.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}
