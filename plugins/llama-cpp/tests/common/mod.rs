//! Shared helpers for the llama-cpp plugin tests (driven through the author traits).
#![allow(dead_code)]

use llmlocal_backend_llama_cpp::LlamaCppBackend;
use llmlocal_plugin_api::{
    Backend, ErrorKind, FinishReason, GenerateRequest, Generation, LoadRequest, Model, Step,
};
use std::path::PathBuf;

/// The shared test models folder: `LLMLOCAL_SHARED_MODELS`, else `../shared/models` next to
/// the workspace.
pub fn shared_models() -> PathBuf {
    std::env::var_os("LLMLOCAL_SHARED_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models"))
}

/// stories260K.gguf: the copy shipped in the repository (models/stories260K), so the tests
/// that need a trained model run on a fresh clone. Always `Some`; kept an Option for callers.
pub fn stories() -> Option<PathBuf> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/stories260K/stories260K.gguf");
    assert!(
        path.is_file(),
        "{} is part of the repository",
        path.display()
    );
    Some(path)
}

pub fn backend() -> LlamaCppBackend {
    LlamaCppBackend::new().expect("llama.cpp initialises")
}

/// A CPU load request with few threads (the test machines are small and shared).
pub fn request(path: &std::path::Path) -> LoadRequest {
    let mut request = LoadRequest::new(path.to_string_lossy());
    request.device = "cpu".into();
    request.threads = 2;
    request
}

pub fn load(request: LoadRequest) -> Box<dyn Model> {
    backend().load(request).expect("model loads")
}

pub fn load_err(request: LoadRequest) -> llmlocal_plugin_api::PluginError {
    match backend().load(request) {
        Ok(_) => panic!("the load should have failed"),
        Err(err) => err,
    }
}

pub fn assert_kind(err: &llmlocal_plugin_api::PluginError, kind: ErrorKind) {
    assert_eq!(err.kind, kind, "unexpected error: {err}");
    assert!(!err.message.is_empty());
}

/// Token ids, text and finish reason of a whole generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub ids: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
}

pub fn drain(generation: &mut dyn Generation) -> Output {
    let mut out = Output {
        ids: Vec::new(),
        text: String::new(),
        finish: FinishReason::Length,
    };
    loop {
        match generation.next().expect("generation step") {
            Step::Token(t) => {
                out.ids.push(t.id);
                out.text.push_str(&t.text);
            }
            Step::Finished(end) => {
                out.text.push_str(&end.text);
                out.finish = end.reason;
                return out;
            }
        }
    }
}

pub fn generate(model: &dyn Model, request: GenerateRequest) -> Output {
    let mut generation = model.generate(request).expect("generation starts");
    drain(generation.as_mut())
}

pub fn prompt(model: &dyn Model, text: &str) -> Vec<u32> {
    model.tokenize(text, true, false).expect("tokenize")
}
