//! The node side of the router: registers this node with a router and sends heartbeats
//! with its load until the returned future is dropped. Re-registers when the router
//! answers 404/401 to a heartbeat (it forgot the node: new database, removed) and keeps
//! retrying, with backoff, while the router is unreachable (e.g. restarting).
//!
//! The router issues a secret with the first registration of a node id; the agent sends it
//! with every later registration and heartbeat, and keeps it in memory and, when given a
//! [`NodeAgentConfig::secret_file`], on disk, so a restarted node keeps its id.

use super::{
    gpu::{GpuLoad, GpuProbe},
    types::{Heartbeat, RegisterReply, Registration, NODE_SECRET_HEADER},
};
use std::{path::PathBuf, sync::Mutex, time::Duration};
use sysinfo::{MemoryRefreshKind, RefreshKind, System};

/// Where and how to join.
#[derive(Debug, Clone)]
pub struct NodeAgentConfig {
    /// Router base URL, e.g. `http://10.0.0.1:11500`.
    pub router_url: String,
    pub join_token: String,
    /// This node's id (1-64 of `A-Z a-z 0-9 . _ -`); see [`NodeAgentConfig::new`].
    pub node_id: String,
    /// The URL the router should use to reach this node's API.
    pub advertise_url: String,
    /// Used until the router says otherwise in its registration reply.
    pub heartbeat_interval: Duration,
    pub version: String,
    pub backends: Vec<String>,
    pub devices: Vec<String>,
    /// Requests this node runs at once (0 = unknown).
    pub capacity: u32,
    /// The `nvidia-smi` that reports GPU load (default: the one on `PATH`); None: none.
    pub nvidia_smi: Option<PathBuf>,
    /// Where the node secret the router issued is kept across restarts (None: memory only,
    /// and a restarted node cannot take its id back until an admin removes it).
    pub secret_file: Option<PathBuf>,
}

impl NodeAgentConfig {
    /// A config whose node id is derived from the advertised address (`host-port`).
    pub fn new(router_url: &str, join_token: &str, advertise_url: &str) -> Self {
        Self {
            router_url: router_url.trim_end_matches('/').to_string(),
            join_token: join_token.to_string(),
            node_id: node_id_for(advertise_url),
            advertise_url: advertise_url.trim_end_matches('/').to_string(),
            heartbeat_interval: Duration::from_secs(10),
            version: env!("CARGO_PKG_VERSION").to_string(),
            backends: Vec::new(),
            devices: Vec::new(),
            capacity: 0,
            nvidia_smi: Some(PathBuf::from("nvidia-smi")),
            secret_file: None,
        }
    }
}

/// `http://127.0.0.1:8080` -> `127.0.0.1-8080`.
pub fn node_id_for(url: &str) -> String {
    let hostport = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    let id: String = hostport
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_matches('-')
        .chars()
        .take(64)
        .collect();
    if id.is_empty() {
        "node".to_string()
    } else {
        id
    }
}

/// What the server knows about its own load; the agent adds CPU and memory itself.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    pub active_requests: u32,
    pub queued_requests: u32,
    pub tokens_per_second: f32,
    pub models_available: Vec<String>,
    pub models_loaded: Vec<String>,
    pub gpu_percent: Option<f32>,
    /// The server's own CPU measure (e.g. its container's share), which wins over the
    /// machine's when given.
    pub cpu_percent: Option<f32>,
}

/// Registers, then heartbeats forever (cancel by dropping the future or aborting its task).
pub async fn run_node_agent(
    cfg: NodeAgentConfig,
    status: impl Fn() -> NodeStatus + Send + Sync + 'static,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            tracing::error!("node agent: cannot build an HTTP client: {err}; not joining");
            return;
        }
    };
    let sampler = Sampler::new(GpuProbe::new(cfg.nvidia_smi.clone()));
    let mut secret = Secret::load(cfg.secret_file.clone());
    let mut interval = cfg.heartbeat_interval;
    loop {
        interval = register_until_done(&client, &cfg, &status, &mut secret, interval).await;
        heartbeat_until_forgotten(&client, &cfg, &status, &sampler, &secret, interval).await;
    }
}

/// The node secret: in memory, and in its file when there is one.
struct Secret {
    value: Option<String>,
    file: Option<PathBuf>,
}

impl Secret {
    fn load(file: Option<PathBuf>) -> Self {
        let value = file
            .as_ref()
            .and_then(|path| match std::fs::read_to_string(path) {
                Ok(text) => Some(text.trim().to_string()).filter(|s| !s.is_empty()),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                Err(err) => {
                    tracing::warn!("node agent: cannot read {}: {err}", path.display());
                    None
                }
            });
        Self { value, file }
    }

    fn set(&mut self, secret: String) {
        if let Some(path) = &self.file {
            if let Err(err) = write_private(path, &secret) {
                tracing::warn!(
                    "node agent: cannot keep the node secret in {}: {err}; a restart of this \
                     node will need a new --node-id or an admin to remove the old one",
                    path.display()
                );
            }
        }
        self.value = Some(secret);
    }

    fn add_to(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.value {
            Some(secret) => req.header(NODE_SECRET_HEADER, secret),
            None => req,
        }
    }
}

/// Writes `text` to `path`, readable by this user only (it lets its holder speak as the node).
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

