//! PEFT -> GGUF LoRA conversion and the compatibility check, on the fixture model's LoRA.

mod adapters_common;

use std::fs::File;

use adapters_common::{base_hf, fixtures};
use candle_core::quantized::gguf_file;
use candle_core::Device;
use llmlocal::adapters::{check, convert, AdapterError, AdapterFormat, BaseModel};
use llmlocal_fixtures::reference::{self, RopeLayout, Weights};
use llmlocal_fixtures::{lora, spec};

/// name, row-major dims, f32 values.
type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Every tensor of a GGUF file, dequantized to f32 (row-major dims, data).
fn read_tensors(path: &std::path::Path) -> (gguf_file::Content, Vec<NamedTensor>) {
    let mut f = File::open(path).expect("open");
    let content = gguf_file::Content::read(&mut f).expect("candle reads the GGUF");
    let mut names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    names.sort();
    let tensors = names
        .into_iter()
        .map(|name| {
            let q = content.tensor(&mut f, &name, &Device::Cpu).expect("tensor");
            let t = q.dequantize(&Device::Cpu).expect("dequantize");
            let dims = t.dims().to_vec();
            let data = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("f32");
            (name, dims, data)
        })
        .collect();
    (content, tensors)
}

#[test]
fn converted_lora_has_llama_cpp_names_shapes_and_metadata() {
    let p = fixtures();
    let (content, tensors) = read_tensors(&p.lora_gguf);
    let meta = |k: &str| {
        content
            .metadata
            .get(k)
            .unwrap_or_else(|| panic!("metadata {k}"))
    };
    assert_eq!(meta("general.type").to_string().expect("str"), "adapter");
    assert_eq!(meta("adapter.type").to_string().expect("str"), "lora");
    assert_eq!(
        meta("general.architecture").to_string().expect("str"),
        "llama"
    );
    assert_eq!(
        meta("adapter.lora.alpha").to_f32().expect("f32"),
        lora::ALPHA
    );
    assert_eq!(
        tensors.len(),
        2 * lora::TARGET_MODULES.len() * spec::NUM_LAYERS
    );
    let (h, q, kv, f, r) = (
        spec::HIDDEN_SIZE,
        spec::NUM_HEADS * spec::HEAD_DIM,
        spec::NUM_KV_HEADS * spec::HEAD_DIM,
        spec::INTERMEDIATE_SIZE,
        lora::RANK,
    );
    for layer in 0..spec::NUM_LAYERS {
        for (name, out, inp) in [
            ("attn_q", q, h),
            ("attn_k", kv, h),
            ("attn_v", kv, h),
            ("attn_output", h, q),
            ("ffn_gate", f, h),
            ("ffn_up", f, h),
            ("ffn_down", h, f),
        ] {
            let find = |suffix: &str| {
                let full = format!("blk.{layer}.{name}.weight.{suffix}");
                tensors
                    .iter()
                    .find(|t| t.0 == full)
                    .unwrap_or_else(|| panic!("{full} missing"))
                    .1
                    .clone()
            };
            // candle dims are ggml ne reversed: lora_a ne = [in, r], lora_b ne = [r, out]
            assert_eq!(find("lora_a"), vec![r, inp], "{name} lora_a");
            assert_eq!(find("lora_b"), vec![out, r], "{name} lora_b");
        }
    }
}

