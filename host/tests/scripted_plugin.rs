//! The scripted test plugin through the host: load, manifest, model, tokenizer, generation.

mod common;

use llmlocal::{
    api::PLUGIN_API_VERSION,
    plugins::{
        ErrorKind, FinishReason, GenerateRequest, LoadRequest, LoadedModel, PluginRegistry,
        PluginStatus, RunningGeneration, Sampling, Step,
    },
};
use std::path::Path;

const SCRIPT: &str = "Once upon a time, a wörld €!";
const BOS: u32 = 256;
const EOS: u32 = 257;

fn registry(dir: &Path) -> PluginRegistry {
    PluginRegistry::load(&[dir.to_path_buf()])
}

fn load_model(registry: &PluginRegistry, model: &Path) -> LoadedModel {
    let backend = registry.backend("scripted").expect("scripted is loaded");
    backend
        .load_model(LoadRequest::new(model.to_string_lossy()))
        .expect("load the scripted model")
}

/// Runs a generation to its end: (token ids, text, finish reason).
fn drain(generation: &mut RunningGeneration) -> (Vec<u32>, String, FinishReason) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    for _ in 0..100_000 {
        match generation.next().expect("next") {
            Step::Token(token) => {
                ids.push(token.id);
                text.push_str(&token.text);
            }
            Step::Finished(end) => {
                text.push_str(&end.text);
                return (ids, text, end.reason);
            }
        }
    }
    panic!("the generation did not end");
}

#[test]
fn scripted_plugin_loads_with_its_manifest() {
    let plugins = common::plugin_dir(&["scripted"]);
    let registry = registry(plugins.path());
    assert_eq!(registry.entries().len(), 1);
    let entry = &registry.entries()[0];
    assert_eq!(entry.status, PluginStatus::Loaded);
    let backend = registry.backend("scripted").expect("loaded");
    assert_eq!(backend.name(), "scripted");
    assert_eq!(backend.path, entry.path);
    let m = &backend.manifest;
    assert_eq!(m.api_version.as_str(), PLUGIN_API_VERSION);
    assert!(!m.version.is_empty());
    assert!(m.description.contains("test backend"), "{}", m.description);
    assert_eq!(
        m.devices.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
        ["cpu"]
    );
    assert_eq!(m.capabilities.parallel_generations, 4);
    assert_eq!(entry.manifest.as_ref(), Some(m));
    assert_eq!(
        registry.choose(None, None, None).expect("only one").name(),
        "scripted"
    );
}

#[test]
fn scripted_model_metadata_and_tokenizer_round_trip() {
    let plugins = common::plugin_dir(&["scripted"]);
    let registry = registry(plugins.path());
    let model = load_model(
        &registry,
        &common::write_script(plugins.path(), "m.txt", SCRIPT),
    );
    assert_eq!(model.backend_name(), "scripted");
    let meta = model.metadata().expect("metadata");
    assert_eq!(meta.vocab_size, 258);
    assert_eq!(meta.bos_token.into_option(), Some(BOS));
    assert_eq!(meta.eos_token.into_option(), Some(EOS));
    assert_eq!(meta.end_of_generation_tokens.as_slice(), [EOS]);

    let text = "héllo, wörld € <s>";
    let tokens = model.tokenize(text, true, false).expect("tokenize");
    assert_eq!(tokens[0], BOS);
    assert_eq!(
        &tokens[1..],
        text.bytes().map(u32::from).collect::<Vec<_>>()
    );
    assert_eq!(model.detokenize(&tokens, true).expect("detokenize"), text);
    assert_eq!(
        model.detokenize(&tokens[..1], false).expect("detokenize"),
        "<s>"
    );
    let special = model.tokenize("a</s>", false, true).expect("tokenize");
    assert_eq!(special, [u32::from(b'a'), EOS]);
    let err = model.detokenize(&[999], false).expect_err("out of range");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    assert!(err.to_string().starts_with("backend `scripted`: "), "{err}");
}

