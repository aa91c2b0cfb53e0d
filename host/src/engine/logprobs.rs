//! Per-token logprobs on the engine's stream: the backend's ids and numbers turned into token
//! texts, and kept aligned with the text the stop-sequence matcher lets out (a token whose
//! text lies wholly inside a stop sequence, or after it, is never reported).
//!
//! Only built when a request asks for logprobs, so a plain generation pays nothing.

use crate::plugins::{self, LoadedModel};
use std::collections::{HashMap, VecDeque};

/// One token with its log-probability, as every API dialect reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    /// The token's own text (its piece), special tokens written out.
    pub token: String,
    /// The UTF-8 bytes of `token`. A token that holds only part of a multi-byte character
    /// has no text of its own: its piece decodes to U+FFFD and these are that character's
    /// bytes (the backend contract hands the host text, not raw token bytes).
    pub bytes: Vec<u8>,
    /// Natural log of the probability; `<= 0`.
    pub logprob: f32,
}

/// A generated token and the most likely alternatives at its step, most likely first.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub chosen: TokenLogprob,
    pub top: Vec<TokenLogprob>,
}

impl TokenLogprobs {
    /// A token reported for its id alone ([`super::GenerationConfig::token_ids`]).
    pub fn id_only(id: u32) -> TokenLogprobs {
        TokenLogprobs {
            chosen: TokenLogprob {
                id,
                token: String::new(),
                bytes: Vec::new(),
                logprob: f32::NAN,
            },
            top: Vec::new(),
        }
    }
}

/// Token texts by id, asked of the model once per id and generation.
pub struct Pieces {
    model: LoadedModel,
    cache: HashMap<u32, String>,
    bos: Option<u32>,
    /// BOS's text, once asked: a token is detokenized after BOS and that text cut off,
    /// because SentencePiece detokenizers drop the leading space of the first token
    /// (" girl" would come back as "girl").
    anchor: Option<Option<String>>,
}

impl Pieces {
    /// Nothing is asked of the model until a token's text is.
    pub fn new(model: LoadedModel, bos: Option<u32>) -> Pieces {
        Pieces {
            model,
            cache: HashMap::new(),
            bos,
            anchor: None,
        }
    }

    /// The text token `id` stands for, leading space included.
    pub fn text(&mut self, id: u32) -> String {
        if let Some(text) = self.cache.get(&id) {
            return text.clone();
        }
        let text = self.piece(id).unwrap_or_else(|err| {
            // The id came from the backend itself, so this is the backend's fault; the
            // number is still worth reporting.
            tracing::warn!("cannot detokenize token {id} for logprobs: {err}");
            String::new()
        });
        self.cache.insert(id, text.clone());
        text
    }

    fn piece(&mut self, id: u32) -> Result<String, plugins::BackendError> {
        let model = &self.model;
        let bos = self.bos;
        let anchor = self
            .anchor
            .get_or_insert_with(|| bos.and_then(|bos| model.detokenize(&[bos], false).ok()));
        if let (Some(bos), Some(prefix)) = (bos, anchor.as_ref()) {
            let text = self.model.detokenize(&[bos, id], false)?;
            if let Some(piece) = text.strip_prefix(prefix.as_str()) {
                return Ok(piece.to_string());
            }
        }
        self.model.detokenize(&[id], false)
    }

    fn entry(&mut self, id: u32, logprob: f32) -> TokenLogprob {
        let token = self.text(id);
        TokenLogprob {
            id,
            bytes: token.as_bytes().to_vec(),
            token,
            logprob,
        }
    }

    /// The engine's form of one plugin token's logprobs.
    pub fn resolve(&mut self, id: u32, logprobs: &plugins::TokenLogprobs) -> TokenLogprobs {
        TokenLogprobs {
            chosen: self.entry(id, logprobs.logprob),
            top: logprobs
                .top
                .iter()
                .map(|alt| self.entry(alt.id, alt.logprob))
                .collect(),
        }
    }
}

