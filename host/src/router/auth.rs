//! Secrets: constant-time comparison, bearer extraction and token generation.

use axum::http::{header, HeaderMap};
use rand::RngCore as _;
use subtle::ConstantTimeEq as _;

/// Compares without leaking where the first difference is (length still leaks, which is
/// fine for random tokens of a fixed size).
pub fn secret_eq(given: &str, expected: &str) -> bool {
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// True when `given` matches one of `keys` (each compared in constant time).
pub fn any_matches(given: &str, keys: &[String]) -> bool {
    keys.iter()
        .fold(false, |hit, key| hit | secret_eq(given, key))
}

/// The token of `Authorization: Bearer TOKEN`, or of `x-api-key` (some clients send it).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value.to_str().ok()?;
        let (scheme, token) = text.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    headers.get("x-api-key")?.to_str().ok()
}

/// What the database keeps of a node secret: its SHA-256 in hex. The secrets are 256
/// random bits, so a fast hash is enough (no guessing to slow down), and a leaked database
/// does not let anyone re-register a node.
pub fn hash_secret(secret: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// True when `given` hashes to `hash`.
pub fn secret_matches_hash(given: &str, hash: &str) -> bool {
    secret_eq(&hash_secret(given), hash)
}

/// A fresh random secret: 32 bytes as 64 hex digits.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_secrets() {
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abc", "abd"));
        assert!(!secret_eq("abc", "abcd"));
        assert!(any_matches("b", &["a".into(), "b".into()]));
        assert!(!any_matches("c", &["a".into(), "b".into()]));
    }

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (generate_token(), generate_token());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(secret_matches_hash(&a, &hash_secret(&a)));
        assert!(!secret_matches_hash(&b, &hash_secret(&a)));
    }
}