#[test]
fn missing_and_foreign_model_files_get_their_error_kinds() {
    let plugins = common::plugin_dir(&["scripted"]);
    let registry = registry(plugins.path());
    let backend = registry.backend("scripted").expect("loaded");
    let missing = plugins.path().join("nope.txt");
    let err = backend
        .load_model(LoadRequest::new(missing.to_string_lossy()))
        .expect_err("missing file");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let gguf = plugins.path().join("model.gguf");
    std::fs::write(&gguf, b"GGUF\x03\x00\x00\x00").expect("write");
    let err = backend
        .load_model(LoadRequest::new(gguf.to_string_lossy()))
        .expect_err("not a script");
    assert_eq!(err.kind(), ErrorKind::UnsupportedFormat);
    assert!(err.to_string().contains("model.gguf"), "{err}");
}

#[test]
fn greedy_generation_streams_the_script_then_ends() {
    let plugins = common::plugin_dir(&["scripted"]);
    let registry = registry(plugins.path());
    let model = load_model(
        &registry,
        &common::write_script(plugins.path(), "m.txt", SCRIPT),
    );
    let prompt = model.tokenize("Tell me", true, false).expect("tokenize");
    let mut generation = model
        .generate(GenerateRequest::greedy(prompt.clone(), 1000))
        .expect("generate");
    let (ids, text, reason) = drain(&mut generation);
    assert_eq!(text, SCRIPT);
    assert_eq!(ids, SCRIPT.bytes().map(u32::from).collect::<Vec<_>>());
    assert_eq!(reason, FinishReason::EndOfGeneration);
    // After the end, the same end again.
    assert_eq!(
        generation.next().expect("next").finish_reason(),
        Some(FinishReason::EndOfGeneration)
    );
    let stats = generation.stats().expect("stats");
    assert_eq!(stats.prompt_tokens as usize, prompt.len());
    assert_eq!(stats.generated_tokens as usize, SCRIPT.len());
    assert!(stats.total_ms >= stats.time_to_first_token_ms);
    assert!(stats.tokens_per_second >= 0.0);
    // Greedy output does not depend on the prompt.
    let other = model
        .tokenize("Something else", true, false)
        .expect("tokenize");
    let mut again = model
        .generate(GenerateRequest::greedy(other, 1000))
        .expect("generate");
    assert_eq!(drain(&mut again).1, SCRIPT);
}

#[test]
fn max_tokens_ends_with_length() {
    let plugins = common::plugin_dir(&["scripted"]);
    let registry = registry(plugins.path());
    let model = load_model(
        &registry,
        &common::write_script(plugins.path(), "m.txt", SCRIPT),
    );
    let mut generation = model
        .generate(GenerateRequest::greedy(vec![BOS], 5))
        .expect("generate");
    let (ids, text, reason) = drain(&mut generation);
    assert_eq!(reason, FinishReason::Length);
    assert_eq!(ids.len(), 5);
    assert_eq!(text, &SCRIPT[..5]);
    assert_eq!(generation.stats().expect("stats").generated_tokens, 5);
}

#[test]
fn ignore_eos_loops_the_script_until_max_tokens() {
    let plugins = common::plugin_dir(&["scripted"]);
    let registry = registry(plugins.path());
    let model = load_model(
        &registry,
        &common::write_script(plugins.path(), "m.txt", "abc"),
    );
    let mut request = GenerateRequest::greedy(vec![BOS], 7);
    request.ignore_eos = true;
    let mut generation = model.generate(request).expect("generate");
    let (_, text, reason) = drain(&mut generation);
    assert_eq!((text.as_str(), reason), ("abcabca", FinishReason::Length));
}

#[test]
fn sampling_settings_change_the_output_deterministically() {
    let plugins = common::plugin_dir(&["scripted"]);
    let registry = registry(plugins.path());
    let model = load_model(
        &registry,
        &common::write_script(plugins.path(), "m.txt", "0123456789"),
    );
    let sampled = |seed: u64| {
        let mut request = GenerateRequest::greedy(vec![BOS, 1], 100);
        request.sampling = Sampling {
            temperature: 0.8,
            seed: Some(seed).into(),
            ..Sampling::default()
        };
        drain(&mut model.generate(request).expect("generate")).1
    };
    // (256 + 1 + seed) mod 10: seed 0 starts at '7', seed 1 at '8'.
    assert_eq!(sampled(0), "7890123456");
    assert_eq!(sampled(0), sampled(0));
    assert_eq!(sampled(1), "8901234567");
}

