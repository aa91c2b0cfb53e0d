//! Prompt-prefix reuse on stories260K: what must NOT be reused. KV cells kept from an
//! earlier generation are dropped when they would be wrong (another adapter set, a `logits`
//! call that needs a clean sequence) or were not asked to be kept (`cache_prompt: false`, a
//! cancelled generation). One slot (`parallel = 1`), so every job meets the kept cells.
//! The positive cases (same tokens, cached counts) are in the conformance suite.

mod adapter_files;
mod common;

use adapter_files::write_lora_seeded;
use common::*;
use llmlocal_plugin_api::{
    abi_stable::std_types::{ROption, RString, RVec},
    AdapterRequest, GenerateRequest, Model, Step,
};
use std::path::Path;

const TOKENS: u32 = 12;

/// Output and cached prompt tokens of one whole generation.
fn run(model: &dyn Model, request: GenerateRequest) -> (Output, u32) {
    let mut generation = model.generate(request).expect("generation starts");
    let out = drain(generation.as_mut());
    (out, generation.stats().cached_prompt_tokens)
}

fn greedy(prompt: &[u32]) -> GenerateRequest {
    GenerateRequest::greedy(prompt.to_vec(), TOKENS)
}

fn one_slot(path: &Path) -> Box<dyn Model> {
    let mut req = request(path);
    req.parallel = 1;
    load(req)
}

fn primed(path: &Path) -> (Box<dyn Model>, Vec<u32>, Output) {
    let model = one_slot(path);
    let prompt = prompt(model.as_ref(), "Once upon a time, there was a little dog");
    let (first, cached) = run(model.as_ref(), greedy(&prompt));
    assert_eq!(cached, 0, "a fresh model has nothing cached");
    let (again, cached) = run(model.as_ref(), greedy(&prompt));
    assert_eq!(again, first);
    assert!(cached > 0, "the same prompt again reused nothing");
    (model, prompt, first)
}

#[test]
fn another_adapter_set_does_not_reuse_kept_cells() {
    let Some(path) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lora = dir.path().join("a.gguf");
    write_lora_seeded(&lora, 1, 64);
    let adapters = RVec::from(vec![AdapterRequest {
        path: RString::from(lora.to_string_lossy().as_ref()),
        scale: 1.0,
    }]);
    let expected = {
        let mut req = request(&path);
        req.adapters = adapters.clone();
        let fresh = load(req);
        let prompt = prompt(fresh.as_ref(), "Once upon a time, there was a little dog");
        run(fresh.as_ref(), greedy(&prompt)).0
    };
    let (model, prompt, base) = primed(&path);
    let mut with_lora = greedy(&prompt);
    with_lora.adapters = ROption::RSome(adapters);
    let (got, cached) = run(model.as_ref(), with_lora);
    assert_eq!(
        got, expected,
        "cells computed without the adapter were reused"
    );
    assert_ne!(got.ids, base.ids, "the adapter had no effect");
    assert_eq!(cached, 0);
    // Back to the load set: the adapter's cells are not reused either.
    let (got, cached) = run(model.as_ref(), greedy(&prompt));
    assert_eq!((got, cached), (base, 0));
}

#[test]
fn logits_start_from_a_clean_sequence_and_clear_it() {
    let Some(path) = stories() else { return };
    let expected = {
        let fresh = one_slot(&path);
        let prompt = prompt(fresh.as_ref(), "Once upon a time, there was a little dog");
        fresh.logits(&prompt).expect("logits")
    };
    let (model, prompt, base) = primed(&path);
    assert_eq!(model.logits(&prompt).expect("logits"), expected);
    let (got, cached) = run(model.as_ref(), greedy(&prompt));
    assert_eq!((got, cached), (base, 0));
}

#[test]
fn cache_prompt_false_neither_reuses_nor_keeps() {
    let Some(path) = stories() else { return };
    let (model, prompt, base) = primed(&path);
    let mut uncached = greedy(&prompt);
    uncached.cache_prompt = false;
    let (got, cached) = run(model.as_ref(), uncached);
    assert_eq!((got, cached), (base.clone(), 0));
    let (got, cached) = run(model.as_ref(), greedy(&prompt));
    assert_eq!((got, cached), (base, 0));
}

#[test]
fn a_cancelled_generation_keeps_nothing() {
    let Some(path) = stories() else { return };
    let (model, prompt, base) = primed(&path);
    let mut generation = model
        .generate(GenerateRequest::greedy(prompt.clone(), 0))
        .expect("generation starts");
    assert!(matches!(generation.next(), Ok(Step::Token(_))));
    drop(generation);
    let (got, cached) = run(model.as_ref(), greedy(&prompt));
    assert_eq!((got, cached), (base, 0));
}
