//! What a generation hands back: tokens, the end, and its counters.

use crate::extension::Extension;
use abi_stable::{
    std_types::{ROption, RString, RVec},
    StableAbi,
};

/// One alternative at a step.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct TopLogprob {
    pub id: u32,
    pub logprob: f32,
}

/// The chosen token's log-probability and the most likely alternatives, most likely first.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f32,
    pub top: RVec<TopLogprob>,
}

impl TokenLogprobs {
    /// From one row of logits (already biased and penalised): `log_softmax` of the chosen
    /// token and the `top_n` highest, ties broken by the lower id.
    pub fn from_logits(logits: &[f32], chosen: u32, top_n: usize) -> TokenLogprobs {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_sum = if max.is_finite() {
            let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
            f64::from(max) + sum.ln()
        } else {
            0.0
        };
        let logprob = |l: f32| (f64::from(l) - log_sum) as f32;
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let key = |&i: &u32| logits[i as usize];
        if top_n < order.len() {
            order.select_nth_unstable_by(top_n, |a, b| key(b).total_cmp(&key(a)).then(a.cmp(b)));
            order.truncate(top_n);
        }
        order.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.cmp(b)));
        TokenLogprobs {
            logprob: logits
                .get(chosen as usize)
                .map_or(f32::NEG_INFINITY, |&l| logprob(l)),
            top: order
                .into_iter()
                .map(|id| TopLogprob {
                    id,
                    logprob: logprob(logits[id as usize]),
                })
                .collect(),
        }
    }
}

/// One generated token and the text it completes. `text` is always valid UTF-8: a character
/// split over several tokens arrives whole with the token that completes it (the tokens
/// before carry an empty `text`). End-of-generation tokens are never streamed as tokens.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Token {
    pub id: u32,
    pub text: RString,
    /// Present when the request asked for logprobs.
    pub logprobs: ROption<TokenLogprobs>,
    pub extensions: RVec<Extension>,
}

impl Token {
    pub fn new(id: u32, text: impl Into<RString>) -> Self {
        Token {
            id,
            text: text.into(),
            logprobs: ROption::RNone,
            extensions: RVec::new(),
        }
    }
}

/// Why a generation ended. A number across the boundary: a host reading a value it does not
/// know (impossible with the version rules, but defended) treats it as `stop`.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FinishReason(pub u8);

impl std::fmt::Debug for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            FinishReason::EndOfGeneration => f.write_str("EndOfGeneration"),
            FinishReason::Length => f.write_str("Length"),
            FinishReason::ContextFull => f.write_str("ContextFull"),
            FinishReason(other) => write!(f, "FinishReason({other})"),
        }
    }
}

#[allow(non_upper_case_globals)]
impl FinishReason {
    /// The model produced an end-of-generation token (or a constraint completed).
    pub const EndOfGeneration: FinishReason = FinishReason(0);
    /// `max_tokens` were generated.
    pub const Length: FinishReason = FinishReason(1);
    /// The context is full: prompt + generated tokens reached the context length.
    pub const ContextFull: FinishReason = FinishReason(2);

    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::ContextFull => "context_full",
            _ => "stop",
        }
    }
}

/// The end of a generation.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Finished {
    pub reason: FinishReason,
    /// Text still held back when the generation ended (an incomplete UTF-8 sequence, flushed
    /// as U+FFFD), to be appended after the last token's text.
    pub text: RString,
    pub extensions: RVec<Extension>,
}

/// One step of a generation. Exactly these two variants for the whole major version; new
/// per-step data goes into the structs' `extensions`.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub enum Step {
    Token(Token),
    /// The end; every later call to `next` returns the same.
    Finished(Finished),
}

impl Step {
    /// The end with no trailing text.
    pub fn finished(reason: FinishReason) -> Step {
        Step::finished_with(reason, String::new())
    }

    /// The end with trailing text (see [`Finished::text`]).
    pub fn finished_with(reason: FinishReason, text: impl Into<RString>) -> Step {
        Step::Finished(Finished {
            reason,
            text: text.into(),
            extensions: RVec::new(),
        })
    }

