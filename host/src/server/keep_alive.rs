//! Ollama's per-request `keep_alive`, and the `format` field this server refuses.
//!
//! `keep_alive` is a number of seconds or a Go duration string (`"5m"`, `"1h30m"`, `"500ms"`):
//! `0` unloads the model once the request is done, a negative value keeps it loaded until it
//! is unloaded by hand, anything else is how long it stays loaded when idle. It applies when
//! the request ends (stream finished or client gone), like Ollama's idle timer, which starts
//! at the end of the last request.

use crate::engine::Engine;
use serde_json::Value;
use std::time::Duration;

/// What a request asks to happen to its model afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Unload once the request is done.
    Unload,
    /// Stay loaded this long when idle.
    For(Duration),
    /// Stay loaded until unloaded by hand (or for memory).
    Forever,
}

impl KeepAlive {
    /// The `keep_alive` field: absent or null = the server's setting.
    pub fn from_field(value: Option<&Value>) -> Result<Option<KeepAlive>, String> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .map(|secs| Some(KeepAlive::from_seconds(secs)))
                .ok_or_else(|| format!("keep_alive {n} is not a number of seconds")),
            Some(Value::String(s)) => parse_text(s).map(Some),
            Some(other) => Err(format!(
                "keep_alive must be a number of seconds or a duration like \"5m\", got {other}"
            )),
        }
    }

    fn from_seconds(secs: f64) -> KeepAlive {
        if secs < 0.0 {
            KeepAlive::Forever
        } else if secs == 0.0 {
            KeepAlive::Unload
        } else {
            // Anything over ~a century is as good as forever.
            KeepAlive::For(Duration::from_secs_f64(secs.min(3.0e9)))
        }
    }
}

fn parse_text(text: &str) -> Result<KeepAlive, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() {
            return Ok(KeepAlive::from_seconds(secs));
        }
    }
    go_duration_seconds(text)
        .map(KeepAlive::from_seconds)
        .ok_or_else(|| {
            format!(
                "keep_alive {text:?} is not a duration: use seconds (300, -1, 0) or a value like \
                 \"5m\", \"1h30m\", \"10s\""
            )
        })
}

/// Seconds in a Go duration string: an optional sign, then one or more `<number><unit>`.
fn go_duration_seconds(text: &str) -> Option<f64> {
    let (sign, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Some(sign * total)
}

/// Applies a request's keep-alive to its model when dropped, i.e. when the request is done.
#[derive(Debug)]
pub struct KeepAliveGuard {
    engine: Engine,
    model: String,
    keep: KeepAlive,
}

impl KeepAliveGuard {
    pub fn new(engine: &Engine, model: &str, keep: KeepAlive) -> KeepAliveGuard {
        KeepAliveGuard {
            engine: engine.clone(),
            model: model.to_string(),
            keep,
        }
    }
}

impl KeepAliveGuard {
    /// Whether the model is unloaded when the request is done.
    pub fn unloads(&self) -> bool {
        self.keep == KeepAlive::Unload
    }
}

impl Drop for KeepAliveGuard {
    fn drop(&mut self) {
        match self.keep {
            KeepAlive::Unload => {
                if self.engine.unload(&self.model) {
                    tracing::info!("unloaded `{}` (keep_alive 0)", self.model);
                }
            }
            KeepAlive::For(idle) => {
                self.engine.set_keep_alive(&self.model, Some(idle));
            }
            KeepAlive::Forever => {
                self.engine.set_keep_alive(&self.model, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Option<KeepAlive>, String> {
        KeepAlive::from_field(Some(&value))
    }

    #[test]
    fn numbers_and_go_durations() {
        let secs = |s: f64| Ok(Some(KeepAlive::For(Duration::from_secs_f64(s))));
        assert_eq!(parse(json!(0)), Ok(Some(KeepAlive::Unload)));
        assert_eq!(parse(json!("0")), Ok(Some(KeepAlive::Unload)));
        assert_eq!(parse(json!("0s")), Ok(Some(KeepAlive::Unload)));
        assert_eq!(parse(json!(-1)), Ok(Some(KeepAlive::Forever)));
        assert_eq!(parse(json!("-1")), Ok(Some(KeepAlive::Forever)));
        assert_eq!(parse(json!("-1m")), Ok(Some(KeepAlive::Forever)));
        assert_eq!(parse(json!(300)), secs(300.0));
        assert_eq!(parse(json!(1.5)), secs(1.5));
        assert_eq!(parse(json!("5m")), secs(300.0));
        assert_eq!(parse(json!("1h30m")), secs(5400.0));
        assert_eq!(parse(json!("250ms")), secs(0.25));
        assert_eq!(parse(json!(null)), Ok(None));
        assert_eq!(KeepAlive::from_field(None), Ok(None));
        for bad in [
            json!("soon"),
            json!("5x"),
            json!("m"),
            json!("1m-"),
            json!(true),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
    }
}
