//! Server settings, from the config file's `[server]` section and `llmlocal serve` flags.
//!
//! ```toml
//! [server]
//! bind = "127.0.0.1:11435"
//! api_keys = ["secret"]          # none = no authentication for inference
//! admin_keys = ["admin-secret"]  # none = pull/delete/downloads only from loopback
//! allowed_origins = ["http://app.example"]  # browser Origins besides loopback ones that may pull/delete
//! no_remote_pull = false         # true: no /api/pull and no downloads a request names
//! cors_origins = ["http://app.example"]     # Origins a browser may call this API from
//! max_body_bytes = 4194304
//! max_tokens_cap = 8192          # the most tokens one request may ask for (and the default)
//! max_connections = 512          # open connections at once; more are answered 503 and closed
//! header_timeout_secs = 30       # to send a request's headers, also the keep-alive idle limit
//! ```
//! `$LLMLOCAL_API_KEYS` and `$LLMLOCAL_ADMIN_KEY` (comma-separated) add keys.

use serde::Deserialize;
use std::{net::SocketAddr, time::Duration};

pub const API_KEYS_ENV: &str = "LLMLOCAL_API_KEYS";
pub const ADMIN_KEY_ENV: &str = "LLMLOCAL_ADMIN_KEY";
pub const DEFAULT_BIND: &str = "127.0.0.1:11435";
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    /// Keys for inference routes; empty = inference is open.
    pub api_keys: Vec<String>,
    /// Keys for routes that change what the server holds (pull, delete, downloads a request
    /// names); empty = those answer only loopback clients (see `server::access`).
    pub admin_keys: Vec<String>,
    /// Browser Origins (besides loopback ones) whose pages may pull/delete without an admin
    /// key; `*` matches any run of characters (`chrome-extension://*`), as in OLLAMA_ORIGINS.
    pub allowed_origins: Vec<String>,
    /// Refuse `/api/pull` and every download a request names.
    pub no_remote_pull: bool,
    /// Origins a browser may call this API from (CORS); empty = none.
    pub cors_origins: Vec<String>,
    pub max_body_bytes: usize,
    pub max_tokens_cap: u32,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, from the connection's start or the end
    /// of its previous response (so also the keep-alive idle limit).
    pub header_timeout: Duration,
    /// Serve the chat page at `/` (`--no-chat-page` turns it off).
    pub chat_page: bool,
    /// Where the names `/api/copy` and `/api/create` make are kept (`serve`:
    /// `<data dir>/llmlocal/ollama-models.json`); `None` = in memory only.
    pub models_file: Option<std::path::PathBuf>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            bind: DEFAULT_BIND
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 11435))),
            api_keys: Vec::new(),
            admin_keys: Vec::new(),
            allowed_origins: Vec::new(),
            no_remote_pull: false,
            cors_origins: Vec::new(),
            max_body_bytes: 4 << 20,
            max_tokens_cap: 8192,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            chat_page: true,
            models_file: None,
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
    #[serde(default)]
    admin_keys: Vec<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    no_remote_pull: Option<bool>,
    #[serde(default)]
    cors_origins: Vec<String>,
    max_body_bytes: Option<usize>,
    max_tokens_cap: Option<u32>,
    max_connections: Option<usize>,
    header_timeout_secs: Option<u64>,
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
        self.admin_keys.extend(s.admin_keys);
        self.allowed_origins.extend(s.allowed_origins);
        self.no_remote_pull = s.no_remote_pull.unwrap_or(self.no_remote_pull);
        self.cors_origins.extend(s.cors_origins);
        self.max_body_bytes = s.max_body_bytes.unwrap_or(self.max_body_bytes);
        self.max_tokens_cap = s.max_tokens_cap.unwrap_or(self.max_tokens_cap);
        self.max_connections = s.max_connections.unwrap_or(self.max_connections);
        if let Some(secs) = s.header_timeout_secs {
            self.header_timeout = Duration::from_secs(secs);
        }
        self.check()
    }

    /// Adds keys from `$LLMLOCAL_API_KEYS` and `$LLMLOCAL_ADMIN_KEY`.
    pub fn apply_env(&mut self) {
        self.api_keys.extend(keys_from_env(API_KEYS_ENV));
        self.admin_keys.extend(keys_from_env(ADMIN_KEY_ENV));
    }

    /// Refuses values the server cannot run with.
    pub fn check(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".to_string());
        }
        if self.header_timeout.is_zero() {
            return Err("the header timeout must be at least 1 second".to_string());
        }
        super::cors::check(&self.cors_origins)?;
        if let Some(key) = self
            .api_keys
            .iter()
            .chain(&self.admin_keys)
            .find(|k| k.trim().is_empty())
        {
            return Err(format!("an API or admin key is empty ({key:?})"));
        }
        Ok(())
    }
}

/// Comma-separated keys from the environment variable `name`.
fn keys_from_env(name: &str) -> Vec<String> {
    std::env::var(name)
        .map(|keys| {
            keys.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
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

    #[test]
    fn reads_the_security_keys() {
        let mut s = ServerSettings::default();
        s.apply_config_text(
            "[server]\nadmin_keys = [\"a\"]\nallowed_origins = [\"http://x\"]\n\
             no_remote_pull = true\ncors_origins = [\"http://y\"]\nmax_connections = 7\n\
             header_timeout_secs = 3\n",
        )
        .expect("valid");
        assert_eq!(s.admin_keys, vec!["a".to_string()]);
        assert_eq!(s.allowed_origins, vec!["http://x".to_string()]);
        assert!(s.no_remote_pull);
        assert_eq!(s.cors_origins, vec!["http://y".to_string()]);
        assert_eq!(s.max_connections, 7);
        assert_eq!(s.header_timeout, Duration::from_secs(3));
        let err = ServerSettings::default()
            .apply_config_text("[server]\nmax_connections = 0\n")
            .expect_err("zero connections");
        assert!(err.contains("max_connections"), "{err}");
        let err = ServerSettings::default()
            .apply_config_text("[server]\nadmin_key = \"a\"\n")
            .expect_err("unknown key");
        assert!(err.contains("admin_key"), "{err}");
    }
}
