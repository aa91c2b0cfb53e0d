//! BERT's WordPiece vocabulary from GGUF metadata (`tokenizer.ggml.model = "bert"`), for a
//! GGUF BERT without a tokenizer.json beside it.
//!
//! llama.cpp's converter stores WordPiece tokens with a phantom space: a word-initial token
//! gets a leading `▁` (U+2581), a `##` continuation loses its `##`, and `[SPECIAL]` tokens
//! stay as they are. Undoing that gives back vocab.txt, and the Hugging Face `BertTokenizer`
//! pipeline built on it (BertNormalizer lowercasing, BertPreTokenizer, WordPiece, `[CLS] $A
//! [SEP]`) cuts text the way llama.cpp's WPM tokenizer does (which always lowercases).

use super::gguf::{token_type, GgufVocab};
use super::pieces::METASPACE;
use super::{dedup, piece_table_from_tokenizer, Vocab};
use crate::error::Result;
use llmlocal_plugin_api::PluginError;
use tokenizers::{
    decoders::wordpiece::WordPiece as WordPieceDecoder, models::bpe::Vocab as TokenIds,
    models::wordpiece::WordPiece, normalizers::bert::BertNormalizer,
    pre_tokenizers::bert::BertPreTokenizer, processors::template::TemplateProcessing, AddedToken,
    Tokenizer,
};

/// The WordPiece continuation prefix of vocab.txt.
const CONTINUATION: &str = "##";

/// The ids a BERT input is framed with and whether `add_special` adds them (llama.cpp adds
/// both unless the GGUF says otherwise).
#[derive(Debug, Clone, Copy)]
pub struct Framing {
    pub cls: Option<u32>,
    pub sep: Option<u32>,
    pub add_cls: bool,
    pub add_sep: bool,
}

/// A GGUF token back in vocab.txt form (the inverse of the converter's `phantom`).
pub fn unphantom(token: &str) -> String {
    if token.starts_with('[') && token.ends_with(']') {
        token.to_string()
    } else if let Some(word) = token.strip_prefix(METASPACE) {
        word.to_string()
    } else {
        format!("{CONTINUATION}{token}")
    }
}

impl Vocab {
    /// The tokenizer of a GGUF BERT vocabulary.
    pub fn from_wordpiece(vocab: &GgufVocab, framing: Framing) -> Result<Self> {
        let tokens: Vec<String> = vocab.tokens.iter().map(|t| unphantom(t)).collect();
        let mut tokenizer = build(vocab, &tokens)?;
        let special: Vec<AddedToken> = tokens
            .iter()
            .enumerate()
            .filter(|(id, _)| vocab.is_special(*id))
            .map(|(_, t)| AddedToken::from(t.clone(), true).normalized(false))
            .collect();
        tokenizer.add_special_tokens(special).map_err(build_error)?;
        if let Some(post) = post_processor(&tokens, framing)? {
            tokenizer.with_post_processor(Some(post));
        }
        let pieces = piece_table_from_tokenizer(&tokenizer);
        let mut eog: Vec<u32> = vocab.eos.into_iter().collect();
        dedup(&mut eog);
        Ok(Self::assemble(
            tokenizer,
            pieces,
            framing.cls.filter(|_| framing.add_cls),
            eog,
            false,
            vocab.chat_template.clone(),
        ))
    }
}

fn build(vocab: &GgufVocab, tokens: &[String]) -> Result<Tokenizer> {
    let mut ids = TokenIds::default();
    for (id, token) in tokens.iter().enumerate() {
        ids.entry(token.clone()).or_insert(id as u32);
    }
    let unk = vocab
        .unk
        .or_else(|| {
            (0..tokens.len())
                .find(|&i| vocab.token_type(i) == token_type::UNKNOWN)
                .map(|i| i as u32)
        })
        .and_then(|id| tokens.get(id as usize).cloned())
        .ok_or_else(|| {
            PluginError::unsupported_format(
                "the GGUF WordPiece vocabulary names no unknown token \
                 (`tokenizer.ggml.unknown_token_id`)",
            )
        })?;
    let model = WordPiece::builder()
        .vocab(ids)
        .unk_token(unk)
        .continuing_subword_prefix(CONTINUATION.to_string())
        .max_input_chars_per_word(100)
        .build()
        .map_err(build_error)?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .map_err(build_error)?;
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_decoder(Some(WordPieceDecoder::new(CONTINUATION.to_string(), true)));
    Ok(tokenizer)
}

/// `[CLS] $A [SEP]` (and `[CLS] $A [SEP] $B [SEP]` for pairs), as far as `framing` asks.
fn post_processor(tokens: &[String], framing: Framing) -> Result<Option<TemplateProcessing>> {
    let piece = |id: Option<u32>, add: bool| {
        id.filter(|_| add)
            .and_then(|i| tokens.get(i as usize).map(|t| (t.clone(), i)))
    };
    let cls = piece(framing.cls, framing.add_cls);
    let sep = piece(framing.sep, framing.add_sep);
    if cls.is_none() && sep.is_none() {
        return Ok(None);
    }
    let mut single = Vec::new();
    single.extend(cls.iter().map(|(t, _)| t.clone()));
    single.push("$A".to_string());
    single.extend(sep.iter().map(|(t, _)| t.clone()));
    let mut pair = single.clone();
    pair.push("$B:1".to_string());
    pair.extend(sep.iter().map(|(t, _)| format!("{t}:1")));
    TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(build_error)?
        .special_tokens(cls.into_iter().chain(sep).collect::<Vec<_>>())
        .build()
        .map(Some)
        .map_err(build_error)
}

fn build_error(e: impl std::fmt::Display) -> PluginError {
    PluginError::unsupported_format(format!(
        "cannot build a WordPiece tokenizer from the GGUF vocabulary: {e}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phantom_spaces_go_back_to_vocab_txt() {
        assert_eq!(unphantom("\u{2581}cat"), "cat");
        assert_eq!(unphantom("s"), "##s");
        assert_eq!(unphantom("[CLS]"), "[CLS]");
        assert_eq!(unphantom("\u{2581}."), ".");
    }
}
