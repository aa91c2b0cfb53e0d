//! Bad input gives a PluginError of the right kind, never a crash.

mod common;

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device, Tensor};
use common::{copy_dir, edit_config, load, load_paths, rewrite_gguf, stories};
use llmlocal_plugin_api::{ErrorKind, GenerateRequest, PluginError};
use std::path::{Path, PathBuf};

fn kind_and_message(
    result: Result<Box<dyn llmlocal_plugin_api::Model>, PluginError>,
) -> (ErrorKind, String) {
    match result {
        Ok(_) => panic!("the load should have failed"),
        Err(e) => (e.kind, e.message.to_string()),
    }
}

fn hf_copy(tmp: &Path) -> Option<PathBuf> {
    let dir = stories()?;
    let copy = tmp.join("hf");
    copy_dir(&dir.join("hf"), &copy);
    Some(copy)
}

#[test]
fn missing_path_is_not_found() {
    let (kind, msg) = kind_and_message(load_paths(&[Path::new("/nonexistent/model.gguf")]));
    assert_eq!(kind, ErrorKind::NotFound);
    assert!(msg.contains("/nonexistent/model.gguf"), "{msg}");
}

#[test]
fn missing_shard_is_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(dir) = hf_copy(tmp.path()) else {
        return;
    };
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let (kind, msg) = kind_and_message(load_paths(&[&dir]));
    assert_eq!(kind, ErrorKind::NotFound, "{msg}");
}

#[test]
fn corrupt_safetensors_is_unsupported_format() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(dir) = hf_copy(tmp.path()) else {
        return;
    };
    std::fs::write(
        dir.join("model.safetensors"),
        b"\xff\xff\xff\xff not safetensors",
    )
    .unwrap();
    let (kind, msg) = kind_and_message(load_paths(&[&dir]));
    assert_eq!(kind, ErrorKind::UnsupportedFormat);
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn truncated_gguf_is_unsupported_format() {
    let Some(dir) = stories() else { return };
    let bytes = std::fs::read(dir.join("stories260K.gguf")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for cut in [10, 2_000, bytes.len() / 2, bytes.len() - 100] {
        let path = tmp.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let (kind, msg) = kind_and_message(load_paths(&[&path]));
        assert_eq!(kind, ErrorKind::UnsupportedFormat, "cut at {cut}: {msg}");
    }
}

#[test]
fn unknown_dtype_is_unsupported_format() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(dir) = hf_copy(tmp.path()) else {
        return;
    };
    edit_config(&dir, |c| {
        c.insert("torch_dtype".into(), "float8_e4m3fn".into());
    });
    let (kind, msg) = kind_and_message(load_paths(&[&dir]));
    assert_eq!(kind, ErrorKind::UnsupportedFormat);
    assert!(msg.contains("float8_e4m3fn"), "{msg}");

    // An integer weight tensor.
    let tmp = tempfile::tempdir().unwrap();
    let dir = hf_copy(tmp.path()).unwrap();
    let file = dir.join("model.safetensors");
    let mut weights = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let norm = weights["model.norm.weight"].to_dtype(DType::I64).unwrap();
    weights.insert("model.norm.weight".into(), norm);
    candle_core::safetensors::save(&weights, &file).unwrap();
    let (kind, msg) = kind_and_message(load_paths(&[&dir]));
    assert_eq!(kind, ErrorKind::UnsupportedFormat);
    assert!(msg.contains("model.norm.weight"), "{msg}");
}

