//! The llama-cpp plugin on a real tiny model: stories260K (Karpathy's TinyStories llama).

mod common;

use common::*;
use llmlocal_plugin_api::{
    abi_stable::std_types::ROption, FinishReason, GenerateRequest, Sampling, Step,
};

/// Karpathy's greedy continuation of "Once upon a time" (llama2.c doc/stories260K.md).
const KARPATHY: &str =
    ", there was a little girl named Lily. She loved to play outside in the park. \
One day, she saw a big, red ball. She wanted to play with it, but it was too high.";

#[test]
fn metadata_comes_from_the_file() {
    let Some(path) = stories() else { return };
    let model = load(request(&path));
    let m = model.metadata();
    assert_eq!(m.architecture.as_str(), "llama");
    assert_eq!(m.vocab_size, 512);
    assert_eq!(m.bos_token, ROption::RSome(1));
    assert_eq!(m.eos_token, ROption::RSome(2));
    assert!(m.end_of_generation_tokens.contains(&2));
    assert!(!m.end_of_generation_tokens.contains(&1));
    assert_eq!(m.layer_count, 5);
    assert_eq!(m.embedding_length, 64);
    assert_eq!(m.train_context_length, 2048);
    // 0 = min(train context, 4096).
    assert_eq!(m.context_length, 2048);
    assert_eq!(m.device.as_str(), "cpu");
    assert!(m.parameter_count > 250_000, "{}", m.parameter_count);
    assert!(m.size_bytes > 1_000_000, "{}", m.size_bytes);
    assert!(m.load_ms > 0.0);
}

#[test]
fn explicit_context_length_is_reported() {
    let Some(path) = stories() else { return };
    let mut req = request(&path);
    req.context_length = 256;
    req.parallel = 2;
    let model = load(req);
    assert_eq!(model.metadata().context_length, 256);
}

#[test]
fn tokenize_detokenize_round_trip() {
    let Some(path) = stories() else { return };
    let model = load(request(&path));
    let text = "Once upon a time, Lily saw a big red ball.";
    let with_bos = model.tokenize(text, true, false).unwrap();
    assert_eq!(with_bos[0], 1, "add_special adds BOS");
    let without = model.tokenize(text, false, false).unwrap();
    assert_eq!(&with_bos[1..], without.as_slice());
    assert!(without.iter().all(|&t| t < 512));
    assert_eq!(model.detokenize(&with_bos, true).unwrap(), text);
    assert_eq!(model.detokenize(&without, false).unwrap(), text);
    assert_eq!(model.detokenize(&without, true).unwrap(), text);
    // Without skipping, special tokens are rendered.
    assert!(model
        .detokenize(&with_bos, false)
        .unwrap()
        .starts_with("<s>"));
    // parse_special turns "<s>" text into the BOS token; without it the text is spelled out.
    let parsed = model.tokenize("<s>hi", false, true).unwrap();
    assert_eq!(parsed[0], 1);
    let literal = model.tokenize("<s>hi", false, false).unwrap();
    assert!(!literal.contains(&1));
    assert_eq!(model.detokenize(&[], true).unwrap(), "");
}

#[test]
fn greedy_is_deterministic_and_matches_karpathy() {
    let Some(path) = stories() else { return };
    let model = load(request(&path));
    let prompt = prompt(model.as_ref(), "Once upon a time");
    let first = generate(model.as_ref(), GenerateRequest::greedy(prompt.clone(), 60));
    let second = generate(model.as_ref(), GenerateRequest::greedy(prompt, 60));
    assert_eq!(first, second);
    assert_eq!(first.finish, FinishReason::Length);
    assert_eq!(first.ids.len(), 60);
    assert!(
        first.text.starts_with(KARPATHY) || KARPATHY.starts_with(&first.text),
        "greedy text differs from llama2.c's: {:?}",
        first.text
    );
    assert!(first.text.len() >= 100, "{:?}", first.text);
}

