//! Extension entries: how a minor version adds optional data to a struct whose layout is
//! frozen for the whole major version.
//!
//! Every request, metadata and step struct ends with `extensions: RVec<Extension>`. A field
//! added in minor version 2.N travels there under a documented key until the next major
//! version promotes it to a real field. The rules (docs/contract.md, "Evolving"):
//! - the host sends a key only to plugins built against 2.N or later, or that declared the
//!   capability the key belongs to;
//! - a plugin that meets a key it does not know answers `InvalidRequest` naming it, never
//!   ignores it ([`reject_unknown`]);
//! - the host ignores keys it does not know in what a plugin returns (a plugin is never newer
//!   than its host, so this only happens with keys of the plugin's own, prefixed `x-`).

use crate::error::PluginError;
use abi_stable::{std_types::RString, StableAbi};

/// The value of one extension entry. Closed for the whole major version: `Text` carries
/// anything structured (as JSON).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub enum ExtValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(RString),
}

/// One `key = value` entry.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Extension {
    pub key: RString,
    pub value: ExtValue,
}

/// Fails with `InvalidRequest` naming the first key not in `known`.
pub fn reject_unknown(extensions: &[Extension], known: &[&str]) -> Result<(), PluginError> {
    match extensions.iter().find(|e| !known.contains(&e.key.as_str())) {
        Some(e) => Err(PluginError::invalid_request(format!(
            "this backend does not support the request option `{}` (extension of a newer \
             plugin-api minor version)",
            e.key
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        let ext = vec![Extension {
            key: "mirostat".into(),
            value: ExtValue::Int(2),
        }];
        let err = reject_unknown(&ext, &["other"]).unwrap_err();
        assert!(err.message.contains("`mirostat`"), "{err}");
        assert!(reject_unknown(&ext, &["mirostat"]).is_ok());
        assert!(reject_unknown(&[], &[]).is_ok());
    }
}
