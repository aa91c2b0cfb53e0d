//! The per-sequence sampler, in the contract's order (docs/contract.md, "Sampling"):
//! logit_bias -> penalties ("shape": the distribution logprobs are read from) -> constraint
//! mask -> top_k -> typical_p -> top_p -> min_p -> temperature -> seeded draw ("pick"), or
//! argmax after the constraint when the temperature is 0.
//!
//! Every stage is one of llama.cpp's own samplers, except the JSON-schema mask, which is
//! llguidance's (see Cargo.toml). Plain greedy decoding with nothing else asked skips all of
//! it: an argmax over the logits in place.

use llama_cpp_2::{
    context::LlamaContext,
    model::LlamaModel,
    sampling::LlamaSampler,
    token::{
        data::LlamaTokenData, data_array::LlamaTokenDataArray, logit_bias::LlamaLogitBias,
        LlamaToken,
    },
};
use llguidance::{api::TopLevelGrammar, Matcher, ParserFactory};
use llmlocal_plugin_api::{
    abi_stable::std_types::ROption, ConstraintKind, GenerateRequest, PluginError, Sampling,
    TokenLogprobs,
};
use std::sync::{Arc, OnceLock};

/// What a generation asked of sampling, kept as plain data until the decode thread builds
/// the samplers: llama.cpp's grammar sampler points into the model's vocabulary, which a
/// reload (to free LoRA adapters) replaces while jobs wait in the queue.
#[derive(Debug, Clone)]
pub struct SamplingPlan {
    pub sampling: Sampling,
    pub logit_bias: Vec<(i32, f32)>,
    pub constraint: Option<(ConstraintKind, String)>,
    pub logprobs: Option<usize>,
}

impl SamplingPlan {
    pub fn of(request: &GenerateRequest) -> Self {
        SamplingPlan {
            sampling: request.sampling,
            logit_bias: request
                .logit_bias
                .iter()
                .map(|b| (i32::try_from(b.token).unwrap_or(i32::MAX), b.bias))
                .collect(),
            constraint: match &request.constraint {
                ROption::RSome(c) => Some((c.kind, c.text.to_string())),
                ROption::RNone => None,
            },
            logprobs: request.logprobs.into_option().map(|n| n as usize),
        }
    }

    /// Nothing but an argmax over the raw logits.
    fn is_plain_greedy(&self) -> bool {
        self.sampling.is_greedy()
            && self.logit_bias.is_empty()
            && !self.sampling.has_penalties()
            && self.constraint.is_none()
            && self.logprobs.is_none()
    }
}

/// llguidance's parser factory for one model, built on first use (it walks the vocabulary)
/// and shared by every JSON-schema generation of the model.
#[derive(Clone, Default)]
pub struct GuidanceCache(Arc<OnceLock<Result<ParserFactory, String>>>);

impl GuidanceCache {
    fn factory(&self, model: &LlamaModel) -> Result<&ParserFactory, PluginError> {
        self.0
            .get_or_init(|| {
                let env = LlamaSampler::llguidance_tok_env(model);
                let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
                factory.quiet();
                Ok(factory)
            })
            .as_ref()
            .map_err(|e| {
                PluginError::internal(format!("llguidance cannot read the vocabulary: {e}"))
            })
    }
}

pub struct SamplerChain {
    /// `None` for plain greedy: an argmax over the logits in place. llama.cpp's greedy
    /// sampler first builds a candidate array of the whole vocabulary (1.5 MB for 128k
    /// tokens), which on a GPU made sampling, done on the one decode thread for every
    /// sequence, the bottleneck of batched generation.
    stages: Option<Stages>,
}

struct Stages {
    /// logit_bias + penalties, or nothing.
    shape: Option<LlamaSampler>,
    /// constraint + filters + draw (or greedy).
    pick: LlamaSampler,
    logprobs: Option<usize>,
}

