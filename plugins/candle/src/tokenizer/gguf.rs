//! Builds a `tokenizers::Tokenizer` from a GGUF file's vocabulary metadata, for GGUF models
//! that come without a tokenizer.json.
//!
//! - `tokenizer.ggml.model = "llama"` (SentencePiece BPE): BPE over the pieces with byte
//!   fallback; the merges are derived from the piece scores the way Hugging Face's Llama
//!   converter does it (every split of a piece into two known pieces is a merge, ranked by
//!   the piece's score); normalizer Prepend("▁") + Replace(" ", "▁"); decoder
//!   Replace("▁", " ") + ByteFallback + Fuse + Strip(1 leading space).
//! - `tokenizer.ggml.model = "gpt2"` (byte-level BPE): the vocabulary and
//!   `tokenizer.ggml.merges`, with the pre-tokenizer regex `tokenizer.ggml.pre` names.

use super::pieces::{byte_level_decoder, piece_bytes, PieceStyle};
use crate::error::Result;
use crate::gguf_meta::{self as meta, Metadata};
use llmlocal_plugin_api::PluginError;
use std::collections::HashMap;

/// llama.cpp token types (`tokenizer.ggml.token_type`).
pub mod token_type {
    pub const NORMAL: i64 = 1;
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
    pub const UNUSED: i64 = 5;
    pub const BYTE: i64 = 6;
}

/// The vocabulary part of a GGUF file's metadata.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    pub token_types: Option<Vec<i64>>,
    pub merges: Option<Vec<String>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    /// Other end-of-generation ids: EOT, EOM.
    pub extra_eog: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    pub chat_template: Option<String>,
}

impl GgufVocab {
    /// Reads the `tokenizer.ggml.*` keys. A GGUF without them cannot be tokenized.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let model = meta::string(md, "tokenizer.ggml.model")
            .ok_or_else(|| {
                PluginError::unsupported_format(
                    "the GGUF has no `tokenizer.ggml.model` key and there is no tokenizer.json beside it",
                )
            })?
            .to_string();
        let tokens = match meta::string_array(md, "tokenizer.ggml.tokens") {
            Some(Ok(tokens)) if !tokens.is_empty() => tokens,
            Some(Err(i)) => {
                return Err(PluginError::unsupported_format(format!(
                    "GGUF key `tokenizer.ggml.tokens` is not an array of strings (element {i})"
                )))
            }
            _ => {
                return Err(PluginError::unsupported_format(
                    "the GGUF has no `tokenizer.ggml.tokens` vocabulary",
                ))
            }
        };
        let merges = match meta::string_array(md, "tokenizer.ggml.merges") {
            Some(Ok(merges)) => Some(merges),
            Some(Err(i)) => {
                return Err(PluginError::unsupported_format(format!(
                    "GGUF key `tokenizer.ggml.merges` is not an array of strings (element {i})"
                )))
            }
            None => None,
        };
        let is_spm = model == "llama";
        let extra_eog = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
            .iter()
            .filter_map(|key| meta::token_id(md, key))
            .collect();
        Ok(GgufVocab {
            pre: meta::string(md, "tokenizer.ggml.pre").map(str::to_string),
            scores: meta::f32_array(md, "tokenizer.ggml.scores"),
            token_types: meta::int_array(md, "tokenizer.ggml.token_type"),
            merges,
            bos: meta::token_id(md, "tokenizer.ggml.bos_token_id"),
            eos: meta::token_id(md, "tokenizer.ggml.eos_token_id"),
            unk: meta::token_id(md, "tokenizer.ggml.unknown_token_id"),
            extra_eog,
            // llama.cpp's defaults: SentencePiece vocabularies add BOS and a space prefix.
            add_bos: meta::boolean(md, "tokenizer.ggml.add_bos_token").unwrap_or(is_spm),
            add_eos: meta::boolean(md, "tokenizer.ggml.add_eos_token").unwrap_or(false),
            add_space_prefix: meta::boolean(md, "tokenizer.ggml.add_space_prefix")
                .unwrap_or(is_spm),
            chat_template: meta::string(md, "tokenizer.chat_template").map(str::to_string),
            model,
            tokens,
        })
    }

    pub(crate) fn token_type(&self, id: usize) -> i64 {
        self.token_types
            .as_ref()
            .and_then(|t| t.get(id).copied())
            .unwrap_or(token_type::NORMAL)
    }

    /// Control and unknown tokens: special (skipped when decoding, empty when streaming).
    pub fn is_special(&self, id: usize) -> bool {
        matches!(
            self.token_type(id),
            token_type::CONTROL | token_type::UNKNOWN | token_type::UNUSED
        )
    }

    pub(crate) fn style(&self) -> Result<PieceStyle> {
        match self.model.as_str() {
            "llama" => Ok(PieceStyle::SentencePiece),
            "gpt2" => Ok(PieceStyle::ByteLevel),
            other => Err(PluginError::unsupported_format(format!(
                "GGUF tokenizer model `{other}` is not supported (the candle backend builds `llama` \
                 SentencePiece and `gpt2` byte-level BPE vocabularies; put a tokenizer.json beside the model)"
            ))),
        }
    }

    /// The raw bytes of every token (empty for special tokens).
    pub fn piece_table(&self) -> Result<Vec<Vec<u8>>> {
        let style = self.style()?;
        let table = byte_level_decoder();
        Ok(self
            .tokens
            .iter()
            .enumerate()
            .map(|(id, piece)| match self.token_type(id) {
                t if self.is_special(id) && t != token_type::USER_DEFINED => Vec::new(),
                token_type::USER_DEFINED => piece.as_bytes().to_vec(),
                _ => piece_bytes(piece, style, &table),
            })
            .collect())
    }
}

/// Ids whose text marks the end of a turn in common chat formats, when they are special
/// tokens of this vocabulary (llama.cpp treats them as end-of-generation too).
pub fn known_eog_ids(tokens: &[String], is_special: impl Fn(usize) -> bool) -> Vec<u32> {
    const EOG_TEXTS: &[&str] = &[
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<end_of_turn>",
        "<|eom_id|>",
    ];
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    EOG_TEXTS
        .iter()
        .filter_map(|t| index.get(t).copied())
        .filter(|&i| is_special(i))
        .map(|i| i as u32)
        .collect()
}
