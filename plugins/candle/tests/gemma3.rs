//! Gemma 3 in the candle backend (`llmlocal_backend_candle::gemma3`): the fixture family runs
//! from its HF folders and GGUF files, its sliding window is applied exactly (a window of one
//! more position, or none, changes the logits past it), decoding token by token equals one
//! prefill, and what the network does not compute is refused as `UnsupportedArchitecture`.

mod common;

use candle_core::Device;
use common::*;
use llmlocal_backend_candle::gemma3::{Config, Gemma3};
use llmlocal_backend_candle::net::Net;
use llmlocal_fixtures::family_gemma3::SLIDING_WINDOW;
use llmlocal_fixtures::{ensure_families, Family, FamilyPaths, GgufFormat};
use llmlocal_plugin_api::ErrorKind;
use std::path::PathBuf;
use std::sync::Arc;

fn paths() -> FamilyPaths {
    ensure_families(&llmlocal_fixtures::default_dir()).expect("family fixtures are written")
        [&Family::Gemma3]
        .clone()
}

/// The network of the F32 GGUF.
fn net() -> Arc<Gemma3> {
    let loaded =
        llmlocal_backend_candle::gguf::load(&paths().gguf(GgufFormat::F32), &Device::Cpu, 128)
            .unwrap_or_else(|e| panic!("gemma3 GGUF loads: {e}"));
    match loaded.net {
        Net::Gemma3(net) => net,
        _ => panic!("a gemma3 GGUF loads as the Gemma 3 network"),
    }
}

fn logits(net: &Arc<Gemma3>, tokens: &[u32]) -> Vec<f32> {
    let mut session = net.session();
    session
        .forward(tokens, 0)
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .expect("forward")
}

/// The same weights with another window.
fn with_window(net: &Arc<Gemma3>, window: Option<usize>) -> Arc<Gemma3> {
    let cfg = Config {
        window,
        ..net.config().clone()
    };
    Arc::new(Gemma3::new(net.weights().clone(), cfg).expect("network"))
}

/// 43 varied tokens (longer than the window), and the agreement test's `Hi!` + 40 `!`.
fn sequences() -> [Vec<u32>; 2] {
    let varied = (0..43u32).map(|i| 33 + (i * 7) % 90).collect();
    let mut agreement: Vec<u32> = b"Hi!".iter().map(|b| u32::from(*b)).collect();
    agreement.extend([u32::from(b'!'); 40]);
    [varied, agreement]
}

#[test]
fn the_sliding_window_changes_the_logits_past_it() {
    let net = net();
    let [varied, agreement] = sequences();
    // The agreement test's `Hi!` + `!`s looks the same through windows of 16 and 17 (past
    // `Hi` every key is a `!`), so the off-by-one is shown on the varied sequence; dropping
    // the window is visible on both.
    let cases = [
        ("varied", &varied, "no window", None),
        // candle-transformers' gemma3 prefill: one more position.
        (
            "varied",
            &varied,
            "a window one wider",
            Some(SLIDING_WINDOW + 1),
        ),
        ("agreement test's", &agreement, "no window", None),
    ];
    for (name, tokens, what, window) in cases {
        let base = logits(&net, tokens);
        let diff = max_diff(&base, &logits(&with_window(&net, window), tokens));
        eprintln!("{name} sequence, {what}: max logit change {diff:.4}");
        // 5e-3 is the agreement test's F32 tolerance: a backend making this mistake fails it.
        assert!(
            diff > 5e-3,
            "{name} sequence: {what} changes logits by only {diff}"
        );
    }
}

#[test]
fn decoding_token_by_token_equals_one_prefill() {
    let net = net();
    let [tokens, _] = sequences();
    let mut session = net.session();
    let mut last = Vec::new();
    for (pos, t) in tokens.iter().enumerate() {
        last = session
            .forward(&[*t], pos)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .expect("decode step");
    }
    let diff = max_diff(&last, &logits(&net, &tokens));
    assert!(diff < 1e-3, "decode and prefill differ by {diff}");
    // Chunks that straddle the window boundary.
    let mut session = net.session();
    let mut pos = 0;
    for chunk in tokens.chunks(10) {
        last = session
            .forward(chunk, pos)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .expect("chunk");
        pos += chunk.len();
    }
    let diff = max_diff(&last, &logits(&net, &tokens));
    assert!(diff < 1e-3, "chunked prefill and prefill differ by {diff}");
}

#[test]
fn gemma3_runs_from_hf_folders_and_gguf_with_its_template() {
    let p = paths();
    let prompt: Vec<u32> = b"Hi!".iter().map(|b| u32::from(*b)).collect();
    let inputs: Vec<PathBuf> = [p.hf_f32.clone(), p.hf_f16.clone()]
        .into_iter()
        .chain(GgufFormat::ALL.map(|f| p.gguf(f)))
        .collect();
    for path in inputs {
        let model = load(&path);
        let (ids, _, _) = greedy(model.as_ref(), &prompt, 20);
        assert_eq!(
            ids,
            Family::Gemma3.expected_greedy(&prompt, 20),
            "{}",
            path.display()
        );
        let meta = model.metadata();
        assert_eq!(meta.architecture.as_str(), "gemma3");
        assert_eq!(
            meta.chat_template.as_ref().map(|t| t.as_str()),
            abi_stable::std_types::ROption::RSome(Family::Gemma3.chat_template()),
        );
    }
}

#[test]
fn gemma3_options_the_network_lacks_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let refused = [
        ("attn_logit_softcapping", serde_json::json!(50.0)),
        ("hidden_activation", serde_json::json!("gelu")),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "yarn", "factor": 8.0}),
        ),
    ];
    for (key, value) in refused {
        let dir = tmp.path().join(key);
        copy_dir(&paths().hf_f32, &dir);
        edit_config(&dir, |c| {
            c.insert(key.to_string(), value.clone());
        });
        let err = load_paths(&[&dir])
            .err()
            .unwrap_or_else(|| panic!("{key} loads"));
        assert_eq!(err.kind, ErrorKind::UnsupportedArchitecture, "{key}: {err}");
        assert!(err.message.contains(key), "{key}: {err}");
    }
    // EmbeddingGemma-like extra tensors in a GGUF.
    let dst = tmp.path().join("extra.gguf");
    rewrite_gguf_with_extra_tensor(&paths().gguf(GgufFormat::F32), &dst);
    let err = load_paths(&[&dst])
        .err()
        .expect("a GGUF with an unknown tensor loads");
    assert_eq!(err.kind, ErrorKind::UnsupportedArchitecture, "{err}");
    assert!(err.message.contains("dense_2.weight"), "{err}");
}

fn rewrite_gguf_with_extra_tensor(src: &std::path::Path, dst: &std::path::Path) {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let mut file = std::fs::File::open(src).expect("open");
    let content = gguf_file::Content::read(&mut file).expect("read");
    let mut tensors: Vec<(String, QTensor)> = content
        .tensor_infos
        .keys()
        .map(|n| {
            (
                n.clone(),
                content.tensor(&mut file, n, &Device::Cpu).expect("tensor"),
            )
        })
        .collect();
    let extra =
        candle_core::Tensor::zeros((64, 64), candle_core::DType::F32, &Device::Cpu).expect("zeros");
    tensors.push((
        "dense_2.weight".into(),
        QTensor::quantize(&extra, GgmlDType::F32).expect("quantize"),
    ));
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::fs::File::create(dst).expect("create");
    gguf_file::write(&mut out, &metadata, &refs).expect("write");
}
