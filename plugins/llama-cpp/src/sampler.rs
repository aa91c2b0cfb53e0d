//! The per-sequence llama.cpp sampler chain.

use llama_cpp_2::{context::LlamaContext, sampling::LlamaSampler, token::LlamaToken};
use llmlocal_plugin_api::{PluginError, Sampling};

/// penalties -> top_k -> top_p -> min_p -> temperature -> dist(seed), or plain argmax when the
/// temperature is 0 (the contract: greedy ignores the other filters).
pub struct SamplerChain {
    /// `None` for greedy: an argmax over the logits in place. llama.cpp's greedy sampler first
    /// builds a candidate array of the whole vocabulary (1.5 MB for 128k tokens), which on a
    /// GPU made sampling, done on the one decode thread for every sequence, the bottleneck of
    /// batched generation.
    sampler: Option<LlamaSampler>,
}

impl SamplerChain {
    pub fn new(sampling: &Sampling, n_vocab: i32) -> Result<Self, PluginError> {
        validate(sampling)?;
        if sampling.is_greedy() {
            return Ok(SamplerChain { sampler: None });
        }
        let mut chain = Vec::new();
        if sampling.repeat_penalty != 1.0 && sampling.repeat_last_n != 0 {
            let last_n = i32::try_from(sampling.repeat_last_n).unwrap_or(i32::MAX);
            chain.push(LlamaSampler::penalties(
                n_vocab,
                last_n,
                sampling.repeat_penalty,
                0.0,
                0.0,
            ));
        }
        if sampling.top_k > 0 {
            chain.push(LlamaSampler::top_k(
                i32::try_from(sampling.top_k).unwrap_or(i32::MAX),
            ));
        }
        if sampling.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(sampling.top_p, 1));
        }
        if sampling.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(sampling.min_p, 1));
        }
        chain.push(LlamaSampler::temp(sampling.temperature));
        chain.push(LlamaSampler::dist(seed32(sampling.seed)));
        Ok(SamplerChain {
            sampler: Some(LlamaSampler::chain_simple(chain)),
        })
    }

    /// Plain argmax: the decode thread may then pick the token itself (see [`argmax_all`]).
    pub fn is_greedy(&self) -> bool {
        self.sampler.is_none()
    }

    /// Lets the repeat penalty see the prompt.
    pub fn accept_prompt(&mut self, prompt: &[LlamaToken]) {
        if let Some(sampler) = &mut self.sampler {
            sampler.accept_many(prompt);
        }
    }

    /// Samples from the logits at batch index `index` and records the token.
    pub fn sample(&mut self, context: &LlamaContext<'_>, index: i32) -> LlamaToken {
        match &mut self.sampler {
            Some(sampler) => sampler.sample(context, index),
            None => LlamaToken(argmax(context.get_logits_ith(index))),
        }
    }
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

fn validate(s: &Sampling) -> Result<(), PluginError> {
    let bad = |what: &str| Err(PluginError::invalid_request(format!("sampling: {what}")));
    if !s.temperature.is_finite() || s.temperature < 0.0 {
        return bad("temperature must be a finite number >= 0");
    }
    if !(s.top_p > 0.0 && s.top_p <= 1.0) {
        return bad("top_p must be in (0, 1]");
    }
    if !(0.0..=1.0).contains(&s.min_p) {
        return bad("min_p must be in [0, 1]");
    }
    if !s.repeat_penalty.is_finite() || s.repeat_penalty <= 0.0 {
        return bad("repeat_penalty must be a finite number > 0");
    }
    Ok(())
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
    fn bad_sampling_values_are_invalid_requests() {
        let s = Sampling {
            top_p: 0.0,
            ..Sampling::default()
        };
        assert!(validate(&s).is_err());
        let s = Sampling {
            temperature: f32::NAN,
            ..Sampling::default()
        };
        assert!(validate(&s).is_err());
        assert!(validate(&Sampling::default()).is_ok());
        assert!(validate(&Sampling::GREEDY).is_ok());
    }
}