#[test]
fn two_generations_run_at_once_in_two_threads() {
    let plugins = common::plugin_dir(&["scripted"]);
    let registry = registry(plugins.path());
    let model = load_model(
        &registry,
        &common::write_script(plugins.path(), "m.txt", SCRIPT),
    );
    let mut first = model
        .generate(GenerateRequest::greedy(vec![BOS], 1000))
        .expect("generate");
    let mut second = model
        .generate(GenerateRequest::greedy(vec![BOS], 1000))
        .expect("generate");
    // Interleave a little before handing both to threads: independent state.
    let a = first.next().expect("next");
    let b = second.next().expect("next");
    assert_eq!(a, b);
    let handles = [first, second].map(|mut generation| {
        std::thread::spawn(move || {
            let (_, text, reason) = drain(&mut generation);
            (text, reason, generation.stats().expect("stats"))
        })
    });
    for handle in handles {
        let (text, reason, stats) = handle.join().expect("thread");
        assert_eq!(text, &SCRIPT[1..]);
        assert_eq!(reason, FinishReason::EndOfGeneration);
        assert_eq!(stats.generated_tokens as usize, SCRIPT.len());
    }
    // A model clone used from another thread while the original is dropped.
    let clone = model.clone();
    drop(model);
    let text = std::thread::spawn(move || {
        drain(
            &mut clone
                .generate(GenerateRequest::greedy(vec![BOS], 3))
                .expect("generate"),
        )
        .1
    })
    .join()
    .expect("thread");
    assert_eq!(text, &SCRIPT[..3]);
}

#[test]
fn logits_point_at_the_next_scripted_token() {
    let plugins = common::plugin_dir(&["scripted"]);
    let registry = registry(plugins.path());
    let model = load_model(
        &registry,
        &common::write_script(plugins.path(), "m.txt", "xyz"),
    );
    let argmax = |tokens: &[u32]| {
        let logits = model.logits(tokens).expect("logits");
        assert_eq!(logits.len(), 258);
        (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .map(|i| i as u32)
    };
    assert_eq!(argmax(&[BOS]), Some(u32::from(b'x')));
    assert_eq!(argmax(&[BOS, u32::from(b'x')]), Some(u32::from(b'y')));
    assert_eq!(argmax(&[BOS, 120, 121, 122]), Some(EOS));
    assert_eq!(
        model.logits(&[]).expect_err("empty").kind(),
        ErrorKind::InvalidRequest
    );
}

#[test]
fn dropping_a_generation_midway_is_instant_and_the_model_goes_on() {
    let plugins = common::plugin_dir(&["scripted"]);
    let registry = registry(plugins.path());
    let model = load_model(
        &registry,
        &common::write_script(plugins.path(), "m.txt", SCRIPT),
    );
    let mut request = GenerateRequest::greedy(vec![BOS], 0);
    request.ignore_eos = true;
    let mut generation = model.generate(request).expect("generate");
    for _ in 0..10 {
        assert!(matches!(generation.next().expect("next"), Step::Token(_)));
    }
    let started = std::time::Instant::now();
    drop(generation);
    assert!(started.elapsed() < std::time::Duration::from_millis(100));
    let mut again = model
        .generate(GenerateRequest::greedy(vec![BOS], 2))
        .expect("generate");
    assert_eq!(drain(&mut again).1, &SCRIPT[..2]);
}

#[test]
fn a_full_context_ends_the_generation() {
    let plugins = common::plugin_dir(&["scripted"]);
    let registry = registry(plugins.path());
    let path = common::write_script(plugins.path(), "m.txt", SCRIPT);
    let mut request = LoadRequest::new(path.to_string_lossy());
    request.context_length = 4;
    let model = registry
        .backend("scripted")
        .expect("loaded")
        .load_model(request)
        .expect("load");
    assert_eq!(model.metadata().expect("metadata").context_length, 4);
    let mut generation = model
        .generate(GenerateRequest::greedy(vec![BOS], 100))
        .expect("start");
    let (ids, _, reason) = drain(&mut generation);
    assert_eq!((ids.len(), reason), (3, FinishReason::ContextFull));
    let err = model
        .generate(GenerateRequest::greedy(vec![BOS; 4], 1))
        .expect_err("prompt fills the context");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    let err = model
        .generate(GenerateRequest::greedy(vec![], 1))
        .expect_err("empty prompt");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
}
