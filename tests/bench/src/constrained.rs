//! JSON-schema-constrained decoding vs free decoding through one backend plugin: the same
//! model, prompt and greedy decoding, runs interleaved (free, constrained, free, ...), decode
//! speed from the plugin's own stats (tokens after the first / time since the first).

use crate::{median, plugin, Setup};
use anyhow::{bail, Context as _};
use llmlocal_plugin_api::{Constraint, ConstraintKind, FinishReason, Step};
use serde::Serialize;
use std::path::Path;

/// A schema whose language is long enough for the whole measured run: one string of at
/// least `min_chars` characters, so the constraint is active for every token.
pub fn long_string_schema(min_chars: usize) -> String {
    serde_json::json!({
        "type": "string",
        "minLength": min_chars,
        "maxLength": min_chars * 4,
    })
    .to_string()
}

#[derive(Debug, Clone, Serialize)]
pub struct ConstrainedReport {
    pub backend: String,
    pub model: String,
    pub threads: u32,
    pub gen_tokens: usize,
    pub schema: String,
    /// Decode tokens/s of each round, free and constrained, in run order.
    pub free_runs: Vec<f64>,
    pub constrained_runs: Vec<f64>,
    pub free_median: f64,
    pub constrained_median: f64,
    /// constrained_median / free_median.
    pub ratio: f64,
    /// Per-round constrained/free ratios: their spread is the run-to-run noise.
    pub round_ratios: Vec<f64>,
}

impl ConstrainedReport {
    pub fn table(&self) -> String {
        let spread = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            format!("{lo:.3}–{hi:.3}")
        };
        format!(
            "{} on {} ({} threads, {} tokens, greedy)\n\
             free decoding         {:8.1} tok/s (median of {})\n\
             JSON-schema decoding  {:8.1} tok/s (median of {})\n\
             ratio {:.3} (per-round ratios {})\n",
            self.backend,
            self.model,
            self.threads,
            self.gen_tokens,
            self.free_median,
            self.free_runs.len(),
            self.constrained_median,
            self.constrained_runs.len(),
            self.ratio,
            spread(&self.round_ratios),
        )
    }
}

pub fn run(dir: &Path, backend: &str, setup: &Setup) -> anyhow::Result<ConstrainedReport> {
    let model = plugin::load(dir, backend, setup, 1)?;
    let prompt = plugin::prompt_tokens(&model, setup.prompt_tokens)?;
    let schema = long_string_schema(setup.gen_tokens * 8);
    let free = || plugin::request(&prompt, setup.gen_tokens + 1);
    let constrained = || {
        let mut request = plugin::request(&prompt, setup.gen_tokens + 1);
        request.ignore_eos = false;
        request.constraint = Some(Constraint {
            kind: ConstraintKind::JsonSchema,
            text: schema.as_str().into(),
        })
        .into();
        request
    };
    // One warm-up of each: the constrained one builds the grammar library's token tables.
    decode_tps(&model, free())?;
    decode_tps(&model, constrained())?;
    let (mut free_runs, mut constrained_runs, mut round_ratios) = (vec![], vec![], vec![]);
    for _ in 0..setup.repeat {
        let f = decode_tps(&model, free())?;
        let c = decode_tps(&model, constrained())?;
        free_runs.push(f);
        constrained_runs.push(c);
        round_ratios.push(c / f);
    }
    let free_median = median(&free_runs).context("no runs")?;
    let constrained_median = median(&constrained_runs).context("no runs")?;
    Ok(ConstrainedReport {
        backend: backend.to_string(),
        model: setup.model.display().to_string(),
        threads: setup.threads,
        gen_tokens: setup.gen_tokens,
        schema,
        free_runs,
        constrained_runs,
        free_median,
        constrained_median,
        ratio: constrained_median / free_median,
        round_ratios,
    })
}

/// Decode tokens/s of one generation that must run to its `max_tokens`.
fn decode_tps(
    model: &llmlocal::plugins::LoadedModel,
    request: llmlocal_plugin_api::GenerateRequest,
) -> anyhow::Result<f64> {
    let want = request.max_tokens as usize;
    let mut generation = model.generate(request)?;
    let mut tokens = 0;
    let reason = loop {
        match generation.next()? {
            Step::Token(_) => tokens += 1,
            Step::Finished(end) => break end.reason,
        }
    };
    if tokens != want || reason != FinishReason::Length {
        bail!("a measured run ended after {tokens} of {want} tokens ({reason:?})");
    }
    Ok(generation.stats()?.tokens_per_second)
}
