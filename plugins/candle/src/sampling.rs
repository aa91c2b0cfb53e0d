//! Token sampling over one logits vector, in llama.cpp's default order: repeat penalty,
//! top-k, top-p, min-p (the filters see the untempered distribution), then temperature and
//! a draw from a seeded RNG. Temperature 0 is greedy argmax (after the repeat penalty).

use crate::error::Result;
use llmlocal_plugin_api::{PluginError, Sampling};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub struct Sampler {
    params: Sampling,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: Sampling) -> Result<Self> {
        check(&params)?;
        Ok(Sampler {
            rng: StdRng::seed_from_u64(params.seed),
            params,
        })
    }

    /// Whether [`Sampler::sample`] is the plain argmax of the logits (greedy, no repeat
    /// penalty), which the device can then pick without sending the logits back.
    pub fn is_plain_greedy(&self) -> bool {
        self.params.is_greedy() && !self.penalises_repeats()
    }

    fn penalises_repeats(&self) -> bool {
        self.params.repeat_penalty != 1.0 && self.params.repeat_last_n > 0
    }

    /// Picks the next token; `history` is the sequence so far (prompt and generated).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.apply_repeat_penalty(logits, history);
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

    fn apply_repeat_penalty(&self, logits: &mut [f32], history: &[u32]) {
        if !self.penalises_repeats() {
            return;
        }
        let penalty = self.params.repeat_penalty;
        let start = history
            .len()
            .saturating_sub(self.params.repeat_last_n as usize);
        let mut seen = std::collections::HashSet::new();
        for &id in &history[start..] {
            if !seen.insert(id) {
                continue;
            }
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
}

fn check(p: &Sampling) -> Result<()> {
    let bad = |what: &str| Err(PluginError::invalid_request(format!("sampling: {what}")));
    if p.temperature.is_nan() {
        return bad("temperature is NaN");
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return bad("top_p must be in (0, 1]");
    }
    if !(0.0..=1.0).contains(&p.min_p) {
        return bad("min_p must be in [0, 1]");
    }
    if !(p.repeat_penalty > 0.0 && p.repeat_penalty.is_finite()) {
        return bad("repeat_penalty must be a positive number");
    }
    Ok(())
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

    fn params(temperature: f32, top_k: u32, seed: u64) -> Sampling {
        Sampling {
            temperature,
            top_k,
            seed,
            ..Sampling::default()
        }
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(Sampling::GREEDY).unwrap();
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 2.9], &[]), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(params(1.5, 1, 7)).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 2.9], &[]), 1);
        }
    }

    #[test]
    fn same_seed_same_draws() {
        let logits = [1.0f32, 1.1, 0.9, 1.05, 0.95];
        let run = |seed| {
            let mut s = Sampler::new(params(1.0, 0, seed)).unwrap();
            (0..32)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn repeat_penalty_changes_greedy_choice() {
        let mut s = Sampler::new(Sampling {
            repeat_penalty: 2.0,
            ..Sampling::GREEDY
        })
        .unwrap();
        assert_eq!(s.sample(&mut [0.0, 3.0, 2.0], &[1]), 2);
    }

    #[test]
    fn plain_greedy_means_argmax_without_penalty() {
        let greedy = params(0.0, 0, 1);
        assert!(Sampler::new(greedy).unwrap().is_plain_greedy());
        let penalised = Sampling {
            repeat_penalty: 1.3,
            ..greedy
        };
        assert!(!Sampler::new(penalised).unwrap().is_plain_greedy());
        let no_window = Sampling {
            repeat_last_n: 0,
            ..penalised
        };
        assert!(Sampler::new(no_window).unwrap().is_plain_greedy());
        assert!(!Sampler::new(params(0.7, 0, 1)).unwrap().is_plain_greedy());
    }

    #[test]
    fn bad_values_are_rejected() {
        let bad = Sampling {
            top_p: 0.0,
            ..Sampling::default()
        };
        assert!(Sampler::new(bad).is_err());
    }
}
