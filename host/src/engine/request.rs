//! What a generation asks for and what it streams back.

use super::{error::EngineError, logprobs::TokenLogprobs, template::ChatMessage, tools::Tools};
use crate::plugins::GenerationStats;
use futures_util::Stream;
use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};
use tokio::sync::mpsc;

/// A raw prompt, chat messages rendered with the model's chat template, or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Chat(Vec<ChatMessage>),
    /// Already tokenized: fed to the model as given (no BOS is added). Every id must be
    /// below the model's vocabulary size.
    Tokens(Vec<u32>),
    /// A one-turn prompt as Ollama's `/api/generate` takes it: in the model's chat template
    /// (system + user turn) when the model has one, else the text as given (Ollama's
    /// `{{ .Prompt }}`), with the system prompt, if any, as its own paragraph before it.
    Completion {
        system: Option<String>,
        prompt: String,
    },
}

/// How to generate. `None` fields take the defaults llama.cpp and Ollama use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// The most tokens to generate; `None` = the model's or the server's default
    /// ([`super::defaults`]), else `max_tokens_cap`, else until the end or the context is full.
    pub max_tokens: Option<u32>,
    /// The server's per-request limit: caps a default `max_tokens` and is the default when
    /// nothing else gives one.
    pub max_tokens_cap: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    /// How many of the last tokens the penalties look at; `None` = 64 (llama.cpp's default),
    /// 0 = none.
    pub repeat_last_n: Option<u32>,
    /// Locally typical sampling; `None` or 1 = off. Needs the backend's `full-sampling`.
    pub typical_p: Option<f32>,
    /// OpenAI-style penalties over the last 64 tokens; `None` or 0 = off (`full-sampling`).
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    /// Token id -> bias added to its logit (`f32::NEG_INFINITY` bans it); `logit-bias`.
    pub logit_bias: Vec<(u32, f32)>,
    /// Constrained decoding: a GBNF grammar (`grammar`) or a JSON schema (`json-schema`).
    pub constraint: Option<Constraint>,
    /// `Some(n)`: per-token logprobs with `n` alternatives (`logprobs`).
    pub logprobs: Option<u32>,
    /// Report each token's id on the stream ([`Event::Logprobs`]) even without `logprobs`
    /// (llama-server's `return_tokens`); such entries carry only `chosen.id`, with a NaN
    /// logprob and no text, and need no backend capability.
    pub token_ids: bool,
    /// `None` = the default seed if one is configured, else a random one.
    pub seed: Option<u64>,
    /// The request asked for a random seed (a negative seed at the API edge): no configured
    /// default seed replaces it.
    pub random_seed: bool,
    /// Text that ends the generation (not included in the output).
    pub stop: Vec<String>,
    /// Keep going after end-of-generation tokens (benchmarks, tests).
    pub ignore_eos: bool,
    /// The backend to use, over the model's configured one and the default.
    pub backend: Option<String>,
    /// LoRA adapters for this generation, as adapter specs `SPEC[:scale]` (see
    /// [`crate::adapters::AdapterSpec`]). `None` = the model's configured adapters (its
    /// entry's `adapters`); `Some(vec![])` = none, even when the model configures some.
    pub adapters: Option<Vec<String>>,
    /// May the backend reuse KV state kept from earlier generations with the same prompt
    /// prefix (llama-server's `cache_prompt`)? `None` = yes. The output is the same either
    /// way; a backend without `prefix-cache` never reuses anything.
    pub cache_prompt: Option<bool>,
    /// Functions the model may call in a chat (see [`super::tools`]); `None` = no tools.
    pub tools: Option<Tools>,
}

impl GenerationConfig {
    /// Greedy decoding of at most `max_tokens`.
    pub fn greedy(max_tokens: u32) -> Self {
        GenerationConfig {
            max_tokens: Some(max_tokens),
            temperature: Some(0.0),
            ..GenerationConfig::default()
        }
    }
}

/// A constraint on the output, applied by the backend as token masks.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// A GBNF grammar (llama.cpp's form) with a `root` rule.
    Grammar(String),
    /// A JSON schema, as JSON text.
    JsonSchema(String),
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The context is full.
    ContextFull,
}

impl FinishReason {
    /// The OpenAI/Ollama spelling: `stop` or `length` (a full context counts as `length`).
    pub fn as_openai(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length | FinishReason::ContextFull => "length",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContextFull => "context_full",
        }
    }
}

/// The end of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub model: String,
    pub backend: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// The backend's counters.
    pub stats: GenerationStats,
    /// Of `prompt_tokens`, how many the backend reused from its prompt cache.
    pub cached_tokens: u32,
    /// Time spent loading the model for this request (0 when it was loaded already).
    pub load_ms: f64,
    /// Time waiting in the model's queue.
    pub queue_ms: f64,
    /// From the engine receiving the request to the end.
    pub total_ms: f64,
    /// The stop sequence that ended the generation (the request's or the chat template's);
    /// `None` when it ended otherwise.
    pub stop_sequence: Option<String>,
}

impl Completion {
    /// Prompt processing as the plugin's stats clock saw it: from the start of the
    /// generation to the first token being ready (so it includes sampling that token).
    pub fn prompt_ms(&self) -> f64 {
        self.stats.time_to_first_token_ms.max(0.0)
    }

    /// Decoding after the first token, on the plugin's stats clock.
    pub fn decode_ms(&self) -> f64 {
        (self.stats.total_ms - self.stats.time_to_first_token_ms).max(0.0)
    }
}

/// One event of a generation's stream.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The next piece of text (whole characters, never empty).
    Text(String),
    /// Only when the request asked for logprobs: the tokens that produced the `Text` event
    /// that follows (or, before `Done`, the last tokens, whose text may be empty). Tokens
    /// hidden by a stop sequence are never reported.
    Logprobs(Vec<TokenLogprobs>),
    /// The end; the last event.
    Done(Completion),
}

/// The stream of a running generation. Dropping it cancels the generation.
#[derive(Debug)]
pub struct TokenStream {
    pub(crate) receiver: mpsc::Receiver<Result<Event, EngineError>>,
    pub model: String,
    pub backend: String,
    pub prompt_tokens: u32,
    /// When the engine received the request (for the server's first-token debug line).
    pub received: Instant,
}

impl Stream for TokenStream {
    type Item = Result<Event, EngineError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

impl TokenStream {
    /// The next event if one is ready now, without waiting.
    pub fn try_next(&mut self) -> Option<Result<Event, EngineError>> {
        self.receiver.try_recv().ok()
    }

    /// Collects the whole answer.
    pub async fn collect_text(self) -> Result<(String, Completion), EngineError> {
        let (text, _, done) = self.collect().await?;
        Ok((text, done))
    }

    /// Collects the whole answer with its tokens' logprobs (empty unless asked for).
    pub async fn collect(
        mut self,
    ) -> Result<(String, Vec<TokenLogprobs>, Completion), EngineError> {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        while let Some(event) = self.receiver.recv().await {
            match event? {
                Event::Text(piece) => text.push_str(&piece),
                Event::Logprobs(tokens) => logprobs.extend(tokens),
                Event::Done(done) => return Ok((text, logprobs, done)),
            }
        }
        Err(EngineError::Internal(
            "the generation ended without a final event".to_string(),
        ))
    }
}