#[test]
fn four_parallel_generations_equal_the_single_one() {
    let Some(path) = stories() else { return };
    let mut req = request(&path);
    req.parallel = 4;
    let model = load(req);
    let prompt = prompt(model.as_ref(), "Once upon a time");
    let single = generate(model.as_ref(), GenerateRequest::greedy(prompt.clone(), 48));
    let mut gens: Vec<_> = (0..4)
        .map(|_| {
            model
                .generate(GenerateRequest::greedy(prompt.clone(), 48))
                .unwrap()
        })
        .collect();
    // Round-robin consumption: all four run in the same batches.
    let mut outs = vec![
        Output {
            ids: vec![],
            text: String::new(),
            finish: FinishReason::Length
        };
        4
    ];
    let mut done = [false; 4];
    while done.iter().any(|d| !d) {
        for (i, g) in gens.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            match g.next().unwrap() {
                Step::Token(t) => {
                    outs[i].ids.push(t.id);
                    outs[i].text.push_str(&t.text);
                }
                Step::Finished(end) => {
                    outs[i].text.push_str(&end.text);
                    outs[i].finish = end.reason;
                    done[i] = true;
                }
            }
        }
    }
    for out in &outs {
        assert_eq!(out, &single);
    }
    let stats = gens[0].stats();
    assert_eq!(stats.generated_tokens, 48);
    assert_eq!(stats.prompt_tokens, u32::try_from(prompt.len()).unwrap());
}

#[test]
fn more_generations_than_slots_wait_in_the_queue() {
    let Some(path) = stories() else { return };
    let mut req = request(&path);
    req.parallel = 2;
    let model = load(req);
    let prompt = prompt(model.as_ref(), "Once upon a time");
    let single = generate(model.as_ref(), GenerateRequest::greedy(prompt.clone(), 12));
    let mut gens: Vec<_> = (0..5)
        .map(|_| {
            model
                .generate(GenerateRequest::greedy(prompt.clone(), 12))
                .unwrap()
        })
        .collect();
    // In order: each finished generation frees its slot for the next queued one. (A consumer
    // that waits on a queued generation while ignoring the running ones would wait forever:
    // the running ones stop when their bounded channels are full.)
    for g in gens.iter_mut() {
        assert_eq!(drain(g.as_mut()), single);
    }
}

#[test]
fn dropping_a_generation_cancels_it_and_frees_the_slot() {
    let Some(path) = stories() else { return };
    let mut req = request(&path);
    req.parallel = 1;
    let model = load(req);
    let prompt = prompt(model.as_ref(), "Once upon a time");
    let expected = generate(model.as_ref(), GenerateRequest::greedy(prompt.clone(), 20));
    let mut long = model
        .generate(GenerateRequest::greedy(prompt.clone(), 1000))
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(long.next().unwrap(), Step::Token(_)));
    }
    drop(long);
    // With one slot, this only runs if the cancelled sequence gave its slot (and KV) back.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let out = generate(model.as_ref(), GenerateRequest::greedy(prompt.clone(), 20));
            let _ = tx.send(out);
        });
        let out = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the slot was not freed");
        assert_eq!(out, expected);
    });
}

#[test]
fn seeded_sampling_reproduces_and_seeds_differ() {
    let Some(path) = stories() else { return };
    let model = load(request(&path));
    let prompt = prompt(model.as_ref(), "Once upon a time");
    let run = |seed: u64| {
        let mut req = GenerateRequest::greedy(prompt.clone(), 40);
        req.sampling = Sampling {
            temperature: 1.0,
            seed: Some(seed).into(),
            ..Sampling::default()
        };
        generate(model.as_ref(), req)
    };
    let a = run(42);
    assert_eq!(a, run(42));
    let others: Vec<_> = (43..46).map(run).collect();
    assert!(
        others.iter().any(|o| o.ids != a.ids),
        "different seeds gave the same text"
    );
}

