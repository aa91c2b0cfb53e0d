//! A loaded model seen from outside a generation: its tokenizer, chat template and metadata
//! (llama-server's `/tokenize`, `/detokenize`, `/apply-template`, `/props`). Holding a view
//! keeps the model busy, so it is not unloaded while the request uses it.

use super::{
    error::EngineError, logprobs::Pieces, pool::BusyGuard, template::ChatMessage, ChatTemplate,
};
use crate::plugins::{LoadedModel, ModelMetadata};
use std::{path::PathBuf, sync::Arc};

pub struct ModelView {
    pub name: String,
    pub backend: String,
    pub model: LoadedModel,
    pub metadata: ModelMetadata,
    pub template: Arc<ChatTemplate>,
    pub path: PathBuf,
    /// Generations it runs at once (llama-server's slots).
    pub parallel: usize,
    pub(crate) _busy: BusyGuard,
}

impl ModelView {
    /// Token ids of `text`. Blocking: call it off the async runtime.
    pub fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, EngineError> {
        Ok(self.model.tokenize(text, add_special, parse_special)?)
    }

    /// The text of `tokens`, special tokens written out. Ids outside the vocabulary are a
    /// request error naming the first one.
    pub fn detokenize(&self, tokens: &[u32]) -> Result<String, EngineError> {
        let vocab = self.metadata.vocab_size;
        if let Some((index, id)) = tokens.iter().enumerate().find(|(_, &id)| id >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "tokens[{index}] is {id}, outside the vocabulary of `{}` ({vocab} tokens)",
                self.name
            )));
        }
        Ok(self.model.detokenize(tokens, false)?)
    }

    /// Each token's own text (its piece), leading space included.
    pub fn pieces(&self, tokens: &[u32]) -> Vec<String> {
        let bos = self.metadata.bos_token.into_option();
        let mut pieces = Pieces::new(self.model.clone(), bos);
        tokens.iter().map(|&id| pieces.text(id)).collect()
    }

    /// The prompt the chat template makes of `messages`, ready for the assistant's turn.
    pub fn apply_template(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        self.template
            .render(messages, true)
            .map_err(|message| EngineError::Template {
                model: self.name.clone(),
                message,
            })
    }
}
