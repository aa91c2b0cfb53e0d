//! Run-time LoRA adapters through the engine on the fixture model: on llama.cpp (its
//! manifest says `lora_per_generation`) a request naming an adapter the model was not loaded
//! with is served by the model's one loaded instance, which reads the adapter at run time;
//! several adapters are stacked into one exact GGUF LoRA by the host and give candle's merged
//! output token for token; a corrupt adapter fails only its own request.

mod adapters_common;
mod server_support;

use adapters_common::{
    engine_settings, fixtures, generate, load_in_plugin, try_generate, CANDLE, LLAMA, MAX_TOKENS,
    PROMPT,
};
use futures_util::future::join_all;
use llmlocal::{
    adapters::{convert, stack, AdapterConfig, AdapterManager},
    api::{GenerateRequest, Step},
    engine::Engine,
    plugins::LoadedModel,
};
use server_support::{plugin_library, registry};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

fn engine(cache: &Path) -> Engine {
    let settings = engine_settings(true);
    let manager = AdapterManager::new(AdapterConfig::new(cache)).expect("adapter manager");
    Engine::new(settings, registry(&["llama_cpp", "candle"]), None)
        .with_adapter_manager(Arc::new(manager))
}

fn spec(dir: &Path, scale: f32) -> String {
    format!("{}:{scale}", dir.display())
}

fn loaded_names(engine: &Engine) -> Vec<String> {
    let mut names: Vec<String> = engine.loaded().into_iter().map(|l| l.name).collect();
    names.sort();
    names
}

/// `model` loaded straight into the plugin `name` with `adapters` at load.
fn plugin_model(name: &str, model: &Path, adapters: &[(&Path, f32)]) -> LoadedModel {
    load_in_plugin(&plugin_library(name), model, adapters)
}

