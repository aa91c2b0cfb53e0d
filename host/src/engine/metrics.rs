//! Prometheus metrics of the engine and the server, rendered by `GET /metrics`.

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use std::sync::Mutex;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishLabel {
    pub model: String,
    /// stop, length, context_full, cancelled, error
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub endpoint: String,
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub code: String,
}

fn seconds_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric, registered once.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<RequestLabel, Counter>,
    pub errors: Family<ErrorLabel, Counter>,
    pub prompt_tokens: Family<ModelLabel, Counter>,
    pub prompt_tokens_cached: Family<ModelLabel, Counter>,
    pub generated_tokens: Family<ModelLabel, Counter>,
    pub generations: Family<FinishLabel, Counter>,
    /// Vectors computed by embedding requests.
    pub embeddings: Family<ModelLabel, Counter>,
    pub time_to_first_token: Family<ModelLabel, Histogram>,
    pub token_latency: Family<ModelLabel, Histogram>,
    pub load_seconds: Family<ModelLabel, Histogram>,
    pub loaded_models: Gauge,
    pub active_generations: Gauge,
    pub queue_depth: Family<ModelLabel, Gauge>,
    /// Bytes each loaded model's prompt caches hold now; set at every scrape
    /// ([`Metrics::set_prompt_caches`]).
    pub prompt_cache_bytes: Family<ModelLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("llmlocal")),
            requests: Family::default(),
            errors: Family::default(),
            prompt_tokens: Family::default(),
            prompt_tokens_cached: Family::default(),
            generated_tokens: Family::default(),
            generations: Family::default(),
            embeddings: Family::default(),
            time_to_first_token: Family::new_with_constructor(seconds_histogram),
            token_latency: Family::new_with_constructor(seconds_histogram),
            load_seconds: Family::new_with_constructor(seconds_histogram),
            loaded_models: Gauge::default(),
            active_generations: Gauge::default(),
            queue_depth: Family::default(),
            prompt_cache_bytes: Family::default(),
        };
        m.register_all();
        m
    }

    fn register_all(&self) {
        let Ok(mut r) = self.registry.lock() else {
            return;
        };
        r.register(
            "http_requests",
            "HTTP requests by endpoint and status",
            self.requests.clone(),
        );
        r.register("errors", "Errors returned, by code", self.errors.clone());
        r.register(
            "embeddings",
            "Embedding vectors computed, by model",
            self.embeddings.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens processed",
            self.prompt_tokens.clone(),
        );
        r.register(
            "prompt_tokens_cached",
            "Prompt tokens the backend reused from its prompt cache (included in prompt_tokens)",
            self.prompt_tokens_cached.clone(),
        );
        r.register(
            "generated_tokens",
            "Tokens generated",
            self.generated_tokens.clone(),
        );
        r.register(
            "generations",
            "Finished generations by reason",
            self.generations.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "From request to first token (includes queueing and loading)",
            self.time_to_first_token.clone(),
        );
        r.register(
            "token_latency_seconds",
            "Time between consecutive generated tokens",
            self.token_latency.clone(),
        );
        r.register(
            "model_load_seconds",
            "Model load time",
            self.load_seconds.clone(),
        );
        r.register(
            "loaded_models",
            "Models loaded now",
            self.loaded_models.clone(),
        );
        r.register(
            "active_generations",
            "Generations running now",
            self.active_generations.clone(),
        );
        r.register(
            "queue_depth",
            "Requests waiting for a model",
            self.queue_depth.clone(),
        );
        r.register(
            "prompt_cache_bytes",
            "Bytes a loaded model's prompt caches hold in host memory now (not in its size estimate)",
            self.prompt_cache_bytes.clone(),
        );
    }

    /// The loaded models' prompt cache bytes, replacing the last scrape's: an unloaded
    /// model's line goes.
    pub fn set_prompt_caches(&self, figures: &[(String, u64)]) {
        self.prompt_cache_bytes.clear();
        for (model, bytes) in figures {
            self.prompt_cache_bytes
                .get_or_create(&Metrics::model(model))
                .set(i64::try_from(*bytes).unwrap_or(i64::MAX));
        }
    }

    pub fn model(name: &str) -> ModelLabel {
        ModelLabel {
            model: name.to_string(),
        }
    }

    pub fn error(&self, code: &str) {
        self.errors
            .get_or_create(&ErrorLabel {
                code: code.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            if let Err(err) = encode(&mut out, &r) {
                tracing::error!("cannot encode metrics: {err}");
            }
        }
        out
    }
}
