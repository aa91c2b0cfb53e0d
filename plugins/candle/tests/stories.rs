//! stories260K (Karpathy's tiny llama) through both formats: the HF folder and the GGUF.

mod common;

use common::{greedy, load, stories};
use llmlocal_plugin_api::{FinishReason, GenerateRequest, Model, Sampling, Step};
use std::time::Instant;

/// Karpathy's greedy output for this model (llama2.c doc/stories260K.md, quoted in
/// shared/models/README.md), up to where the quote is cut.
const EXPECTED: &str = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\nLily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. She said, \"I want to play wi";

const PROMPT: &str = "Once upon a time";

fn prompt(model: &dyn Model) -> Vec<u32> {
    model.tokenize(PROMPT, true, false).expect("tokenize")
}

#[test]
fn hf_and_gguf_greedy_match_each_other_and_karpathy() {
    let Some(dir) = stories() else { return };
    let hf = load(&dir.join("hf"));
    let gguf = load(&dir.join("stories260K.gguf"));
    let p_hf = prompt(hf.as_ref());
    let p_gguf = prompt(gguf.as_ref());
    assert_eq!(p_hf, p_gguf, "both tokenizers agree on the prompt");
    assert_eq!(p_hf[0], 1, "add_special puts BOS first");

    let (ids_hf, text_hf, _) = greedy(hf.as_ref(), &p_hf, 64);
    let (ids_gguf, text_gguf, _) = greedy(gguf.as_ref(), &p_gguf, 64);
    assert!(
        ids_hf.len() >= 32,
        "at least 32 tokens, got {}",
        ids_hf.len()
    );
    assert_eq!(
        ids_hf, ids_gguf,
        "same greedy tokens from safetensors and GGUF"
    );
    assert_eq!(text_hf, text_gguf);

    let full = format!("{PROMPT}{text_hf}");
    let n = full.len().min(EXPECTED.len());
    assert!(n >= 150, "compared only {n} characters: {full:?}");
    assert_eq!(&full[..n], &EXPECTED[..n], "matches Karpathy's greedy text");

    // detokenize agrees with the streamed pieces.
    let mut all = p_hf.clone();
    all.extend(&ids_hf);
    assert_eq!(hf.detokenize(&all, true).unwrap(), full);
}

#[test]
fn metadata_from_both_formats() {
    let Some(dir) = stories() else { return };
    for path in [dir.join("hf"), dir.join("stories260K.gguf")] {
        let m = load(&path).metadata();
        assert_eq!(m.architecture.as_str(), "llama", "{}", path.display());
        assert_eq!(m.vocab_size, 512);
        assert_eq!(m.embedding_length, 64);
        assert_eq!(m.layer_count, 5);
        assert_eq!(m.bos_token.into_option(), Some(1));
        assert_eq!(m.eos_token.into_option(), Some(2));
        assert!(m.end_of_generation_tokens.contains(&2));
        assert_eq!(m.device.as_str(), "cpu");
    }
}

#[test]
fn logits_agree_between_formats() {
    let Some(dir) = stories() else { return };
    let hf = load(&dir.join("hf"));
    let gguf = load(&dir.join("stories260K.gguf"));
    let tokens = prompt(hf.as_ref());
    let a = hf.logits(&tokens).unwrap();
    let b = gguf.logits(&tokens).unwrap();
    assert_eq!(a.len(), 512);
    assert_eq!(b.len(), 512);
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(max < 1e-3, "max |hf - gguf| = {max}");
}

#[test]
fn logits_equal_the_first_generation_step() {
    let Some(dir) = stories() else { return };
    let model = load(&dir.join("stories260K.gguf"));
    let tokens = prompt(model.as_ref());
    let logits = model.logits(&tokens).unwrap();
    let argmax = llmlocal_backend_candle::sampling::argmax(&logits);
    let (ids, _, _) = greedy(model.as_ref(), &tokens, 1);
    assert_eq!(ids, vec![argmax]);
}

#[test]
fn two_generations_at_once_match_one_alone() {
    let Some(dir) = stories() else { return };
    for path in [dir.join("hf"), dir.join("stories260K.gguf")] {
        let model = load(&path);
        let tokens = prompt(model.as_ref());
        let (alone, _, _) = greedy(model.as_ref(), &tokens, 48);
        let other_prompt = model.tokenize("The little dog", true, false).unwrap();
        let (other_alone, _, _) = greedy(model.as_ref(), &other_prompt, 48);
        let g1 = model
            .generate(GenerateRequest::greedy(tokens.clone(), 48))
            .unwrap();
        let g2 = model
            .generate(GenerateRequest::greedy(other_prompt.clone(), 48))
            .unwrap();
        let (a, b) = std::thread::scope(|s| {
            let h1 = s.spawn(|| common::drain(g1).0);
            let h2 = s.spawn(|| common::drain(g2).0);
            (h1.join().unwrap(), h2.join().unwrap())
        });
        assert_eq!(a, alone, "{}", path.display());
        assert_eq!(b, other_alone, "{}", path.display());
    }
}

