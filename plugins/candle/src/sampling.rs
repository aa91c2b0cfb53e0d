//! Token sampling over one logits vector, in the contract's order (docs/contract.md,
//! "Sampling"), the same as llama.cpp's default chain: logit_bias, then the penalties
//! (repeat, frequency, presence over the last `repeat_last_n` tokens), then top-k, typical-p,
//! top-p, min-p (the filters see the untempered distribution), then temperature and a draw
//! from a seeded RNG. Temperature 0 is greedy argmax (after bias and penalties).

use crate::constraint::Constrainer;
use crate::error::Result;
use llmlocal_plugin_api::{GenerateRequest, Sampling, TokenLogprobs};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

pub struct Sampler {
    params: Sampling,
    bias: Vec<(usize, f32)>,
    /// `Some(n)`: report logprobs with `n` alternatives.
    logprobs: Option<usize>,
    /// A JSON-schema mask, applied after bias and penalties.
    constraint: Option<Constrainer>,
    rng: StdRng,
}

/// A sampled token, with its logprobs when they were asked for.
pub struct Sampled {
    pub id: u32,
    pub logprobs: Option<TokenLogprobs>,
}

impl Sampler {
    /// The request was checked against the contract by the export glue
    /// ([`GenerateRequest::validate`]): ranges, bias ids and the logprobs count are sound.
    pub fn new(request: &GenerateRequest) -> Self {
        let params = request.sampling;
        Sampler {
            rng: StdRng::seed_from_u64(params.seed_or_random()),
            bias: request
                .logit_bias
                .iter()
                .map(|b| (b.token as usize, b.bias))
                .collect(),
            logprobs: request.logprobs.into_option().map(|n| n as usize),
            constraint: None,
            params,
        }
    }

    pub fn with_constraint(mut self, constraint: Constrainer) -> Self {
        self.constraint = Some(constraint);
        self
    }

    /// Whether [`Sampler::sample`] is the plain argmax of the logits (greedy, no bias, no
    /// penalty, no logprobs), which the device can then pick without sending the logits back.
    pub fn is_plain_greedy(&self) -> bool {
        self.params.is_greedy()
            && !self.params.has_penalties()
            && self.bias.is_empty()
            && self.logprobs.is_none()
            && self.constraint.is_none()
    }

    /// Picks the next token; `history` is the sequence so far (prompt and generated).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<Sampled> {
        self.shape(logits, history);
        // Logprobs come from the shaped distribution, before the mask and the filters.
        let shaped = match (&self.constraint, self.logprobs) {
            (Some(_), Some(_)) => Some(logits.to_vec()),
            _ => None,
        };
        if let Some(constraint) = &mut self.constraint {
            constraint.mask(logits)?;
        }
        let id = self.pick(logits);
        if let Some(constraint) = &mut self.constraint {
            constraint.accept(id)?;
        }
        let row: &[f32] = shaped.as_deref().unwrap_or(logits);
        Ok(Sampled {
            id,
            logprobs: self
                .logprobs
                .map(|n| TokenLogprobs::from_logits(row, id, n)),
        })
    }

    /// logit_bias and penalties: the distribution logprobs are read from.
    fn shape(&self, logits: &mut [f32], history: &[u32]) {
        for &(id, bias) in &self.bias {
            if let Some(l) = logits.get_mut(id) {
                *l += bias;
            }
        }
        if self.params.has_penalties() {
            self.apply_penalties(logits, history);
        }
    }

    fn pick(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        if candidates.is_empty() {
            return argmax(logits);
        }
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top_k = self.params.top_k as usize;
        if top_k > 0 {
            candidates.truncate(top_k);
        }
        if self.params.typical_p < 1.0 {
            candidates = typical(candidates, self.params.typical_p);
        }
        let probs = softmax(&candidates, 1.0);
        let keep = self.nucleus(&probs);
        candidates.truncate(keep);
        let probs = softmax(&candidates, self.params.temperature);
        self.draw(&candidates, &probs)
    }

    /// How many of the sorted candidates survive top-p and min-p.
    fn nucleus(&self, probs: &[f32]) -> usize {
        let mut keep = probs.len();
        if self.params.top_p < 1.0 {
            let mut total = 0.0;
            for (i, p) in probs.iter().enumerate() {
                total += p;
                if total >= self.params.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if self.params.min_p > 0.0 {
            let floor = probs[0] * self.params.min_p;
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count());
        }
        keep.max(1)
    }

    fn draw(&mut self, candidates: &[(u32, f32)], probs: &[f32]) -> u32 {
        let mut target: f32 = self.rng.random::<f32>();
        for (c, p) in candidates.iter().zip(probs) {
            target -= p;
            if target <= 0.0 {
                return c.0;
            }
        }
        candidates.last().map_or(0, |c| c.0)
    }

    /// llama.cpp's penalties: over the window, a seen token's logit is divided by the repeat
    /// penalty (multiplied when negative), then lowered by `count * frequency + presence`.
    fn apply_penalties(&self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        let start = history.len().saturating_sub(p.repeat_last_n as usize);
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &id in &history[start..] {
            *counts.entry(id).or_default() += 1;
        }
        for (id, count) in counts {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l <= 0.0 {
                    *l * p.repeat_penalty
                } else {
                    *l / p.repeat_penalty
                };
                *l -= count as f32 * p.frequency_penalty + p.presence_penalty;
            }
        }
    }
}

