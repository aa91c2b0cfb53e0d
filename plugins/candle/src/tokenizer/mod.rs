//! Tokenization: a `tokenizers::Tokenizer` (from tokenizer.json, or built from GGUF
//! metadata; BERT's WordPiece in [`wordpiece`]), the raw bytes of every token for
//! streaming, and the special ids.

mod build;
pub mod gguf;
pub mod pieces;
pub mod wordpiece;

use crate::error::{read_file, Result, ResultExt};
use llmlocal_plugin_api::PluginError;
use pieces::{byte_level_decoder, piece_bytes, PieceStyle};
use std::collections::HashSet;
use std::path::Path;
use tokenizers::Tokenizer;

/// Everything the model needs to turn text into ids and ids into text.
pub struct Vocab {
    /// Parses special-token text (`<s>`, `<|im_start|>`) into special tokens.
    parsing: Tokenizer,
    /// The same tokenizer with special-token parsing off: their text is plain text.
    literal: Tokenizer,
    /// Raw bytes per id (empty for special tokens), for UTF-8-safe streaming.
    pieces: Vec<Vec<u8>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Every id that ends a generation (EOS, EOT, `<|im_end|>`, ...).
    pub eog: Vec<u32>,
    /// Add BOS on `add_special` even if the tokenizer's post-processor does not.
    add_bos: bool,
    pub chat_template: Option<String>,
}

/// What a Hugging Face folder says about special tokens besides tokenizer.json.
#[derive(Debug, Default, Clone)]
pub struct HfSpecials {
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    pub add_bos: Option<bool>,
    pub chat_template: Option<String>,
    pub bos_text: Option<String>,
    pub eos_text: Option<String>,
}

impl Vocab {
    /// From a tokenizer.json plus the special tokens the folder's config files name.
    pub fn from_tokenizer_json(path: &Path, specials: HfSpecials) -> Result<Self> {
        let bytes = read_file(path)?;
        let parsing = Tokenizer::from_bytes(&bytes)
            .format_err(|| format!("{} is not a valid tokenizer.json", path.display()))?;
        let pieces = piece_table_from_tokenizer(&parsing);
        let by_text = |text: &Option<String>| text.as_deref().and_then(|t| parsing.token_to_id(t));
        let bos = specials.bos.or_else(|| by_text(&specials.bos_text));
        let mut eog = specials.eos.clone();
        eog.extend(by_text(&specials.eos_text));
        let tokens: Vec<String> = (0..pieces.len() as u32)
            .map(|id| parsing.id_to_token(id).unwrap_or_default())
            .collect();
        let special_ids = special_ids(&parsing);
        eog.extend(gguf::known_eog_ids(&tokens, |i| {
            special_ids.contains(&(i as u32))
        }));
        dedup(&mut eog);
        Ok(Self::assemble(
            parsing,
            pieces,
            bos,
            eog,
            specials.add_bos.unwrap_or(false),
            specials.chat_template,
        ))
    }

    /// Built from GGUF metadata.
    pub fn from_gguf(vocab: &gguf::GgufVocab) -> Result<Self> {
        let tokenizer = vocab.build()?;
        let pieces = vocab.piece_table()?;
        let mut eog: Vec<u32> = vocab.eos.into_iter().collect();
        eog.extend(vocab.extra_eog.iter().copied());
        eog.extend(gguf::known_eog_ids(&vocab.tokens, |i| vocab.is_special(i)));
        dedup(&mut eog);
        Ok(Self::assemble(
            tokenizer,
            pieces,
            vocab.bos,
            eog,
            vocab.add_bos,
            vocab.chat_template.clone(),
        ))
    }

    fn assemble(
        parsing: Tokenizer,
        pieces: Vec<Vec<u8>>,
        bos: Option<u32>,
        eog: Vec<u32>,
        add_bos: bool,
        chat_template: Option<String>,
    ) -> Self {
        let mut literal = parsing.clone();
        literal.set_encode_special_tokens(true);
        Vocab {
            parsing,
            literal,
            pieces,
            bos,
            eos: eog.first().copied(),
            eog,
            add_bos,
            chat_template,
        }
    }

    /// Number of ids the tokenizer knows (the model's vocabulary may be padded beyond it).
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The raw bytes id `id` stands for (empty for special or unknown ids).
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], |p| p.as_slice())
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let tokenizer = if parse_special {
            &self.parsing
        } else {
            &self.literal
        };
        let encoding = tokenizer
            .encode(text, add_special)
            .map_err(|e| PluginError::invalid_request(format!("cannot tokenize the text: {e}")))?;
        let mut ids = encoding.get_ids().to_vec();
        // Some tokenizer.json files lack the BOS post-processor that tokenizer_config.json
        // asks for (`add_bos_token: true`): add it here so every load format agrees.
        if add_special && self.add_bos {
            if let Some(bos) = self.bos {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(ids)
    }

    pub fn detokenize(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.parsing
            .decode(ids, skip_special)
            .map_err(|e| PluginError::invalid_request(format!("cannot detokenize: {e}")))
    }
}

fn dedup(ids: &mut Vec<u32>) {
    let mut seen = HashSet::new();
    ids.retain(|id| seen.insert(*id));
}

fn special_ids(tokenizer: &Tokenizer) -> HashSet<u32> {
    tokenizer
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id)
        .collect()
}

/// How a tokenizer.json's pieces encode bytes, judged from its decoder.
fn piece_style(tokenizer: &Tokenizer) -> Option<PieceStyle> {
    let decoder = serde_json::to_string(tokenizer.get_decoder()?).ok()?;
    if decoder.contains("\"ByteLevel\"") {
        Some(PieceStyle::ByteLevel)
    } else if decoder.contains("\"ByteFallback\"") || decoder.contains("\"Metaspace\"") {
        Some(PieceStyle::SentencePiece)
    } else {
        None
    }
}

fn piece_table_from_tokenizer(tokenizer: &Tokenizer) -> Vec<Vec<u8>> {
    let style = piece_style(tokenizer);
    let table = byte_level_decoder();
    let added = tokenizer.get_added_tokens_decoder();
    let size = tokenizer.get_vocab_size(true);
    let size = size.max(added.keys().map(|&id| id as usize + 1).max().unwrap_or(0));
    (0..size as u32)
        .map(|id| {
            if let Some(token) = added.get(&id) {
                return if token.special {
                    Vec::new()
                } else {
                    token.content.as_bytes().to_vec()
                };
            }
            match (tokenizer.id_to_token(id), style) {
                (Some(piece), Some(style)) => piece_bytes(&piece, style, &table),
                // Other vocabularies (WordPiece, Unigram without byte fallback): decode the id.
                (Some(_), None) => tokenizer
                    .decode(&[id], false)
                    .map(String::into_bytes)
                    .unwrap_or_default(),
                (None, _) => Vec::new(),
            }
        })
        .collect()
}
