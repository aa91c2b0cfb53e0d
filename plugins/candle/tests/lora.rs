//! PEFT LoRA adapters merged at load, written by the test for stories260K.

mod common;

use candle_core::{DType, Device, Tensor};
use common::stories;
use llmlocal_backend_candle::{hf::weights, lora::Adapter, CandleBackend};
use llmlocal_plugin_api::{
    abi_stable::std_types::RString, AdapterRequest, Backend, ErrorKind, GenerateRequest,
    LoadRequest, Model, PluginError,
};
use std::collections::HashMap;
use std::path::Path;

const RANK: usize = 2;
const ALPHA: f64 = 4.0;

/// Deterministic, non-trivial values.
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed * 97) % 1000) as f32 / 1000.0
                - 0.5)
                * 0.4
        })
        .collect()
}

/// Writes a PEFT adapter for q_proj (out 64) and v_proj (out 32) of every layer.
fn write_adapter(dir: &Path, config: serde_json::Value, in_dim: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut tensors = HashMap::new();
    for layer in 0..5 {
        for (module, out) in [("q_proj", 64), ("v_proj", 32)] {
            let key = format!("base_model.model.model.layers.{layer}.self_attn.{module}");
            let seed = (layer * 10 + out) as u32;
            let a = Tensor::from_vec(values(RANK * in_dim, seed), (RANK, in_dim), &Device::Cpu)
                .unwrap();
            let b =
                Tensor::from_vec(values(out * RANK, seed + 1), (out, RANK), &Device::Cpu).unwrap();
            tensors.insert(format!("{key}.lora_A.weight"), a);
            tensors.insert(format!("{key}.lora_B.weight"), b);
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
}

fn peft_config() -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "stories260K",
        "r": RANK,
        "lora_alpha": ALPHA,
        "target_modules": ["q_proj", "v_proj"],
        "fan_in_fan_out": false,
        "bias": "none",
    })
}

fn load_with(model: &Path, adapter: &Path, scale: f32) -> Result<Box<dyn Model>, PluginError> {
    let mut request = LoadRequest::new(model.to_string_lossy());
    request.device = RString::from("cpu");
    request.adapters = vec![AdapterRequest {
        path: RString::from(adapter.to_string_lossy().as_ref()),
        scale,
    }]
    .into();
    CandleBackend.load(request)
}

fn matrix(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2().unwrap()
}

#[test]
fn merged_weight_is_w_plus_scaled_b_times_a() {
    let Some(dir) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let adapter_dir = tmp.path().join("adapter");
    write_adapter(&adapter_dir, peft_config(), 64);
    let base = weights::load(&[dir.join("hf/model.safetensors")]).unwrap();
    let mut merged = base.clone();
    let scale = 0.5f32;
    Adapter::open(&adapter_dir)
        .unwrap()
        .merge_into(&mut merged, "llama", scale)
        .unwrap();

    let adapter =
        candle_core::safetensors::load(adapter_dir.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let factor = scale as f64 * ALPHA / RANK as f64;
    for name in [
        "model.layers.2.self_attn.v_proj",
        "model.layers.0.self_attn.q_proj",
    ] {
        let w = matrix(&base[&format!("{name}.weight")]);
        let a = matrix(&adapter[&format!("base_model.model.{name}.lora_A.weight")]);
        let b = matrix(&adapter[&format!("base_model.model.{name}.lora_B.weight")]);
        let got = matrix(&merged[&format!("{name}.weight")]);
        for (o, row) in w.iter().enumerate() {
            for (i, &wv) in row.iter().enumerate() {
                let ba: f64 = (0..RANK).map(|r| b[o][r] as f64 * a[r][i] as f64).sum();
                let want = wv as f64 + factor * ba;
                assert!(
                    (got[o][i] as f64 - want).abs() < 1e-5,
                    "{name}[{o}][{i}]: {} vs {want}",
                    got[o][i]
                );
            }
        }
    }
    // Untargeted weights are untouched.
    let k = "model.layers.1.self_attn.k_proj.weight";
    assert_eq!(matrix(&merged[k]), matrix(&base[k]));
}

#[test]
fn adapter_changes_the_output() {
    let Some(dir) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let adapter_dir = tmp.path().join("adapter");
    write_adapter(&adapter_dir, peft_config(), 64);
    let base = common::load(&dir.join("hf"));
    let tuned = load_with(&dir.join("hf"), &adapter_dir, 1.0).unwrap();
    let tokens = base.tokenize("Once upon a time", true, false).unwrap();
    let a = base.logits(&tokens).unwrap();
    let b = tuned.logits(&tokens).unwrap();
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max > 1e-2,
        "the adapter changed the logits by at most {max}"
    );
    // Scale 0 is the base model.
    let zero = load_with(&dir.join("hf"), &adapter_dir, 0.0).unwrap();
    assert_eq!(zero.logits(&tokens).unwrap(), a);
    let (ids, _, _) = common::greedy(tuned.as_ref(), &tokens, 8);
    assert_eq!(ids.len(), 8);
}

