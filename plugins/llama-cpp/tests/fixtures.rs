//! The designed fixture models (tests/fixtures): greedy output equals the designed chain on
//! both the F32 and the Q8_0 GGUF, and logits agree with the plain-f32 reference forward.

mod common;

use common::*;
use llmlocal_fixtures::{reference, spec};
use llmlocal_plugin_api::{abi_stable::std_types::ROption, FinishReason, GenerateRequest};
use std::path::PathBuf;

fn fixture_ggufs() -> Vec<(&'static str, PathBuf, f32)> {
    let paths = llmlocal_fixtures::ensure_default().expect("fixtures are written");
    // Logit tolerances from the fixture notes: F32 ~1e-3, Q8_0 ~0.3.
    vec![
        ("f32", paths.gguf_f32, 1e-3),
        ("q8_0", paths.gguf_q8_0, 0.3),
    ]
}

#[test]
fn greedy_follows_the_designed_chain_then_eos() {
    for (label, path, _) in fixture_ggufs() {
        let model = load(request(&path));
        for text in ["x=w", "Hello:w", "Hello world", "!"] {
            let ids = model.tokenize(text, true, false).unwrap();
            let expected = spec::expected_greedy(&ids, 200);
            assert_eq!(expected.last(), Some(&spec::EOS_ID));
            let out = generate(model.as_ref(), GenerateRequest::greedy(ids.clone(), 200));
            assert_eq!(
                out.ids,
                expected[..expected.len() - 1],
                "{label}: prompt {text:?}"
            );
            assert_eq!(out.finish, FinishReason::EndOfGeneration, "{label}");
            assert_eq!(out.text, spec::expected_text(&ids, 200), "{label}");
        }
        let ids = model.tokenize("x=w", true, false).unwrap();
        let out = generate(model.as_ref(), GenerateRequest::greedy(ids, 200));
        assert_eq!(out.text, "xyz{|}~", "{label}");
    }
}

#[test]
fn ignore_eos_keeps_going_past_the_end() {
    let (_, path, _) = fixture_ggufs().remove(0);
    let model = load(request(&path));
    let ids = model.tokenize("x=w", true, false).unwrap();
    let mut req = GenerateRequest::greedy(ids, 12);
    req.ignore_eos = true;
    let out = generate(model.as_ref(), req);
    assert_eq!(out.finish, FinishReason::Length);
    assert_eq!(out.ids.len(), 12);
    assert_eq!(out.ids[7], spec::EOS_ID);
}

#[test]
fn metadata_matches_the_spec() {
    for (label, path, _) in fixture_ggufs() {
        let model = load(request(&path));
        let m = model.metadata();
        assert_eq!(m.architecture.as_str(), "llama", "{label}");
        assert_eq!(m.vocab_size as usize, spec::VOCAB_SIZE);
        assert_eq!(m.layer_count as usize, spec::NUM_LAYERS);
        assert_eq!(m.embedding_length as usize, spec::HIDDEN_SIZE);
        assert_eq!(m.train_context_length as usize, spec::CONTEXT_LENGTH);
        assert_eq!(m.bos_token, ROption::RSome(spec::BOS_ID));
        assert_eq!(m.eos_token, ROption::RSome(spec::EOS_ID));
        assert!(m.end_of_generation_tokens.contains(&spec::EOS_ID));
        assert_eq!(
            m.chat_template.as_ref().map(|t| t.as_str()),
            ROption::RSome(spec::CHAT_TEMPLATE)
        );
        // parse_special: special-token text becomes its id.
        let ids = model.tokenize("<|im_start|>user", false, true).unwrap();
        assert_eq!(ids[0], spec::IM_START_ID, "{label}");
    }
}

#[test]
fn logits_match_the_reference_forward() {
    let weights = reference::fixture_weights();
    for (label, path, tolerance) in fixture_ggufs() {
        let model = load(request(&path));
        for text in ["x=w", "Hello world, the end"] {
            let ids = model.tokenize(text, true, false).unwrap();
            let ours = model.logits(&ids).unwrap();
            let theirs = reference::logits(&weights, &ids);
            assert_eq!(ours.len(), theirs.len());
            let worst = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst <= tolerance, "{label} {text:?}: max |diff| {worst}");
        }
    }
}

/// The designed fixture LoRA (GGUF conversion written by the host's adapter converter):
/// non-chain tokens continue with 'A' instead of 'a'; per generation, no adapters gives the
/// base behaviour back.
#[test]
fn designed_lora_redirects_and_can_be_switched_off_per_generation() {
    use llmlocal_fixtures::lora;
    use llmlocal_plugin_api::{
        abi_stable::std_types::{RString, RVec},
        AdapterRequest,
    };
    let paths = llmlocal_fixtures::ensure_default().expect("fixtures are written");
    let lora_gguf = paths.dir.join(lora::LORA_GGUF);
    if !lora_gguf.is_file() {
        eprintln!(
            "SKIP: {} not written yet (the host's PEFT -> GGUF converter makes it)",
            lora_gguf.display()
        );
        return;
    }
    let mut req = request(&paths.gguf_f32);
    req.adapters = RVec::from(vec![AdapterRequest {
        path: RString::from(lora_gguf.to_string_lossy().as_ref()),
        scale: 1.0,
    }]);
    let model = load(req);
    let ids = model.tokenize("Hello world ", true, false).unwrap();
    let expected = lora::expected_greedy(&ids, 200);
    let out = generate(model.as_ref(), GenerateRequest::greedy(ids.clone(), 200));
    assert_eq!(out.ids, expected[..expected.len() - 1]);
    assert_eq!(out.finish, FinishReason::EndOfGeneration);
    let mut base = GenerateRequest::greedy(ids.clone(), 200);
    base.adapters = ROption::RSome(RVec::new());
    let expected_base = spec::expected_greedy(&ids, 200);
    let out = generate(model.as_ref(), base);
    assert_eq!(out.ids, expected_base[..expected_base.len() - 1]);
}
