//! Contract 2.0 checks (docs/contract.md): sampling, logit_bias, penalties, logprobs,
//! constraints, context accounting and hostile input, each against an independent
//! reference: the model's own logits and the formulas of the contract, the `regex` crate
//! for a grammar's language, the `jsonschema` crate for a schema. A check whose capability
//! the manifest does not declare is skipped, saying so.

use super::{load_request, ModelCtx};
use crate::{
    generate::{compare_ids, greedy, run_to_end, Run},
    outcome::{ensure, fail, skip, Failure, Outcome},
    recorder::Recorder,
};
use llmlocal::{
    api::{
        capability, Constraint, ConstraintKind, ErrorKind, FinishReason, GenerateRequest,
        LogitBias, Sampling, Step,
    },
    plugins::{LoadedBackend, LoadedModel},
};
use std::{collections::HashMap, path::Path, sync::Arc};

/// The checks this module runs, in order (for the skip rows when the model did not load).
pub const CHECKS: &[&str] = &[
    "capabilities",
    "hostile input",
    "top_k 1 is greedy",
    "seed reproduces",
    "logit_bias",
    "logprobs match logits",
    "penalties follow the formula",
    "grammar output parses",
    "json schema output validates",
    "context full",
];

/// Tolerance between a reported logprob and one computed from `logits()`: two separate
/// evaluations of the same prompt (batch shapes may differ), in f32.
const LOGPROB_TOLERANCE: f32 = 2e-2;

pub fn run(
    rec: &mut Recorder,
    l: Option<&str>,
    backend: &Arc<LoadedBackend>,
    ctx: &Arc<ModelCtx>,
    path: &Path,
    device: &str,
    solo: Option<&Run>,
) {
    let c = || Arc::clone(ctx);
    let names: Vec<String> = (backend.manifest.capabilities.names.iter())
        .map(|n| n.to_string())
        .collect();
    rec.check(l, "capabilities", move || known_capabilities(&names));
    rec.check(l, "hostile input", {
        let ctx = c();
        move || hostile_input(&ctx)
    });
    let solo_ids = solo.map(|run| run.ids.clone());
    rec.check(l, "top_k 1 is greedy", {
        let (ctx, ids) = (c(), solo_ids.clone());
        move || top_k_one(&ctx, ids.as_deref())
    });
    rec.check(l, "seed reproduces", {
        let ctx = c();
        move || seeds(&ctx)
    });
    rec.check(l, "logit_bias", {
        let (ctx, ids) = (c(), solo_ids);
        move || logit_bias(&ctx, ids.as_deref())
    });
    rec.check(l, "logprobs match logits", {
        let ctx = c();
        move || logprobs(&ctx)
    });
    rec.check(l, "penalties follow the formula", {
        let ctx = c();
        move || penalties(&ctx)
    });
    rec.check(l, "grammar output parses", {
        let ctx = c();
        move || grammar(&ctx)
    });
    rec.check(l, "json schema output validates", {
        let ctx = c();
        move || json_schema(&ctx)
    });
    rec.check(l, "context full", {
        let (b, p, d) = (Arc::clone(backend), path.to_path_buf(), device.to_string());
        move || context_full(&b, &p, &d)
    });
}

fn require(ctx: &ModelCtx, name: &str) -> Result<(), Failure> {
    if ctx.model.has_capability(name) {
        Ok(())
    } else {
        Err(skip(format!("the manifest does not declare `{name}`")))
    }
}

/// Sampling at temperature 1 with nothing truncated, and a fixed seed.
fn tempered(seed: u64) -> Sampling {
    Sampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed: Some(seed).into(),
        ..Sampling::default()
    }
}

fn request(ctx: &ModelCtx, sampling: Sampling, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        sampling,
        ..greedy(&ctx.prompt, max_tokens, true)
    }
}

/// Check "capabilities": every declared name is one the contract defines (a plugin's own
/// names must not collide with future ones: they start with `x-`).
fn known_capabilities(names: &[String]) -> Outcome {
    let unknown: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !capability::ALL.contains(n) && !n.starts_with("x-"))
        .collect();
    ensure!(
        unknown.is_empty(),
        "unknown capability names {unknown:?}: use the contract's names or an `x-` prefix"
    );
    Ok(format!("declared: {names:?}"))
}

