//! The fixture LoRA through both backend plugins (loaded like the host loads them):
//! candle with the PEFT folder, llama.cpp with the converted GGUF LoRA. Both must equal the
//! reference forward on the merged weights, differ from the base model, and agree token for
//! token with each other, which is the end-to-end test of the converter.

mod adapters_common;

use std::path::PathBuf;

use adapters_common::{fixtures, load_in_plugin, max_diff, workspace};
use llmlocal::api::{AdapterRequest, GenerateRequest, Step};
use llmlocal::plugins::LoadedModel;
use llmlocal_fixtures::{lora, reference, spec};

fn plugin_file(crate_name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("debug");
    let file = dir.join(format!(
        "{}{crate_name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    if file.is_file() {
        Some(file)
    } else {
        eprintln!(
            "SKIP: {} is not built (cargo build -p {})",
            file.display(),
            crate_name.replace('_', "-")
        );
        None
    }
}

/// Greedy tokens (the end-of-generation token is not part of the output).
fn greedy(model: &LoadedModel, prompt: &[u32]) -> Vec<u32> {
    let mut gen = model
        .generate(GenerateRequest::greedy(prompt.to_vec(), 120))
        .expect("generate");
    let mut out = Vec::new();
    while let Step::Token(t) = gen.next().expect("step") {
        out.push(t.id);
    }
    out
}

fn without_eos(mut ids: Vec<u32>) -> Vec<u32> {
    ids.retain(|id| *id != spec::EOS_ID);
    ids
}

/// Prompts: ending in a newline, a space and a merge (adapted), and in a chain byte (unchanged).
fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![spec::IM_START_ID, u32::from(b'a'), u32::from(b'\n')],
        b"Hi ".iter().map(|b| u32::from(*b)).collect(),
        vec![u32::from(b'x'), 269],
        b"x=w".iter().map(|b| u32::from(*b)).collect(),
    ]
}

/// Checks `model` (with the fixture LoRA) against the reference forward on merged weights;
/// returns its greedy outputs.
fn check_adapted(name: &str, model: &LoadedModel) -> Vec<Vec<u32>> {
    let merged = lora::fixture_merged(1.0).expect("merge");
    let mut outputs = Vec::new();
    let mut differs = 0;
    for prompt in prompts() {
        let got = greedy(model, &prompt);
        let expected = without_eos(reference::greedy(&merged, &prompt, 120));
        assert_eq!(got, expected, "{name}: prompt {prompt:?}");
        assert_eq!(expected, without_eos(lora::expected_greedy(&prompt, 120)));
        if got != without_eos(spec::expected_greedy(&prompt, 120)) {
            differs += 1;
        }
        let logits = model.logits(&prompt).expect("logits");
        let diff = max_diff(&logits, &reference::logits(&merged, &prompt));
        eprintln!("{name}: prompt {prompt:?}: max |logit - merged reference| = {diff:.2e}");
        assert!(
            diff < 2e-3,
            "{name}: logits differ from the merged reference by {diff}"
        );
        outputs.push(got);
    }
    assert_eq!(
        differs, 3,
        "{name}: the adapter must change the three non-chain prompts"
    );
    outputs
}

#[test]
fn candle_peft_and_llama_cpp_converted_gguf_agree_with_the_merged_reference() {
    let p = fixtures();
    let Some(candle) = plugin_file("llmlocal_backend_candle") else {
        return;
    };
    let base_model = load_in_plugin(&candle, &p.hf_dir, &[]);
    for prompt in prompts() {
        assert_eq!(
            greedy(&base_model, &prompt),
            without_eos(spec::expected_greedy(&prompt, 120)),
            "candle base model"
        );
    }
    drop(base_model);
    let adapted = load_in_plugin(&candle, &p.hf_dir, &[(&p.lora_dir, 1.0)]);
    let candle_out = check_adapted("candle + PEFT", &adapted);
    drop(adapted);

    let Some(llama) = plugin_file("llmlocal_backend_llama_cpp") else {
        return;
    };
    let adapted = load_in_plugin(&llama, &p.gguf_f32, &[(&p.lora_gguf, 1.0)]);
    let llama_out = check_adapted("llama.cpp + converted GGUF LoRA", &adapted);
    assert_eq!(llama_out, candle_out, "the two backends disagree");
}

#[test]
fn a_half_scale_adapter_matches_the_half_merge_in_both_backends() {
    let p = fixtures();
    let (Some(candle), Some(llama)) = (
        plugin_file("llmlocal_backend_candle"),
        plugin_file("llmlocal_backend_llama_cpp"),
    ) else {
        return;
    };
    let merged = lora::fixture_merged(0.5).expect("merge");
    let prompt = prompts().remove(0);
    let expected = reference::logits(&merged, &prompt);
    let c = load_in_plugin(&candle, &p.hf_dir, &[(&p.lora_dir, 0.5)]);
    let l = load_in_plugin(&llama, &p.gguf_f32, &[(&p.lora_gguf, 0.5)]);
    for (name, model) in [("candle", &c), ("llama.cpp", &l)] {
        let diff = max_diff(&model.logits(&prompt).expect("logits"), &expected);
        assert!(diff < 2e-3, "{name} at scale 0.5: logits differ by {diff}");
    }
    assert_eq!(greedy(&c, &prompt), greedy(&l, &prompt));
}

#[test]
fn llama_cpp_per_request_adapters_in_concurrent_generations() {
    let p = fixtures();
    let Some(llama) = plugin_file("llmlocal_backend_llama_cpp") else {
        return;
    };
    let model = load_in_plugin(&llama, &p.gguf_f32, &[(&p.lora_gguf, 1.0)]);
    let prompt = prompts().remove(0);
    // One generation with the load-time adapter (None), one with no adapter (empty list),
    // running at once, each read on its own thread. A hang fails the test instead of
    // blocking the suite.
    let (tx, rx) = std::sync::mpsc::channel();
    for (label, adapters) in [
        ("with", None),
        ("without", Some(Vec::<AdapterRequest>::new())),
    ] {
        let mut request = GenerateRequest::greedy(prompt.clone(), 120);
        request.adapters = adapters.map(Into::into).into();
        let mut gen = model.generate(request).expect("generate");
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let result = loop {
                match gen.next() {
                    Ok(Step::Token(t)) => out.push(t.id),
                    Ok(Step::Finished(_)) => break Ok(out),
                    Err(e) => break Err(e.to_string()),
                }
            };
            let _ = tx.send((label, result));
        });
    }
    let mut got = std::collections::HashMap::new();
    for _ in 0..2 {
        let (label, result) = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("both generations finish within 60 s");
        got.insert(label, result.expect("generation"));
    }
    assert_eq!(
        got["with"],
        without_eos(lora::expected_greedy(&prompt, 120))
    );
    assert_eq!(
        got["without"],
        without_eos(spec::expected_greedy(&prompt, 120))
    );
}
