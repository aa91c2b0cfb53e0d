//! Prompt-prefix reuse (capability `prefix-cache`, docs/contract.md): the output with KV state
//! kept from earlier generations is the same as without (`cache_prompt: false`), and the
//! stats say how many prompt tokens came from the cache. The reference for every cached run
//! is the same request with `cache_prompt: false`, run first (it may clear what a slot
//! kept), then the cache is primed and the cached run follows, so each check stands alone
//! whatever the checks before it left behind. Skipped when the plugin does not declare
//! `prefix-cache`.

use super::ModelCtx;
use crate::{
    generate::{compare_ids, greedy, run_to_end, Run},
    outcome::{ensure, fail, skip, Failure, Outcome},
    recorder::Recorder,
};
use llmlocal::api::{capability, model_info, ExtValue};
use std::{sync::Arc, thread};

/// The checks this module runs, in order (for the skip rows when the model did not load).
pub const CHECKS: &[&str] = &[
    "prefix reuse",
    "prefix reuse: shorter prompt",
    "prefix reuse: edit in the middle",
    "prefix reuse: slots busy",
];

/// A text long enough for a prompt of [`MIN_PROMPT`] tokens on any tokenizer.
const TEXT: &str = "Once upon a time, there was a little girl named Lily. She loved to play \
                    outside in the park with her big red ball and her friend Tom.";
/// The fewest tokens the shared prompt has (a prefix worth caching).
const MIN_PROMPT: usize = 20;
/// Tokens each generation produces (`ignore_eos`, so every run has the same length).
const NEW_TOKENS: u32 = 8;

/// A check body of this module.
type Check = fn(&ModelCtx) -> Outcome;

pub fn run(rec: &mut Recorder, l: Option<&str>, ctx: &Arc<ModelCtx>) {
    let checks: [(&str, Check); 4] = [
        (CHECKS[0], longer_prompt),
        (CHECKS[1], shorter_prompt),
        (CHECKS[2], edit_in_the_middle),
        (CHECKS[3], slots_busy),
    ];
    for (name, body) in checks {
        let ctx = Arc::clone(ctx);
        rec.check(l, name, move || body(&ctx));
    }
}

/// Check "prefix reuse": P, then P again, then P + its answer + more tokens (a chat's next
/// turn) all give the uncached tokens; the repeats report cached tokens, uncached runs none.
fn longer_prompt(ctx: &ModelCtx) -> Outcome {
    let p = shared_prompt(ctx)?;
    let first = generate(ctx, &p, false)?;
    ensure!(
        first.stats.cached_prompt_tokens == 0,
        "cache_prompt = false reported {} cached prompt tokens; expected 0",
        first.stats.cached_prompt_tokens
    );
    let turn2: Vec<u32> = [&p[..], &first.ids, &p[1..6]].concat();
    let reference = generate(ctx, &turn2, false)?;
    ensure!(
        reference.stats.cached_prompt_tokens == 0,
        "cache_prompt = false reported {} cached prompt tokens; expected 0",
        reference.stats.cached_prompt_tokens
    );
    cached_run(ctx, &p, &first, "P")?;
    let again = cached_run(ctx, &p, &first, "P again")?;
    ensure!(
        again.stats.cached_prompt_tokens > 0,
        "the same prompt again reported 0 cached prompt tokens"
    );
    let cached = cached_run(ctx, &turn2, &reference, "P + answer + more")?;
    ensure!(
        cached.stats.cached_prompt_tokens > 0,
        "P + its answer + more reported 0 cached prompt tokens right after P"
    );
    Ok(format!(
        "same tokens; cached {}/{} (P again), {}/{} (P + answer + more)",
        again.stats.cached_prompt_tokens,
        p.len(),
        cached.stats.cached_prompt_tokens,
        turn2.len()
    ))
}

/// Check "prefix reuse: shorter prompt": after P, a prefix of P is a hit with the uncached
/// tokens.
fn shorter_prompt(ctx: &ModelCtx) -> Outcome {
    let p = shared_prompt(ctx)?;
    let short = &p[..p.len() * 2 / 3];
    let reference = generate(ctx, short, false)?;
    generate(ctx, &p, true)?;
    let cached = cached_run(ctx, short, &reference, "a prefix of P")?;
    ensure!(
        cached.stats.cached_prompt_tokens > 0,
        "a prefix of the prompt just run reported 0 cached prompt tokens"
    );
    Ok(format!(
        "same tokens; cached {}/{}",
        cached.stats.cached_prompt_tokens,
        short.len()
    ))
}

