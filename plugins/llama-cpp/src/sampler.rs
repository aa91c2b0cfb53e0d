//! The per-sequence llama.cpp sampler chain.

use llama_cpp_2::{context::LlamaContext, sampling::LlamaSampler, token::LlamaToken};
use llmlocal_plugin_api::{PluginError, Sampling};

/// penalties -> top_k -> top_p -> min_p -> temperature -> dist(seed), or plain argmax when the
/// temperature is 0 (the contract: greedy ignores the other filters).
pub struct SamplerChain {
    sampler: LlamaSampler,
    greedy: bool,
}

impl SamplerChain {
    pub fn new(sampling: &Sampling, n_vocab: i32) -> Result<Self, PluginError> {
        validate(sampling)?;
        if sampling.is_greedy() {
            return Ok(SamplerChain {
                sampler: LlamaSampler::greedy(),
                greedy: true,
            });
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
            sampler: LlamaSampler::chain_simple(chain),
            greedy: false,
        })
    }

    /// Lets the repeat penalty see the prompt.
    pub fn accept_prompt(&mut self, prompt: &[LlamaToken]) {
        if !self.greedy {
            self.sampler.accept_many(prompt);
        }
    }

    /// Samples from the logits at batch index `index` and records the token.
    pub fn sample(&mut self, context: &LlamaContext<'_>, index: i32) -> LlamaToken {
        self.sampler.sample(context, index)
    }
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