impl SamplerChain {
    /// Builds the samplers; an invalid grammar or schema is an `InvalidRequest`.
    pub fn new(
        plan: &SamplingPlan,
        model: &LlamaModel,
        guidance: &GuidanceCache,
    ) -> Result<Self, PluginError> {
        if plan.is_plain_greedy() {
            return Ok(SamplerChain::greedy());
        }
        let s = &plan.sampling;
        let n_vocab = model.n_vocab();
        let mut shape = Vec::new();
        if !plan.logit_bias.is_empty() {
            let biases: Vec<LlamaLogitBias> = plan
                .logit_bias
                .iter()
                .map(|&(token, bias)| LlamaLogitBias::new(LlamaToken(token), bias))
                .collect();
            shape.push(LlamaSampler::logit_bias(n_vocab, &biases));
        }
        if s.has_penalties() {
            shape.push(LlamaSampler::penalties(
                n_vocab,
                i32::try_from(s.repeat_last_n).unwrap_or(i32::MAX),
                s.repeat_penalty,
                s.frequency_penalty,
                s.presence_penalty,
            ));
        }
        let mut pick = Vec::new();
        if let Some((kind, text)) = &plan.constraint {
            pick.push(constraint_sampler(*kind, text, model, guidance)?);
        }
        if s.is_greedy() {
            pick.push(LlamaSampler::greedy());
        } else {
            if s.top_k > 0 {
                pick.push(LlamaSampler::top_k(
                    i32::try_from(s.top_k).unwrap_or(i32::MAX),
                ));
            }
            if s.typical_p < 1.0 {
                pick.push(LlamaSampler::typical(s.typical_p, 1));
            }
            if s.top_p < 1.0 {
                pick.push(LlamaSampler::top_p(s.top_p, 1));
            }
            if s.min_p > 0.0 {
                pick.push(LlamaSampler::min_p(s.min_p, 1));
            }
            pick.push(LlamaSampler::temp(s.temperature));
            pick.push(LlamaSampler::dist(seed32(s.seed_or_random())));
        }
        Ok(SamplerChain {
            stages: Some(Stages {
                shape: (!shape.is_empty()).then(|| LlamaSampler::chain_simple(shape)),
                pick: LlamaSampler::chain_simple(pick),
                logprobs: plan.logprobs,
            }),
        })
    }

    /// Plain argmax over the raw logits.
    pub fn greedy() -> Self {
        SamplerChain { stages: None }
    }

    /// Plain argmax: the decode thread may then pick the token itself (see [`argmax_all`]).
    pub fn is_greedy(&self) -> bool {
        self.stages.is_none()
    }

    /// Lets the penalties see the prompt, as llama.cpp's own tools do.
    pub fn accept_prompt(&mut self, prompt: &[LlamaToken]) {
        if let Some(Stages {
            shape: Some(shape), ..
        }) = &mut self.stages
        {
            shape.accept_many(prompt);
        }
    }

    /// Samples from the logits at batch index `index`, records the token in every stage, and
    /// returns it with its logprobs when they were asked for.
    pub fn sample(
        &mut self,
        context: &LlamaContext<'_>,
        index: i32,
    ) -> Result<(LlamaToken, Option<TokenLogprobs>), PluginError> {
        let logits = context.get_logits_ith(index);
        let Some(stages) = &mut self.stages else {
            return Ok((LlamaToken(argmax(logits)), None));
        };
        let mut candidates = LlamaTokenDataArray::from_iter(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0)),
            false,
        );
        if let Some(shape) = &mut stages.shape {
            candidates.apply_sampler(shape);
        }
        // The shaped logits, in token order (bias and penalties neither sort nor drop).
        let shaped: Option<Vec<f32>> = stages
            .logprobs
            .map(|_| candidates.data.iter().map(LlamaTokenData::logit).collect());
        candidates.apply_sampler(&mut stages.pick);
        let token = candidates.selected_token().ok_or_else(|| {
            PluginError::invalid_request(
                "no token is allowed here: the constraint and the filters left no candidate \
                 (a grammar that cannot continue, or every token banned)",
            )
        })?;
        if let Some(shape) = &mut stages.shape {
            shape.accept(token);
        }
        stages.pick.accept(token);
        let logprobs = match (stages.logprobs, shaped) {
            (Some(n), Some(row)) => Some(TokenLogprobs::from_logits(
                &row,
                u32::try_from(token.0).unwrap_or(0),
                n,
            )),
            _ => None,
        };
        Ok((token, logprobs))
    }
}