/// Check "prefix reuse: edit in the middle": after P, P with one token changed reuses at most
/// the tokens before the edit and gives the uncached tokens. The edit is three quarters in,
/// so a backend that weighs what it keeps against what it drops still finds it worth reusing
/// (the llama-cpp plugin then cuts the kept cells at the edit).
fn edit_in_the_middle(ctx: &ModelCtx) -> Outcome {
    let p = shared_prompt(ctx)?;
    let at = p.len() * 3 / 4;
    let mut edited = p.clone();
    edited[at] = other_token(ctx, &p, p[at])?;
    let reference = generate(ctx, &edited, false)?;
    generate(ctx, &p, true)?;
    let cached = cached_run(ctx, &edited, &reference, "P edited")?;
    ensure!(
        cached.stats.cached_prompt_tokens as usize <= at,
        "the prompt changed at token {at} but {} prompt tokens were reported cached",
        cached.stats.cached_prompt_tokens
    );
    Ok(format!(
        "same tokens; cached {} (edit at {at})",
        cached.stats.cached_prompt_tokens
    ))
}

/// Check "prefix reuse: slots busy": two prompts sharing P's prefix, run at once after P,
/// each give their uncached tokens.
fn slots_busy(ctx: &ModelCtx) -> Outcome {
    let p = shared_prompt(ctx)?;
    let prompts: Vec<Vec<u32>> = [p[2], p[3]]
        .iter()
        .map(|&extra| [&p[..], &[extra]].concat())
        .collect();
    let references = prompts
        .iter()
        .map(|prompt| generate(ctx, prompt, false))
        .collect::<Result<Vec<_>, _>>()?;
    generate(ctx, &p, true)?;
    let handles: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            let (model, request) = (ctx.model.clone(), request(prompt, true));
            thread::spawn(move || run_to_end(&model, request))
        })
        .collect();
    let mut cached = Vec::new();
    for (i, (handle, reference)) in handles.into_iter().zip(&references).enumerate() {
        let got = handle
            .join()
            .map_err(|_| fail(format!("generation {} panicked", i + 1)))??;
        compare_ids(&reference.ids, &got.ids)
            .map_err(|d| fail(format!("concurrent cached generation {}: {d}", i + 1)))?;
        cached.push(got.stats.cached_prompt_tokens);
    }
    Ok(format!(
        "{} generations at once matched their uncached runs; cached {cached:?}",
        prompts.len()
    ))
}

/// Whether the model opts out of the backend's `prefix-cache` (contract 2.2 metadata key).
fn keeps_no_prefix(ctx: &ModelCtx) -> bool {
    ctx.meta
        .extensions
        .iter()
        .any(|e| e.key.as_str() == model_info::PREFIX_CACHE && e.value == ExtValue::Bool(false))
}

/// [`TEXT`] tokenized, cut to fit the context with room to generate; a skip when the
/// capability is not declared.
fn shared_prompt(ctx: &ModelCtx) -> Result<Vec<u32>, Failure> {
    if !ctx.model.has_capability(capability::PREFIX_CACHE) {
        return Err(skip(format!(
            "the manifest does not declare `{}`",
            capability::PREFIX_CACHE
        )));
    }
    if keeps_no_prefix(ctx) {
        return Err(skip(format!(
            "the model's metadata says `{}` = false (this model keeps no prefix)",
            model_info::PREFIX_CACHE
        )));
    }
    let mut tokens = ctx.model.tokenize(TEXT, true, false)?;
    // P + answer + 5 more + the answer to that must fit the context.
    let room = (ctx.meta.context_length as usize).saturating_sub(2 * NEW_TOKENS as usize + 8) / 2;
    tokens.truncate(room);
    ensure!(
        tokens.len() >= MIN_PROMPT,
        "the test prompt has {} tokens (context {}); the check needs at least {MIN_PROMPT}",
        tokens.len(),
        ctx.meta.context_length
    );
    Ok(tokens)
}

/// A token id in the prompt other than `not`, so the edit stays in the vocabulary.
fn other_token(ctx: &ModelCtx, prompt: &[u32], not: u32) -> Result<u32, Failure> {
    prompt
        .iter()
        .copied()
        .find(|&t| t != not && Some(t) != ctx.meta.bos_token.into_option())
        .ok_or_else(|| fail("the test prompt has only one distinct token"))
}

fn request(prompt: &[u32], cache_prompt: bool) -> llmlocal::api::GenerateRequest {
    let mut request = greedy(prompt, NEW_TOKENS, true);
    request.cache_prompt = cache_prompt;
    request
}

fn generate(ctx: &ModelCtx, prompt: &[u32], cache_prompt: bool) -> Result<Run, Failure> {
    run_to_end(&ctx.model, request(prompt, cache_prompt))
}

/// A cached run of `prompt` that must give `reference`'s tokens and count its cached tokens
/// within the prompt.
fn cached_run(ctx: &ModelCtx, prompt: &[u32], reference: &Run, what: &str) -> Result<Run, Failure> {
    let got = generate(ctx, prompt, true)?;
    compare_ids(&reference.ids, &got.ids)
        .map_err(|d| fail(format!("{what} with cache_prompt: {d}")))?;
    ensure!(
        got.stats.cached_prompt_tokens <= got.stats.prompt_tokens,
        "{what}: {} cached prompt tokens of {} prompt tokens",
        got.stats.cached_prompt_tokens,
        got.stats.prompt_tokens
    );
    Ok(got)
}
