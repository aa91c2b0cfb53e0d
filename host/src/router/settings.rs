//! Router settings: defaults, the `[router]` table of the config file, then CLI flags.

use super::store::Retention;
use serde::Deserialize;
use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

/// How the router picks a node among those serving a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Each node in turn.
    #[default]
    RoundRobin,
    /// Fewest active + queued requests, then lowest CPU load.
    LeastLoaded,
    /// A node that already has the model in memory (least loaded among them), else any.
    PreferLoaded,
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "round-robin" => Ok(Strategy::RoundRobin),
            "least-loaded" => Ok(Strategy::LeastLoaded),
            "prefer-loaded" => Ok(Strategy::PreferLoaded),
            other => Err(format!(
                "unknown strategy `{other}` (round-robin, least-loaded, prefer-loaded)"
            )),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::LeastLoaded => "least-loaded",
            Strategy::PreferLoaded => "prefer-loaded",
        })
    }
}

#[derive(Debug, Clone)]
pub struct RouterSettings {
    pub bind: SocketAddr,
    /// `None`: an in-memory database (tests).
    pub db_path: Option<PathBuf>,
    pub strategy: Strategy,
    /// `None`: use the one stored in the database, or make one.
    pub join_token: Option<String>,
    /// `None`: the admin API, the dashboard feed and model changes are off.
    pub admin_key: Option<String>,
    /// Browser origins besides the router's own (its `Host`) that may open the dashboard
    /// socket, e.g. `https://ops.example.com`.
    pub dashboard_origins: Vec<String>,
    /// Keys clients must send for `/v1/*` and `/api/*` (empty: open).
    pub api_keys: Vec<String>,
    /// Sent to nodes as `Authorization: Bearer KEY` (nodes started with an API key); the
    /// clients' own credentials are never passed on.
    pub node_key: Option<String>,
    /// When not empty, the only hosts (names or IPs, as written in the nodes' URLs) nodes
    /// may advertise.
    pub node_allow_hosts: Vec<String>,
    /// Heartbeat period the router asks nodes for.
    pub heartbeat_interval: Duration,
    /// A node not heard from for this long is offline.
    pub offline_after: Duration,
    pub connect_timeout: Duration,
    /// Longest wait for a node's response headers; then the request goes to another node
    /// (nothing was sent to the client yet) and the node is suspect for `offline_after`.
    pub first_byte_timeout: Duration,
    /// Longest silence inside a response body; then the client gets an error event (or a
    /// cut connection) and the node is suspect.
    pub idle_timeout: Duration,
    pub max_body_bytes: usize,
    /// Nodes tried per request before giving up.
    pub max_attempts: usize,
    pub retention: Retention,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 11500)),
            db_path: None,
            strategy: Strategy::default(),
            join_token: None,
            admin_key: None,
            dashboard_origins: Vec::new(),
            api_keys: Vec::new(),
            node_key: None,
            node_allow_hosts: Vec::new(),
            heartbeat_interval: Duration::from_secs(10),
            offline_after: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            // Generous: a node that stops (hangs, SIGSTOP) misses its heartbeats and goes
            // offline within `offline_after`, which ends its requests sooner; these catch a
            // node that still beats but never answers. A non-streamed answer comes in one
            // piece after the whole generation, and a model's first load may take minutes.
            first_byte_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(300),
            max_body_bytes: 16 << 20,
            max_attempts: 3,
            retention: Retention {
                max_rows: 100_000,
                max_age: Duration::from_secs(30 * 24 * 3600),
            },
        }
    }
}

/// The `[router]` table of the config file; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterTable {
    bind: Option<SocketAddr>,
    db: Option<PathBuf>,
    strategy: Option<Strategy>,
    join_token: Option<String>,
    admin_key: Option<String>,
    #[serde(default)]
    dashboard_origins: Vec<String>,
    #[serde(default)]
    api_keys: Vec<String>,
    node_key: Option<String>,
    #[serde(default)]
    node_allow_hosts: Vec<String>,
    heartbeat_interval_secs: Option<f64>,
    offline_after_secs: Option<f64>,
    first_byte_timeout_secs: Option<f64>,
    idle_timeout_secs: Option<f64>,
    max_body_bytes: Option<usize>,
    max_attempts: Option<usize>,
    history_max_rows: Option<u64>,
    history_max_age_days: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    router: Option<RouterTable>,
}

impl RouterSettings {
    /// Applies the `[router]` table of a config file; other tables are ignored.
    pub fn apply_config_text(&mut self, text: &str) -> Result<(), String> {
        let file: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let Some(table) = file.get("router") else {
            return Ok(());
        };
        let wrapped = toml::Table::from_iter([("router".to_string(), table.clone())]);
        let parsed: ConfigFile = wrapped
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        let t = parsed.router.unwrap_or_default();
        self.bind = t.bind.unwrap_or(self.bind);
        self.db_path = t.db.or(self.db_path.take());
        self.strategy = t.strategy.unwrap_or(self.strategy);
        self.join_token = t.join_token.or(self.join_token.take());
        self.admin_key = t.admin_key.or(self.admin_key.take());
        self.api_keys.extend(t.api_keys);
        self.dashboard_origins.extend(t.dashboard_origins);
        self.node_key = t.node_key.or(self.node_key.take());
        self.node_allow_hosts.extend(t.node_allow_hosts);
        if let Some(secs) = t.heartbeat_interval_secs {
            self.heartbeat_interval = seconds("heartbeat_interval_secs", secs)?;
        }
        if let Some(secs) = t.offline_after_secs {
            self.offline_after = seconds("offline_after_secs", secs)?;
        }
        if let Some(secs) = t.first_byte_timeout_secs {
            self.first_byte_timeout = seconds("first_byte_timeout_secs", secs)?;
        }
        if let Some(secs) = t.idle_timeout_secs {
            self.idle_timeout = seconds("idle_timeout_secs", secs)?;
        }
        self.max_body_bytes = t.max_body_bytes.unwrap_or(self.max_body_bytes);
        self.max_attempts = t.max_attempts.unwrap_or(self.max_attempts).max(1);
        self.retention.max_rows = t.history_max_rows.unwrap_or(self.retention.max_rows);
        if let Some(days) = t.history_max_age_days {
            self.retention.max_age = seconds("history_max_age_days", days * 86_400.0)?;
        }
        Ok(())
    }

    /// How often the monitor looks for silent nodes: often enough to mark one offline
    /// within `offline_after`.
    pub fn check_interval(&self) -> Duration {
        (self.offline_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }
}

fn seconds(key: &str, secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{key} must be a positive number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_router_table() {
        let mut s = RouterSettings::default();
        s.apply_config_text(
            "default_backend = \"x\"\n[router]\nstrategy = \"least-loaded\"\n\
             offline_after_secs = 1.5\napi_keys = [\"k\"]\n",
        )
        .unwrap();
        assert_eq!(s.strategy, Strategy::LeastLoaded);
        assert_eq!(s.offline_after, Duration::from_millis(1500));
        assert_eq!(s.api_keys, vec!["k".to_string()]);
        assert!(s
            .apply_config_text("[router]\nstrategy = \"random\"\n")
            .is_err());
        assert!(s.apply_config_text("[router]\nbogus = 1\n").is_err());
    }
}
