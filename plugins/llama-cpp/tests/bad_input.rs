//! Bad input gives the right `ErrorKind` with a message, never a crash.

mod common;

use common::*;
use llmlocal_plugin_api::{
    abi_stable::std_types::{RString, RVec},
    AdapterRequest, ErrorKind, GenerateRequest, Sampling,
};
use std::path::Path;

fn copy_of_stories(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    let source = stories()?;
    let target = dir.join(name);
    std::fs::copy(&source, &target).expect("copy the model");
    Some(target)
}

#[test]
fn missing_file_is_not_found() {
    let err = load_err(request(Path::new("/nonexistent/model.gguf")));
    assert_kind(&err, ErrorKind::NotFound);
    assert!(err.message.contains("/nonexistent/model.gguf"));
}

#[test]
fn text_file_is_unsupported_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.gguf");
    std::fs::write(&path, "this is a text file, not a model\n").unwrap();
    assert_kind(&load_err(request(&path)), ErrorKind::UnsupportedFormat);
}

#[test]
fn folder_is_unsupported_format() {
    let dir = tempfile::tempdir().unwrap();
    assert_kind(&load_err(request(dir.path())), ErrorKind::UnsupportedFormat);
}

#[test]
fn truncated_gguf_is_unsupported_format() {
    let dir = tempfile::tempdir().unwrap();
    let Some(path) = copy_of_stories(dir.path(), "truncated.gguf") else {
        return;
    };
    let len = std::fs::metadata(&path).unwrap().len();
    for keep in [len / 2, len - 100, 64] {
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(keep).unwrap();
        drop(file);
        let err = load_err(request(&path));
        assert_kind(&err, ErrorKind::UnsupportedFormat);
        assert!(err.message.contains("truncated"), "{err}");
    }
}

#[test]
fn gguf_version_1_is_unsupported_format() {
    let Some(path) =
        llmlocal_fixtures::shared::model("stories260K/legacy/tinyllamas-stories-260k-f32.gguf")
    else {
        return;
    };
    let err = load_err(request(&path));
    assert_kind(&err, ErrorKind::UnsupportedFormat);
    assert!(err.message.contains("version 1"), "{err}");
}

#[test]
fn unknown_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let Some(path) = copy_of_stories(dir.path(), "llamx.gguf") else {
        return;
    };
    let mut bytes = std::fs::read(&path).unwrap();
    // Patch the value of general.architecture ("llama") and every "llama."-prefixed key
    // would not matter: llama.cpp stops at the architecture name.
    let key = b"general.architecture";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the key is in the header");
    // key, then u32 type (8 = string), u64 length 5, then "llama".
    let value = at + key.len() + 4 + 8;
    assert_eq!(&bytes[value..value + 5], b"llama");
    bytes[value..value + 5].copy_from_slice(b"llamx");
    std::fs::write(&path, bytes).unwrap();
    let err = load_err(request(&path));
    assert_kind(&err, ErrorKind::UnsupportedArchitecture);
    assert!(err.message.contains("llamx"), "{err}");
}

#[test]
fn huge_context_is_out_of_memory() {
    let Some(path) = stories() else { return };
    let mut req = request(&path);
    req.context_length = 1 << 30;
    req.parallel = 2;
    let err = load_err(req);
    assert_kind(&err, ErrorKind::OutOfMemory);
    assert!(err.message.contains("context_length"), "{err}");
}

#[test]
fn context_size_overflow_is_invalid() {
    let Some(path) = stories() else { return };
    let mut req = request(&path);
    req.context_length = u32::MAX;
    req.parallel = 4;
    assert_kind(&load_err(req), ErrorKind::InvalidRequest);
}

#[test]
fn unknown_device_is_invalid() {
    let Some(path) = stories() else { return };
    let mut req = request(&path);
    req.device = "tpu:3".into();
    let err = load_err(req);
    assert_kind(&err, ErrorKind::InvalidRequest);
    assert!(err.message.contains("cpu"), "lists usable devices: {err}");
}

/// Asking for CUDA where llama.cpp reports no CUDA device (this build, or no GPU) is a clear
/// error naming the device and what is usable, never a silent CPU fallback.
#[test]
fn cuda_without_a_cuda_device_is_a_clear_error() {
    let Some(path) = stories() else { return };
    let manifest = llmlocal_backend_llama_cpp::manifest();
    if manifest.devices.iter().any(|d| d.starts_with("cuda")) {
        eprintln!("SKIP: this machine has a usable CUDA device");
        return;
    }
    for device in ["cuda", "cuda:0"] {
        let mut req = request(&path);
        req.device = device.into();
        let err = load_err(req);
        assert_kind(&err, ErrorKind::InvalidRequest);
        assert!(err.message.contains(device), "names the device: {err}");
        assert!(err.message.contains("cpu"), "lists usable devices: {err}");
    }
}

#[test]
fn missing_and_invalid_adapters_are_clear_errors() {
    let Some(path) = stories() else { return };
    let mut req = request(&path);
    req.adapters = RVec::from(vec![AdapterRequest {
        path: RString::from("/nonexistent/lora.gguf"),
        scale: 1.0,
    }]);
    let err = load_err(req.clone());
    assert_kind(&err, ErrorKind::NotFound);
    assert!(err.message.contains("lora.gguf"));

    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("lora.gguf");
    std::fs::write(&text, "not an adapter").unwrap();
    req.adapters = RVec::from(vec![AdapterRequest {
        path: RString::from(text.to_string_lossy().as_ref()),
        scale: 1.0,
    }]);
    assert_kind(&load_err(req.clone()), ErrorKind::UnsupportedFormat);

    // A full model is a GGUF but not a LoRA for this model.
    req.adapters = RVec::from(vec![AdapterRequest {
        path: RString::from(path.to_string_lossy().as_ref()),
        scale: 1.0,
    }]);
    assert_kind(&load_err(req), ErrorKind::AdapterIncompatible);
}

#[test]
fn bad_generation_requests_are_invalid() {
    let Some(path) = stories() else { return };
    let mut req = request(&path);
    req.context_length = 32;
    req.parallel = 1;
    let model = load(req);
    let expect_invalid = |request: GenerateRequest| match model.generate(request) {
        Ok(_) => panic!("should be refused"),
        Err(err) => assert_kind(&err, ErrorKind::InvalidRequest),
    };
    expect_invalid(GenerateRequest::greedy(vec![], 5));
    let long = model
        .tokenize(
            &"Once upon a time there was a cat. ".repeat(10),
            true,
            false,
        )
        .unwrap();
    assert!(long.len() > 32);
    expect_invalid(GenerateRequest::greedy(long.clone(), 5));
    expect_invalid(GenerateRequest::greedy(vec![1, 99_999], 5));
    let mut bad_sampling = GenerateRequest::greedy(vec![1, 400], 5);
    bad_sampling.sampling = Sampling {
        top_p: 0.0,
        ..Sampling::default()
    };
    expect_invalid(bad_sampling);
    assert_kind(&model.logits(&long).unwrap_err(), ErrorKind::InvalidRequest);
    assert_kind(&model.logits(&[]).unwrap_err(), ErrorKind::InvalidRequest);
    assert_kind(
        &model.detokenize(&[1, 70_000], false).unwrap_err(),
        ErrorKind::InvalidRequest,
    );
    // The model still works after all that.
    let ok = generate(model.as_ref(), GenerateRequest::greedy(vec![1, 400], 3));
    assert_eq!(ok.ids.len(), 3);
}
