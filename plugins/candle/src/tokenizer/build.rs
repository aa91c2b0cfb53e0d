//! Building the `tokenizers::Tokenizer` for a [`GgufVocab`] (see the [`super::gguf`] docs
//! for the two vocabulary styles).

use super::gguf::{token_type, GgufVocab};
use super::pieces::{PieceStyle, METASPACE};
use crate::error::Result;
use llmlocal_plugin_api::PluginError;
use tokenizers::{
    decoders::{
        byte_fallback::ByteFallback, byte_level::ByteLevel as ByteLevelDecoder, fuse::Fuse,
        sequence::Sequence as DecoderSequence, strip::Strip, DecoderWrapper,
    },
    models::bpe::{Vocab, BPE},
    normalizers::{unicode::NFC, Prepend, Replace, Sequence as NormalizerSequence},
    pre_tokenizers::{
        byte_level::ByteLevel, sequence::Sequence as PreSequence, split::Split, PreTokenizerWrapper,
    },
    processors::template::TemplateProcessing,
    AddedToken, SplitDelimiterBehavior, Tokenizer,
};

/// Pre-tokenizer regexes for the byte-level vocabularies named by `tokenizer.ggml.pre`
/// (the same splits as the models' own tokenizer.json files).
const REGEX_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl GgufVocab {
    /// Builds the tokenizer.
    pub fn build(&self) -> Result<Tokenizer> {
        let mut tokenizer = match self.style()? {
            PieceStyle::SentencePiece => self.build_spm()?,
            PieceStyle::ByteLevel => self.build_byte_level()?,
        };
        self.add_special_tokens(&mut tokenizer)?;
        if let Some(post) = self.post_processor()? {
            tokenizer.with_post_processor(Some(post));
        }
        Ok(tokenizer)
    }

    /// token -> id, keeping the first id of a duplicated piece.
    fn vocab(&self) -> Vocab {
        let mut vocab = Vocab::default();
        for (id, piece) in self.tokens.iter().enumerate() {
            vocab.entry(piece.clone()).or_insert(id as u32);
        }
        vocab
    }

    fn build_spm(&self) -> Result<Tokenizer> {
        let scores = self.scores.as_ref().ok_or_else(|| {
            PluginError::unsupported_format(
                "the GGUF SentencePiece vocabulary has no `tokenizer.ggml.scores`",
            )
        })?;
        if scores.len() != self.tokens.len() {
            return Err(PluginError::unsupported_format(format!(
                "GGUF `tokenizer.ggml.scores` has {} entries for {} tokens",
                scores.len(),
                self.tokens.len()
            )));
        }
        let vocab = self.vocab();
        let merges = self.spm_merges(&vocab, scores);
        let mut builder = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .fuse_unk(true)
            .byte_fallback(true);
        if let Some(unk) = self.unk_piece() {
            builder = builder.unk_token(unk);
        }
        let bpe = builder.build().map_err(tokenizer_build_error)?;
        let mut tokenizer = Tokenizer::new(bpe);
        let space = METASPACE.to_string();
        let replace = Replace::new(" ", space.as_str()).map_err(tokenizer_build_error)?;
        let normalizer = if self.add_space_prefix {
            NormalizerSequence::new(vec![Prepend::new(space.clone()).into(), replace.into()])
        } else {
            NormalizerSequence::new(vec![replace.into()])
        };
        tokenizer
            .with_normalizer(Some(normalizer))
            .map_err(tokenizer_build_error)?;
        let mut decoders: Vec<DecoderWrapper> = vec![
            Replace::new(space.as_str(), " ")
                .map_err(tokenizer_build_error)?
                .into(),
            ByteFallback::new().into(),
            Fuse::new().into(),
        ];
        if self.add_space_prefix {
            decoders.push(Strip::new(' ', 1, 0).into());
        }
        tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
        Ok(tokenizer)
    }

    fn unk_piece(&self) -> Option<String> {
        let id = self.unk.or_else(|| {
            (0..self.tokens.len())
                .find(|&i| self.token_type(i) == token_type::UNKNOWN)
                .map(|i| i as u32)
        })?;
        self.tokens.get(id as usize).cloned()
    }

    /// Merges from scores, as Hugging Face's `SentencePieceExtractor` derives them: for each
    /// piece (in id order), every split into two pieces that are both in the vocabulary,
    /// ordered by the halves' ids; then all merges stably sorted by the piece's score,
    /// highest first. Special and byte tokens are never merge results.
    fn spm_merges(&self, vocab: &Vocab, scores: &[f32]) -> Vec<(String, String)> {
        let mut merges: Vec<(f32, String, String)> = Vec::new();
        for (id, piece) in self.tokens.iter().enumerate() {
            let kind = self.token_type(id);
            if kind != token_type::NORMAL && kind != token_type::USER_DEFINED {
                continue;
            }
            let mut local: Vec<(u32, u32, &str, &str)> = piece
                .char_indices()
                .skip(1)
                .filter_map(|(at, _)| {
                    let (left, right) = piece.split_at(at);
                    Some((*vocab.get(left)?, *vocab.get(right)?, left, right))
                })
                .collect();
            local.sort_by_key(|&(l, r, _, _)| (l, r));
            merges.extend(
                local
                    .into_iter()
                    .map(|(_, _, l, r)| (scores[id], l.to_string(), r.to_string())),
            );
        }
        merges.sort_by(|a, b| b.0.total_cmp(&a.0));
        merges.into_iter().map(|(_, l, r)| (l, r)).collect()
    }

    fn build_byte_level(&self) -> Result<Tokenizer> {
        let raw = self.merges.as_ref().ok_or_else(|| {
            PluginError::unsupported_format(
                "the GGUF byte-level BPE vocabulary has no `tokenizer.ggml.merges`",
            )
        })?;
        let merges = raw
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        PluginError::unsupported_format(format!(
                            "GGUF merge `{m}` is not two pieces separated by a space"
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let pre = self.pre.as_deref().unwrap_or("default");
        let llama3 = matches!(pre, "llama-bpe" | "llama3" | "smaug-bpe");
        let bpe = BPE::builder()
            .vocab_and_merges(self.vocab(), merges)
            .ignore_merges(llama3)
            .build()
            .map_err(tokenizer_build_error)?;
        let mut tokenizer = Tokenizer::new(bpe);
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            _ if llama3 => split_then_bytes(REGEX_LLAMA3)?,
            "qwen2" => {
                tokenizer
                    .with_normalizer(Some(NFC))
                    .map_err(tokenizer_build_error)?;
                split_then_bytes(REGEX_QWEN2)?
            }
            _ => ByteLevel::new(false, true, true).into(),
        };
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
        Ok(tokenizer)
    }

    /// Control/unknown tokens become special added tokens (so `<|im_start|>` parses and
    /// decoding can skip them); user-defined ones become plain added tokens.
    fn add_special_tokens(&self, tokenizer: &mut Tokenizer) -> Result<()> {
        let mut special = Vec::new();
        let mut plain = Vec::new();
        for (id, piece) in self.tokens.iter().enumerate() {
            let kind = self.token_type(id);
            if kind == token_type::USER_DEFINED {
                plain.push(AddedToken::from(piece.clone(), false).normalized(false));
            } else if matches!(kind, token_type::CONTROL | token_type::UNKNOWN) {
                special.push(AddedToken::from(piece.clone(), true).normalized(false));
            }
        }
        for id in [self.bos, self.eos, self.unk].into_iter().flatten() {
            if let Some(piece) = self.tokens.get(id as usize) {
                special.push(AddedToken::from(piece.clone(), true).normalized(false));
            }
        }
        tokenizer
            .add_special_tokens(special)
            .map_err(tokenizer_build_error)?;
        tokenizer.add_tokens(plain).map_err(tokenizer_build_error)?;
        Ok(())
    }

    /// `BOS $A` (and/or `$A EOS`) as the model's metadata asks.
    fn post_processor(&self) -> Result<Option<TemplateProcessing>> {
        let piece =
            |id: Option<u32>| id.and_then(|i| self.tokens.get(i as usize).cloned().map(|p| (p, i)));
        let bos = piece(self.bos).filter(|_| self.add_bos);
        let eos = piece(self.eos).filter(|_| self.add_eos);
        if bos.is_none() && eos.is_none() {
            return Ok(None);
        }
        let mut single: Vec<String> = Vec::new();
        let mut pair: Vec<String> = Vec::new();
        let mut specials = Vec::new();
        for (sequence, out) in [("$A", &mut single), ("$B:1", &mut pair)] {
            if let Some((p, _)) = &bos {
                out.push(p.clone());
            }
            out.push(sequence.to_string());
            if let Some((p, _)) = &eos {
                out.push(p.clone());
            }
        }
        // The pair template repeats the single one for A first.
        let mut pair_full = single.clone();
        pair_full.extend(pair);
        specials.extend(bos.iter().cloned());
        specials.extend(eos.iter().cloned());
        let template = TemplateProcessing::builder()
            .try_single(single)
            .and_then(|b| b.try_pair(pair_full))
            .map_err(tokenizer_build_error)?
            .special_tokens(specials)
            .build()
            .map_err(tokenizer_build_error)?;
        Ok(Some(template))
    }
}

fn split_then_bytes(regex: &str) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        tokenizers::pre_tokenizers::split::SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tokenizer_build_error)?;
    Ok(PreSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])
    .into())
}

fn tokenizer_build_error(e: impl std::fmt::Display) -> PluginError {
    PluginError::unsupported_format(format!(
        "cannot build a tokenizer from the GGUF vocabulary: {e}"
    ))
}