/// `weights` (GGUF layout) with the GGUF LoRA merged as llama.cpp applies it:
/// W + (alpha / r) * B·A, optionally undoing the converter's q/k permutation first.
fn merge_gguf_lora(mut w: Weights, path: &std::path::Path) -> Weights {
    let (content, tensors) = read_tensors(path);
    let alpha = content.metadata["adapter.lora.alpha"]
        .to_f32()
        .expect("alpha");
    let get = |name: &str| tensors.iter().find(|t| t.0 == name).expect("tensor");
    for (i, layer) in w.layers.iter_mut().enumerate() {
        for (name, target) in [
            ("attn_q", &mut layer.q),
            ("attn_k", &mut layer.k),
            ("attn_v", &mut layer.v),
            ("attn_output", &mut layer.o),
            ("ffn_gate", &mut layer.gate),
            ("ffn_up", &mut layer.up),
            ("ffn_down", &mut layer.down),
        ] {
            let a = get(&format!("blk.{i}.{name}.weight.lora_a"));
            let b = get(&format!("blk.{i}.{name}.weight.lora_b"));
            let (r, inp) = (a.1[0], a.1[1]);
            let out = b.1[0];
            let factor = alpha / r as f32;
            for o in 0..out {
                for k in 0..r {
                    let bk = b.2[o * r + k] * factor;
                    for c in 0..inp {
                        target[o * inp + c] += bk * a.2[k * inp + c];
                    }
                }
            }
        }
    }
    w
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn converted_lora_on_the_gguf_base_equals_the_peft_merge() {
    let p = fixtures();
    let base_gguf = reference::weights_from_gguf(&p.gguf_f32).expect("base gguf");
    assert_eq!(base_gguf.rope, RopeLayout::Interleaved);
    let via_gguf = merge_gguf_lora(base_gguf.clone(), &p.lora_gguf);
    let via_peft = lora::fixture_merged(1.0).expect("merge");
    let prompt: Vec<u32> = "Hello:w and more!".bytes().map(u32::from).collect();
    let expected = reference::all_logits(&via_peft, &prompt);
    let got = reference::all_logits(&via_gguf, &prompt);
    let diff = expected
        .iter()
        .zip(&got)
        .map(|(a, b)| max_diff(a, b))
        .fold(0.0, f32::max);
    assert!(
        diff < 1e-3,
        "GGUF LoRA vs PEFT merge: max logit diff {diff}"
    );

    // Control: the same conversion without the q/k permutation is measurably wrong, so the
    // comparison above does check the permutation.
    let mut unpermuted = base_hf();
    unpermuted.architecture = "qwen2".into();
    let dir = tempfile::tempdir().expect("tmp");
    let wrong = dir.path().join("wrong.gguf");
    convert::convert_to(&p.lora_dir, &unpermuted, &wrong).expect("convert");
    let bad = reference::all_logits(&merge_gguf_lora(base_gguf, &wrong), &prompt);
    let bad_diff = expected
        .iter()
        .zip(&bad)
        .map(|(a, b)| max_diff(a, b))
        .fold(0.0, f32::max);
    assert!(
        bad_diff > 1e-2,
        "an unpermuted q/k lora_B changes logits by only {bad_diff}"
    );
}

#[test]
fn conversion_is_cached_by_content_and_base() {
    let p = fixtures();
    let cache = tempfile::tempdir().expect("tmp");
    let base = base_hf();
    let first = convert::convert_cached(&p.lora_dir, &base, cache.path()).expect("convert");
    let mtime = std::fs::metadata(&first)
        .and_then(|m| m.modified())
        .expect("mtime");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = convert::convert_cached(&p.lora_dir, &base, cache.path()).expect("cached");
    assert_eq!(first, second);
    assert_eq!(
        std::fs::metadata(&second)
            .and_then(|m| m.modified())
            .expect("mtime"),
        mtime
    );
    assert_eq!(
        std::fs::read(&first).expect("read"),
        std::fs::read(&p.lora_gguf).expect("read")
    );
    // a different base layout is a different conversion
    let mut other = base.clone();
    other.architecture = "qwen2".into();
    let third = convert::convert_cached(&p.lora_dir, &other, cache.path()).expect("convert");
    assert_ne!(third, first);
    // an edited adapter is a different conversion
    let copy = tempfile::tempdir().expect("tmp");
    copy_dir(&p.lora_dir, copy.path());
    let cfg = copy.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg)
        .expect("cfg")
        .replace("\"lora_alpha\": 8.0", "\"lora_alpha\": 4.0");
    std::fs::write(&cfg, text).expect("write");
    let fourth = convert::convert_cached(copy.path(), &base, cache.path()).expect("convert");
    assert_ne!(fourth, first);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for e in std::fs::read_dir(from).expect("dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

fn reasons(err: AdapterError) -> String {
    match err {
        AdapterError::Incompatible { .. } => err.to_string(),
        other => panic!("expected AdapterIncompatible, got {other}"),
    }
}

#[test]
fn both_formats_pass_the_check_on_the_right_base() {
    let p = fixtures();
    for base in [
        base_hf(),
        BaseModel::from_path(&p.gguf_f32).expect("gguf base"),
    ] {
        assert_eq!(
            check(&p.lora_dir, &base).expect("peft"),
            AdapterFormat::Peft
        );
        assert_eq!(
            check(&p.lora_gguf, &base).expect("gguf"),
            AdapterFormat::Gguf
        );
    }
}

#[test]
fn adapter_with_wrong_sizes_is_refused_with_the_reason() {
    let p = fixtures();
    let mut small = base_hf();
    small.name = "narrow-model".into();
    small.hidden_size = 32;
    small.head_dim = 8;
    small.num_layers = 1;
    for path in [&p.lora_dir, &p.lora_gguf] {
        let msg = reasons(check(path, &small).unwrap_err());
        assert!(msg.contains("narrow-model"), "{msg}");
        assert!(msg.contains("hidden size"), "{msg}");
        assert!(msg.contains("layer count"), "{msg}");
    }
    // the real stories260K model (different dims) when it is around
    // stories260K ships in the repository (models/stories260K), so this part always runs.
    let stories = adapters_common::workspace().join("models/stories260K/stories260K.gguf");
    let base = BaseModel::from_path(&stories).expect("stories base");
    let msg = reasons(check(&p.lora_gguf, &base).unwrap_err());
    assert!(msg.contains("hidden size"), "{msg}");
}

#[test]
fn adapter_for_another_architecture_is_refused() {
    let p = fixtures();
    let mut qwen = base_hf();
    qwen.architecture = "qwen2".into();
    let dir = tempfile::tempdir().expect("tmp");
    let qwen_lora = dir.path().join("qwen.gguf");
    convert::convert_to(&p.lora_dir, &qwen, &qwen_lora).expect("convert");
    let msg = reasons(check(&qwen_lora, &base_hf()).unwrap_err());
    assert!(
        msg.contains("architecture: the adapter is for `qwen2`, the base model is `llama`"),
        "{msg}"
    );
    let mut gpt2 = base_hf();
    gpt2.architecture = "gpt2".into();
    let msg = reasons(check(&p.lora_dir, &gpt2).unwrap_err());
    assert!(msg.contains("architecture"), "{msg}");
}

#[test]
fn rank_and_target_module_mismatches_are_named() {
    let p = fixtures();
    let dir = tempfile::tempdir().expect("tmp");
    copy_dir(&p.lora_dir, dir.path());
    let cfg = dir.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg)
        .expect("cfg")
        .replace("\"r\": 4", "\"r\": 8")
        .replace("\"down_proj\"", "\"lm_head\"");
    std::fs::write(&cfg, text).expect("write");
    let msg = reasons(check(dir.path(), &base_hf()).unwrap_err());
    assert!(
        msg.contains("rank: adapter_config.json says r = 8"),
        "{msg}"
    );
    assert!(msg.contains("target modules: `lm_head`"), "{msg}");
}
