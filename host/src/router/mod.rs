//! `llmlocal router`: many `llmlocal serve` nodes behind one OpenAI/Ollama endpoint.
//!
//! Nodes register with a join token ([`node_agent`] is their side) and send heartbeats
//! with their load; a monitor marks silent nodes offline and probes their `/health`.
//! Requests to `/v1/*` and `/api/*` go to a healthy node serving the requested model,
//! chosen by [`Strategy`], with failover before the first response byte ([`proxy`]).
//! Nodes and request history live in SQLite ([`store`]); `/dashboard` shows them live.

mod access;
mod api;
mod auth;
mod dashboard;
mod error;
mod gpu;
mod history;
mod models;
mod monitor;
pub mod node_agent;
mod nodes;
mod proxy;
mod resolve;
mod series;
pub mod serve_join;
mod settings;
mod store;
mod stream;
pub mod types;
mod validate;

pub use error::RouterError;
pub use settings::{RouterSettings, Strategy};
pub use store::{Retention, Store};

use axum::{
    routing::{delete, get, post},
    serve::ListenerExt as _,
    Router,
};
use history::History;
use nodes::{Change, Nodes};
use std::{future::Future, sync::Arc};
use tokio::net::TcpListener;

/// Worker threads of the router's async runtime when none are configured: one per core, at
/// most 4.
///
/// A proxied request costs the router ~120-220 us of CPU, most of it waking tasks; with one
/// tokio worker per core, each wake-up may also rouse an idle worker, so more workers mean more
/// cross-core hand-offs per request. On a 16-core host (router_bench, dev build) the p99 the
/// router added for one client was 1.2-1.8 ms with 16 workers and 0.06-0.45 ms with 4; at 100
/// clients and 2000 req/s 1.7-1.9 ms vs -0.4-1.5 ms. The price is peak throughput: as fast as
/// 100 clients can go, 50-52k req/s with 4 workers vs 53-73k with 16, far above what nodes
/// that generate text can serve.
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_DEFAULT_WORKERS)
}

/// See [`default_worker_threads`].
const MAX_DEFAULT_WORKERS: usize = 4;

/// Settings key of the generated join token.
const JOIN_TOKEN_KEY: &str = "join_token";

/// What every handler shares.
#[derive(Clone)]
pub struct RouterState {
    inner: Arc<Inner>,
}

pub struct Inner {
    settings: RouterSettings,
    join_token: String,
    nodes: Nodes,
    store: Store,
    history: History,
    client: reqwest::Client,
    /// `Authorization` for requests to nodes (`--node-key`).
    node_auth: Option<axum::http::HeaderValue>,
    /// Cancelled when the server shuts down: ends the dashboards' sockets, which graceful
    /// shutdown does not wait for (upgraded connections are not tracked).
    closing: tokio_util::sync::CancellationToken,
}

impl std::ops::Deref for RouterState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// The join token in use and whether it was just generated (print it once).
#[derive(Debug, Clone)]
pub struct JoinToken {
    pub token: String,
    pub generated: bool,
}

impl RouterState {
    /// Opens the database, restores nodes, settles the join token.
    pub fn open(settings: RouterSettings) -> Result<(Self, JoinToken), RouterError> {
        let store = match &settings.db_path {
            Some(path) => Store::open(path)?,
            None => Store::in_memory()?,
        };
        let join = join_token(&settings, &store)?;
        let nodes = Nodes::default();
        nodes.restore(restorable(store.nodes()?, &settings));
        let history = History::start(store.clone(), settings.retention);
        let client = upstream_client(&settings)?;
        let node_auth = node_auth(&settings)?;
        let inner = Inner {
            settings,
            join_token: join.token.clone(),
            nodes,
            store,
            history,
            client,
            node_auth,
            closing: tokio_util::sync::CancellationToken::new(),
        };
        Ok((
            Self {
                inner: Arc::new(inner),
            },
            join,
        ))
    }

