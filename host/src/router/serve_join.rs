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
    cfg.backends = engine.registry().backend_names();
    cfg.capacity = engine.settings().parallel.unwrap_or(0);
    tokio::spawn(run_node_agent(cfg, move || engine_status(&engine)))
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
