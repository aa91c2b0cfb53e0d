//! llama.cpp driven directly through llama-cpp-2: one context, one sequence, a plain decode
//! loop. This is the baseline the plugin is compared with.

use crate::{
    child::Outcome,
    plugin::{self, Kind},
    Setup,
};
use anyhow::{anyhow, Context as _};
use llama_cpp_2::{
    context::{params::LlamaContextParams, LlamaContext},
    llama_backend::LlamaBackend,
    llama_batch::LlamaBatch,
    model::{params::LlamaModelParams, LlamaModel},
    sampling::LlamaSampler,
    token::LlamaToken,
};
use std::{num::NonZeroU32, time::Instant};

/// A prompt of exactly `n` tokens: BOS, then the tokens of a story repeated as needed.
pub fn prompt_tokens(model: &LlamaModel, n: usize) -> Vec<u32> {
    let text = "Once upon a time, there was a little girl named Lily. She loved to play \
                outside in the park with her friends and her big red ball. ";
    let vocab = model.vocab();
    let mut ids: Vec<u32> = vec![u32::try_from(vocab.bos().0).unwrap_or(1)];
    while ids.len() < n {
        let more = vocab.tokenize(text.as_bytes(), false, false);
        ids.extend(more.iter().filter_map(|t| u32::try_from(t.0).ok()));
    }
    ids.truncate(n);
    ids
}

/// Measures prompt processing and single-sequence generation with the same settings the
/// plugin uses, in the same schedule ([`plugin::schedule`]: warm-up prompt passes, `runs`
/// prompt-only runs, one unmeasured generation, `runs` generations). Runs in a child process
/// of its own ([`crate::child`]).
pub fn measure(setup: &Setup, runs: usize) -> anyhow::Result<Outcome> {
    let backend = LlamaBackend::init().context("initialise llama.cpp")?;
    let model = LlamaModel::load_from_file(
        &backend,
        &setup.model,
        &LlamaModelParams::default().with_n_gpu_layers(0),
    )
    .with_context(|| format!("load {}", setup.model.display()))?;
    let prompt = prompt_tokens(&model, setup.prompt_tokens);
    let threads = i32::try_from(setup.threads).unwrap_or(1);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(setup.context_length))
        .with_n_batch(setup.batch_size)
        .with_n_ubatch(setup.batch_size.min(512))
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = model
        .new_context(&backend, params)
        .context("create a llama.cpp context")?;
    let mut decoder = Decoder {
        batch: LlamaBatch::new(setup.batch_size.max(1) as usize, 1),
        batch_size: setup.batch_size.max(1) as usize,
        tokens: prompt
            .iter()
            .map(|&t| LlamaToken::new(i32::try_from(t).unwrap_or(0)))
            .collect(),
    };
    let mut outcome = Outcome {
        prompt: prompt.clone(),
        ..Outcome::default()
    };
    plugin::schedule(runs, |kind, record| {
        let started = Instant::now();
        let first = decoder.prompt(&mut ctx)?;
        let to_first = started.elapsed().as_secs_f64();
        match kind {
            Kind::Prompt if record => outcome.pp_runs.push(prompt.len() as f64 / to_first),
            Kind::Prompt => {}
            Kind::Generation => {
                let (tokens, seconds) = decoder.generate(&mut ctx, first, setup.gen_tokens)?;
                if record {
                    outcome.tg_runs.push(tokens as f64 / seconds);
                    outcome.tg_tokens.push(tokens);
                    outcome.ttft_runs.push(to_first * 1000.0);
                }
            }
        }
        Ok(())
    })?;
    drop(ctx);
    drop(model);
    // The backend is dropped last (llama_backend_free).
    drop(backend);
    Ok(outcome)
}

/// A plain decode loop over one sequence.
struct Decoder<'a> {
    batch: LlamaBatch<'a>,
    batch_size: usize,
    tokens: Vec<LlamaToken>,
}

impl Decoder<'_> {
    /// Clears the cache and decodes the prompt in chunks of `batch_size` (logits for the last
    /// token only); returns the first sampled token.
    fn prompt(&mut self, ctx: &mut LlamaContext<'_>) -> anyhow::Result<LlamaToken> {
        ctx.clear_kv_cache();
        let mut last_index = 0;
        for (c, chunk) in self.tokens.chunks(self.batch_size).enumerate() {
            self.batch.clear();
            let base = c * self.batch_size;
            for (i, &t) in chunk.iter().enumerate() {
                let pos = i32::try_from(base + i)?;
                let last = base + i + 1 == self.tokens.len();
                self.batch.add(t, pos, &[0], last)?;
                if last {
                    last_index = i32::try_from(i)?;
                }
            }
            ctx.decode(&mut self.batch)
                .map_err(|e| anyhow!("decode: {e}"))?;
        }
        Ok(LlamaSampler::greedy().sample(ctx, last_index))
    }

    /// Generates `n` tokens after `first`, one per decode: (tokens produced, seconds).
    fn generate(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        first: LlamaToken,
        n: usize,
    ) -> anyhow::Result<(usize, f64)> {
        let mut sampler = LlamaSampler::greedy();
        let mut token = first;
        let mut produced = 0;
        let started = Instant::now();
        for step in 0..n {
            self.batch.clear();
            self.batch
                .add(token, i32::try_from(self.tokens.len() + step)?, &[0], true)?;
            ctx.decode(&mut self.batch)
                .map_err(|e| anyhow!("decode: {e}"))?;
            token = sampler.sample(ctx, 0);
            produced += 1;
        }
        Ok((produced, started.elapsed().as_secs_f64()))
    }
}
