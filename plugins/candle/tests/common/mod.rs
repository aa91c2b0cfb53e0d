//! Shared helpers for the candle backend's tests: finding the shared test models, loading
//! through the author traits, greedy runs.
#![allow(dead_code)]

use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use llmlocal_backend_candle::CandleBackend;
use llmlocal_plugin_api::{
    abi_stable::std_types::RString, Backend, FinishReason, GenerateRequest, Generation,
    LoadRequest, Model, PluginError, Step,
};
use std::path::{Path, PathBuf};

/// The shared models folder when it exists (see `llmlocal_fixtures::shared`: a missing one
/// fails where `$LLMLOCAL_SHARED_MODELS` is set, as in CI).
pub fn shared_models() -> Option<PathBuf> {
    llmlocal_fixtures::shared::model("")
}

/// The stories260K folder, or `None` after printing why the test skips (outside CI).
pub fn stories() -> Option<PathBuf> {
    llmlocal_fixtures::shared::stories260k()
}

pub fn load_paths(paths: &[&Path]) -> Result<Box<dyn Model>, PluginError> {
    let mut request = LoadRequest::new(paths[0].to_string_lossy());
    request.model_paths = paths
        .iter()
        .map(|p| RString::from(p.to_string_lossy().as_ref()))
        .collect();
    request.device = RString::from("cpu");
    CandleBackend::new()?.load(request)
}

pub fn load(path: &Path) -> Box<dyn Model> {
    load_paths(&[path]).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// Pulls a generation to its end: (ids, streamed text with the end's trailing text, reason).
pub fn drain(mut generation: Box<dyn Generation>) -> (Vec<u32>, String, FinishReason) {
    let mut ids = Vec::new();
    let mut text = String::new();
    loop {
        match generation.next().expect("generation step") {
            Step::Token(t) => {
                ids.push(t.id);
                text.push_str(t.text.as_str());
            }
            Step::Finished(end) => {
                text.push_str(end.text.as_str());
                return (ids, text, end.reason);
            }
        }
    }
}

pub fn greedy(
    model: &dyn Model,
    prompt: &[u32],
    max_tokens: u32,
) -> (Vec<u32>, String, FinishReason) {
    let generation = model
        .generate(GenerateRequest::greedy(prompt.to_vec(), max_tokens))
        .expect("start generation");
    drain(generation)
}

/// Copies the files of `src` into `dst` (flat).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dst.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// Rewrites config.json in `dir` through `edit`.
pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(json.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
}

/// Rewrites a GGUF with edited metadata.
pub fn rewrite_gguf(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut Vec<(String, gguf_file::Value)>),
) {
    rewrite_gguf_as(src, dst, None, edit, Vec::new());
}

/// Rewrites a GGUF: every 2-D tensor stored as `matrices` (as they are when `None`), 1-D ones
/// as they are (as llama.cpp's converter keeps norms in F32), metadata edited by `edit`,
/// `extra` tensors added.
pub fn rewrite_gguf_as(
    src: &Path,
    dst: &Path,
    matrices: Option<GgmlDType>,
    edit: impl FnOnce(&mut Vec<(String, gguf_file::Value)>),
    extra: Vec<(String, QTensor)>,
) {
    let mut file = std::fs::File::open(src).unwrap();
    let content = Content::read(&mut file).unwrap();
    let mut metadata: Vec<(String, gguf_file::Value)> =
        content.metadata.clone().into_iter().collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut metadata);
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = names
        .iter()
        .map(|n| {
            let t = content.tensor(&mut file, n, &Device::Cpu).unwrap();
            let t = match matrices {
                Some(dtype) if t.shape().rank() == 2 => {
                    QTensor::quantize(&t.dequantize(&Device::Cpu).unwrap(), dtype).unwrap()
                }
                _ => t,
            };
            ((*n).clone(), t)
        })
        .collect();
    tensors.extend(extra);
    let md: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::fs::File::create(dst).unwrap();
    gguf_file::write(&mut out, &md, &ts).unwrap();
}

/// The largest absolute difference between two equally long vectors.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A loaded network as a model on the CPU, as the backend would wrap it (no adapters; a
/// dense network also serves embeddings).
pub fn cpu_model(loaded: llmlocal_backend_candle::gguf::Loaded) -> Box<dyn Model> {
    let dense = match &loaded.net {
        llmlocal_backend_candle::net::Net::Dense(m) => Some(m.clone()),
        _ => None,
    };
    // No files: these tests do not embed with a network that is not dense already.
    let embedder = llmlocal_backend_candle::embed::Embedder::new(
        llmlocal_backend_candle::files::ModelFiles::Gguf(PathBuf::new()),
        Vec::new(),
        loaded.info.context_length,
        Device::Cpu,
        dense,
    );
    let prefix = std::sync::Mutex::new(llmlocal_backend_candle::prefix::PrefixCache::for_model(
        &loaded.info,
    ));
    Box::new(llmlocal_backend_candle::model::CandleModel::new(
        llmlocal_backend_candle::model::Shared {
            net: loaded.net,
            vocab: loaded.vocab,
            info: loaded.info,
            device: Device::Cpu,
            device_name: "cpu".to_string(),
            batch: llmlocal_backend_candle::model::DEFAULT_BATCH,
            load_ms: 0.0,
            adapters: Vec::new(),
            guidance: Default::default(),
            embedder,
            prefix,
        },
    ))
}