/// Locally typical sampling (Meister et al. 2022, as llama.cpp): keep the tokens whose
/// surprise is closest to the entropy until their mass reaches `p`; sorted by logit again.
fn typical(candidates: Vec<(u32, f32)>, p: f32) -> Vec<(u32, f32)> {
    let probs = softmax(&candidates, 1.0);
    let entropy: f32 = probs
        .iter()
        .filter(|&&q| q > 0.0)
        .map(|&q| -q * q.ln())
        .sum();
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    let shift = |i: usize| (-probs[i].ln() - entropy).abs();
    order.sort_by(|&a, &b| shift(a).total_cmp(&shift(b)));
    let mut mass = 0.0;
    let mut keep = order.len();
    for (n, &i) in order.iter().enumerate() {
        mass += probs[i];
        if mass > p {
            keep = n + 1;
            break;
        }
    }
    let mut kept: Vec<(u32, f32)> = order[..keep.max(1)]
        .iter()
        .map(|&i| candidates[i])
        .collect();
    kept.sort_by(|a, b| b.1.total_cmp(&a.1));
    kept
}

/// The index of the largest logit (the first one on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Softmax of the candidates' logits at a temperature (sorted input, max first).
fn softmax(candidates: &[(u32, f32)], temperature: f32) -> Vec<f32> {
    let max = candidates.first().map_or(0.0, |c| c.1);
    let exps: Vec<f32> = candidates
        .iter()
        .map(|c| ((c.1 - max) / temperature).exp())
        .collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlocal_plugin_api::{abi_stable::std_types::ROption, LogitBias};

    fn request(sampling: Sampling) -> GenerateRequest {
        GenerateRequest {
            sampling,
            ..GenerateRequest::greedy(vec![1], 1)
        }
    }

    fn sampler(temperature: f32, top_k: u32, seed: u64) -> Sampler {
        Sampler::new(&request(Sampling {
            temperature,
            top_k,
            seed: ROption::RSome(seed),
            ..Sampling::default()
        }))
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(&request(Sampling::GREEDY));
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 2.9], &[]).unwrap().id, 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = sampler(1.5, 1, 7);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 2.9], &[]).unwrap().id, 1);
        }
    }

    #[test]
    fn same_seed_same_draws() {
        let logits = [1.0f32, 1.1, 0.9, 1.05, 0.95];
        let run = |seed| {
            let mut s = sampler(1.0, 0, seed);
            (0..32)
                .map(|_| s.sample(&mut logits.clone(), &[]).unwrap().id)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn repeat_penalty_changes_greedy_choice() {
        let mut s = Sampler::new(&request(Sampling {
            repeat_penalty: 2.0,
            ..Sampling::GREEDY
        }));
        assert_eq!(s.sample(&mut [0.0, 3.0, 2.0], &[1]).unwrap().id, 2);
    }

    #[test]
    fn frequency_and_presence_follow_the_formula() {
        let s = Sampler::new(&request(Sampling {
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..Sampling::GREEDY
        }));
        let mut logits = [1.0f32, 1.0, 1.0];
        s.shape(&mut logits, &[1, 1, 2]);
        assert_eq!(logits, [1.0, 1.0 - 2.0 * 0.5 - 0.25, 1.0 - 0.5 - 0.25]);
    }

    #[test]
    fn a_minus_infinity_bias_bans_the_token() {
        let mut r = request(Sampling {
            temperature: 1.0,
            seed: ROption::RSome(1),
            ..Sampling::default()
        });
        r.logit_bias.push(LogitBias {
            token: 1,
            bias: f32::NEG_INFINITY,
        });
        let mut s = Sampler::new(&r);
        for _ in 0..50 {
            assert_ne!(s.sample(&mut [0.0, 9.0, 0.5], &[]).unwrap().id, 1);
        }
    }

    #[test]
    fn typical_keeps_the_tokens_nearest_the_entropy() {
        // Two likely tokens and a tail: the tail's surprise is far from the entropy. As in
        // llama.cpp, tokens are kept until their mass exceeds p: the first holds just under
        // half (the tail has the rest), so p = 0.4 keeps one and p = 0.5 keeps both.
        let candidates = vec![(0, 5.0), (1, 5.0), (2, -5.0)];
        let ids = |p| -> Vec<u32> { typical(candidates.clone(), p).iter().map(|c| c.0).collect() };
        assert_eq!(ids(0.4), vec![0]);
        assert_eq!(ids(0.5), vec![0, 1]);
        assert_eq!(typical(vec![(0, 1.0)], 0.1).len(), 1);
    }

    #[test]
    fn logprobs_come_from_the_shaped_logits() {
        let mut r = request(Sampling::GREEDY);
        r.logprobs = ROption::RSome(2);
        r.logit_bias.push(LogitBias {
            token: 0,
            bias: 1.0,
        });
        let mut s = Sampler::new(&r);
        let sampled = s.sample(&mut [1.0, 1.5, -1.0], &[]).unwrap();
        assert_eq!(sampled.id, 0);
        let lp = sampled.logprobs.unwrap();
        let z = (2.0f32).exp() + (1.5f32).exp() + (-1.0f32).exp();
        assert!((lp.logprob - (2.0 - z.ln())).abs() < 1e-5);
        assert_eq!(lp.top.len(), 2);
    }

    #[test]
    fn plain_greedy_means_argmax_without_penalty() {
        let greedy = Sampling::GREEDY;
        assert!(Sampler::new(&request(greedy)).is_plain_greedy());
        let penalised = Sampling {
            repeat_penalty: 1.3,
            ..greedy
        };
        assert!(!Sampler::new(&request(penalised)).is_plain_greedy());
        let no_window = Sampling {
            repeat_last_n: 0,
            ..penalised
        };
        assert!(Sampler::new(&request(no_window)).is_plain_greedy());
        assert!(!sampler(0.7, 0, 1).is_plain_greedy());
    }
}
