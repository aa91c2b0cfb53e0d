//! Turning candle, tokenizers, serde and io failures into [`PluginError`]s with context.
//!
//! Every error that leaves this crate is a `PluginError` whose kind tells the host what went
//! wrong (a missing file, a corrupt one, an architecture we do not run) and whose message
//! names the file, key or tensor involved.

use llmlocal_plugin_api::PluginError;
use std::path::Path;

/// Result type used throughout the crate.
pub type Result<T> = std::result::Result<T, PluginError>;

/// Adds the plugin error kind and a context line to a foreign error.
pub trait ResultExt<T> {
    /// The file (or its contents) is not in a format we read.
    fn format_err(self, context: impl FnOnce() -> String) -> Result<T>;
    /// A failure inside candle that is not the input's fault.
    fn internal_err(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::fmt::Display> ResultExt<T> for std::result::Result<T, E> {
    fn format_err(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| PluginError::unsupported_format(format!("{}: {e}", context())))
    }

    fn internal_err(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| PluginError::internal(format!("{}: {e}", context())))
    }
}

/// Reads a whole file, mapping a missing file to `NotFound`.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io_error(path, &e))
}

/// Maps an io error on `path` to `NotFound` (missing) or `UnsupportedFormat` (unreadable).
pub fn io_error(path: &Path, err: &std::io::Error) -> PluginError {
    if err.kind() == std::io::ErrorKind::NotFound {
        PluginError::not_found(format!("{} does not exist", path.display()))
    } else {
        PluginError::unsupported_format(format!("cannot read {}: {err}", path.display()))
    }
}

/// Runs `f` and turns a panic inside candle's model constructors (some `unwrap` on shapes)
/// into an error, so a malformed checkpoint can never take the host down.
pub fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(PluginError::unsupported_format(format!(
                "{what} failed (candle panicked: {msg})"
            )))
        }
    }
}
