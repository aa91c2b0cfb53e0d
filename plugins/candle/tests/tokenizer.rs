//! The tokenizer built from GGUF metadata equals the model's tokenizer.json.

mod common;

use common::{load, stories};
use llmlocal_backend_candle::tokenizer::{gguf::GgufVocab, Vocab};
use llmlocal_plugin_api::Utf8Decoder;
use tokenizers::Tokenizer;

const STRINGS: &[&str] = &[
    "Once upon a time",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces",
    "trailing spaces   ",
    "multiple   spaces\tand\ttabs",
    "new\nlines\n\nand\r\nreturns",
    "   ",
    " ",
    "a",
    "Lily's mom said, \"Let's go!\"",
    "1234567890 + 42 = 1276",
    "café naïve résumé Ångström",
    "Übergrößenträger",
    "日本語のテキスト",
    "中文字符",
    "emoji 🙂🚀 and 👍🏽",
    "mixed: abc😀def ñ 漢字",
    "<s> inside text </s>",
    "",
];

#[test]
fn gguf_built_tokenizer_equals_tokenizer_json() {
    let Some(dir) = stories() else { return };
    let gguf = load(&dir.join("stories260K.gguf"));
    let reference = Tokenizer::from_file(dir.join("hf/tokenizer.json")).expect("tokenizer.json");
    for &text in STRINGS {
        for add_special in [false, true] {
            let want = reference
                .encode(text, add_special)
                .unwrap()
                .get_ids()
                .to_vec();
            let got = gguf.tokenize(text, add_special, true).unwrap();
            assert_eq!(got, want, "{text:?} (add_special {add_special})");
        }
        let ids = reference.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(
            gguf.detokenize(&ids, true).unwrap(),
            reference.decode(&ids, true).unwrap(),
            "decode {text:?}"
        );
    }
}

#[test]
fn hf_folder_tokenizer_is_tokenizer_json() {
    let Some(dir) = stories() else { return };
    let hf = load(&dir.join("hf"));
    let reference = Tokenizer::from_file(dir.join("hf/tokenizer.json")).unwrap();
    for &text in STRINGS {
        let want = reference.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(hf.tokenize(text, true, true).unwrap(), want, "{text:?}");
    }
}

#[test]
fn special_token_text_parses_only_when_asked() {
    let Some(dir) = stories() else { return };
    for path in [dir.join("hf"), dir.join("stories260K.gguf")] {
        let model = load(&path);
        let parsed = model.tokenize("<s>", false, true).unwrap();
        assert_eq!(parsed, vec![1], "{}", path.display());
        let literal = model.tokenize("<s>", false, false).unwrap();
        assert!(!literal.contains(&1), "{}: {literal:?}", path.display());
        assert_eq!(model.detokenize(&literal, false).unwrap(), "<s>");
    }
}

#[test]
fn streamed_pieces_rebuild_text_with_whole_characters() {
    let Some(dir) = stories() else { return };
    let mut file = std::fs::File::open(dir.join("stories260K.gguf")).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let gguf = GgufVocab::from_metadata(&content.metadata).unwrap();
    let vocab = Vocab::from_gguf(&gguf).unwrap();
    for &text in STRINGS {
        let ids = vocab.tokenize(text, false, false).unwrap();
        let mut decoder = Utf8Decoder::new();
        let mut streamed = String::new();
        for &id in &ids {
            let piece = decoder.push(vocab.piece(id));
            assert!(
                !piece.contains('\u{FFFD}'),
                "{text:?}: a character was split"
            );
            streamed.push_str(&piece);
        }
        assert_eq!(decoder.finish(), "");
        // SentencePiece adds one leading space (the prefix `▁`) that decode strips.
        let expected = if text.is_empty() {
            String::new()
        } else {
            format!(" {text}")
        };
        assert_eq!(streamed, expected, "{ids:?}");
    }
}