/// Check "hostile input": out-of-vocabulary ids, NaN and out-of-range parameters, bad bias
/// ids and too many logprobs are `InvalidRequest` errors; a huge max_tokens is fine.
fn hostile_input(ctx: &ModelCtx) -> Outcome {
    let vocab = ctx.meta.vocab_size;
    let mut cases: Vec<(&str, GenerateRequest)> = Vec::new();
    cases.push(("an out-of-vocabulary prompt id", greedy(&[vocab], 2, false)));
    cases.push(("an empty prompt", greedy(&[], 2, false)));
    let mut nan = greedy(&ctx.prompt, 2, false);
    nan.sampling.temperature = f32::NAN;
    cases.push(("temperature NaN", nan));
    let mut negative = greedy(&ctx.prompt, 2, false);
    negative.sampling.top_p = -1.0;
    cases.push(("top_p -1", negative));
    let mut bias = greedy(&ctx.prompt, 2, false);
    bias.logit_bias.push(LogitBias {
        token: vocab + 7,
        bias: 1.0,
    });
    cases.push(("a logit_bias id outside the vocabulary", bias));
    let mut many = greedy(&ctx.prompt, 2, false);
    many.logprobs = Some(21).into();
    cases.push(("logprobs 21", many));
    for (what, request) in cases {
        match ctx.model.generate(request) {
            Ok(_) => return Err(fail(format!("{what} was accepted"))),
            Err(err) if err.kind() == ErrorKind::InvalidRequest => {}
            Err(err) if err.kind() == ErrorKind::Unsupported => {}
            Err(err) => {
                return Err(fail(format!(
                    "{what}: {err} — kind {:?}, expected InvalidRequest",
                    err.kind()
                )))
            }
        }
    }
    let mut generation = ctx.model.generate(greedy(&ctx.prompt, u32::MAX, true))?;
    for _ in 0..2 {
        if let Step::Finished(end) = generation.next()? {
            return Err(fail(format!(
                "max_tokens u32::MAX ended at once ({:?})",
                end.reason
            )));
        }
    }
    Ok("6 hostile requests refused with InvalidRequest; max_tokens u32::MAX runs".into())
}

/// Check "top_k 1 is greedy": at temperature 1, top_k 1 leaves only the argmax.
fn top_k_one(ctx: &ModelCtx, greedy_ids: Option<&[u32]>) -> Outcome {
    let greedy_ids = greedy_ids.ok_or_else(|| skip("needs the solo greedy run"))?;
    let sampling = Sampling {
        top_k: 1,
        ..tempered(7)
    };
    let run = run_to_end(&ctx.model, request(ctx, sampling, greedy_ids.len() as u32))?;
    compare_ids(greedy_ids, &run.ids).map_err(|d| fail(format!("top_k 1 vs greedy: {d}")))?;
    Ok(format!("{} tokens equal the greedy run", run.ids.len()))
}

/// Check "seed reproduces": one seed twice gives the same tokens; other seeds give other
/// tokens unless the model's distribution is too peaked to tell.
fn seeds(ctx: &ModelCtx) -> Outcome {
    const N: u32 = 16;
    let run = |seed| run_to_end(&ctx.model, request(ctx, tempered(seed), N));
    let first = run(11)?;
    let again = run(11)?;
    compare_ids(&first.ids, &again.ids).map_err(|d| fail(format!("seed 11 twice: {d}")))?;
    for seed in 12..20 {
        if run(seed)?.ids != first.ids {
            return Ok(format!("seed 11 reproduces; seed {seed} differs"));
        }
    }
    let probs = softmax(&ctx.model.logits(&ctx.prompt)?);
    let top = probs.iter().copied().fold(0.0f64, f64::max);
    if top > 0.99 {
        return Err(skip(format!(
            "seed 11 reproduces; 8 other seeds gave the same {N} tokens, but the first token \
             has probability {top:.4}: too peaked to tell seeds apart on this model"
        )));
    }
    Err(fail(format!(
        "8 other seeds gave the same {N} tokens as seed 11 at temperature 1, though the first \
         token's probability is only {top:.3}: the seed is ignored"
    )))
}