#[test]
fn missing_config_key_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(dir) = hf_copy(tmp.path()) else {
        return;
    };
    edit_config(&dir, |c| {
        c.remove("hidden_size");
    });
    let (kind, msg) = kind_and_message(load_paths(&[&dir]));
    assert_eq!(kind, ErrorKind::UnsupportedFormat);
    assert!(msg.contains("hidden_size"), "{msg}");
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(dir) = hf_copy(tmp.path()) else {
        return;
    };
    edit_config(&dir, |c| {
        c.insert("intermediate_size".into(), 170.into());
    });
    let (kind, msg) = kind_and_message(load_paths(&[&dir]));
    assert_eq!(kind, ErrorKind::UnsupportedFormat);
    assert!(msg.contains("model.layers.0.mlp.gate_proj.weight"), "{msg}");

    // A tensor of the wrong shape in the file itself.
    let tmp = tempfile::tempdir().unwrap();
    let dir = hf_copy(tmp.path()).unwrap();
    let file = dir.join("model.safetensors");
    let mut weights = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    weights.insert(
        "model.layers.3.self_attn.k_proj.weight".into(),
        Tensor::zeros((64, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&weights, &file).unwrap();
    let (kind, msg) = kind_and_message(load_paths(&[&dir]));
    assert_eq!(kind, ErrorKind::UnsupportedFormat);
    assert!(
        msg.contains("model.layers.3.self_attn.k_proj.weight"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(dir) = hf_copy(tmp.path()) else {
        return;
    };
    let file = dir.join("model.safetensors");
    let mut weights = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    weights.remove("model.layers.4.mlp.down_proj.weight");
    candle_core::safetensors::save(&weights, &file).unwrap();
    let (kind, msg) = kind_and_message(load_paths(&[&dir]));
    assert_eq!(kind, ErrorKind::UnsupportedFormat);
    assert!(msg.contains("model.layers.4.mlp.down_proj.weight"), "{msg}");
}

#[test]
fn unsupported_architecture_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(dir) = hf_copy(tmp.path()) else {
        return;
    };
    edit_config(&dir, |c| {
        c.insert("model_type".into(), "gpt_neox".into());
        c.insert(
            "architectures".into(),
            serde_json::json!(["GPTNeoXForCausalLM"]),
        );
    });
    let (kind, msg) = kind_and_message(load_paths(&[&dir]));
    assert_eq!(kind, ErrorKind::UnsupportedArchitecture);
    assert!(msg.contains("gpt_neox"), "{msg}");
}

#[test]
fn gguf_of_another_architecture_is_unsupported_architecture() {
    let Some(dir) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // (phi3, qwen3 and gemma3 are GGUF architectures candle runs now; falcon it does not.)
    let path = tmp.path().join("falcon.gguf");
    rewrite_gguf(&dir.join("stories260K.gguf"), &path, |md| {
        for (k, v) in md.iter_mut() {
            if k == "general.architecture" {
                *v = Value::String("falcon".into());
            }
        }
    });
    let (kind, msg) = kind_and_message(load_paths(&[&path]));
    assert_eq!(kind, ErrorKind::UnsupportedArchitecture);
    assert!(msg.contains("falcon"), "{msg}");
}

#[test]
fn gguf_missing_key_is_named() {
    let Some(dir) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("nokey.gguf");
    rewrite_gguf(&dir.join("stories260K.gguf"), &path, |md| {
        md.retain(|(k, _)| k != "llama.attention.head_count");
    });
    let (kind, msg) = kind_and_message(load_paths(&[&path]));
    assert_eq!(kind, ErrorKind::UnsupportedFormat);
    assert!(msg.contains("llama.attention.head_count"), "{msg}");
}

#[test]
fn gguf_with_wrong_head_count_names_the_tensor() {
    let Some(dir) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("heads.gguf");
    rewrite_gguf(&dir.join("stories260K.gguf"), &path, |md| {
        for (k, v) in md.iter_mut() {
            if k == "llama.attention.head_count_kv" {
                *v = Value::U32(8);
            }
            if k == "llama.rope.dimension_count" {
                *v = Value::U32(8);
            }
        }
    });
    let (kind, msg) = kind_and_message(load_paths(&[&path]));
    assert_eq!(kind, ErrorKind::UnsupportedFormat);
    assert!(msg.contains("blk.0.attn_k.weight"), "{msg}");
}

#[test]
fn legacy_gguf_v1_never_crashes() {
    let Some(path) =
        llmlocal_fixtures::shared::model("stories260K/legacy/tinyllamas-stories-260k-f32.gguf")
    else {
        return;
    };
    match load_paths(&[&path]) {
        Ok(model) => {
            // If candle reads it, it must run.
            let tokens = model.tokenize("Once upon a time", true, false).unwrap();
            let (ids, text, _) = common::greedy(model.as_ref(), &tokens, 4);
            eprintln!("GGUF v1 loaded: {ids:?} {text:?}");
        }
        Err(e) => assert!(
            matches!(
                e.kind,
                ErrorKind::UnsupportedFormat | ErrorKind::UnsupportedArchitecture
            ),
            "{e}"
        ),
    }
}

#[test]
fn bad_requests_are_invalid_request() {
    let Some(dir) = stories() else { return };
    let model = load(&dir.join("stories260K.gguf"));
    let err = |r: Result<Box<dyn llmlocal_plugin_api::Generation>, PluginError>| match r {
        Ok(_) => panic!("should fail"),
        Err(e) => e.kind,
    };
    assert_eq!(
        err(model.generate(GenerateRequest::greedy(vec![], 4))),
        ErrorKind::InvalidRequest
    );
    assert_eq!(
        err(model.generate(GenerateRequest::greedy(vec![1, 512], 4))),
        ErrorKind::InvalidRequest
    );
    let mut bad_sampling = GenerateRequest::greedy(vec![1], 4);
    bad_sampling.sampling.top_p = 0.0;
    assert_eq!(err(model.generate(bad_sampling)), ErrorKind::InvalidRequest);
    let long = vec![1u32; 5000];
    assert_eq!(
        err(model.generate(GenerateRequest::greedy(long.clone(), 4))),
        ErrorKind::InvalidRequest
    );
    assert_eq!(
        model.logits(&long).unwrap_err().kind,
        ErrorKind::InvalidRequest
    );
    assert_eq!(
        model.logits(&[9999]).unwrap_err().kind,
        ErrorKind::InvalidRequest
    );
    assert_eq!(
        model.detokenize(&[9999], false).unwrap_err().kind,
        ErrorKind::InvalidRequest
    );

    let mut request = llmlocal_plugin_api::LoadRequest::new(dir.join("hf").to_string_lossy());
    request.device = "tpu:3".into();
    let e = llmlocal_plugin_api::Backend::load(&llmlocal_backend_candle::CandleBackend, request)
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
}

/// Asking for CUDA from a build or machine without it is a clear error, not a CPU fallback.
#[test]
fn cuda_without_a_cuda_device_is_a_clear_error() {
    let manifest = llmlocal_backend_candle::manifest();
    if manifest.devices.iter().any(|d| d.starts_with("cuda")) {
        eprintln!("SKIP: this machine has a usable CUDA device");
        return;
    }
    let Some(dir) = stories() else { return };
    let mut request =
        llmlocal_plugin_api::LoadRequest::new(dir.join("stories260K.gguf").to_string_lossy());
    request.device = "cuda".into();
    let e = llmlocal_plugin_api::Backend::load(&llmlocal_backend_candle::CandleBackend, request)
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::InvalidRequest, "{e}");
    assert!(e.message.to_lowercase().contains("cuda"), "names CUDA: {e}");
}
