//! Cache-first resolution: does the cache hold *every* file a spec needs?
//!
//! A snapshot folder existing is not enough: a pull may have stopped between two files, or a
//! blob may have been deleted. Besides the files the selector picks, a model needs every shard
//! its `*.safetensors.index.json` names, every part of a split GGUF (`-0000k-of-0000N`), and,
//! for a whole-snapshot spec, every file the repository listed on the last pull (the manifest,
//! see `manifest.rs`). Anything missing is named so that offline mode can say what it lacks.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::cache::{CachedFile, HubCache};
use super::manager::{select_files, snapshot_files, ResolvedModel};
use super::remote::Sibling;
use super::spec::{FileSelector, HfSource, ModelSpec};

/// What the cache holds for a spec.
pub(crate) enum CacheState {
    /// Every file is there.
    Complete(Box<ResolvedModel>),
    /// These are not (names inside the repository, or what was wanted when nothing is cached).
    Missing(Vec<String>),
}

impl CacheState {
    pub fn is_complete(&self) -> bool {
        matches!(self, CacheState::Complete(_))
    }
}

/// Budget and context length for picking a quantization among cached files.
pub(crate) struct PickLimits {
    pub budget: Option<u64>,
    pub context_length: u32,
}

/// Checks the cache for everything `spec` needs.
pub(crate) fn cache_state(
    cache: &HubCache,
    spec: &ModelSpec,
    hf: &HfSource,
    limits: &PickLimits,
) -> CacheState {
    let Some((commit, cached)) = cache.snapshot_files(&hf.repo, &hf.revision) else {
        return CacheState::Missing(vec![wanted(&hf.selector)]);
    };
    let Some((files, picked)) = selection(cache, hf, &commit, &cached, limits) else {
        return CacheState::Missing(vec![wanted(&hf.selector)]);
    };
    let expected = with_dependents(&files, &cached, &hf.selector);
    let missing: Vec<String> = expected
        .iter()
        .filter(|f| !cached.iter().any(|c| &c.name == *f))
        .cloned()
        .collect();
    if !missing.is_empty() {
        tracing::info!(repo = %hf.repo, ?missing, "cached snapshot is incomplete");
        return CacheState::Missing(missing);
    }
    let paths: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| cached.iter().find(|c| &c.name == f).map(|c| c.path.clone()))
        .collect();
    CacheState::Complete(Box::new(ResolvedModel::from_hub(
        cache, spec, hf, commit, &files, paths, picked,
    )))
}

/// The files the selector picks: a whole snapshot from the recorded file list when there is
/// one (so a file never downloaded is noticed), a quantization among the cached files.
fn selection(
    cache: &HubCache,
    hf: &HfSource,
    commit: &str,
    cached: &[CachedFile],
    limits: &PickLimits,
) -> Option<(Vec<String>, Option<super::quant::PickedQuant>)> {
    let present: Vec<Sibling> = cached
        .iter()
        .map(|f| Sibling {
            rfilename: f.name.clone(),
            size: Some(f.size),
            lfs: None,
        })
        .collect();
    let listed = match &hf.selector {
        FileSelector::Snapshot | FileSelector::Auto => cache.read_manifest(&hf.repo, commit),
        _ => None,
    };
    if let (FileSelector::Snapshot, Some(listed)) = (&hf.selector, &listed) {
        let names: Vec<&str> = listed.iter().map(|s| s.rfilename.as_str()).collect();
        return snapshot_files(&hf.repo, &hf.revision, &names)
            .ok()
            .map(|f| (f, None));
    }
    let names: Vec<&str> = present.iter().map(|s| s.rfilename.as_str()).collect();
    let picked = select_files(
        &hf.repo,
        &hf.revision,
        &hf.selector,
        &present,
        &names,
        limits.budget,
        limits.context_length,
    )
    .ok()?;
    // Auto on a repo without GGUF files means the safetensors snapshot: check it against the
    // recorded list too.
    match (&hf.selector, listed, picked.1.is_none()) {
        (FileSelector::Auto, Some(listed), true)
            if !picked.0.iter().any(|f| f.ends_with(".gguf")) =>
        {
            let names: Vec<&str> = listed.iter().map(|s| s.rfilename.as_str()).collect();
            snapshot_files(&hf.repo, &hf.revision, &names)
                .ok()
                .map(|f| (f, None))
        }
        _ => Some(picked),
    }
}

/// `files` plus what they need: shards named by a cached safetensors index, the other parts
/// of a split GGUF. A single file asked for by name needs nothing else.
fn with_dependents(
    files: &[String],
    cached: &[CachedFile],
    selector: &FileSelector,
) -> Vec<String> {
    let mut out: Vec<String> = files.to_vec();
    if matches!(selector, FileSelector::File(_)) {
        return out;
    }
    let mut seen: BTreeSet<String> = out.iter().cloned().collect();
    for file in files {
        let extra = if file.ends_with(".safetensors.index.json") {
            cached
                .iter()
                .find(|c| &c.name == file)
                .map(|c| index_shards(file, c))
                .unwrap_or_default()
        } else {
            split_parts(file)
        };
        for name in extra {
            if seen.insert(name.clone()) {
                out.push(name);
            }
        }
    }
    out
}

/// The shard files a `*.safetensors.index.json` maps tensors to (paths inside the repo).
fn index_shards(index_name: &str, index: &CachedFile) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let parsed = std::fs::read(&index.path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Index>(&b).ok());
    let Some(parsed) = parsed else {
        tracing::warn!(
            file = index_name,
            "cannot read the safetensors index; not checking its shards"
        );
        return Vec::new();
    };
    let dir = index_name
        .rsplit_once('/')
        .map(|(d, _)| format!("{d}/"))
        .unwrap_or_default();
    let shards: BTreeSet<String> = parsed
        .weight_map
        .into_values()
        .filter(|s| !s.contains("..") && !s.starts_with('/'))
        .map(|s| format!("{dir}{s}"))
        .collect();
    shards.into_iter().collect()
}

/// `m-00002-of-00003.gguf` -> every part `m-0000k-of-00003.gguf` (empty when not split).
pub(crate) fn split_parts(file: &str) -> Vec<String> {
    let Some(stem) = file.strip_suffix(".gguf") else {
        return Vec::new();
    };
    let parts: Vec<&str> = stem.rsplitn(4, '-').collect();
    let [total, of, index, base] = parts.as_slice() else {
        return Vec::new();
    };
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if *of != "of" || !digits(total) || !digits(index) {
        return Vec::new();
    }
    let Ok(n) = total.parse::<u32>() else {
        return Vec::new();
    };
    let width = index.len();
    (1..=n.min(10_000))
        .map(|k| format!("{base}-{k:0width$}-of-{total}.gguf"))
        .collect()
}

/// What a selector wants, in words, when the cache has nothing to look at.
pub(crate) fn wanted(selector: &FileSelector) -> String {
    match selector {
        FileSelector::File(f) => f.clone(),
        FileSelector::Quant(q) => format!("a {q} .gguf file"),
        FileSelector::Auto => "a .gguf or .safetensors model file".into(),
        FileSelector::Snapshot => "the safetensors snapshot".into(),
    }
}