/// Check "logit_bias": `-inf` on the greedy run's first token bans it (greedy and sampled);
/// `+100` on the least likely token makes it the greedy choice.
fn logit_bias(ctx: &ModelCtx, greedy_ids: Option<&[u32]>) -> Outcome {
    require(ctx, capability::LOGIT_BIAS)?;
    let greedy_ids = greedy_ids.ok_or_else(|| skip("needs the solo greedy run"))?;
    let banned = *greedy_ids
        .first()
        .ok_or_else(|| skip("the greedy run is empty"))?;
    let ban = vec![LogitBias {
        token: banned,
        bias: f32::NEG_INFINITY,
    }];
    for sampling in [Sampling::GREEDY, tempered(5)] {
        let mut r = request(ctx, sampling, 16);
        r.logit_bias = ban.clone().into();
        let run = run_to_end(&ctx.model, r)?;
        ensure!(
            !run.ids.contains(&banned),
            "token {banned} was banned with -inf but came out: {:?} (temperature {})",
            run.ids,
            sampling.temperature
        );
    }
    let logits = ctx.model.logits(&ctx.prompt)?;
    let eog = &ctx.meta.end_of_generation_tokens;
    let weakest = (0..logits.len() as u32)
        .filter(|id| !eog.contains(id))
        .min_by(|&a, &b| logits[a as usize].total_cmp(&logits[b as usize]))
        .ok_or_else(|| fail("no logits"))?;
    let mut r = request(ctx, Sampling::GREEDY, 1);
    r.logit_bias = vec![LogitBias {
        token: weakest,
        bias: 100.0 + logits.iter().copied().fold(0.0f32, |a, b| a.max(b.abs())) * 2.0,
    }]
    .into();
    let run = run_to_end(&ctx.model, r)?;
    ensure!(
        run.ids.first() == Some(&weakest),
        "a large positive bias on token {weakest} did not make it the greedy choice: {:?}",
        run.ids
    );
    Ok(format!(
        "-inf on {banned} bans it (greedy and sampled); a large bias makes {weakest} the choice"
    ))
}

/// Check "logprobs match logits": the first token's logprob and top alternatives equal
/// `log_softmax(logits(prompt))`.
fn logprobs(ctx: &ModelCtx) -> Outcome {
    require(ctx, capability::LOGPROBS)?;
    let expected = log_softmax(&ctx.model.logits(&ctx.prompt)?);
    let mut r = request(ctx, Sampling::GREEDY, 1);
    r.logprobs = Some(5).into();
    let token = first_token(&ctx.model, r)?;
    let lp = token
        .logprobs
        .into_option()
        .ok_or_else(|| fail("logprobs were asked for but the token carries none"))?;
    compare_logprobs(&expected, token.id, &lp, 5)?;
    Ok(format!(
        "token {} logprob {:.4} (expected {:.4}); top 5 match",
        token.id, lp.logprob, expected[token.id as usize]
    ))
}

/// Check "penalties follow the formula": with repeat, frequency and presence penalties over
/// the prompt, the first token is the argmax (and, with `logprobs`, has the log-probability)
/// of the logits penalised as docs/contract.md says.
fn penalties(ctx: &ModelCtx) -> Outcome {
    require(ctx, capability::FULL_SAMPLING)?;
    let sampling = Sampling {
        repeat_penalty: 1.3,
        frequency_penalty: 0.4,
        presence_penalty: 0.6,
        repeat_last_n: 64,
        ..Sampling::GREEDY
    };
    let mut logits = ctx.model.logits(&ctx.prompt)?;
    let window = &ctx.prompt[ctx.prompt.len().saturating_sub(64)..];
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &t in window {
        *counts.entry(t).or_default() += 1;
    }
    for (&t, &n) in &counts {
        let l = &mut logits[t as usize];
        *l = if *l > 0.0 { *l / 1.3 } else { *l * 1.3 };
        *l -= n as f32 * 0.4 + 0.6;
    }
    let expected = log_softmax(&logits);
    let mut r = request(ctx, sampling, 1);
    let with_logprobs = ctx.model.has_capability(capability::LOGPROBS);
    if with_logprobs {
        r.logprobs = Some(3).into();
    }
    let token = first_token(&ctx.model, r)?;
    let best = expected.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    ensure!(
        close_or_above(expected[token.id as usize], best),
        "greedy with penalties chose {} (penalised log-probability {:.4}) but the formula's \
         argmax has {best:.4}",
        token.id,
        expected[token.id as usize]
    );
    if let Some(lp) = token.logprobs.into_option() {
        compare_logprobs(&expected, token.id, &lp, 3)?;
    }
    Ok(format!(
        "{} prompt tokens penalised; the choice{} match the formula",
        counts.len(),
        if with_logprobs {
            " and its logprobs"
        } else {
            ""
        }
    ))
}

