//! llama.cpp driven directly through llama-cpp-2: one context, one sequence, a plain decode
//! loop. This is the baseline the plugin is compared with.

use crate::{Setup, Speed};
use anyhow::{anyhow, Context as _};
use llama_cpp_2::{
    context::params::LlamaContextParams,
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
/// plugin uses. Returns the speeds and the prompt (for the plugin run).
pub fn run(setup: &Setup) -> anyhow::Result<(Speed, Vec<u32>)> {
    let backend = LlamaBackend::init().context("initialise llama.cpp")?;
    let model = LlamaModel::load_from_file(
        &backend,
        &setup.model,
        &LlamaModelParams::default().with_n_gpu_layers(0),
    )
    .with_context(|| format!("load {}", setup.model.display()))?;
    let prompt = prompt_tokens(&model, setup.prompt_tokens);
    let tokens: Vec<LlamaToken> = prompt
        .iter()
        .map(|&t| LlamaToken::new(i32::try_from(t).unwrap_or(0)))
        .collect();
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
    let mut batch = LlamaBatch::new(setup.batch_size.max(1) as usize, 1);
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for _ in 0..setup.repeat {
        ctx.clear_kv_cache();
        let mut sampler = LlamaSampler::greedy();
        // Prompt, in chunks of batch_size; logits for the last token only.
        let started = Instant::now();
        let mut last_index = 0;
        for (c, chunk) in tokens.chunks(setup.batch_size.max(1) as usize).enumerate() {
            batch.clear();
            let base = c * setup.batch_size.max(1) as usize;
            for (i, &t) in chunk.iter().enumerate() {
                let pos = i32::try_from(base + i)?;
                let last = base + i + 1 == tokens.len();
                batch.add(t, pos, &[0], last)?;
                if last {
                    last_index = i32::try_from(i)?;
                }
            }
            ctx.decode(&mut batch).map_err(|e| anyhow!("decode: {e}"))?;
        }
        pp.push(tokens.len() as f64 / started.elapsed().as_secs_f64());
        let mut token = sampler.sample(&ctx, last_index);
        // Generation: one token per decode.
        let started = Instant::now();
        for step in 0..setup.gen_tokens {
            batch.clear();
            batch.add(token, i32::try_from(tokens.len() + step)?, &[0], true)?;
            ctx.decode(&mut batch).map_err(|e| anyhow!("decode: {e}"))?;
            token = sampler.sample(&ctx, 0);
        }
        tg.push(setup.gen_tokens as f64 / started.elapsed().as_secs_f64());
    }
    drop(ctx);
    drop(model);
    // The backend is dropped last (llama_backend_free).
    drop(backend);
    Ok((Speed::of(pp, tg), prompt))
}
