//! The script file format and the byte tokenizer.

use llmlocal_plugin_api::PluginError;
use std::{path::Path, sync::Arc};

/// The first line of every scripted model file.
pub const HEADER: &str = "llmlocal-scripted-model v1";
/// Begin-of-sequence token (after the 256 byte tokens).
pub const BOS: u32 = 256;
/// End-of-sequence token.
pub const EOS: u32 = 257;
/// Bytes plus BOS and EOS.
pub const VOCAB_SIZE: u32 = 258;

const BOS_TEXT: &str = "<s>";
const EOS_TEXT: &str = "</s>";

/// The bytes a scripted model replays. Shared by the model and its generations.
#[derive(Debug, Clone)]
pub struct Script {
    bytes: Arc<[u8]>,
}

impl Script {
    /// Reads a script file: `NotFound` if missing, `UnsupportedFormat` if it is anything but a
    /// UTF-8 text file starting with [`HEADER`].
    pub fn read(path: &Path) -> Result<Script, PluginError> {
        let shown = path.display();
        if !path.exists() {
            return Err(PluginError::not_found(format!(
                "model file {shown} does not exist"
            )));
        }
        if !path.is_file() {
            return Err(PluginError::unsupported_format(format!(
                "{shown} is not a file: the scripted backend reads one `{HEADER}` text file"
            )));
        }
        let bytes = std::fs::read(path).map_err(|err| {
            PluginError::not_found(format!("cannot read model file {shown}: {err}"))
        })?;
        Self::parse(&bytes).map_err(|why| {
            PluginError::unsupported_format(format!("{shown} is not a scripted model: {why}"))
        })
    }

    /// Parses the contents of a script file.
    pub fn parse(bytes: &[u8]) -> Result<Script, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string())?;
        let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
        if first.trim_end_matches('\r') != HEADER {
            return Err(format!("its first line is not `{HEADER}`"));
        }
        Ok(Script {
            bytes: Arc::from(rest.as_bytes()),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The greedy continuation after `tokens`: the script byte following the longest tail of
    /// `tokens` that matches a start of the script (the first byte when none does); EOS once
    /// the whole script has been matched.
    pub fn next_after(&self, tokens: &[u32]) -> u32 {
        let script = self.bytes();
        script
            .get(self.matched_prefix(tokens))
            .map_or(EOS, |&b| u32::from(b))
    }

    /// How much of the script the tokens already end with: the longest k such that the last
    /// k tokens are the script's first k bytes. A greedy generation continues from there, so
    /// the scripted "model" behaves like a language model that knows one text.
    pub fn matched_prefix(&self, tokens: &[u32]) -> usize {
        let script = self.bytes();
        (1..=script.len().min(tokens.len()))
            .rev()
            .find(|&k| {
                tokens[tokens.len() - k..]
                    .iter()
                    .zip(&script[..k])
                    .all(|(&t, &b)| t == u32::from(b))
            })
            .unwrap_or(0)
    }

    /// Where a sampled (non-greedy) generation starts in the script: rotated by the prompt
    /// and the seed (moved forward to a character boundary, so text stays whole).
    pub fn start_offset(&self, prompt: &[u32], seed: u64) -> usize {
        if self.is_empty() {
            return 0;
        }
        let sum = prompt
            .iter()
            .fold(seed, |acc, &t| acc.wrapping_add(u64::from(t)));
        // len fits in u64 and the remainder is below len, so both casts are lossless.
        let mut offset = (sum % self.len() as u64) as usize;
        while offset < self.len() && is_continuation(self.bytes[offset]) {
            offset += 1;
        }
        offset % self.len()
    }
}

fn is_continuation(byte: u8) -> bool {
    byte & 0b1100_0000 == 0b1000_0000
}

/// Text -> byte tokens; `parse_special` turns `<s>` / `</s>` into BOS / EOS.
pub fn tokenize(text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
    let mut tokens = Vec::with_capacity(text.len() + 1);
    if add_special {
        tokens.push(BOS);
    }
    let mut rest = text;
    while !rest.is_empty() {
        if parse_special {
            if let Some(after) = rest.strip_prefix(BOS_TEXT) {
                tokens.push(BOS);
                rest = after;
                continue;
            }
            if let Some(after) = rest.strip_prefix(EOS_TEXT) {
                tokens.push(EOS);
                rest = after;
                continue;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            let mut buf = [0u8; 4];
            tokens.extend(c.encode_utf8(&mut buf).bytes().map(u32::from));
        }
        rest = chars.as_str();
    }
    tokens
}

/// Byte tokens -> text; special tokens render as `<s>` / `</s>` unless skipped.
pub fn detokenize(tokens: &[u32], skip_special: bool) -> Result<String, PluginError> {
    let mut bytes = Vec::with_capacity(tokens.len());
    for &token in tokens {
        bytes.extend_from_slice(token_bytes(token, skip_special)?);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The raw bytes of one token.
pub fn token_bytes(token: u32, skip_special: bool) -> Result<&'static [u8], PluginError> {
    static BYTES: [u8; 256] = {
        let mut all = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            all[i] = i as u8;
            i += 1;
        }
        all
    };
    match token {
        BOS | EOS if skip_special => Ok(&[]),
        BOS => Ok(BOS_TEXT.as_bytes()),
        EOS => Ok(EOS_TEXT.as_bytes()),
        byte if byte < 256 => Ok(std::slice::from_ref(&BYTES[byte as usize])),
        _ => Err(PluginError::invalid_request(format!(
            "token id {token} is out of range: the scripted vocabulary has {VOCAB_SIZE} tokens"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(text: &str) -> Script {
        Script::parse(format!("{HEADER}\n{text}").as_bytes()).expect("valid script")
    }

    #[test]
    fn header_is_required() {
        assert!(Script::parse(b"GGUF\x03\0\0\0").is_err());
        assert!(Script::parse(b"llmlocal-scripted-model v2\nabc").is_err());
        assert_eq!(script("abc").bytes(), b"abc");
    }

    #[test]
    fn tokenize_round_trips() {
        let text = "héllo <s> wörld €";
        let tokens = tokenize(text, true, false);
        assert_eq!(tokens[0], BOS);
        assert_eq!(tokens.len(), text.len() + 1);
        assert_eq!(detokenize(&tokens, true).ok().as_deref(), Some(text));
        let special = tokenize("<s>a</s>", false, true);
        assert_eq!(special, vec![BOS, u32::from(b'a'), EOS]);
        assert_eq!(
            detokenize(&special, false).ok().as_deref(),
            Some("<s>a</s>")
        );
        assert!(detokenize(&[VOCAB_SIZE], false).is_err());
    }

    #[test]
    fn next_after_follows_the_script() {
        let s = script("abc");
        assert_eq!(s.next_after(&[BOS]), u32::from(b'a'));
        assert_eq!(s.next_after(&[BOS, 97]), u32::from(b'b'));
        assert_eq!(s.next_after(&[BOS, 97, 98, 99]), EOS);
    }

    #[test]
    fn rotation_depends_on_prompt_and_seed_and_keeps_characters_whole() {
        let s = script("a€b");
        // len 5: sum 2 lands inside '€' (bytes 1..4) and moves on to 'b' at 4.
        assert_eq!(s.start_offset(&[2], 0), 4);
        assert_eq!(s.start_offset(&[1], 0), 1);
        assert_eq!(s.start_offset(&[0], 1), 1);
    }
}
