//! Server settings, from the config file's `[server]` section and `llmlocal serve` flags.
//!
//! ```toml
//! [server]
//! bind = "127.0.0.1:11435"
//! api_keys = ["secret"]          # none = no authentication
//! max_body_bytes = 4194304
//! max_tokens_cap = 8192          # the most tokens one request may ask for (and the default)
//! ```
//! `$LLMLOCAL_API_KEYS` (comma-separated) adds keys.

use serde::Deserialize;
use std::net::SocketAddr;

pub const API_KEYS_ENV: &str = "LLMLOCAL_API_KEYS";
pub const DEFAULT_BIND: &str = "127.0.0.1:11435";

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    pub api_keys: Vec<String>,
    pub max_body_bytes: usize,
    pub max_tokens_cap: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            bind: DEFAULT_BIND
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 11435))),
            api_keys: Vec::new(),
            max_body_bytes: 4 << 20,
            max_tokens_cap: 8192,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct FileSections {
    #[serde(default)]
    server: ServerSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    bind: Option<String>,
    #[serde(default)]
    api_keys: Vec<String>,
    max_body_bytes: Option<usize>,
    max_tokens_cap: Option<u32>,
}

impl ServerSettings {
    /// Applies the `[server]` section of config text.
    pub fn apply_config_text(&mut self, text: &str) -> Result<(), String> {
        let sections: FileSections =
            toml::from_str(text).map_err(|err| err.to_string().trim_end().to_string())?;
        let s = sections.server;
        if let Some(bind) = s.bind {
            self.bind = bind.parse().map_err(|err| {
                format!("[server] bind = {bind:?}: {err}; expected e.g. \"127.0.0.1:11435\"")
            })?;
        }
        self.api_keys.extend(s.api_keys);
        self.max_body_bytes = s.max_body_bytes.unwrap_or(self.max_body_bytes);
        self.max_tokens_cap = s.max_tokens_cap.unwrap_or(self.max_tokens_cap);
        Ok(())
    }

    /// Adds keys from `$LLMLOCAL_API_KEYS`.
    pub fn apply_env(&mut self) {
        if let Ok(keys) = std::env::var(API_KEYS_ENV) {
            self.api_keys.extend(
                keys.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(String::from),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_server_section() {
        let mut s = ServerSettings::default();
        s.apply_config_text(
            "[server]\nbind = \"0.0.0.0:9\"\napi_keys = [\"k\"]\nmax_tokens_cap = 5\n",
        )
        .expect("valid");
        assert_eq!(s.bind, "0.0.0.0:9".parse().expect("addr"));
        assert_eq!(s.api_keys, vec!["k".to_string()]);
        assert_eq!(s.max_tokens_cap, 5);
        assert!(s.apply_config_text("[server]\nbind = \"nope\"\n").is_err());
    }
}
