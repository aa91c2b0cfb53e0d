//! JSON-schema constrained decoding with llguidance: before each draw the tokens that cannot
//! continue a valid output are masked (`-inf`); after it the token advances the matcher.

use crate::error::Result;
use crate::tokenizer::Vocab;
use llguidance::{
    api::TopLevelGrammar,
    toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie},
    Matcher, ParserFactory,
};
use llmlocal_plugin_api::PluginError;
use std::sync::{Arc, OnceLock};

/// llguidance's parser factory for one model, built on first use (it indexes every token's
/// bytes) and shared by the model's generations.
#[derive(Default)]
pub struct GuidanceCache(OnceLock<std::result::Result<ParserFactory, String>>);

impl GuidanceCache {
    fn factory(&self, vocab: &Vocab, vocab_size: usize) -> Result<&ParserFactory> {
        self.0
            .get_or_init(|| {
                let mut factory = ParserFactory::new_simple(&tok_env(vocab, vocab_size))
                    .map_err(|e| e.to_string())?;
                factory.quiet();
                Ok(factory)
            })
            .as_ref()
            .map_err(|e| {
                PluginError::internal(format!("llguidance cannot read the vocabulary: {e}"))
            })
    }
}

/// The vocabulary as llguidance sees it: every id's bytes (special and padding ids have
/// none, so a schema never produces them), every end-of-generation id as an end.
fn tok_env(vocab: &Vocab, vocab_size: usize) -> TokEnv {
    let eos = vocab
        .eos
        .or_else(|| vocab.eog.first().copied())
        .unwrap_or(0);
    let info = TokRxInfo::new(u32::try_from(vocab_size).unwrap_or(u32::MAX), eos);
    let words: Vec<Vec<u8>> = (0..vocab_size as u32)
        .map(|id| vocab.piece(id).to_vec())
        .collect();
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&vocab.eog);
    Arc::new(ApproximateTokEnv::new(trie))
}

/// JSON output is compact (docs/contract.md): unless the schema sets llguidance's own
/// `x-guidance` options, no whitespace between tokens, so a small model cannot pad an answer
/// with whitespace until `max_tokens`.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let serde_json::Value::Object(map) = &mut schema {
        map.entry("x-guidance")
            .or_insert_with(|| serde_json::json!({ "whitespace_flexible": false }));
    }
    schema
}

/// One generation's constraint state.
pub struct Constrainer {
    matcher: Matcher,
}

impl Constrainer {
    /// A matcher for the JSON schema `schema`; a malformed or unusable schema is an
    /// `InvalidRequest`.
    pub fn json_schema(
        schema: &str,
        cache: &GuidanceCache,
        vocab: &Vocab,
        vocab_size: usize,
    ) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(schema).map_err(|e| {
            PluginError::invalid_request(format!("the JSON schema is not valid JSON: {e}"))
        })?;
        let factory = cache.factory(vocab, vocab_size)?;
        let matcher =
            Matcher::new(factory.create_parser(TopLevelGrammar::from_json_schema(compact(value))));
        if let Some(err) = matcher.get_error() {
            return Err(PluginError::invalid_request(format!(
                "the JSON schema cannot be used: {err}"
            )));
        }
        Ok(Constrainer { matcher })
    }

    /// Sets the logits of tokens the schema does not allow here to `-inf`.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| PluginError::internal(format!("the JSON-schema matcher failed: {e}")))?;
        for (id, logit) in logits.iter_mut().enumerate() {
            if !mask.is_allowed(id as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances the matcher past the chosen token.
    pub fn accept(&mut self, id: u32) -> Result<()> {
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher
            .consume_token(id)
            .map_err(|e| PluginError::internal(format!("the JSON-schema matcher failed: {e}")))
    }
}