/// Holds each token's logprobs until the stop matcher lets out text the token produced.
///
/// Offsets are bytes of generated text: a token starts where the text before it ended. A
/// token is released once the text let out reaches past its start (it produced some of
/// what the client sees); a token that starts at or after a stop sequence is dropped.
#[derive(Debug, Default)]
pub struct Aligner {
    pending: VecDeque<(usize, TokenLogprobs)>,
    /// Bytes of text handed to the stop matcher so far.
    pushed: usize,
    /// Bytes of text let out so far.
    emitted: usize,
}

impl Aligner {
    /// A token whose text (`len` bytes) is about to go to the stop matcher; `None` for text
    /// without a token (the decoder's remainder at the end).
    pub fn push(&mut self, entry: Option<TokenLogprobs>, len: usize) {
        if let Some(entry) = entry {
            self.pending.push_back((self.pushed, entry));
        }
        self.pushed += len;
    }

    /// `len` more bytes were let out: the tokens that produced them, in order.
    pub fn release(&mut self, len: usize) -> Vec<TokenLogprobs> {
        self.emitted += len;
        let mut out = Vec::new();
        while let Some((start, _)) = self.pending.front() {
            // A token with no text of its own (the first bytes of a character) starts where
            // the token completing the character starts, so they go out together.
            if *start >= self.emitted {
                break;
            }
            if let Some((_, entry)) = self.pending.pop_front() {
                out.push(entry);
            }
        }
        out
    }

    /// The generation ended at a stop sequence: what is still held was never shown.
    pub fn stopped(&mut self) {
        self.pending.clear();
    }

    /// The generation ended without a stop sequence: everything left was let out.
    pub fn finish(&mut self) -> Vec<TokenLogprobs> {
        self.pending.drain(..).map(|(_, entry)| entry).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32) -> TokenLogprobs {
        TokenLogprobs {
            chosen: TokenLogprob {
                id,
                token: String::new(),
                bytes: Vec::new(),
                logprob: -1.0,
            },
            top: Vec::new(),
        }
    }

    fn ids(entries: Vec<TokenLogprobs>) -> Vec<u32> {
        entries.into_iter().map(|e| e.chosen.id).collect()
    }

    #[test]
    fn tokens_are_released_with_the_text_they_produced() {
        let mut a = Aligner::default();
        a.push(Some(entry(1)), 2); // "ab"
        assert_eq!(ids(a.release(2)), [1]);
        a.push(Some(entry(2)), 2); // "cE" with "E" held
        assert_eq!(ids(a.release(1)), [2]);
        a.push(Some(entry(3)), 1); // "N", held
        assert!(a.release(0).is_empty());
        a.push(Some(entry(4)), 3); // "Dxy": the stop "END" is complete
        assert!(a.release(0).is_empty());
        a.stopped();
        assert!(a.finish().is_empty());
    }

    #[test]
    fn a_false_start_releases_the_held_tokens() {
        let mut a = Aligner::default();
        a.push(Some(entry(1)), 1); // "E", held
        assert!(a.release(0).is_empty());
        a.push(Some(entry(2)), 1); // "x": "Ex" let out
        assert_eq!(ids(a.release(2)), [1, 2]);
    }

    #[test]
    fn tokens_of_one_character_go_out_together() {
        let mut a = Aligner::default();
        a.push(Some(entry(1)), 0); // first byte of "é": no text yet
        assert!(a.release(0).is_empty());
        a.push(Some(entry(2)), 2);
        assert_eq!(ids(a.release(2)), [1, 2]);
        let mut held = Aligner::default();
        held.push(Some(entry(1)), 1); // "a" held by a stop "ab"
        held.push(Some(entry(2)), 0);
        assert!(held.release(0).is_empty());
        assert_eq!(ids(held.finish()), [1, 2]);
    }
}
