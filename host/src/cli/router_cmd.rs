//! `llmlocal router`: put many `llmlocal serve --join` nodes behind one endpoint.

use crate::{
    config::Config,
    router::{self, RouterSettings, RouterState, Strategy},
};
use anyhow::Context as _;
use std::{io::Write as _, net::SocketAddr, path::PathBuf, time::Duration};

#[derive(Debug, clap::Args)]
pub struct RouterArgs {
    /// Address to listen on (default: the config's [router] bind, else 127.0.0.1:11500).
    #[arg(long, env = "LLMLOCAL_ROUTER_BIND", value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// SQLite database for nodes and request history (default: <data dir>/llmlocal/router.sqlite).
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// How to pick a node: round-robin, least-loaded or prefer-loaded.
    #[arg(long, value_name = "STRATEGY")]
    pub strategy: Option<Strategy>,
    /// Token nodes must present to join (default: the stored one, else a new one, printed once).
    #[arg(
        long,
        env = "LLMLOCAL_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub join_token: Option<String>,
    /// Key for the admin API, the dashboard and the mutating model routes (pull, delete,
    /// copy, create...) (`Authorization: Bearer KEY`); all of them are refused without one.
    #[arg(
        long,
        env = "LLMLOCAL_ROUTER_ADMIN_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub admin_key: Option<String>,
    /// A browser origin besides the router's own that may open the dashboard's live feed,
    /// e.g. `https://ops.example.com` (repeatable).
    #[arg(long = "dashboard-origin", value_name = "ORIGIN")]
    pub dashboard_origins: Vec<String>,
    /// Key the router sends to nodes (`Authorization: Bearer KEY`), for nodes started with
    /// an API key; clients' own credentials are never passed on to nodes.
    #[arg(
        long,
        env = "LLMLOCAL_ROUTER_NODE_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub node_key: Option<String>,
    /// The only hosts nodes may advertise (names or IPs as written in their URLs;
    /// comma-separated or repeated). Default: any host but link-local, multicast and
    /// unspecified addresses, which are always refused.
    #[arg(long = "node-allow-hosts", value_name = "HOST", value_delimiter = ',')]
    pub node_allow_hosts: Vec<String>,
    /// Key clients must send for /v1/* and /api/* (repeatable; none: open).
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_keys: Vec<String>,
    /// Seconds without a heartbeat before a node is offline (default 30).
    #[arg(long, value_name = "SECS")]
    pub offline_after: Option<f64>,
    /// Seconds to wait for a node's response headers before trying another node (default
    /// 300; a node that stops heartbeating is given up on sooner, at --offline-after).
    #[arg(long, value_name = "SECS")]
    pub first_byte_timeout: Option<f64>,
    /// Seconds a response may stay silent mid-body before the client gets an error and the
    /// connection to the node is dropped (default 300).
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<f64>,
    /// Heartbeat period asked of nodes, in seconds (default 10).
    #[arg(long, value_name = "SECS")]
    pub heartbeat_interval: Option<f64>,
    /// Worker threads of the router (default: one per core, at most 4: fewer workers wake
    /// each other less, which keeps the latency the router adds low).
    #[arg(long, env = "LLMLOCAL_ROUTER_THREADS", value_name = "N")]
    pub threads: Option<usize>,
}

pub fn run(args: RouterArgs, config: &Config) -> anyhow::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(router::default_worker_threads)
        .max(1);
    let settings = settings(args, config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(settings))
}

fn settings(args: RouterArgs, config: &Config) -> anyhow::Result<RouterSettings> {
    let mut settings = RouterSettings::default();
    if let Some(path) = &config.path {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        settings
            .apply_config_text(&text)
            .map_err(|err| anyhow::anyhow!("invalid [router] in {}: {err}", path.display()))?;
    }
    settings.bind = args.bind.unwrap_or(settings.bind);
    settings.strategy = args.strategy.unwrap_or(settings.strategy);
    settings.join_token = args.join_token.or(settings.join_token);
    settings.admin_key = args.admin_key.or(settings.admin_key);
    settings.api_keys.extend(args.api_keys);
    settings.node_key = args.node_key.or(settings.node_key);
    settings.node_allow_hosts.extend(args.node_allow_hosts);
    settings.dashboard_origins.extend(
        args.dashboard_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_string()),
    );
    if let Some(secs) = args.offline_after {
        settings.offline_after = positive("--offline-after", secs)?;
    }
    if let Some(secs) = args.first_byte_timeout {
        settings.first_byte_timeout = positive("--first-byte-timeout", secs)?;
    }
    if let Some(secs) = args.idle_timeout {
        settings.idle_timeout = positive("--idle-timeout", secs)?;
    }
    if let Some(secs) = args.heartbeat_interval {
        settings.heartbeat_interval = positive("--heartbeat-interval", secs)?;
    }
    let db = match args.db.or(settings.db_path.take()) {
        Some(path) => path,
        None => dirs::data_dir()
            .context("no data directory on this system: pass --db PATH")?
            .join("llmlocal")
            .join("router.sqlite"),
    };
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    settings.db_path = Some(db);
    Ok(settings)
}

fn positive(flag: &str, secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds"))
}

async fn serve(settings: RouterSettings) -> anyhow::Result<()> {
    let db = settings.db_path.clone().unwrap_or_default();
    let (state, join) = RouterState::open(settings)
        .with_context(|| format!("cannot open the router database {}", db.display()))?;
    let bind = state.settings().bind;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let address = listener.local_addr()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "llmlocal router listening on http://{address}")?;
    if join.generated {
        // Printed once: later starts reuse the stored token without showing it.
        writeln!(
            stdout,
            "join token (new, stored in {}): {}",
            db.display(),
            join.token
        )?;
    }
    stdout.flush()?;
    let settings = state.settings();
    eprintln!(
        "strategy: {}; database: {}; admin API: {}; client keys: {}; dashboard: http://{address}/dashboard",
        settings.strategy,
        db.display(),
        if settings.admin_key.is_some() { "on" } else { "off (no --admin-key)" },
        if settings.api_keys.is_empty() { "off" } else { "on" },
    );
    router::serve(listener, state, shutdown_signal()).await?;
    eprintln!("llmlocal router: stopped");
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
