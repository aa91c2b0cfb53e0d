//! Loading a model, its metadata, and the tokenizer round trip.

use super::{load_request, same_modulo_leading_space, ModelCtx, PROMPT};
use crate::outcome::{ensure, fail, Failure, Outcome};
use llmlocal::{api::ModelMetadata, plugins::LoadedBackend};
use std::path::Path;

/// Strings the tokenizer must give back unchanged: ASCII, punctuation, multi-byte UTF-8.
const ROUND_TRIP: [&str; 3] = [
    "Hello world",
    "The cat sat on the mat, then it said: \"hi!\" (twice?)",
    "héllo wörld ✓",
];

/// Check "model loads": load, read metadata, tokenize the suite's prompt.
pub fn load(
    backend: &LoadedBackend,
    path: &Path,
    slots: u32,
    device: &str,
) -> Result<ModelCtx, Failure> {
    let model = backend.load_model(load_request(path, slots, device))?;
    let meta = model.metadata()?;
    let prompt = model.tokenize(PROMPT, true, false)?;
    ensure!(!prompt.is_empty(), "tokenizing {PROMPT:?} gave no tokens");
    Ok(ModelCtx {
        model,
        meta,
        prompt,
        slots,
        device: device.to_string(),
    })
}

/// Check "metadata".
pub fn metadata(meta: &ModelMetadata) -> Outcome {
    ensure!(meta.vocab_size > 0, "vocab_size is 0");
    ensure!(meta.context_length > 0, "context_length is 0");
    let eos = meta
        .eos_token
        .into_option()
        .ok_or_else(|| fail("no EOS token in the metadata"))?;
    ensure!(
        eos < meta.vocab_size,
        "EOS id {eos} is outside the vocabulary ({})",
        meta.vocab_size
    );
    ensure!(
        meta.end_of_generation_tokens.contains(&eos),
        "end_of_generation_tokens {:?} does not contain EOS {eos}",
        meta.end_of_generation_tokens.as_slice()
    );
    Ok(format!(
        "{} vocab {}, context {}, EOS {eos}, end-of-generation {:?}, device {}",
        meta.architecture,
        meta.vocab_size,
        meta.context_length,
        meta.end_of_generation_tokens.as_slice(),
        meta.device
    ))
}

/// Check "tokenize round trip": detokenize(tokenize(s)) == s, up to one leading space.
pub fn round_trip(ctx: &ModelCtx) -> Outcome {
    for text in ROUND_TRIP {
        let ids = ctx.model.tokenize(text, false, false)?;
        ensure!(!ids.is_empty(), "tokenizing {text:?} gave no tokens");
        if let Some(bad) = ids.iter().find(|&&id| id >= ctx.meta.vocab_size) {
            return Err(fail(format!(
                "tokenizing {text:?} gave id {bad}, outside the vocabulary ({})",
                ctx.meta.vocab_size
            )));
        }
        let back = ctx.model.detokenize(&ids, false)?;
        ensure!(
            same_modulo_leading_space(&back, text),
            "{text:?} -> {ids:?} -> {back:?}"
        );
    }
    Ok(format!("{} strings round-trip", ROUND_TRIP.len()))
}
