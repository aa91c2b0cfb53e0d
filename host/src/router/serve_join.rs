//! Glue for `llmlocal serve --join`: the node agent fed with the engine's own numbers.

use super::node_agent::{node_id_for, run_node_agent, NodeAgentConfig, NodeStatus};
use crate::engine::Engine;
use std::net::SocketAddr;

/// What `serve` passes from its flags.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub router_url: String,
    pub join_token: String,
    /// The URL the router reaches this node at (default: `http://<bound address>`).
    pub advertise: Option<String>,
    pub node_id: Option<String>,
}

/// The URL to advertise for a server bound to `bound` when none was given: the bound
/// address, with an unspecified IP (0.0.0.0, ::) replaced by loopback.
pub fn default_advertise(bound: SocketAddr) -> String {
    let mut addr = bound;
    if addr.ip().is_unspecified() {
        tracing::warn!(
            "serving on {bound}: advertising loopback to the router; pass --advertise URL \
             for a router on another machine"
        );
        addr.set_ip(if bound.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("http://{addr}")
}

/// Starts the agent on the current Tokio runtime; abort the handle to leave.
pub fn spawn_engine_agent(
    options: JoinOptions,
    bound: SocketAddr,
    engine: Engine,
) -> tokio::task::JoinHandle<()> {
    let advertise = options
        .advertise
        .clone()
        .unwrap_or_else(|| default_advertise(bound));
    let mut cfg = NodeAgentConfig::new(&options.router_url, &options.join_token, &advertise);
    if let Some(id) = options.node_id {
        cfg.node_id = id;
    }
    if cfg.node_id.is_empty() {
        cfg.node_id = node_id_for(&advertise);
    }
    cfg.secret_file = secret_file(&options.router_url, &cfg.node_id);
    cfg.backends = engine.registry().backend_names();
    cfg.capacity = engine.settings().parallel.unwrap_or(0);
    tokio::spawn(run_node_agent(cfg, move || engine_status(&engine)))
}

/// `<data dir>/llmlocal/node-secrets/<router>/<node id>`: the secret this node id holds
/// at that router, kept so a restarted `serve --join` takes its id back. None when the
/// system has no data directory (the secret then lives in memory only).
pub fn secret_file(router_url: &str, node_id: &str) -> Option<std::path::PathBuf> {
    let dir = dirs::data_dir()?;
    Some(
        dir.join("llmlocal")
            .join("node-secrets")
            .join(file_name(router_url))
            .join(file_name(node_id)),
    )
}

/// `text` as one safe path component: `A-Z a-z 0-9 . _ -` kept, anything else `_`, and
/// never `.` or `..`.
fn file_name(text: &str) -> String {
    let name: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with('.') || name.is_empty() {
        format!("_{name}")
    } else {
        name
    }
}

/// The engine's load: running generations, waiting requests, models known and loaded.
pub fn engine_status(engine: &Engine) -> NodeStatus {
    let loaded = engine.loaded();
    let last = engine.last_stats();
    // The last finished generation's rate: a cheap stand-in for "recent tokens/s".
    let tokens_per_second = last.filter(|c| c.total_ms > 0.0).map_or(0.0, |c| {
        (c.completion_tokens as f64 * 1000.0 / c.total_ms) as f32
    });
    NodeStatus {
        active_requests: engine.metrics().active_generations.get().max(0) as u32,
        queued_requests: loaded.iter().map(|m| m.queued as u32).sum(),
        tokens_per_second,
        models_available: engine.models().into_keys().collect(),
        models_loaded: loaded.into_iter().map(|m| m.name).collect(),
        gpu_percent: None,
        cpu_percent: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_stay_in_their_folder() {
        assert_eq!(file_name("http://10.0.0.1:11500"), "http___10.0.0.1_11500");
        assert_eq!(file_name(".."), "_..");
        assert_eq!(file_name("a/../b"), "a_.._b");
        assert_eq!(file_name(""), "_");
    }
}