#[test]
fn dropping_a_generation_midway_is_fine() {
    let Some(dir) = stories() else { return };
    let model = load(&dir.join("stories260K.gguf"));
    let tokens = prompt(model.as_ref());
    let (baseline, _, _) = greedy(model.as_ref(), &tokens, 20);
    let mut g = model
        .generate(GenerateRequest::greedy(tokens.clone(), 20))
        .unwrap();
    for _ in 0..5 {
        assert!(matches!(g.next().unwrap(), Step::Token(_)));
    }
    drop(g);
    let (again, _, _) = greedy(model.as_ref(), &tokens, 20);
    assert_eq!(again, baseline);
}

#[test]
fn max_tokens_ends_with_length_and_stays_ended() {
    let Some(dir) = stories() else { return };
    let model = load(&dir.join("hf"));
    let tokens = prompt(model.as_ref());
    let mut g = model.generate(GenerateRequest::greedy(tokens, 3)).unwrap();
    for _ in 0..3 {
        assert!(matches!(g.next().unwrap(), Step::Token(_)));
    }
    assert_eq!(
        g.next().unwrap().finish_reason(),
        Some(FinishReason::Length)
    );
    assert_eq!(
        g.next().unwrap().finish_reason(),
        Some(FinishReason::Length)
    );
    let stats = g.stats();
    assert_eq!(stats.generated_tokens, 3);
    assert_eq!(stats.prompt_tokens, 5);
}

#[test]
fn context_full_ends_the_generation() {
    let Some(dir) = stories() else { return };
    let mut request = llmlocal_plugin_api::LoadRequest::new(dir.join("hf").to_string_lossy());
    request.context_length = 12;
    request.device = "cpu".into();
    let model = llmlocal_plugin_api::Backend::load(
        &llmlocal_backend_candle::CandleBackend::new().unwrap(),
        request,
    )
    .unwrap();
    assert_eq!(model.metadata().context_length, 12);
    let tokens = prompt(model.as_ref());
    let (ids, _, end) = greedy(model.as_ref(), &tokens, 100);
    assert_eq!(end, FinishReason::ContextFull);
    assert_eq!(tokens.len() + ids.len(), 12);
}

fn sampled(tokens: &[u32], seed: u64, max_tokens: u32, ignore_eos: bool) -> GenerateRequest {
    GenerateRequest {
        sampling: Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed).into(),
            ..Sampling::default()
        },
        ignore_eos,
        ..GenerateRequest::greedy(tokens.to_vec(), max_tokens)
    }
}

#[test]
fn end_of_generation_token_ends_it() {
    let Some(dir) = stories() else { return };
    // stories260K was trained with BOS (id 1) between stories, so it never samples EOS
    // (id 2). Declare BOS the EOS in a copy of the GGUF: its sampled stories then end.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("eos_is_bos.gguf");
    common::rewrite_gguf(&dir.join("stories260K.gguf"), &path, |md| {
        for (k, v) in md.iter_mut() {
            if k == "tokenizer.ggml.eos_token_id" {
                *v = candle_core::quantized::gguf_file::Value::U32(1);
            }
        }
    });
    let model = load(&path);
    assert!(model.metadata().end_of_generation_tokens.contains(&1));
    let tokens = prompt(model.as_ref());
    let found = (0..20u64).find_map(|seed| {
        let (ids, _, _) = common::drain(model.generate(sampled(&tokens, seed, 500, true)).unwrap());
        ids.iter().position(|&id| id == 1).map(|at| (seed, at, ids))
    });
    let (seed, at, with_eos) = found.expect("some sampled story ends");
    let (ids, _, end) = common::drain(model.generate(sampled(&tokens, seed, 500, false)).unwrap());
    assert_eq!(end, FinishReason::EndOfGeneration);
    assert_eq!(
        ids,
        with_eos[..at].to_vec(),
        "stops right before the end token"
    );
}

#[test]
fn seeded_sampling_is_reproducible() {
    let Some(dir) = stories() else { return };
    let model = load(&dir.join("hf"));
    let tokens = prompt(model.as_ref());
    let run = |seed: u64| {
        let request = GenerateRequest {
            sampling: Sampling {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: Some(seed).into(),
                ..Sampling::default()
            },
            ..GenerateRequest::greedy(tokens.clone(), 48)
        };
        common::drain(model.generate(request).unwrap()).0
    };
    assert_eq!(run(42), run(42));
    let first = run(0);
    assert!(
        (1..6).any(|s| run(s) != first),
        "different seeds give different samples"
    );
}