#[test]
fn max_tokens_ends_with_length_and_the_end_repeats() {
    let Some(path) = stories() else { return };
    let model = load(request(&path));
    let prompt = prompt(model.as_ref(), "Once upon a time");
    let mut generation = model.generate(GenerateRequest::greedy(prompt, 5)).unwrap();
    let out = drain(generation.as_mut());
    assert_eq!(out.ids.len(), 5);
    assert_eq!(out.finish, FinishReason::Length);
    assert_eq!(
        generation.next().unwrap().finish_reason(),
        Some(FinishReason::Length)
    );
    assert_eq!(generation.stats().generated_tokens, 5);
}

#[test]
fn a_full_context_ends_with_context_full() {
    let Some(path) = stories() else { return };
    let mut req = request(&path);
    req.context_length = 16;
    req.parallel = 1;
    let model = load(req);
    let prompt = prompt(model.as_ref(), "Once upon a time");
    let mut gen_req = GenerateRequest::greedy(prompt.clone(), 0);
    gen_req.ignore_eos = true;
    let out = generate(model.as_ref(), gen_req);
    assert_eq!(out.finish, FinishReason::ContextFull);
    // docs/contract.md: prompt + generated <= context_length, ContextFull on the token that
    // makes the sum equal to it.
    assert_eq!(out.ids.len() + prompt.len(), 16, "{out:?}");
}

#[test]
fn logits_agree_with_the_greedy_token() {
    let Some(path) = stories() else { return };
    let model = load(request(&path));
    let prompt = prompt(model.as_ref(), "Once upon a time");
    let logits = model.logits(&prompt).unwrap();
    assert_eq!(logits.len(), 512);
    let argmax = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .unwrap();
    let out = generate(model.as_ref(), GenerateRequest::greedy(prompt.clone(), 1));
    assert_eq!(out.ids, vec![argmax]);
    // A clean sequence each time: the same logits again.
    assert_eq!(model.logits(&prompt).unwrap(), logits);
}

#[test]
fn small_batches_chunk_the_prompt_without_changing_the_output() {
    let Some(path) = stories() else { return };
    let model = load(request(&path));
    let prompt = prompt(
        model.as_ref(),
        "Once upon a time, in a small town, there lived a cat",
    );
    let expected = generate(model.as_ref(), GenerateRequest::greedy(prompt.clone(), 16));
    let mut req = request(&path);
    req.batch_size = 3;
    req.parallel = 2;
    let chunked = load(req);
    // Two at once: prompt chunks of both share the 3-token batches.
    let mut a = chunked
        .generate(GenerateRequest::greedy(prompt.clone(), 16))
        .unwrap();
    let mut b = chunked
        .generate(GenerateRequest::greedy(prompt, 16))
        .unwrap();
    assert_eq!(drain(a.as_mut()), expected);
    assert_eq!(drain(b.as_mut()), expected);
}

#[test]
fn dropping_a_queued_generation_never_takes_a_slot() {
    let Some(path) = stories() else { return };
    let mut req = request(&path);
    req.parallel = 1;
    let model = load(req);
    let prompt = prompt(model.as_ref(), "Once upon a time");
    let expected = generate(model.as_ref(), GenerateRequest::greedy(prompt.clone(), 10));
    let mut running = model
        .generate(GenerateRequest::greedy(prompt.clone(), 10))
        .unwrap();
    let queued = model
        .generate(GenerateRequest::greedy(prompt.clone(), 1000))
        .unwrap();
    drop(queued);
    assert_eq!(drain(running.as_mut()), expected);
    // The only slot is free again: the dropped job (1000 tokens, nobody reading) must not
    // hold it.
    assert_eq!(
        generate(model.as_ref(), GenerateRequest::greedy(prompt, 10)),
        expected
    );
}

#[test]
fn a_generation_outlives_its_model_handle() {
    let Some(path) = stories() else { return };
    let model = load(request(&path));
    let prompt = prompt(model.as_ref(), "Once upon a time");
    let expected = generate(model.as_ref(), GenerateRequest::greedy(prompt.clone(), 20));
    let mut generation = model.generate(GenerateRequest::greedy(prompt, 20)).unwrap();
    drop(model);
    assert_eq!(drain(generation.as_mut()), expected);
}
