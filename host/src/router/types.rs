//! The wire format between nodes and the router (JSON), shared by the router and the node
//! agent so both sides agree by construction.

use serde::{Deserialize, Serialize};

/// `POST /api/nodes/register`: who the node is and what it can serve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Stable id chosen by the node: 1-64 of `A-Z a-z 0-9 . _ -`.
    pub node_id: String,
    /// Base URL the router uses to reach the node (`http(s)://host:port`).
    pub url: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub backends: Vec<String>,
    #[serde(default)]
    pub devices: Vec<String>,
    /// Model names requests may use on this node.
    #[serde(default)]
    pub models_available: Vec<String>,
    #[serde(default)]
    pub models_loaded: Vec<String>,
    /// Requests the node runs at once (0 = unknown).
    #[serde(default)]
    pub capacity: u32,
}

/// The header that carries a node's secret on registrations and heartbeats (the join
/// token stays in `Authorization`).
pub const NODE_SECRET_HEADER: &str = "x-llmlocal-node-secret";

/// What the router answers to a registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterReply {
    pub node_id: String,
    /// How often the router expects heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Issued when the router first sees this node id: the node must send it with every
    /// later registration and heartbeat ([`NODE_SECRET_HEADER`]); nobody else can take the
    /// id over. Absent when the node already proved it holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_secret: Option<String>,
}

/// `POST /api/nodes/{id}/heartbeat`: the node's current load.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// CPU use over all cores, 0-100.
    #[serde(default)]
    pub cpu_percent: f32,
    #[serde(default)]
    pub memory_used_bytes: u64,
    #[serde(default)]
    pub memory_total_bytes: u64,
    /// GPU use 0-100 (mean over the node's NVIDIA GPUs), when the node can read it.
    #[serde(default)]
    pub gpu_percent: Option<f32>,
    /// GPU memory in use, summed over the node's GPUs (None: no GPU it can read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_total_bytes: Option<u64>,
    #[serde(default)]
    pub active_requests: u32,
    #[serde(default)]
    pub queued_requests: u32,
    /// Generated tokens per second over the last few seconds.
    #[serde(default)]
    pub tokens_per_second: f32,
    #[serde(default)]
    pub models_loaded: Vec<String>,
    /// When present, replaces the registered list (models added at run time).
    #[serde(default)]
    pub models_available: Option<Vec<String>>,
}

/// A node as the admin API and the dashboard show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub node_id: String,
    pub url: String,
    pub status: NodeState,
    pub version: String,
    pub backends: Vec<String>,
    pub devices: Vec<String>,
    pub models_available: Vec<String>,
    pub models_loaded: Vec<String>,
    pub capacity: u32,
    pub load: Heartbeat,
    /// Requests the router has in flight on this node now.
    pub inflight: u32,
    /// Milliseconds since the router last heard from the node (heartbeat or probe).
    pub last_seen_ms_ago: Option<u64>,
    pub registered_at_ms: i64,
}

/// A node's health as the router sees it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Online,
    Offline,
    /// Still healthy, but takes no new requests (admin drain).
    Draining,
    /// Online, but a request there timed out: skipped until its next heartbeat or the
    /// end of a cool-down (`offline_after`). Shown, never stored.
    Suspect,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Online => "online",
            NodeState::Offline => "offline",
            NodeState::Draining => "draining",
            NodeState::Suspect => "suspect",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "online" => Some(NodeState::Online),
            "offline" => Some(NodeState::Offline),
            "draining" => Some(NodeState::Draining),
            "suspect" => Some(NodeState::Suspect),
            _ => None,
        }
    }
}

/// One proxied request, as kept in the history.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Unix time in milliseconds when the request arrived.
    pub ts_ms: i64,
    pub method: String,
    pub path: String,
    pub model: Option<String>,
    pub node_id: Option<String>,
    /// HTTP status sent to the client (after any failover).
    pub status: u16,
    /// Time to the end of the response (the last byte of a stream).
    pub latency_ms: f64,
    /// Time to the response headers.
    pub ttfb_ms: f64,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    /// Nodes tried before the one that answered.
    pub attempts: u32,
    pub error: Option<String>,
}
