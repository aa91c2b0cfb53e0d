//! The host-RAM prompt cache (`cache-ram-mib`) on stories260K with one slot (`parallel = 1`),
//! so every new conversation pushes the previous one out of the slot: the pushed-out state
//! comes back from RAM for the next turn of its conversation (counted as cached, same
//! tokens as without the cache), only its common prefix is reused after an edit, the cap
//! evicts the least recently used states, and a state never crosses adapter sets.
//! Prompts are token ids, so the expected cached counts are exact.

mod adapter_files;
mod common;

use adapter_files::write_lora_seeded;
use common::*;
use llmlocal_plugin_api::{
    abi_stable::std_types::{ROption, RString, RVec},
    model_info,
    request::load_option,
    AdapterRequest, ExtValue, Extension, FinishReason, GenerateRequest, Model,
};
use std::path::Path;

const TOKENS: u32 = 12;

/// `n` token ids from `start` (stories260K's vocabulary has 512).
fn ids(start: u32, n: u32) -> Vec<u32> {
    (start..start + n).map(|id| id % 500 + 5).collect()
}

fn joined(parts: &[&[u32]]) -> Vec<u32> {
    parts.concat()
}

/// Output and cached prompt tokens of one whole greedy generation.
fn run(model: &dyn Model, prompt: &[u32]) -> (Output, u32) {
    run_request(model, GenerateRequest::greedy(prompt.to_vec(), TOKENS))
}

fn run_request(model: &dyn Model, request: GenerateRequest) -> (Output, u32) {
    let mut generation = model.generate(request).expect("generation starts");
    let out = drain(generation.as_mut());
    (out, generation.stats().cached_prompt_tokens)
}

/// One slot, with a RAM cache of `mib` (`None`: the option is not sent).
fn one_slot(path: &Path, mib: Option<i64>) -> Box<dyn Model> {
    let mut req = request(path);
    req.parallel = 1;
    req.context_length = 512;
    if let Some(mib) = mib {
        req.extensions.push(Extension {
            key: RString::from(load_option::CACHE_RAM_MIB),
            value: ExtValue::Int(mib),
        });
    }
    load(req)
}

/// The same generation on a fresh model without any cache.
fn reference(path: &Path, prompt: &[u32]) -> Output {
    let mut request = GenerateRequest::greedy(prompt.to_vec(), TOKENS);
    request.cache_prompt = false;
    run_request(one_slot(path, None).as_ref(), request).0
}

/// Chat A's first turn, then chat B's (which takes A's slot), then A's second turn made by
/// `second` from A's first prompt and answer. Returns that prompt, its output and cached
/// count, and how many tokens A's first turn left in the slot's cells.
fn a_b_a(
    model: &dyn Model,
    second: impl Fn(&[u32], &Output) -> Vec<u32>,
) -> (Vec<u32>, Output, u32, usize) {
    let a1 = ids(10, 60);
    let (out_a1, cached) = run(model, &a1);
    assert_eq!(cached, 0);
    let (_, cached) = run(model, &ids(300, 60));
    assert_eq!(cached, 0, "chat B shares nothing with A");
    let a2 = second(&a1, &out_a1);
    let (out, cached) = run(model, &a2);
    (a2, out, cached, held_after(&a1, &out_a1))
}

/// The tokens a generation's cells hold: its prompt and every generated token that was fed
/// back, which is all but the last one when `max_tokens` ended it (an end-of-generation
/// token is never streamed, so then every streamed token was fed).
fn held_after(prompt: &[u32], out: &Output) -> usize {
    let fed = match out.finish {
        FinishReason::Length => out.ids.len() - 1,
        _ => out.ids.len(),
    };
    prompt.len() + fed
}

/// A's second turn: its first prompt, its answer, then more.
fn next_turn(a1: &[u32], out: &Output) -> Vec<u32> {
    joined(&[a1, &out.ids, &ids(100, 20)])
}

#[test]
fn a_conversation_pushed_out_of_its_slot_comes_back_from_ram() {
    let Some(path) = stories() else { return };
    let model = one_slot(&path, Some(64));
    let (a2, out, cached, held) = a_b_a(model.as_ref(), next_turn);
    assert_eq!(cached as usize, held, "A's history came back from RAM");
    assert_eq!(
        out,
        reference(&path, &a2),
        "the restored state changed the output"
    );

    // Without the option (and with 0) nothing comes back, and the output is the same.
    for mib in [None, Some(0)] {
        let model = one_slot(&path, mib);
        let (_, out_off, cached, _) = a_b_a(model.as_ref(), next_turn);
        assert_eq!((cached, &out_off), (0, &out), "cache-ram-mib {mib:?}");
    }
}