    pub fn token(id: u32, text: impl Into<RString>) -> Step {
        Step::Token(Token::new(id, text))
    }

    /// The finish reason, if this is the end.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        match self {
            Step::Finished(end) => Some(end.reason),
            Step::Token(_) => None,
        }
    }
}

/// Counters of one generation, valid at any time (partial while it runs).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Default)]
pub struct GenerationStats {
    pub prompt_tokens: u32,
    /// Of `prompt_tokens`, how many were reused from KV state kept from earlier generations.
    pub cached_prompt_tokens: u32,
    /// Tokens returned by `next` so far.
    pub generated_tokens: u32,
    /// From the start of the generation to the first token being ready.
    pub time_to_first_token_ms: f64,
    /// Prompt tokens / prompt-processing time.
    pub prompt_tokens_per_second: f64,
    /// Generated tokens after the first / time since the first.
    pub tokens_per_second: f64,
    /// From the start to the last token (or now).
    pub total_ms: f64,
}

/// Keeps the clock of one generation so every backend reports stats the same way.
#[derive(Debug, Clone)]
pub struct StatsClock {
    start: std::time::Instant,
    first_token: Option<std::time::Instant>,
    last_token: Option<std::time::Instant>,
    prompt_tokens: u32,
    cached_prompt_tokens: u32,
    generated_tokens: u32,
}

impl StatsClock {
    /// Starts the clock when the generation starts.
    pub fn start(prompt_tokens: u32) -> Self {
        StatsClock {
            start: std::time::Instant::now(),
            first_token: None,
            last_token: None,
            prompt_tokens,
            cached_prompt_tokens: 0,
            generated_tokens: 0,
        }
    }

    /// Records how many prompt tokens came from the prefix cache.
    pub fn cached(&mut self, tokens: u32) {
        self.cached_prompt_tokens = tokens;
    }

    /// Records one token handed to the caller.
    pub fn token(&mut self) {
        let now = std::time::Instant::now();
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        self.generated_tokens += 1;
    }

    pub fn stats(&self) -> GenerationStats {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let ttft = self.first_token.map(|t| ms(t - self.start)).unwrap_or(0.0);
        let end = self.last_token.unwrap_or_else(std::time::Instant::now);
        let decode_ms = match self.first_token {
            Some(first) => ms(end - first),
            None => 0.0,
        };
        let per_second = |n: f64, ms: f64| if ms > 0.0 { n * 1000.0 / ms } else { 0.0 };
        let evaluated = self.prompt_tokens.saturating_sub(self.cached_prompt_tokens);
        GenerationStats {
            prompt_tokens: self.prompt_tokens,
            cached_prompt_tokens: self.cached_prompt_tokens,
            generated_tokens: self.generated_tokens,
            time_to_first_token_ms: ttft,
            prompt_tokens_per_second: per_second(f64::from(evaluated), ttft),
            tokens_per_second: per_second(
                f64::from(self.generated_tokens.saturating_sub(1)),
                decode_ms,
            ),
            total_ms: ms(end - self.start),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_log_softmax_and_sorted() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let lp = TokenLogprobs::from_logits(&logits, 2, 3);
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        let want = |l: f32| (f64::from(l) - z.ln()) as f32;
        assert!((lp.logprob - want(2.0)).abs() < 1e-6);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![1, 3, 2]);
        assert!((lp.top[0].logprob - want(3.0)).abs() < 1e-6);
        let sum: f32 = TokenLogprobs::from_logits(&logits, 0, 4)
            .top
            .iter()
            .map(|t| t.logprob.exp())
            .sum();
        assert!((sum - 1.0).abs() < 1e-5);
    }

    #[test]
    fn banned_tokens_have_minus_infinity() {
        let lp = TokenLogprobs::from_logits(&[0.0, f32::NEG_INFINITY], 1, 2);
        assert_eq!(lp.logprob, f32::NEG_INFINITY);
        assert_eq!(lp.top[0].id, 0);
    }
}
