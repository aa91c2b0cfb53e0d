//! Single-generation behaviour: determinism, text pieces, max_tokens, end of generation,
//! stats and logits.

use super::{same_modulo_leading_space, ModelCtx};
use crate::{
    generate::{compare_ids, greedy, run_to_end, Run},
    outcome::{ensure, fail, skip, Failure, Outcome},
};
use llmlocal::api::{FinishReason, Step};

/// Tokens of the solo greedy run that other checks compare against.
pub const SOLO_TOKENS: u32 = 32;
/// The longest generation the end-of-generation check waits for.
const EOS_WITHIN: u32 = 256;

/// The solo greedy run: [`SOLO_TOKENS`] tokens, ignoring EOS so the length is fixed.
pub fn solo(ctx: &ModelCtx) -> Result<Run, Failure> {
    run_to_end(&ctx.model, greedy(&ctx.prompt, SOLO_TOKENS, true))
}

/// Check "greedy deterministic": two greedy runs give the same tokens and text.
/// Returns the run for the checks that compare against it.
pub fn deterministic(ctx: &ModelCtx) -> Result<(String, Run), Failure> {
    let first = solo(ctx)?;
    let second = solo(ctx)?;
    compare_ids(&first.ids, &second.ids).map_err(|d| fail(format!("second run {d}")))?;
    ensure!(
        first.pieces == second.pieces,
        "same ids but different text: {:?} vs {:?}",
        first.text(),
        second.text()
    );
    ensure!(
        first.ids.len() == SOLO_TOKENS as usize || first.finish == FinishReason::ContextFull,
        "ignore_eos with max_tokens {SOLO_TOKENS} gave {} tokens ({:?})",
        first.ids.len(),
        first.finish
    );
    let message = format!("{} tokens: {:?}", first.ids.len(), first.text());
    Ok((message, first))
}

/// Check "text pieces": the streamed pieces concatenate to the detokenized ids (up to a
/// leading space). Compared up to the first end-of-generation token, whose text backends
/// may render differently.
pub fn pieces(ctx: &ModelCtx, run: &Run) -> Outcome {
    let eog = &ctx.meta.end_of_generation_tokens;
    let n = run
        .ids
        .iter()
        .position(|id| eog.contains(id))
        .unwrap_or(run.ids.len());
    let streamed = run.pieces[..n].concat();
    let detokenized = ctx.model.detokenize(&run.ids[..n], false)?;
    // A character cut off at the end is still pending in the stream but decodes to U+FFFD.
    let complete = detokenized.trim_end_matches(char::REPLACEMENT_CHARACTER);
    ensure!(
        same_modulo_leading_space(&streamed, &detokenized)
            || same_modulo_leading_space(&streamed, complete),
        "streamed pieces {streamed:?} != detokenize {detokenized:?}"
    );
    Ok(format!("{n} pieces match detokenize: {streamed:?}"))
}

/// Check "max_tokens": exactly 5 tokens then `Length`, and the end repeats once reached.
pub fn max_tokens(ctx: &ModelCtx) -> Outcome {
    let mut generation = ctx.model.generate(greedy(&ctx.prompt, 5, true))?;
    let mut count = 0u32;
    let reason = loop {
        match generation.next()? {
            Step::Token(_) if count >= 5 => {
                return Err(fail("a 6th token came after max_tokens 5"))
            }
            Step::Token(_) => count += 1,
            Step::Finished(end) => break end.reason,
        }
    };
    ensure!(
        count == 5,
        "{count} tokens instead of 5 (finished: {reason:?})"
    );
    ensure!(
        reason == FinishReason::Length,
        "finished with {reason:?} instead of Length"
    );
    let again = generation.next()?;
    ensure!(
        again.finish_reason() == Some(reason),
        "next() after the end returned {again:?} instead of the same end"
    );
    Ok("5 tokens, then Length (repeated after the end)".to_string())
}