/// The fixture GGUF loaded straight into the llama.cpp plugin with `adapters` from the start
/// (what the host did before: a second instance per adapter set); its greedy text for PROMPT.
fn loaded_with_adapter_from_the_start(adapters: &[(&Path, f32)]) -> String {
    let model = plugin_model("llama_cpp", &fixtures().gguf_f32, adapters);
    let prompt = model.tokenize(PROMPT, true, false).expect("tokenize");
    let mut generation = model
        .generate(GenerateRequest::greedy(prompt, MAX_TOKENS))
        .expect("generate");
    let mut text = String::new();
    while let Step::Token(token) = generation.next().expect("step") {
        text.push_str(&token.text);
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_naming_a_new_adapter_is_served_by_the_loaded_instance() {
    let p = fixtures();
    let cache = tempfile::tempdir().expect("tmp");
    let engine = engine(cache.path());
    let base = generate(&engine, LLAMA, None).await;
    assert_eq!(loaded_names(&engine), vec![LLAMA.to_string()]);

    let started = Instant::now();
    let adapted = generate(&engine, LLAMA, Some(vec![spec(&p.lora_dir, 1.0)])).await;
    let run_time_ms = started.elapsed().as_secs_f64() * 1000.0;
    // One instance, no "+lora" variant: the adapter was read into the loaded model.
    assert_eq!(loaded_names(&engine), vec![LLAMA.to_string()]);
    assert_ne!(adapted, base, "the adapter changes the output");

    let started = Instant::now();
    let from_start = loaded_with_adapter_from_the_start(&[(&p.lora_gguf, 1.0)]);
    let second_instance_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(adapted, from_start);
    eprintln!(
        "first engine request with a new adapter: {run_time_ms:.1} ms (PEFT->GGUF conversion + \
         run-time read + {MAX_TOKENS} tokens); a second instance loaded with it + the same \
         generation: {second_instance_ms:.1} ms"
    );
    // Scales switch per generation on the same instance.
    let half = generate(&engine, LLAMA, Some(vec![spec(&p.lora_dir, 0.5)])).await;
    assert_eq!(
        half,
        loaded_with_adapter_from_the_start(&[(&p.lora_gguf, 0.5)])
    );
    assert_eq!(generate(&engine, LLAMA, Some(Vec::new())).await, base);
    assert_eq!(loaded_names(&engine), vec![LLAMA.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_new_and_no_adapters_share_one_instance() {
    let p = fixtures();
    let cache = tempfile::tempdir().expect("tmp");
    let engine = engine(cache.path());
    let solo_engine = self::engine(cache.path());
    let sets: Vec<Option<Vec<String>>> = vec![
        None,
        Some(vec![spec(&p.lora_dir, 1.0)]),
        Some(vec![spec(&p.lora_dir, 0.5)]),
        Some(vec![spec(&p.lora_dir, 0.5), spec(&p.lora_dir, 0.7)]),
    ];
    let mut alone = Vec::new();
    for set in &sets {
        alone.push(generate(&solo_engine, LLAMA, set.clone()).await);
    }
    // The first request of `engine` loads the model; the adapters are all new to it.
    let runs = (0..8).map(|i| {
        let set = sets[i % sets.len()].clone();
        let engine = &engine;
        async move { (i, generate(engine, LLAMA, set).await) }
    });
    for (i, text) in join_all(runs).await {
        assert_eq!(text, alone[i % sets.len()], "concurrent request {i}");
    }
    assert_eq!(loaded_names(&engine), vec![LLAMA.to_string()]);
}

/// A second PEFT LoRA of the fixture's shapes: the fixture's A with its values reversed and
/// B times -0.5, so the two adapters differ in direction and sign.
fn second_lora(dir: &Path) -> PathBuf {
    let from = &fixtures().lora_dir;
    let out = dir.join("second-lora");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::fs::copy(
        from.join("adapter_config.json"),
        out.join("adapter_config.json"),
    )
    .expect("config");
    let bytes = std::fs::read(from.join("adapter_model.safetensors")).expect("weights");
    let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut changed: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in tensors.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        let mut values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if name.contains("lora_A") {
            values.reverse();
        } else {
            values.iter_mut().for_each(|v| *v *= -0.5);
        }
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        changed.push((name, view.shape().to_vec(), data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = changed
        .iter()
        .map(|(name, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .expect("view");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &out.join("adapter_model.safetensors"))
        .expect("write weights");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stacked_adapters_on_llama_cpp_equal_candles_merged_stack() {
    let p = fixtures();
    let cache = tempfile::tempdir().expect("tmp");
    let second = second_lora(cache.path());
    let engine = engine(cache.path());
    let stacks = [
        vec![spec(&p.lora_dir, 0.5), spec(&p.lora_dir, 0.7)],
        vec![spec(&p.lora_dir, 1.0), spec(&second, 0.6)],
        vec![
            spec(&second, 0.8),
            spec(&p.lora_dir, 0.3),
            spec(&second, 0.4),
        ],
    ];
    let mut outputs = Vec::new();
    for stack in &stacks {
        let llama = generate(&engine, LLAMA, Some(stack.clone())).await;
        let candle = generate(&engine, CANDLE, Some(stack.clone())).await;
        eprintln!("{stack:?}: {llama:?}");
        assert_eq!(llama, candle, "stack {stack:?}");
        outputs.push(llama);
    }
    let base = generate(&engine, LLAMA, None).await;
    assert_ne!(outputs[0], base, "the stack changes the output");
    // llama.cpp: still one instance; one stacked file per stack, cached.
    let llama_instances = loaded_names(&engine)
        .into_iter()
        .filter(|n| n.starts_with(LLAMA))
        .count();
    assert_eq!(llama_instances, 1);
    let stacked = std::fs::read_dir(cache.path().join("stacked"))
        .expect("stack cache")
        .count();
    assert_eq!(stacked, stacks.len());
    let again = self::engine(cache.path());
    assert_eq!(
        generate(&again, LLAMA, Some(stacks[1].clone())).await,
        outputs[1]
    );
    let stacked_again = std::fs::read_dir(cache.path().join("stacked"))
        .expect("stack cache")
        .count();
    assert_eq!(stacked_again, stacks.len(), "the cached stack was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_adapter_at_run_time_fails_only_its_request() {
    let p = fixtures();
    let cache = tempfile::tempdir().expect("tmp");
    let engine = engine(cache.path());
    let base = generate(&engine, LLAMA, None).await;
    let adapted = generate(&engine, LLAMA, Some(vec![spec(&p.lora_dir, 1.0)])).await;
    // A GGUF LoRA whose header is intact (the host's compatibility check reads only the
    // header) but whose tensor data is cut off.
    let bytes = std::fs::read(&p.lora_gguf).expect("lora gguf");
    let cut = cache.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 64]).expect("write");
    let err = try_generate(&engine, LLAMA, Some(vec![spec(&cut, 1.0)]))
        .await
        .expect_err("a corrupt adapter");
    eprintln!("{err}");
    assert!(err.to_string().contains("cut.gguf"), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    // The model keeps serving, with and without adapters, from its one instance.
    assert_eq!(generate(&engine, LLAMA, None).await, base);
    let again = generate(&engine, LLAMA, Some(vec![spec(&p.lora_dir, 1.0)])).await;
    assert_eq!(again, adapted);
    assert_eq!(loaded_names(&engine), vec![LLAMA.to_string()]);
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_stacked_gguf_lora_in_llama_cpp_matches_candles_merged_adapters_numerically() {
    let p = fixtures();
    let dir = tempfile::tempdir().expect("tmp");
    let second = second_lora(dir.path());
    let second_gguf = dir.path().join("second.gguf");
    convert::convert_to(&second, &adapters_common::base_hf(), &second_gguf).expect("convert");
    let stacked = stack::stack_cached(
        &[(p.lora_gguf.clone(), 1.0), (second_gguf, 0.6)],
        &dir.path().join("stacked"),
    )
    .expect("stack");
    let llama = plugin_model("llama_cpp", &p.gguf_f32, &[(&stacked, 1.0)]);
    let candle = plugin_model("candle", &p.hf_dir, &[(&p.lora_dir, 1.0), (&second, 0.6)]);
    let single = plugin_model("llama_cpp", &p.gguf_f32, &[(&p.lora_gguf, 1.0)]);
    for text in ["Hi ", "x=w", "a\n"] {
        let prompt = llama.tokenize(text, true, false).expect("tokenize");
        let stacked_logits = llama.logits(&prompt).expect("logits");
        let diff = max_diff(&stacked_logits, &candle.logits(&prompt).expect("logits"));
        eprintln!("{text:?}: max |stacked llama.cpp - merged candle| = {diff:.2e}");
        assert!(
            diff < 2e-3,
            "{text:?}: the stack differs from candle's merge by {diff}"
        );
        // The second adapter contributes: the stack is not the first adapter alone.
        let alone = max_diff(&stacked_logits, &single.logits(&prompt).expect("logits"));
        assert!(
            alone > 1e-2,
            "{text:?}: the second adapter changed nothing ({alone})"
        );
    }
}