/// Check "grammar output parses": a GBNF grammar's output matches the same language written
/// as a regular expression (the `regex` crate is the independent parser); an invalid grammar
/// is refused before any token.
fn grammar(ctx: &ModelCtx) -> Outcome {
    require(ctx, capability::GRAMMAR)?;
    const GBNF: &str = "root ::= item (\", \" item){0,3}\nitem ::= \"yes\" | \"no\" | \"maybe\"";
    let language = regex::Regex::new("^(yes|no|maybe)(, (yes|no|maybe)){0,3}$")
        .map_err(|e| fail(format!("the suite's regex: {e}")))?;
    let outputs = constrained_runs(ctx, ConstraintKind::Grammar, GBNF)?;
    for text in &outputs {
        ensure!(
            language.is_match(text),
            "{text:?} is not in the grammar's language"
        );
    }
    refused(
        ctx,
        ConstraintKind::Grammar,
        "root ::= (",
        "an unbalanced grammar",
    )?;
    Ok(format!(
        "outputs {outputs:?} parse; a broken grammar is refused"
    ))
}

/// Check "json schema output validates": outputs validate against the schema with the
/// `jsonschema` crate; a malformed schema is refused before any token.
fn json_schema(ctx: &ModelCtx) -> Outcome {
    require(ctx, capability::JSON_SCHEMA)?;
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "ok": {"type": "boolean"}
        },
        "required": ["name", "ok"],
        "additionalProperties": false
    });
    let validator =
        jsonschema::validator_for(&schema).map_err(|e| fail(format!("the suite's schema: {e}")))?;
    let outputs = constrained_runs(ctx, ConstraintKind::JsonSchema, &schema.to_string())?;
    for text in &outputs {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| fail(format!("{text:?} is not JSON: {e}")))?;
        if let Err(err) = validator.validate(&value) {
            return Err(fail(format!("{text:?} does not validate: {err}")));
        }
    }
    refused(
        ctx,
        ConstraintKind::JsonSchema,
        "{not json",
        "a schema that is not JSON",
    )?;
    Ok(format!(
        "outputs {outputs:?} validate; a broken schema is refused"
    ))
}

/// Greedy and two seeded runs under a constraint; each must end by itself.
fn constrained_runs(
    ctx: &ModelCtx,
    kind: ConstraintKind,
    text: &str,
) -> Result<Vec<String>, Failure> {
    let mut outputs = Vec::new();
    for sampling in [Sampling::GREEDY, tempered(1), tempered(2)] {
        let mut r = GenerateRequest {
            sampling,
            ..greedy(&ctx.prompt, 96, false)
        };
        r.constraint = Some(Constraint {
            kind,
            text: text.into(),
        })
        .into();
        let run = run_to_end(&ctx.model, r)?;
        ensure!(
            run.finish == FinishReason::EndOfGeneration,
            "a constrained generation of a finite language did not end by itself within 96 \
             tokens ({:?}): {:?}",
            run.finish,
            run.text()
        );
        outputs.push(run.text());
    }
    Ok(outputs)
}

/// `generate` refuses the constraint with `InvalidRequest`.
fn refused(ctx: &ModelCtx, kind: ConstraintKind, text: &str, what: &str) -> Result<(), Failure> {
    let mut r = greedy(&ctx.prompt, 4, false);
    r.constraint = Some(Constraint {
        kind,
        text: text.into(),
    })
    .into();
    match ctx.model.generate(r) {
        Ok(_) => Err(fail(format!("{what} was accepted by generate()"))),
        Err(err) if err.kind() == ErrorKind::InvalidRequest => Ok(()),
        Err(err) => Err(fail(format!("{what}: {err}, expected InvalidRequest"))),
    }
}

