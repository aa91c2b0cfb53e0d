//! Server-wide and per-model sampling defaults (llama-server's `--temp`, `--seed`,
//! `--n-predict`, `--top-k`, `--top-p`, `--min-p`, `--repeat-penalty`; the config keys of the
//! same names in `[engine]` and `[models.NAME]`).
//!
//! One place applies them: [`SamplingDefaults::apply`], called by the engine on every
//! generation, so every API dialect gets them the same way. A request's own field wins over
//! the model's default, which wins over the server-wide one.

use super::request::GenerationConfig;

/// Defaults for what a request leaves out; `None` = no default (the backend's own).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    /// A negative seed means a random one (llama.cpp's -1), also over a server-wide seed.
    pub seed: Option<i64>,
    /// Tokens to generate when a request gives no limit; -1 = no default limit (the
    /// server's `max_tokens_cap`), also over a server-wide value.
    pub n_predict: Option<i64>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
}

/// A default that cannot be used: the config key it came from and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} = {value}: {reason}")]
pub struct BadDefault {
    /// The config key (`temperature`, `n_predict`, ...); see [`flag_of`] for the flag.
    pub key: &'static str,
    pub value: String,
    pub reason: &'static str,
}

impl SamplingDefaults {
    /// Each field of `self`, else `fallback`'s: a model's defaults over the server's.
    pub fn or(&self, fallback: &SamplingDefaults) -> SamplingDefaults {
        SamplingDefaults {
            temperature: self.temperature.or(fallback.temperature),
            seed: self.seed.or(fallback.seed),
            n_predict: self.n_predict.or(fallback.n_predict),
            top_k: self.top_k.or(fallback.top_k),
            top_p: self.top_p.or(fallback.top_p),
            min_p: self.min_p.or(fallback.min_p),
            repeat_penalty: self.repeat_penalty.or(fallback.repeat_penalty),
        }
    }

    /// Refuses values a request could not give either (the API's ranges), at startup.
    pub fn check(&self) -> Result<(), BadDefault> {
        let bad = |key, value: String, reason| Err(BadDefault { key, value, reason });
        if let Some(t) = self.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
            return bad("temperature", t.to_string(), "must be between 0 and 2");
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return bad("top_p", p.to_string(), "must be in (0, 1]");
        }
        if let Some(p) = self.min_p.filter(|p| !(0.0..=1.0).contains(p)) {
            return bad("min_p", p.to_string(), "must be in [0, 1]");
        }
        if let Some(r) = self.repeat_penalty.filter(|r| !(*r > 0.0 && r.is_finite())) {
            return bad("repeat_penalty", r.to_string(), "must be positive");
        }
        if let Some(n) = self
            .n_predict
            .filter(|n| *n != -1 && !(1..=i64::from(u32::MAX)).contains(n))
        {
            return bad(
                "n_predict",
                n.to_string(),
                "must be at least 1 (or -1 for no default limit)",
            );
        }
        Ok(())
    }

    /// Whether `n_predict` is over the server's per-request cap (a startup error: a default
    /// a request could not ask for).
    pub fn check_cap(&self, cap: u32) -> Result<(), BadDefault> {
        match self.n_predict {
            Some(n) if n > i64::from(cap) => Err(BadDefault {
                key: "n_predict",
                value: n.to_string(),
                reason: "is over the server's max_tokens_cap (raise --max-tokens-cap)",
            }),
            _ => Ok(()),
        }
    }

    /// Fills what `config` leaves out. Idempotent, so a dialect may apply it to report the
    /// settings a request runs with (llama-server's `generation_settings`).
    pub fn apply(&self, config: &mut GenerationConfig) {
        config.temperature = config.temperature.or(self.temperature);
        config.top_k = config.top_k.or(self.top_k);
        config.top_p = config.top_p.or(self.top_p);
        config.min_p = config.min_p.or(self.min_p);
        config.repeat_penalty = config.repeat_penalty.or(self.repeat_penalty);
        if config.seed.is_none() && !config.random_seed {
            // A negative default seed leaves it random.
            config.seed = self.seed.and_then(|s| u64::try_from(s).ok());
        }
        let default = self
            .n_predict
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0);
        config.max_tokens = match (config.max_tokens.or(default), config.max_tokens_cap) {
            (Some(n), Some(cap)) => Some(n.min(cap)),
            (n, cap) => n.or(cap),
        };
    }
}

/// The `llmlocal serve` flag of a config key (llama-server's names).
pub fn flag_of(key: &str) -> String {
    match key {
        "temperature" => "--temp".to_string(),
        other => format!("--{}", other.replace('_', "-")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_wins_then_the_model_then_the_server() {
        let server = SamplingDefaults {
            temperature: Some(0.5),
            n_predict: Some(5),
            seed: Some(7),
            ..SamplingDefaults::default()
        };
        let model = SamplingDefaults {
            n_predict: Some(3),
            ..SamplingDefaults::default()
        };
        let mut config = GenerationConfig {
            temperature: Some(0.0),
            max_tokens_cap: Some(100),
            ..GenerationConfig::default()
        };
        model.or(&server).apply(&mut config);
        assert_eq!(config.temperature, Some(0.0));
        assert_eq!(config.max_tokens, Some(3));
        assert_eq!(config.seed, Some(7));
        // Idempotent.
        let again = config.clone();
        model.or(&server).apply(&mut config);
        assert_eq!(config, again);
    }

    #[test]
    fn negative_seeds_and_n_predict_minus_one_mean_none() {
        let server = SamplingDefaults {
            seed: Some(7),
            n_predict: Some(5),
            ..SamplingDefaults::default()
        };
        let model = SamplingDefaults {
            seed: Some(-1),
            n_predict: Some(-1),
            ..SamplingDefaults::default()
        };
        let mut config = GenerationConfig {
            max_tokens_cap: Some(100),
            ..GenerationConfig::default()
        };
        model.or(&server).apply(&mut config);
        assert_eq!((config.seed, config.max_tokens), (None, Some(100)));
        // A request asking for a random seed is not given the default one.
        let mut config = GenerationConfig {
            random_seed: true,
            ..GenerationConfig::default()
        };
        server.apply(&mut config);
        assert_eq!((config.seed, config.max_tokens), (None, Some(5)));
    }

    #[test]
    fn bad_values_name_their_key_and_flag() {
        let bad = SamplingDefaults {
            top_p: Some(1.5),
            ..SamplingDefaults::default()
        };
        let err = bad.check().expect_err("top_p 1.5");
        assert_eq!(err.key, "top_p");
        assert_eq!(flag_of(err.key), "--top-p");
        assert_eq!(flag_of("temperature"), "--temp");
        for bad in [
            SamplingDefaults {
                temperature: Some(-1.0),
                ..SamplingDefaults::default()
            },
            SamplingDefaults {
                n_predict: Some(0),
                ..SamplingDefaults::default()
            },
            SamplingDefaults {
                repeat_penalty: Some(0.0),
                ..SamplingDefaults::default()
            },
            SamplingDefaults {
                min_p: Some(2.0),
                ..SamplingDefaults::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        let five = SamplingDefaults {
            n_predict: Some(5),
            ..SamplingDefaults::default()
        };
        assert!(five.check().is_ok());
        assert!(five.check_cap(4).is_err());
    }
}