/// Check "end of generation": greedy generation stops with `EndOfGeneration` where the
/// model's most likely next token is an end-of-generation token, without streaming it.
pub fn end_of_generation(ctx: &ModelCtx, eos_prompt: Option<&str>) -> Outcome {
    let prompt = match eos_prompt {
        Some(text) => ctx.model.tokenize(text, true, false)?,
        None => ctx.prompt.clone(),
    };
    let run = run_to_end(&ctx.model, greedy(&prompt, EOS_WITHIN, false))?;
    let eog = &ctx.meta.end_of_generation_tokens;
    if let Some(at) = run.ids.iter().position(|id| eog.contains(id)) {
        return Err(fail(format!(
            "end-of-generation token {} was streamed as a token (position {at})",
            run.ids[at]
        )));
    }
    if run.finish != FinishReason::EndOfGeneration {
        let why = format!(
            "model did not produce EOS within {EOS_WITHIN} tokens ({} tokens, {:?})",
            run.ids.len(),
            run.finish
        );
        return match eos_prompt {
            Some(text) => Err(fail(format!(
                "{why}, although prompt {text:?} ends with EOS"
            ))),
            None => Err(skip(why)),
        };
    }
    stopped_at_eog(ctx, &prompt, &run)?;
    Ok(format!(
        "stopped after {} tokens: {:?}",
        run.ids.len(),
        run.text()
    ))
}

/// The stop was due: the logits after prompt + generated tokens put an end-of-generation
/// token first.
fn stopped_at_eog(ctx: &ModelCtx, prompt: &[u32], run: &Run) -> Result<(), Failure> {
    let context: Vec<u32> = prompt.iter().chain(&run.ids).copied().collect();
    let logits = ctx.model.logits(&context)?;
    let top = argmax(&logits).ok_or_else(|| fail("logits are empty"))?;
    ensure!(
        ctx.meta.end_of_generation_tokens.contains(&top),
        "the generation ended with EndOfGeneration after {} tokens, but the most likely next \
         token there is {top}, not an end-of-generation token",
        run.ids.len()
    );
    Ok(())
}

/// Check "stats": the counters describe the run that was streamed.
pub fn stats(ctx: &ModelCtx, run: &Run) -> Outcome {
    let s = &run.stats;
    ensure!(
        s.generated_tokens as usize == run.ids.len(),
        "generated_tokens {} but {} tokens were streamed",
        s.generated_tokens,
        run.ids.len()
    );
    ensure!(
        s.prompt_tokens as usize == ctx.prompt.len(),
        "prompt_tokens {} but the prompt has {} tokens",
        s.prompt_tokens,
        ctx.prompt.len()
    );
    if run.ids.len() >= 2 {
        ensure!(
            s.tokens_per_second.is_finite() && s.tokens_per_second > 0.0,
            "tokens_per_second is {}",
            s.tokens_per_second
        );
        ensure!(
            s.time_to_first_token_ms.is_finite() && s.time_to_first_token_ms > 0.0,
            "time_to_first_token_ms is {}",
            s.time_to_first_token_ms
        );
    }
    Ok(format!(
        "{} prompt + {} generated tokens, first token {:.1} ms, {:.1} tok/s",
        s.prompt_tokens, s.generated_tokens, s.time_to_first_token_ms, s.tokens_per_second
    ))
}

/// Check "logits": one finite value per vocabulary entry, argmax = the first greedy token.
pub fn logits(ctx: &ModelCtx, run: &Run) -> Outcome {
    let logits = ctx.model.logits(&ctx.prompt)?;
    ensure!(
        logits.len() == ctx.meta.vocab_size as usize,
        "{} logits for a vocabulary of {}",
        logits.len(),
        ctx.meta.vocab_size
    );
    if let Some(i) = logits.iter().position(|x| !x.is_finite()) {
        return Err(fail(format!("logit {i} is {}", logits[i])));
    }
    let top = argmax(&logits).ok_or_else(|| fail("logits are empty"))?;
    let first = *run
        .ids
        .first()
        .ok_or_else(|| skip("the greedy run produced no token"))?;
    ensure!(
        top == first,
        "argmax is {top} ({:?}) but greedy generation started with {first} ({:?})",
        logits.get(top as usize),
        logits.get(first as usize)
    );
    Ok(format!("{} finite logits, argmax {top}", logits.len()))
}

/// The index of the largest value (the first one on ties, as greedy sampling picks it).
fn argmax(values: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.and_then(|(i, _)| u32::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_picks_the_first_of_the_largest() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), Some(1));
        assert_eq!(argmax(&[-3.0]), Some(0));
        assert_eq!(argmax(&[]), None);
    }
}