/// Check "context full": on a load with a 32-token context, a prompt one token short gives
/// exactly one token and `ContextFull`; a prompt as long as the context is refused.
fn context_full(backend: &LoadedBackend, path: &Path, device: &str) -> Outcome {
    let mut load = load_request(path, 1, device);
    load.context_length = 32;
    let model = backend.load_model(load)?;
    let meta = model.metadata()?;
    let n = meta.context_length as usize;
    ensure!(n > 1, "the load reports a context of {n}");
    let filler = model.tokenize(" a", false, false)?;
    let token = *filler
        .first()
        .ok_or_else(|| fail("\" a\" tokenizes to nothing"))?;
    let prompt = |len: usize| vec![token; len];
    match model.generate(greedy(&prompt(n), 4, true)) {
        Ok(_) => {
            return Err(fail(format!(
                "a prompt of {n} tokens (the whole context) was accepted"
            )))
        }
        Err(err) => ensure!(
            err.kind() == ErrorKind::InvalidRequest,
            "a prompt as long as the context: {err}, expected InvalidRequest"
        ),
    }
    let run = run_to_end(&model, greedy(&prompt(n - 1), 0, true))?;
    ensure!(
        run.ids.len() == 1 && run.finish == FinishReason::ContextFull,
        "a prompt of {} tokens in a context of {n} gave {} tokens and {:?}; the contract: \
         exactly 1, then ContextFull",
        n - 1,
        run.ids.len(),
        run.finish
    );
    let short = run_to_end(&model, greedy(&prompt(n - 5), 0, true))?;
    ensure!(
        short.ids.len() == 5 && short.finish == FinishReason::ContextFull,
        "a prompt of {} tokens with max_tokens 0 (no limit) gave {} tokens and {:?}; expected \
         5 and ContextFull",
        n - 5,
        short.ids.len(),
        short.finish
    );
    let capped = run_to_end(&model, greedy(&prompt(n - 5), 5, true))?;
    ensure!(
        capped.finish == FinishReason::Length,
        "max_tokens and the context ending on the same token gave {:?}; Length wins",
        capped.finish
    );
    Ok(format!(
        "context {n}: {} tokens refused, {} give 1 + ContextFull, {} give 5 + ContextFull",
        n,
        n - 1,
        n - 5
    ))
}

fn first_token(
    model: &LoadedModel,
    request: GenerateRequest,
) -> Result<llmlocal::api::Token, Failure> {
    let mut generation = model.generate(request)?;
    match generation.next()? {
        Step::Token(token) => Ok(token),
        Step::Finished(end) => Err(fail(format!(
            "the generation ended before its first token ({:?})",
            end.reason
        ))),
    }
}

/// The chosen token's logprob and the top `n` agree with `expected` (a full log_softmax).
fn compare_logprobs(
    expected: &[f32],
    chosen: u32,
    got: &llmlocal::api::TokenLogprobs,
    n: usize,
) -> Result<(), Failure> {
    let want = expected[chosen as usize];
    ensure!(
        close(got.logprob, want),
        "token {chosen}: logprob {} but log_softmax(logits) gives {want}",
        got.logprob
    );
    ensure!(
        got.top.len() == n.min(expected.len()),
        "{} alternatives instead of {n}",
        got.top.len()
    );
    let mut sorted: Vec<f32> = expected.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    for (rank, (alt, want)) in got.top.iter().zip(&sorted).enumerate() {
        ensure!(
            close(alt.logprob, *want),
            "alternative {rank} (token {}) has logprob {} but the {rank}-th largest is {want}",
            alt.id,
            alt.logprob
        );
        let own = expected[alt.id as usize];
        ensure!(
            close(alt.logprob, own),
            "alternative {rank} says token {} has logprob {} but log_softmax gives {own}",
            alt.id,
            alt.logprob
        );
    }
    Ok(())
}

/// Within [`LOGPROB_TOLERANCE`] (NaN never is).
fn close(got: f32, want: f32) -> bool {
    (got - want).abs() <= LOGPROB_TOLERANCE
}

/// At least `want`, up to [`LOGPROB_TOLERANCE`] (NaN never is).
fn close_or_above(got: f32, want: f32) -> bool {
    got >= want - LOGPROB_TOLERANCE
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_sum = f64::from(max) + sum.ln();
    logits
        .iter()
        .map(|&l| (f64::from(l) - log_sum) as f32)
        .collect()
}

fn softmax(logits: &[f32]) -> Vec<f64> {
    log_softmax(logits)
        .into_iter()
        .map(|l| f64::from(l).exp())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_sums_to_one_in_probability() {
        let p: f64 = softmax(&[1.0, 2.0, 3.0]).iter().sum();
        assert!((p - 1.0).abs() < 1e-6);
        let lp = log_softmax(&[0.0, 0.0]);
        assert!((lp[0] - 0.5f32.ln()).abs() < 1e-6);
    }
}