/// A GBNF grammar through llama.cpp's grammar sampler, a JSON schema through llguidance.
fn constraint_sampler(
    kind: ConstraintKind,
    text: &str,
    model: &LlamaModel,
    guidance: &GuidanceCache,
) -> Result<LlamaSampler, PluginError> {
    match kind {
        ConstraintKind::Grammar => {
            // llama.cpp logs the parse error and returns null; the message says where to look.
            LlamaSampler::grammar(model, text, "root").map_err(|e| {
                PluginError::invalid_request(format!(
                    "the grammar is not valid GBNF with a `root` rule ({e}); the log has \
                     llama.cpp's parse error"
                ))
            })
        }
        ConstraintKind::JsonSchema => {
            let schema: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                PluginError::invalid_request(format!("the JSON schema is not valid JSON: {e}"))
            })?;
            let factory = guidance.factory(model)?;
            let parser = factory.create_parser(TopLevelGrammar::from_json_schema(compact(schema)));
            let matcher = Matcher::new(parser);
            if let Some(err) = matcher.get_error() {
                return Err(PluginError::invalid_request(format!(
                    "the JSON schema cannot be used: {err}"
                )));
            }
            Ok(LlamaSampler::from(matcher))
        }
        other => Err(PluginError::invalid_request(format!(
            "constraint kind {} is not supported",
            other.0
        ))),
    }
}

/// JSON output is compact (docs/contract.md): unless the schema sets llguidance's own
/// `x-guidance` options, no whitespace between tokens, so a small model cannot pad an answer
/// with whitespace until `max_tokens`.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let serde_json::Value::Object(map) = &mut schema {
        map.entry("x-guidance")
            .or_insert_with(|| serde_json::json!({ "whitespace_flexible": false }));
    }
    schema
}

/// Below this many greedy sequences in a batch, argmax runs on the calling thread.
const PARALLEL_ARGMAX_FROM: usize = 8;

/// The argmax of each logits row. With many rows (a big batch of greedy sequences over a
/// large vocabulary: 64 x 128k logits is 32 MB to scan every step) the rows are split over a
/// few scoped threads, so the one decode thread does not hold the GPU back.
pub fn argmax_all(rows: &[&[f32]]) -> Vec<LlamaToken> {
    if rows.len() < PARALLEL_ARGMAX_FROM {
        return rows.iter().map(|r| LlamaToken(argmax(r))).collect();
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let chunk = rows.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|r| argmax(r)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .zip(rows.chunks(chunk))
            .flat_map(|(handle, part)| {
                // A scan of floats cannot panic; recompute here if a thread somehow failed.
                handle
                    .join()
                    .unwrap_or_else(|_| part.iter().map(|r| argmax(r)).collect())
            })
            .map(LlamaToken)
            .collect()
    })
}

/// Index of the largest logit; the first one on ties (as llama.cpp's greedy sampler).
fn argmax(logits: &[f32]) -> i32 {
    let (mut best, mut best_value) = (0, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        // NaN never compares greater, so it is never picked.
        if v > best_value {
            (best, best_value) = (i, v);
        }
    }
    i32::try_from(best).unwrap_or(0)
}

/// llama.cpp seeds are 32 bits and `u32::MAX` means "random": fold the 64-bit seed and avoid
/// that value so a fixed seed always reproduces.
fn seed32(seed: u64) -> u32 {
    let folded = (seed as u32) ^ ((seed >> 32) as u32);
    if folded == u32::MAX {
        u32::MAX - 1
    } else {
        folded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_all_matches_row_by_row_argmax_serial_and_parallel() {
        let rows: Vec<Vec<f32>> = (0..20)
            .map(|r| (0..50).map(|i| ((i * 7 + r * 13) % 31) as f32).collect())
            .collect();
        let views: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        for n in [1, 7, 8, 20] {
            let got = argmax_all(&views[..n]);
            let want: Vec<LlamaToken> = views[..n].iter().map(|r| LlamaToken(argmax(r))).collect();
            assert_eq!(got, want, "{n} rows");
        }
    }

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 3.0]), 2);
        assert_eq!(argmax(&[-3.0]), 0);
    }

    #[test]
    fn seed_never_maps_to_the_random_seed() {
        assert_ne!(seed32(u64::from(u32::MAX)), u32::MAX);
        assert_eq!(seed32(42), 42);
        assert_ne!(seed32(1), seed32(2));
    }

    #[test]
    fn only_a_bare_greedy_request_takes_the_argmax_path() {
        let request = GenerateRequest::greedy(vec![1], 1);
        assert!(SamplingPlan::of(&request).is_plain_greedy());
        let mut with_logprobs = request.clone();
        with_logprobs.logprobs = ROption::RSome(0);
        assert!(!SamplingPlan::of(&with_logprobs).is_plain_greedy());
        let mut with_bias = request;
        with_bias.logit_bias.push(llmlocal_plugin_api::LogitBias {
            token: 0,
            bias: -1.0,
        });
        assert!(!SamplingPlan::of(&with_bias).is_plain_greedy());
    }
}
