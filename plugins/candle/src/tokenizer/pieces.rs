//! The raw bytes each token stands for, so generated text can be streamed with
//! [`llmlocal_plugin_api::Utf8Decoder`] byte by byte instead of through lossy strings.
//!
//! Two vocabulary styles matter:
//! - SentencePiece-style (byte fallback): `▁` is a space and `<0xNN>` is the byte `NN`;
//! - byte-level BPE (GPT-2 style): every byte is written as one printable character of the
//!   GPT-2 `bytes_to_unicode` table, so each character maps back to exactly one byte.

use std::collections::HashMap;

/// How the pieces of a vocabulary encode bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceStyle {
    /// `▁` for spaces, `<0xNN>` byte tokens.
    SentencePiece,
    /// GPT-2 byte-to-unicode characters.
    ByteLevel,
}

/// The metaspace character SentencePiece uses for a space.
pub const METASPACE: char = '\u{2581}';

/// GPT-2's reversible byte <-> printable character table, character -> byte direction.
pub fn byte_level_decoder() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for byte in 0u8..=255 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let ch = if printable {
            char::from(byte)
        } else {
            // Non-printable bytes are shifted past 255, in byte order.
            let ch = char::from_u32(256 + extra).unwrap_or(char::REPLACEMENT_CHARACTER);
            extra += 1;
            ch
        };
        map.insert(ch, byte);
    }
    map
}

/// `<0xNN>` -> the byte `NN`.
pub fn parse_byte_token(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The bytes of one normal (non-special) vocabulary piece.
pub fn piece_bytes(piece: &str, style: PieceStyle, table: &HashMap<char, u8>) -> Vec<u8> {
    match style {
        PieceStyle::SentencePiece => match parse_byte_token(piece) {
            Some(byte) => vec![byte],
            None => piece.replace(METASPACE, " ").into_bytes(),
        },
        PieceStyle::ByteLevel => {
            // A piece outside the table (rare, hand-added) is taken as plain text.
            let bytes: Option<Vec<u8>> = piece.chars().map(|c| table.get(&c).copied()).collect();
            bytes.unwrap_or_else(|| piece.as_bytes().to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_is_a_bijection_on_bytes() {
        let table = byte_level_decoder();
        assert_eq!(table.len(), 256);
        assert_eq!(table[&'\u{120}'], b' '); // "Ġ"
        assert_eq!(table[&'\u{10A}'], b'\n'); // "Ċ"
        assert_eq!(table[&'a'], b'a');
    }

    #[test]
    fn sentencepiece_pieces() {
        let table = HashMap::new();
        let sp = PieceStyle::SentencePiece;
        assert_eq!(piece_bytes("<0xE2>", sp, &table), vec![0xE2]);
        assert_eq!(piece_bytes("\u{2581}the", sp, &table), b" the".to_vec());
        assert_eq!(parse_byte_token("<0xZZ>"), None);
    }
}
