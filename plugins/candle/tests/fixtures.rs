//! The project's fixture model (tests/fixtures): designed greedy continuations and the
//! reference forward, through the HF folder (f32/f16/bf16), the F32 GGUF and the Q8_0 GGUF.

mod common;

use common::{greedy, load, max_diff};
use llmlocal_fixtures::{reference, spec, FixturePaths};
use llmlocal_plugin_api::{FinishReason, Model};
use std::path::PathBuf;
use tokenizers::Tokenizer;

fn fixtures() -> FixturePaths {
    llmlocal_fixtures::ensure_default().expect("writing the fixture models")
}

const PROMPTS: &[&str] = &[
    "Hello world",
    "w",
    "!",
    "the cat sat on the mat",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "numbers 0123 and ~",
];

fn all_formats(p: &FixturePaths) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("hf f32", p.hf_dir.clone()),
        ("hf f16", p.hf_f16_dir.clone()),
        ("hf bf16", p.hf_bf16_dir.clone()),
        ("gguf f32", p.gguf_f32.clone()),
        ("gguf q8_0", p.gguf_q8_0.clone()),
    ]
}

#[test]
fn greedy_output_is_the_designed_continuation() {
    let p = fixtures();
    for (label, path) in all_formats(&p) {
        let model = load(&path);
        for &text in PROMPTS {
            let prompt = model.tokenize(text, true, true).unwrap();
            let expected = spec::expected_greedy(&prompt, 120);
            let (ids, streamed, end) = greedy(model.as_ref(), &prompt, 120);
            // The generation stops at EOS without returning it.
            let (body, last) = expected.split_at(expected.len() - 1);
            assert_eq!(
                last,
                [spec::EOS_ID],
                "{label} {text:?}: designed run ends with EOS"
            );
            assert_eq!(ids, body, "{label} {text:?}");
            assert_eq!(end, FinishReason::EndOfGeneration, "{label} {text:?}");
            assert_eq!(
                streamed,
                spec::expected_text(&prompt, 120),
                "{label} {text:?}"
            );
        }
    }
}

#[test]
fn logits_match_the_reference_forward() {
    let p = fixtures();
    let weights = reference::fixture_weights();
    for (label, path, tolerance) in [
        ("hf f32", p.hf_dir.clone(), 1e-3),
        ("gguf f32", p.gguf_f32.clone(), 1e-3),
        ("gguf q8_0", p.gguf_q8_0.clone(), 0.3),
    ] {
        let model = load(&path);
        for &text in PROMPTS {
            let prompt = model.tokenize(text, true, true).unwrap();
            let want = reference::logits(&weights, &prompt);
            let got = model.logits(&prompt).unwrap();
            assert_eq!(got.len(), spec::VOCAB_SIZE);
            let diff = max_diff(&got, &want);
            assert!(diff < tolerance, "{label} {text:?}: max |diff| {diff}");
        }
    }
}

#[test]
fn gguf_byte_level_tokenizer_equals_tokenizer_json() {
    let p = fixtures();
    let reference = Tokenizer::from_file(p.hf_dir.join("tokenizer.json")).unwrap();
    let strings = [
        "Hello world",
        "the theater there",
        "  two spaces\tand tab\n\nnewlines",
        "café 日本語 🙂🚀",
        "<|im_start|>user\nhi<|im_end|>",
        "it's they're we'll",
        "",
    ];
    for path in [&p.gguf_f32, &p.gguf_q8_0] {
        let model = load(path);
        for text in strings {
            for parse_special in [true, false] {
                let mut reference = reference.clone();
                reference.set_encode_special_tokens(!parse_special);
                let want = reference.encode(text, true).unwrap().get_ids().to_vec();
                let got = model.tokenize(text, true, parse_special).unwrap();
                assert_eq!(got, want, "{text:?} parse_special {parse_special}");
                assert_eq!(model.detokenize(&got, false).unwrap(), text);
            }
        }
    }
}

#[test]
fn fixture_metadata() {
    let p = fixtures();
    for (label, path) in all_formats(&p) {
        let model: Box<dyn Model> = load(&path);
        let m = model.metadata();
        assert_eq!(m.architecture.as_str(), "llama", "{label}");
        assert_eq!(m.vocab_size as usize, spec::VOCAB_SIZE, "{label}");
        assert_eq!(m.layer_count as usize, spec::NUM_LAYERS, "{label}");
        assert_eq!(m.bos_token.into_option(), Some(spec::BOS_ID), "{label}");
        assert_eq!(m.eos_token.into_option(), Some(spec::EOS_ID), "{label}");
        assert!(
            m.end_of_generation_tokens.contains(&spec::IM_END_ID),
            "{label}"
        );
        assert_eq!(
            m.chat_template.into_option().unwrap().as_str(),
            spec::CHAT_TEMPLATE,
            "{label}"
        );
        // No BOS is added for this model.
        assert_eq!(
            model.tokenize("w", true, true).unwrap(),
            vec![u32::from(b'w')],
            "{label}"
        );
    }
}

/// On the CPU a llama folder runs on the plugin's dense llama (preallocated KV cache, decode
/// matmuls over the threads), not candle's `llama`, in every stored dtype.
#[test]
fn hf_llama_folders_run_dense_on_the_cpu() {
    use llmlocal_backend_candle::{files, hf, net::Net};
    let p = fixtures();
    for dir in [&p.hf_dir, &p.hf_f16_dir, &p.hf_bf16_dir] {
        let files::ModelFiles::Hf(hf_files) =
            files::resolve(&[dir.to_string_lossy().into_owned()]).unwrap()
        else {
            panic!("{} is not an HF folder", dir.display());
        };
        let loaded = hf::load(&hf_files, &candle_core::Device::Cpu, 0, &[]).unwrap();
        assert!(
            matches!(loaded.net, Net::Dense(_)),
            "{} did not load dense",
            dir.display()
        );
    }
}
