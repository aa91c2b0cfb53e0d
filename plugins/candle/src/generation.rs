//! One running generation. It owns its KV cache (a [`Session`]) and does work only inside
//! `next()`, on the caller's thread: the host pulls each generation on its own blocking
//! thread, several run at once, and dropping one frees its cache with nothing left running.

use crate::constraint::Constrainer;
use crate::error::Result;
use crate::model::Shared;
use crate::net::Session;
use crate::prefix::{self, Checkpoints, Kv};
use crate::sampling::Sampler;
use llmlocal_plugin_api::{
    abi_stable::std_types::ROption, ConstraintKind, FinishReason, GenerateRequest, Generation,
    GenerationStats, PluginError, StatsClock, Step, Token, TokenLogprobs, Utf8Decoder,
};
use std::sync::Arc;

pub struct CandleGeneration {
    shared: Arc<Shared>,
    /// Given back to the model's prefix cache when the generation ends normally.
    session: Option<Session>,
    /// `cache_prompt`: start from a kept cache and keep this one at the end.
    keep: bool,
    /// Snapshots of `session` at checkpoint positions (only where `keep`).
    checkpoints: Checkpoints<Session>,
    /// Prompt and generated tokens so far.
    history: Vec<u32>,
    prompt_len: usize,
    /// Tokens already in the KV cache.
    cached: usize,
    generated: u32,
    max_tokens: u32,
    ignore_eos: bool,
    sampler: Sampler,
    text: Utf8Decoder,
    clock: StatsClock,
    /// Set once the generation ended (or failed): every later call returns it again.
    done: Option<std::result::Result<FinishReason, PluginError>>,
}

impl CandleGeneration {
    pub fn new(shared: Arc<Shared>, request: GenerateRequest) -> Result<Self> {
        // The export glue checks this too; a plugin used as a Rust library checks it here.
        request.validate(u32::try_from(shared.info.vocab_size).unwrap_or(u32::MAX))?;
        let prompt: Vec<u32> = request.prompt_tokens.to_vec();
        shared.check_tokens(&prompt)?;
        if let ROption::RSome(asked) = &request.adapters {
            shared.check_adapters(asked.as_slice())?;
        }
        let context = shared.info.context_length;
        // The contract: prompt + generated <= context, and a prompt must leave room for one.
        if prompt.len() >= context {
            return Err(PluginError::invalid_request(format!(
                "the prompt has {} tokens but the context holds {context}; shorten the prompt \
                 or load the model with a longer context_length",
                prompt.len()
            )));
        }
        let mut sampler = Sampler::new(&request);
        if let ROption::RSome(constraint) = &request.constraint {
            if constraint.kind != ConstraintKind::JsonSchema {
                return Err(PluginError::unsupported(
                    "candle constrains output by JSON schema only (no GBNF grammars)",
                ));
            }
            sampler = sampler.with_constraint(Constrainer::json_schema(
                &constraint.text,
                &shared.guidance,
                &shared.vocab,
                shared.info.vocab_size,
            )?);
        }
        let mut clock = StatsClock::start(u32::try_from(prompt.len()).unwrap_or(u32::MAX));
        let hit = match request.cache_prompt {
            true => shared.prefix_hit(&prompt),
            false => None,
        };
        let (session, cached, checkpoints) = match hit {
            Some(hit) => (hit.session, hit.len, hit.checkpoints),
            None => (shared.net.session(&shared.device)?, 0, Vec::new()),
        };
        clock.cached(u32::try_from(cached).unwrap_or(u32::MAX));
        Ok(CandleGeneration {
            clock,
            prompt_len: prompt.len(),
            history: prompt,
            session: Some(session),
            keep: request.cache_prompt,
            checkpoints,
            shared,
            cached,
            generated: 0,
            max_tokens: request.max_tokens,
            ignore_eos: request.ignore_eos,
            sampler,
            text: Utf8Decoder::new(),
            done: None,
        })
    }

    /// The logits for the next token: the rest of the prompt first (in chunks that stop at
    /// the prefix cache's checkpoints, see [`prefix`]), then one token a step.
    fn next_logits(&mut self) -> Result<Vec<f32>> {
        let (start, end) = (self.cached, self.history.len());
        let shared = self.shared.clone();
        let keep = self.keep;
        let session = live(&mut self.session)?;
        let (prompt_len, checkpoints) = (self.prompt_len, &mut self.checkpoints);
        let logits = shared.prefill_as_generation(
            session,
            &self.history,
            start,
            prompt_len,
            |pos, session| {
                if keep && prefix::snapshot_at(pos, prompt_len) {
                    if let Some(snapshot) = session.share() {
                        checkpoints.push((pos, snapshot));
                    }
                }
            },
        )?;
        self.cached = end;
        Ok(logits)
    }

    /// The next token: greedy without penalties is picked on the device where the network
    /// can, else the sampler runs over the logits.
    fn next_token(&mut self) -> Result<(u32, Option<TokenLogprobs>)> {
        if self.cached >= self.prompt_len && self.sampler.is_plain_greedy() {
            let session = live(&mut self.session)?;
            if let Some(id) = session.forward_argmax(&self.history[self.cached..], self.cached)? {
                self.cached = self.history.len();
                return Ok((id, None));
            }
        }
        let mut logits = self.next_logits()?;
        let sampled = self.sampler.sample(&mut logits, &self.history)?;
        Ok((sampled.id, sampled.logprobs))
    }

    fn step(&mut self) -> Result<Step> {
        // 0 = no limit (the contract).
        if self.max_tokens > 0 && self.generated >= self.max_tokens {
            return Ok(self.finish(FinishReason::Length));
        }
        if self.history.len() >= self.shared.info.context_length {
            return Ok(self.finish(FinishReason::ContextFull));
        }
        let (id, logprobs) = self.next_token()?;
        if !self.ignore_eos && self.shared.vocab.is_eog(id) {
            return Ok(self.finish(FinishReason::EndOfGeneration));
        }
        self.history.push(id);
        self.generated += 1;
        self.clock.token();
        let mut token = Token::new(id, self.text.push(self.shared.vocab.piece(id)));
        token.logprobs = logprobs.into();
        Ok(Step::Token(token))
    }

    /// The end, with what the UTF-8 decoder still holds. A normal end gives the cache
    /// (positions `0..cached` of the history) back for later prompts that share a prefix.
    fn finish(&mut self, reason: FinishReason) -> Step {
        self.done = Some(Ok(reason));
        if let (true, Some(session)) = (self.keep, self.session.take()) {
            let tokens = self.history[..self.cached].to_vec();
            let checkpoints = std::mem::take(&mut self.checkpoints);
            self.shared.keep_prefix(tokens, session, checkpoints);
        }
        Step::finished_with(reason, self.text.finish())
    }
}

impl Generation for CandleGeneration {
    fn next(&mut self) -> Result<Step> {
        match &self.done {
            Some(Ok(reason)) => return Ok(Step::finished(*reason)),
            Some(Err(e)) => return Err(e.clone()),
            None => {}
        }
        let step = self.step();
        if let Err(e) = &step {
            self.done = Some(Err(e.clone()));
        }
        step
    }

    fn stats(&self) -> GenerationStats {
        let mut stats = self.clock.stats();
        stats.prompt_tokens = u32::try_from(self.prompt_len).unwrap_or(u32::MAX);
        stats
    }
}

/// The session of a generation that has not ended (it goes back to the cache at the end,
/// after which no step runs).
fn live(session: &mut Option<Session>) -> Result<&mut Session> {
    session
        .as_mut()
        .ok_or_else(|| PluginError::internal("the generation already ended"))
}
