//! The fixture architecture families (`llmlocal_fixtures::family`) in the candle backend:
//! each family it runs gives the designed greedy output from its HF folder and GGUF files, and
//! what it cannot compute exactly is refused with `UnsupportedArchitecture`.

mod common;

use common::*;
use llmlocal_fixtures::{ensure_families, Family, FamilyPaths, GgufFormat};
use llmlocal_plugin_api::ErrorKind;
use std::collections::HashMap;
use std::path::Path;

fn families() -> HashMap<Family, FamilyPaths> {
    ensure_families(&llmlocal_fixtures::default_dir()).expect("family fixtures are written")
}

/// Greedy decoding from a prompt ending in `!` gives the family's designed continuation.
fn assert_designed_greedy(family: Family, path: &Path) {
    let model = load(path);
    let prompt: Vec<u32> = b"Hi!".iter().map(|b| u32::from(*b)).collect();
    let mut expected = family.expected_greedy(&prompt, 40);
    expected.retain(|&t| t != llmlocal_fixtures::spec::EOS_ID);
    let (ids, _, _) = greedy(model.as_ref(), &prompt, 40);
    assert_eq!(ids, expected, "{family:?} from {}", path.display());
    assert_eq!(
        model.metadata().chat_template.as_ref().map(|t| t.as_str()),
        abi_stable::std_types::ROption::RSome(family.chat_template()),
        "{family:?}: the family's chat template reaches the metadata"
    );
}

#[test]
fn qwen3_and_phi3_run_from_hf_folders_and_gguf() {
    let paths = families();
    for family in [Family::Qwen3, Family::Phi3] {
        let p = &paths[&family];
        assert_designed_greedy(family, &p.hf_f32);
        assert_designed_greedy(family, &p.hf_f16);
        for format in GgufFormat::ALL {
            assert_designed_greedy(family, &p.gguf(format));
        }
        assert_eq!(
            load(&p.hf_f32).metadata().architecture.as_str(),
            family.name()
        );
    }
}

#[test]
fn llama_family_variants_run_from_hf_folders() {
    let paths = families();
    for family in [Family::Llama3, Family::Mistral, Family::SmolLm] {
        assert_designed_greedy(family, &paths[&family].hf_f32);
    }
    for family in [Family::Mistral, Family::SmolLm] {
        assert_designed_greedy(family, &paths[&family].gguf(GgufFormat::Q8_0));
    }
}

#[test]
fn a_llama3_gguf_applies_its_rope_factors() {
    // quantized_llama ignores `rope_freqs.weight`: such files must run on the dense llama,
    // which applies the factors, and match the HF folder (candle's llama3 rope scaling).
    let p = &families()[&Family::Llama3];
    for format in GgufFormat::ALL {
        assert_designed_greedy(Family::Llama3, &p.gguf(format));
    }
    let prompt: Vec<u32> = b"0123456789abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ!"
        .iter()
        .map(|b| u32::from(*b))
        .collect();
    let hf = load(&p.hf_f32).logits(&prompt).expect("HF logits");
    let gguf = load(&p.gguf(GgufFormat::F32))
        .logits(&prompt)
        .expect("GGUF logits");
    let diff = max_diff(&hf, &gguf);
    assert!(diff < 1e-3, "llama3 GGUF vs HF logits differ by {diff}");
}

#[test]
fn phi3_contexts_beyond_its_sliding_window_are_refused() {
    let p = &families()[&Family::Phi3];
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&p.hf_f32, dir.path());
    edit_config(dir.path(), |c| {
        c.insert("sliding_window".into(), serde_json::json!(64));
    });
    let mut request = llmlocal_plugin_api::LoadRequest::new(dir.path().to_string_lossy());
    request.device = "cpu".into();
    request.context_length = 128;
    let err = llmlocal_plugin_api::Backend::load(
        &llmlocal_backend_candle::backend::CandleBackend::new().unwrap(),
        request,
    )
    .err()
    .expect("a context past the window is refused");
    assert_eq!(err.kind, ErrorKind::UnsupportedArchitecture, "{err}");
    // Without an asked context the load stays within the window.
    assert_eq!(load(dir.path()).metadata().context_length, 64);
}

#[test]
fn embeddings_of_a_qwen3_gguf_are_refused_as_unsupported() {
    // The dense llama that computes embeddings cannot hold qwen3; the refusal must say so
    // (`Unsupported`), not call the file malformed.
    let p = &families()[&Family::Qwen3];
    let model = load(&p.gguf(GgufFormat::Q8_0));
    let request = llmlocal_plugin_api::EmbedRequest::new(vec![vec![72, 105]]);
    let err = model
        .embed(request)
        .expect_err("qwen3 embeddings are refused");
    assert_eq!(err.kind, ErrorKind::Unsupported, "{err}");
}

#[test]
fn phi3_gguf_features_quantized_phi3_would_ignore_are_refused() {
    // quantized_phi3 hard-codes rope base 10000 and reads no rope factors: files that need
    // either must be refused, not run with other numbers.
    use candle_core::quantized::{gguf_file::Value, GgmlDType, QTensor};
    let p = &families()[&Family::Phi3];
    let src = p.gguf(GgufFormat::F32);
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.gguf");
    rewrite_gguf(&src, &base, |md| {
        md.retain(|(k, _)| k != "phi3.rope.freq_base");
        md.push(("phi3.rope.freq_base".into(), Value::F32(500_000.0)));
    });
    let ones =
        candle_core::Tensor::ones(8, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let factors = dir.path().join("factors.gguf");
    rewrite_gguf_as(
        &src,
        &factors,
        None,
        |_| {},
        vec![(
            "rope_factors_long.weight".into(),
            QTensor::quantize(&ones, GgmlDType::F32).unwrap(),
        )],
    );
    for (path, names) in [(&base, "rope base"), (&factors, "rope_factors_long")] {
        let err = load_paths(&[path]).err().expect("refused");
        assert_eq!(err.kind, ErrorKind::UnsupportedArchitecture, "{err}");
        assert!(err.message.contains(names), "{err}");
    }
}