fn expect_incompatible(model: &Path, adapter: &Path, needle: &str) {
    match load_with(model, adapter, 1.0) {
        Ok(_) => panic!("the adapter should be refused"),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::AdapterIncompatible, "{e}");
            assert!(e.message.contains(needle), "{e} (expected `{needle}`)");
        }
    }
}

#[test]
fn incompatible_adapters_are_refused_with_the_reason() {
    let Some(dir) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let hf = dir.join("hf");

    let missing_module = tmp.path().join("c_attn");
    let mut config = peft_config();
    config["target_modules"] = serde_json::json!(["q_proj", "c_attn"]);
    write_adapter(&missing_module, config, 64);
    expect_incompatible(&hf, &missing_module, "c_attn");

    let wrong_dim = tmp.path().join("dim");
    write_adapter(&wrong_dim, peft_config(), 48);
    expect_incompatible(&hf, &wrong_dim, "48");

    let wrong_rank = tmp.path().join("rank");
    let mut config = peft_config();
    config["r"] = serde_json::json!(4);
    write_adapter(&wrong_rank, config, 64);
    expect_incompatible(&hf, &wrong_rank, "rank");

    let wrong_model = tmp.path().join("model_type");
    let mut config = peft_config();
    config["model_type"] = serde_json::json!("qwen2");
    write_adapter(&wrong_model, config, 64);
    expect_incompatible(&hf, &wrong_model, "qwen2");
}

#[test]
fn adapter_errors_on_missing_files_and_gguf() {
    let Some(dir) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let e = load_with(&dir.join("hf"), &tmp.path().join("nope"), 1.0)
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::NotFound);
    let adapter_dir = tmp.path().join("adapter");
    write_adapter(&adapter_dir, peft_config(), 64);
    let e = load_with(&dir.join("stories260K.gguf"), &adapter_dir, 1.0)
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::Unsupported);
}

#[test]
fn a_generation_cannot_ask_for_other_adapters_than_those_merged() {
    let Some(dir) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let adapter_dir = tmp.path().join("adapter");
    write_adapter(&adapter_dir, peft_config(), 64);
    let tuned = load_with(&dir.join("hf"), &adapter_dir, 0.5).unwrap();
    let tokens = tuned.tokenize("Once upon a time", true, false).unwrap();
    let merged = AdapterRequest {
        path: RString::from(adapter_dir.to_string_lossy().as_ref()),
        scale: 0.5,
    };
    let other_scale = AdapterRequest {
        scale: 1.0,
        ..merged.clone()
    };
    let with = |adapters: Option<Vec<AdapterRequest>>| {
        let mut request = GenerateRequest::greedy(tokens.clone(), 4);
        request.adapters = adapters.map(Into::into).into();
        tuned.generate(request)
    };
    // The load set (named or implied) runs; another scale or no adapter is refused.
    assert!(with(None).is_ok());
    assert!(with(Some(vec![merged])).is_ok());
    for asked in [vec![other_scale], Vec::new()] {
        let e = with(Some(asked)).err().expect("refused");
        assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
        assert!(e.message.contains("merges LoRA adapters"), "{e}");
    }
}