    /// Saves a node status change (rare: registration, online/offline, drain).
    async fn persist(&self, change: Change) {
        let stored = change.stored;
        tracing::info!(
            "router: node {} is {}{}",
            stored.registration.node_id,
            stored.status.as_str(),
            if stored.drained { " (drained)" } else { "" }
        );
        let id = stored.registration.node_id.clone();
        let saved = self
            .db(move |store| store.upsert_node(&stored).map_err(RouterError::from))
            .await;
        if let Err(err) = saved {
            tracing::warn!("router db: cannot save node {id}: {err}");
        }
    }

    /// Runs `work` on the database off the async workers: the history writer holds the
    /// connection for whole batches (and SQLite checkpoints fsync), and a worker waiting
    /// on that lock would stall every request scheduled on it.
    async fn db<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, RouterError> + Send + 'static,
    ) -> Result<T, RouterError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|err| RouterError::Internal(format!("database task failed: {err}")))?
    }

    pub fn settings(&self) -> &RouterSettings {
        &self.settings
    }
}

/// Stored nodes whose URL today's host policy still allows (a row written by an older
/// router, or before `--node-allow-hosts` changed, may not be).
fn restorable(stored: Vec<store::StoredNode>, settings: &RouterSettings) -> Vec<store::StoredNode> {
    stored
        .into_iter()
        .filter(
            |node| match validate::advertised_url(&node.url, &settings.node_allow_hosts) {
                Ok(_) => true,
                Err(err) => {
                    let id = &node.registration.node_id;
                    tracing::warn!("router: not restoring node {id}: {err}");
                    false
                }
            },
        )
        .collect()
}

fn node_auth(settings: &RouterSettings) -> Result<Option<axum::http::HeaderValue>, RouterError> {
    let Some(key) = &settings.node_key else {
        return Ok(None);
    };
    let mut value = axum::http::HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
        RouterError::Internal("--node-key has characters a header cannot carry".into())
    })?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// The client for requests to nodes: one shared connection pool, no Nagle delay, and
/// names resolved without the addresses nodes may not use.
fn upstream_client(settings: &RouterSettings) -> Result<reqwest::Client, RouterError> {
    reqwest::Client::builder()
        .dns_resolver(std::sync::Arc::new(resolve::GuardedResolver))
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(512)
        .http1_only()
        .build()
        .map_err(|err| RouterError::Internal(format!("cannot build the HTTP client: {err}")))
}

/// The explicit token, else the stored one, else a new random one (stored).
fn join_token(settings: &RouterSettings, store: &Store) -> Result<JoinToken, RouterError> {
    if let Some(token) = settings.join_token.clone().filter(|t| !t.is_empty()) {
        return Ok(JoinToken {
            token,
            generated: false,
        });
    }
    if let Some(token) = store.setting(JOIN_TOKEN_KEY)? {
        return Ok(JoinToken {
            token,
            generated: false,
        });
    }
    let token = auth::generate_token();
    store.set_setting(JOIN_TOKEN_KEY, &token)?;
    Ok(JoinToken {
        token,
        generated: true,
    })
}

/// The router's routes; anything else under `/v1/` and `/api/` is proxied.
pub fn app(state: RouterState) -> Router {
    Router::new()
        .route("/api/nodes/register", post(api::register))
        .route("/api/nodes/{id}/heartbeat", post(api::heartbeat))
        .route("/api/nodes", get(api::list_nodes))
        .route(
            "/api/nodes/{id}",
            delete(api::remove_node).get(api::get_node),
        )
        .route(
            "/api/nodes/{id}/drain",
            post(api::drain).delete(api::undrain),
        )
        .route("/admin/requests", get(api::requests))
        .route("/v1/models", get(models::openai_models))
        .route("/api/tags", get(models::ollama_tags))
        .route("/health", get(api::health))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/ws", get(dashboard::socket))
        .fallback(api::proxy)
        .with_state(state)
}

/// Serves until `shutdown` completes; the monitor runs alongside.
pub async fn serve(
    listener: TcpListener,
    state: RouterState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let monitor = tokio::spawn(monitor::run(state.clone()));
    let closing = state.closing.clone();
    let shutdown = async move {
        shutdown.await;
        closing.cancel();
    };
    // Small responses must not wait for the client's ACK of the previous packet (Nagle).
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!("router: cannot set TCP_NODELAY: {err}");
        }
    });
    let result = axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await;
    monitor.abort();
    result
}
