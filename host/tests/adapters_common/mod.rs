//! Shared by the adapter tests: the fixture model, its LoRA and the LoRA's GGUF conversion.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use llmlocal::adapters::{convert, BaseModel};
use llmlocal::api::{AdapterRequest, LoadRequest};
use llmlocal::engine::{Engine, EngineError, EngineSettings, GenerationConfig, ModelEntry, Prompt};
use llmlocal::plugins::{LoadedModel, PluginRegistry};
use llmlocal_fixtures::FixturePaths;

/// The fixture model's names in [`engine_settings`]: the f32 GGUF on llama.cpp, the HF folder
/// on candle.
pub const LLAMA: &str = "tiny-gguf";
pub const CANDLE: &str = "tiny-hf";

/// The prompt and length of the engine-level adapter tests.
pub const PROMPT: &str = "Hi ";
pub const MAX_TOKENS: u32 = 40;

/// The fixtures, with `tiny-llama-lora.gguf` written by the converter under test.
pub fn fixtures() -> &'static FixturePaths {
    static PATHS: OnceLock<FixturePaths> = OnceLock::new();
    PATHS.get_or_init(|| {
        let paths = llmlocal_fixtures::ensure_default().expect("fixtures");
        let base = BaseModel::from_path(&paths.hf_dir).expect("base config");
        convert::convert_to(&paths.lora_dir, &base, &paths.lora_gguf)
            .expect("convert fixture LoRA");
        paths
    })
}

pub fn base_hf() -> BaseModel {
    BaseModel::from_path(&fixtures().hf_dir).expect("base")
}

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// [`PROMPT`] greedily on `engine`'s `model` with `adapters` (`None`: the model's own).
pub async fn try_generate(
    engine: &Engine,
    model: &str,
    adapters: Option<Vec<String>>,
) -> Result<String, EngineError> {
    let config = GenerationConfig {
        adapters,
        ..GenerationConfig::greedy(MAX_TOKENS)
    };
    let stream = engine
        .generate(model, Prompt::Text(PROMPT.to_string()), config)
        .await?;
    Ok(stream.collect_text().await?.0)
}

/// [`try_generate`] that must succeed.
pub async fn generate(engine: &Engine, model: &str, adapters: Option<Vec<String>>) -> String {
    try_generate(engine, model, adapters)
        .await
        .unwrap_or_else(|err| panic!("{model}: {err}"))
}

/// `model` loaded on the CPU straight into the plugin library `file`, with `adapters` at load.
pub fn load_in_plugin(file: &Path, model: &Path, adapters: &[(&Path, f32)]) -> LoadedModel {
    let registry = PluginRegistry::load_files(&[file.to_path_buf()]);
    let backend = registry.backends().next().cloned().expect("plugin loads");
    let mut request = LoadRequest::new(model.display().to_string());
    request.device = "cpu".into();
    request.context_length = 512;
    request.adapters = adapters
        .iter()
        .map(|(p, scale)| AdapterRequest {
            path: p.display().to_string().into(),
            scale: *scale,
        })
        .collect();
    backend.load_model(request).expect("model loads")
}

/// Engine settings serving the fixture as [`LLAMA`] and [`CANDLE`] on the CPU.
pub fn engine_settings(open_specs: bool) -> EngineSettings {
    let p = fixtures();
    let mut settings = EngineSettings {
        open_specs,
        context_length: Some(256),
        device: "cpu".to_string(),
        ..EngineSettings::default()
    };
    for (name, path, backend) in [
        (LLAMA, &p.gguf_f32, "llama-cpp"),
        (CANDLE, &p.hf_dir, "candle"),
    ] {
        let entry = ModelEntry {
            backend: Some(backend.to_string()),
            ..ModelEntry::new(path.to_string_lossy())
        };
        settings.models.insert(name.to_string(), entry);
    }
    settings
}

/// The largest absolute difference between two logit vectors of the same length.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