#[test]
fn an_edit_in_the_middle_reuses_only_the_common_part() {
    let Some(path) = stories() else { return };
    let model = one_slot(&path, Some(64));
    // A's first 25 tokens, then something else (an edited message) and a new question.
    let edited = |a1: &[u32], _: &Output| joined(&[&a1[..25], &ids(450, 30)]);
    let (a2, out, cached, _) = a_b_a(model.as_ref(), edited);
    assert_eq!(cached, 25);
    assert_eq!(out, reference(&path, &a2));
    // The saved state was copied, not cut: A's first prompt again finds all of it (the slot
    // itself would give 25).
    let a1 = ids(10, 60);
    let (out_a1, cached) = run(model.as_ref(), &a1);
    assert_eq!(cached, 59);
    assert_eq!(out_a1, reference(&path, &a1));
}

#[test]
fn the_cap_evicts_the_least_recently_used_states() {
    let Some(path) = stories() else { return };
    // stories260K's f16 KV takes 640 bytes a token (5 layers x 2 x 32 channels x 2 bytes):
    // a 400-token state is about 257 KiB, so 1 MiB holds three of them, and A is gone after
    // six more conversations even at 60% of that size.
    let conversations = |model: &dyn Model| {
        let a = ids(10, 400);
        run(model, &a);
        for i in 0..6 {
            run(model, &ids(20 + 50 * (i + 1), 400));
        }
        run(model, &a)
    };
    let (out_small, cached) = conversations(one_slot(&path, Some(1)).as_ref());
    assert_eq!(cached, 0, "A was evicted from a 1 MiB cache");
    let (out_large, cached) = conversations(one_slot(&path, Some(64)).as_ref());
    assert_eq!(cached, 399, "64 MiB keeps A");
    assert_eq!(out_small, out_large);
}

#[test]
fn a_saved_state_is_only_restored_under_its_own_adapters() {
    let Some(path) = stories() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let lora = dir.path().join("a.gguf");
    write_lora_seeded(&lora, 1, 64);
    let adapters = RVec::from(vec![AdapterRequest {
        path: RString::from(lora.to_string_lossy().as_ref()),
        scale: 1.0,
    }]);
    let with_lora = |prompt: &[u32]| {
        let mut request = GenerateRequest::greedy(prompt.to_vec(), TOKENS);
        request.adapters = ROption::RSome(adapters.clone());
        request
    };
    let prompt = ids(10, 60);
    let expected_lora = {
        let mut req = request(&path);
        req.adapters = adapters.clone();
        run_request(
            load(req).as_ref(),
            GenerateRequest::greedy(prompt.clone(), TOKENS),
        )
        .0
    };
    let model = one_slot(&path, Some(64));
    let (base, _) = run(model.as_ref(), &prompt);
    // The switch drops the slot's cells (saved under the load set): none come back here.
    let (got, cached) = run_request(model.as_ref(), with_lora(&prompt));
    assert_eq!((&got, cached), (&expected_lora, 0));
    assert_ne!(got.ids, base.ids, "the adapter had no effect");
    // Back to the load set: its saved state returns.
    let (got, cached) = run(model.as_ref(), &prompt);
    assert_eq!((got, cached), (base, 59));
}

/// The model's `prompt-cache-bytes` fact now (panics when the plugin does not report it).
fn prompt_cache_bytes(model: &dyn Model) -> u64 {
    model_info::prompt_cache_bytes(&model.metadata().extensions).unwrap_or_else(|| {
        panic!(
            "the plugin does not report {}",
            model_info::PROMPT_CACHE_BYTES
        )
    })
}

#[test]
fn the_metadata_reports_the_bytes_saved_in_ram_now() {
    let Some(path) = stories() else { return };
    let model = one_slot(&path, Some(1));
    assert_eq!(prompt_cache_bytes(model.as_ref()), 0, "fresh load");
    run(model.as_ref(), &ids(10, 60));
    assert_eq!(
        prompt_cache_bytes(model.as_ref()),
        0,
        "A is still in its slot, nothing saved"
    );
    // B takes the only slot: A's state goes to RAM. stories260K's f16 KV takes 640 bytes a
    // token, so A's ~70 tokens are at least 40 KiB, within the 1 MiB cap.
    run(model.as_ref(), &ids(300, 60));
    let saved = prompt_cache_bytes(model.as_ref());
    assert!(
        (60 * 640..=1 << 20).contains(&saved),
        "{saved} bytes after A was pushed out"
    );

    for mib in [None, Some(0)] {
        let model = one_slot(&path, mib);
        a_b_a(model.as_ref(), next_turn);
        assert_eq!(
            prompt_cache_bytes(model.as_ref()),
            0,
            "cache-ram-mib {mib:?}"
        );
    }
}