async fn register_until_done(
    client: &reqwest::Client,
    cfg: &NodeAgentConfig,
    status: &impl Fn() -> NodeStatus,
    secret: &mut Secret,
    interval: Duration,
) -> Duration {
    let mut backoff = Duration::from_millis(200);
    loop {
        match register(client, cfg, &status(), secret).await {
            Ok(reply) => {
                tracing::info!("node agent: joined {} as {}", cfg.router_url, reply.node_id);
                if let Some(issued) = reply.node_secret {
                    secret.set(issued);
                }
                return Duration::from_millis(reply.heartbeat_interval_ms.max(50));
            }
            Err(Fatal(message)) => tracing::error!("node agent: {message}"),
            Err(Retry(message)) => tracing::warn!("node agent: {message}; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(interval.max(Duration::from_secs(1)));
    }
}

/// Returns when the router no longer knows this node.
async fn heartbeat_until_forgotten(
    client: &reqwest::Client,
    cfg: &NodeAgentConfig,
    status: &impl Fn() -> NodeStatus,
    sampler: &Sampler,
    secret: &Secret,
    interval: Duration,
) {
    let url = format!("{}/api/nodes/{}/heartbeat", cfg.router_url, cfg.node_id);
    loop {
        tokio::time::sleep(interval).await;
        let gpu = sampler.gpu.sample().await;
        let beat = sampler.heartbeat(status(), gpu);
        let body = match serde_json::to_vec(&beat) {
            Ok(body) => body,
            Err(err) => {
                tracing::error!("node agent: cannot encode a heartbeat: {err}");
                continue;
            }
        };
        let sent = secret
            .add_to(client.post(&url))
            .bearer_auth(&cfg.join_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {}
            // 403: the router no longer takes this node's secret (the id was removed and
            // claimed again); registering says why.
            Ok(resp) if matches!(resp.status().as_u16(), 401 | 403 | 404) => {
                tracing::warn!(
                    "node agent: router answered {}; registering again",
                    resp.status()
                );
                return;
            }
            Ok(resp) => tracing::warn!("node agent: heartbeat answered {}", resp.status()),
            // Router down or restarting: keep the same id; the next beat may get through.
            Err(err) => tracing::debug!("node agent: heartbeat failed: {err}"),
        }
    }
}

enum Failure {
    /// Wrong token or a rejected registration: retrying will not help until the
    /// operator fixes it, but the router may be reconfigured, so we still retry slowly.
    Fatal(String),
    Retry(String),
}
use Failure::{Fatal, Retry};

async fn register(
    client: &reqwest::Client,
    cfg: &NodeAgentConfig,
    status: &NodeStatus,
    secret: &Secret,
) -> Result<RegisterReply, Failure> {
    let registration = Registration {
        node_id: cfg.node_id.clone(),
        url: cfg.advertise_url.clone(),
        version: cfg.version.clone(),
        backends: cfg.backends.clone(),
        devices: cfg.devices.clone(),
        models_available: status.models_available.clone(),
        models_loaded: status.models_loaded.clone(),
        capacity: cfg.capacity,
    };
    let body = serde_json::to_vec(&registration).map_err(|e| Fatal(e.to_string()))?;
    let resp = secret
        .add_to(client.post(format!("{}/api/nodes/register", cfg.router_url)))
        .bearer_auth(&cfg.join_token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|err| Retry(format!("cannot reach router {}: {err}", cfg.router_url)))?;
    let code = resp.status();
    let bytes = resp.bytes().await.map_err(|e| Retry(e.to_string()))?;
    if !code.is_success() {
        let text = String::from_utf8_lossy(&bytes);
        let message = format!("router refused registration ({code}): {text}");
        return Err(if code.is_client_error() {
            Fatal(message)
        } else {
            Retry(message)
        });
    }
    serde_json::from_slice(&bytes).map_err(|err| Retry(format!("bad registration reply: {err}")))
}

/// CPU, memory and GPU load of this machine.
struct Sampler {
    system: Mutex<System>,
    gpu: GpuProbe,
}

impl Sampler {
    fn new(gpu: GpuProbe) -> Self {
        let kind = RefreshKind::nothing()
            .with_cpu(sysinfo::CpuRefreshKind::nothing().with_cpu_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        Self {
            system: Mutex::new(System::new_with_specifics(kind)),
            gpu,
        }
    }

    /// `gpu`: what nvidia-smi reported; a GPU percent from the server itself wins.
    fn heartbeat(&self, status: NodeStatus, gpu: Option<GpuLoad>) -> Heartbeat {
        let mut system = self.system.lock().unwrap_or_else(|p| p.into_inner());
        // CPU use is measured between two refreshes: the previous heartbeat and now.
        system.refresh_cpu_usage();
        system.refresh_memory();
        Heartbeat {
            cpu_percent: status
                .cpu_percent
                .unwrap_or_else(|| system.global_cpu_usage()),
            memory_used_bytes: system.used_memory(),
            memory_total_bytes: system.total_memory(),
            gpu_percent: status.gpu_percent.or(gpu.and_then(|g| g.percent)),
            gpu_memory_used_bytes: gpu.map(|g| g.memory_used_bytes),
            gpu_memory_total_bytes: gpu.map(|g| g.memory_total_bytes),
            active_requests: status.active_requests,
            queued_requests: status.queued_requests,
            tokens_per_second: status.tokens_per_second,
            models_loaded: status.models_loaded,
            models_available: Some(status.models_available),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_secret_in_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets").join("node");
        let mut secret = Secret::load(Some(path.clone()));
        assert_eq!(secret.value, None);
        secret.set("s3cret".into());
        assert_eq!(
            Secret::load(Some(path.clone())).value.as_deref(),
            Some("s3cret")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "secret file readable by others: {mode:o}");
        }
    }

    #[test]
    fn derives_node_ids() {
        assert_eq!(node_id_for("http://127.0.0.1:8080/"), "127.0.0.1-8080");
        assert_eq!(node_id_for("https://[::1]:9"), "1--9");
        assert_eq!(node_id_for(""), "node");
    }
}