#[test]
fn throughput_is_reported() {
    let Some(dir) = stories() else { return };
    for path in [dir.join("hf"), dir.join("stories260K.gguf")] {
        let model = load(&path);
        let tokens = prompt(model.as_ref());
        let mut request = GenerateRequest::greedy(tokens, 200);
        request.ignore_eos = true;
        let mut g = model.generate(request).unwrap();
        let start = Instant::now();
        while let Step::Token(_) = g.next().unwrap() {}
        let stats = g.stats();
        eprintln!(
            "{}: {} tokens in {:.0} ms, {:.0} tok/s decode, ttft {:.1} ms",
            path.display(),
            stats.generated_tokens,
            start.elapsed().as_secs_f64() * 1000.0,
            stats.tokens_per_second,
            stats.time_to_first_token_ms
        );
        assert_eq!(stats.generated_tokens, 200);
        assert!(stats.tokens_per_second > 0.0);
    }
}

/// The stories weights relabelled as another architecture: mistral is llama without tied
/// embeddings (the plugin aliases lm_head), qwen2 is llama with q/k/v biases (zero here), so
/// both must give the llama logits and greedy text.
#[test]
fn mistral_and_qwen2_run_the_same_weights_as_llama() {
    let Some(dir) = stories() else { return };
    let llama = load(&dir.join("hf"));
    let tokens = prompt(llama.as_ref());
    let want = llama.logits(&tokens).unwrap();
    let (want_ids, _, _) = greedy(llama.as_ref(), &tokens, 24);
    for (model_type, class) in [
        ("mistral", "MistralForCausalLM"),
        ("qwen2", "Qwen2ForCausalLM"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        common::copy_dir(&dir.join("hf"), tmp.path());
        common::edit_config(tmp.path(), |c| {
            c.insert("model_type".into(), model_type.into());
            c.insert("architectures".into(), serde_json::json!([class]));
        });
        if model_type == "qwen2" {
            let file = tmp.path().join("model.safetensors");
            let dev = candle_core::Device::Cpu;
            let mut weights = candle_core::safetensors::load(&file, &dev).unwrap();
            for layer in 0..5 {
                for (proj, n) in [("q_proj", 64), ("k_proj", 32), ("v_proj", 32)] {
                    let zeros =
                        candle_core::Tensor::zeros(n, candle_core::DType::F32, &dev).unwrap();
                    weights.insert(format!("model.layers.{layer}.self_attn.{proj}.bias"), zeros);
                }
            }
            candle_core::safetensors::save(&weights, &file).unwrap();
        }
        let model = load(tmp.path());
        assert_eq!(model.metadata().architecture.as_str(), model_type);
        let got = model.logits(&tokens).unwrap();
        let max = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            max < 1e-4,
            "{model_type}: max |logit - llama logit| = {max}"
        );
        let (ids, _, _) = greedy(model.as_ref(), &tokens, 24);
        assert_eq!(ids, want_ids, "{model_type}");
    }
}

/// A prompt fed in small chunks (KV cache + rectangular causal mask) gives the logits of
/// one pass.
#[test]
fn chunked_prompt_gives_the_same_logits() {
    let Some(dir) = stories() else { return };
    for path in [dir.join("hf"), dir.join("stories260K.gguf")] {
        let whole = load(&path);
        let mut request = llmlocal_plugin_api::LoadRequest::new(path.to_string_lossy());
        request.device = "cpu".into();
        request.batch_size = 3;
        let chunked =
            llmlocal_plugin_api::Backend::load(&llmlocal_backend_candle::CandleBackend, request)
                .unwrap();
        let tokens = whole
            .tokenize(
                "Once upon a time, there was a little girl named Lily.",
                true,
                false,
            )
            .unwrap();
        assert!(tokens.len() > 7);
        let a = whole.logits(&tokens).unwrap();
        let b = chunked.logits(&tokens).unwrap();
        let max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(max < 1e-4, "{}: max diff {max}", path.display());
    }
}

/// The F16 GGUF (random weights) with Meta's 32000-piece Llama 2 SentencePiece vocabulary:
/// F16 tensors load, the vocabulary builds, and text round-trips.
#[test]
fn f16_gguf_with_llama2_vocabulary() {
    let Some(models) = common::shared_models() else {
        eprintln!("SKIP: shared models not found");
        return;
    };
    let path = models.join("random-fallback/llama-2-tiny-random/llama-2-tiny-random.gguf");
    if !path.is_file() {
        eprintln!("SKIP: {} not found", path.display());
        return;
    }
    let model = load(&path);
    let m = model.metadata();
    assert_eq!(m.vocab_size, 32000);
    for text in [
        "Hello world, this is Llama 2.",
        "  spaces\tand\nnewlines",
        "café 日本語 🙂",
    ] {
        let ids = model.tokenize(text, true, false).unwrap();
        assert_eq!(ids[0], 1, "BOS first");
        assert_eq!(model.detokenize(&ids, true).unwrap(), text);
    }
    // "Hello" is one piece in Llama 2's vocabulary ("▁Hello" = 15043).
    assert_eq!(model.tokenize("Hello", false, false).unwrap(), vec![15043]);
    let prompt = model.tokenize("Hello", true, false).unwrap();
    let (ids, _, _) = greedy(model.as_ref(), &prompt, 8);
    assert_eq!(ids.len(), 8);
}
