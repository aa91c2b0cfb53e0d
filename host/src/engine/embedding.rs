//! Embedding requests: what the API dialects hand the engine, the checks every dialect
//! shares (input count, empty inputs, vocabulary, context length and truncation), and the
//! answer. The engine's `embed` (facade) loads the model and runs the backend.

use super::EngineError;
use crate::plugins::LoadedModel;

/// The most inputs one request may carry (OpenAI's limit for `/v1/embeddings`).
pub const MAX_INPUTS: usize = 2048;

/// What to embed: texts (tokenized with the model's tokenizer, BOS added) or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedInput {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

impl EmbedInput {
    pub fn len(&self) -> usize {
        match self {
            EmbedInput::Texts(t) => t.len(),
            EmbedInput::Tokens(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Default)]
pub struct EmbedConfig {
    /// Scale every vector to unit L2 norm.
    pub normalize: bool,
    /// Cut inputs longer than the model's context to its length instead of refusing them.
    pub truncate: bool,
    /// The backend plugin to run the model with (as for generations).
    pub backend: Option<String>,
}

/// One vector per input, in order.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub model: String,
    pub vectors: Vec<Vec<f32>>,
    /// Tokens embedded, after truncation.
    pub prompt_tokens: u64,
    pub load_ms: f64,
    pub total_ms: f64,
}

/// Refuses an empty list or one over [`MAX_INPUTS`], before any model is loaded.
pub fn check_count(input: &EmbedInput) -> Result<(), EngineError> {
    match input.len() {
        0 => Err(EngineError::InvalidRequest(
            "input must hold at least one text or list of token ids".into(),
        )),
        n if n > MAX_INPUTS => Err(EngineError::InvalidRequest(format!(
            "input holds {n} items; at most {MAX_INPUTS} are accepted per request, send the \
             rest in further requests"
        ))),
        _ => Ok(()),
    }
}

/// The token ids of every input: tokenized, checked against the vocabulary, and cut to the
/// context (`truncate`) or refused when longer.
pub fn prepare(
    model: &LoadedModel,
    name: &str,
    vocab: u32,
    context: u32,
    input: EmbedInput,
    truncate: bool,
) -> Result<Vec<Vec<u32>>, EngineError> {
    let inputs = match input {
        EmbedInput::Texts(texts) => texts
            .iter()
            .enumerate()
            .map(|(index, text)| {
                if text.is_empty() {
                    return Err(EngineError::InvalidRequest(format!(
                        "input[{index}] is an empty string"
                    )));
                }
                Ok(model.tokenize(text, true, false)?)
            })
            .collect::<Result<Vec<_>, _>>()?,
        EmbedInput::Tokens(lists) => lists,
    };
    inputs
        .into_iter()
        .enumerate()
        .map(|(index, ids)| fit(index, ids, name, vocab, context, truncate))
        .collect()
}

fn fit(
    index: usize,
    mut ids: Vec<u32>,
    name: &str,
    vocab: u32,
    context: u32,
    truncate: bool,
) -> Result<Vec<u32>, EngineError> {
    if ids.is_empty() {
        return Err(EngineError::InvalidRequest(format!(
            "input[{index}] has no tokens"
        )));
    }
    if let Some(bad) = ids.iter().find(|&&id| vocab > 0 && id >= vocab) {
        return Err(EngineError::InvalidRequest(format!(
            "input[{index}] holds token id {bad}, outside the vocabulary of `{name}` ({vocab} \
             tokens)"
        )));
    }
    let limit = context as usize;
    if ids.len() > limit {
        if !truncate {
            return Err(EngineError::InvalidRequest(format!(
                "input[{index}] has {} tokens but the context of `{name}` holds {limit}; \
                 shorten it, or let the server truncate it",
                ids.len()
            )));
        }
        ids.truncate(limit);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_checked() {
        assert!(check_count(&EmbedInput::Texts(vec![])).is_err());
        assert!(check_count(&EmbedInput::Tokens(vec![vec![1]; MAX_INPUTS])).is_ok());
        let err = check_count(&EmbedInput::Tokens(vec![vec![1]; MAX_INPUTS + 1])).unwrap_err();
        assert!(err.to_string().contains("2048"), "{err}");
    }

    #[test]
    fn long_inputs_are_cut_or_refused() {
        assert_eq!(fit(0, vec![1, 2, 3], "m", 10, 2, true).unwrap(), [1, 2]);
        let err = fit(0, vec![1, 2, 3], "m", 10, 2, false).unwrap_err();
        assert!(err.to_string().contains("holds 2"), "{err}");
        assert!(fit(1, vec![], "m", 10, 2, true).is_err());
        assert!(fit(1, vec![10], "m", 10, 2, true).is_err());
    }
}
