//! The live node table: registration, heartbeats, status changes and node choice.

use super::{
    auth,
    error::RouterError,
    settings::Strategy,
    store::StoredNode,
    types::{Heartbeat, NodeState, NodeView, Registration},
};
use axum::http::HeaderValue;
use reqwest::Url;
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU32, AtomicUsize, Ordering},
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
    time::Instant,
};
use tokio_util::sync::CancellationToken;

/// Where a node is reached, prepared once per registration so that a request copies a
/// pointer instead of cloning and re-parsing strings.
#[derive(Debug)]
pub struct Endpoint {
    pub node_id: String,
    /// The advertised base URL, parsed.
    base: Url,
    /// The base URL's path without its trailing `/` (`""` for none): request paths go after it.
    prefix: String,
    /// The node id as the `x-llmlocal-node` response header (None: not a valid header value).
    pub header: Option<HeaderValue>,
}

impl Endpoint {
    /// None when `url` does not parse (registration validates it, so only a stored row
    /// edited by hand can): such a node is listed but never picked.
    fn new(node_id: &str, url: &str) -> Option<Arc<Self>> {
        let base = match Url::parse(url) {
            Ok(base) => base,
            Err(err) => {
                tracing::warn!("router: node {node_id} has an unusable url {url:?}: {err}");
                return None;
            }
        };
        Some(Arc::new(Self {
            node_id: node_id.to_string(),
            prefix: base.path().trim_end_matches('/').to_string(),
            base,
            header: HeaderValue::from_str(node_id).ok(),
        }))
    }

    /// The node's URL for a request's path and query.
    pub fn url_for(&self, path: &str, query: Option<&str>) -> Url {
        let mut url = self.base.clone();
        if self.prefix.is_empty() {
            url.set_path(path);
        } else {
            url.set_path(&format!("{}{path}", self.prefix));
        }
        url.set_query(query);
        url
    }
}

/// One node as the router tracks it.
#[derive(Debug, Clone)]
struct Node {
    registration: Registration,
    url: String,
    endpoint: Option<Arc<Endpoint>>,
    status: NodeState,
    drained: bool,
    load: Heartbeat,
    last_seen: Option<Instant>,
    registered_at_ms: i64,
    /// Requests the router has in flight there (its own count, fresher than heartbeats).
    inflight: Arc<AtomicU32>,
    /// Hash of the secret that owns this id (None: stored before secrets; unclaimed).
    secret_hash: Option<String>,
    /// Skipped by the balancer until then (a request there timed out), or until the node
    /// is heard from again.
    suspect_until: Option<Instant>,
    /// Cancelled when the node goes offline: requests waiting on it give up at once (fail
    /// over, or end their stream) instead of waiting out their timeouts. A fresh one
    /// comes with each return online.
    down: CancellationToken,
}

impl Node {
    fn serves(&self, model: &str) -> bool {
        self.registration
            .models_available
            .iter()
            .any(|m| m == model)
            || self.load.models_loaded.iter().any(|m| m == model)
    }

    fn has_loaded(&self, model: &str) -> bool {
        self.load.models_loaded.iter().any(|m| m == model)
    }

    fn takes_requests(&self) -> bool {
        self.status == NodeState::Online
            && !self.drained
            && self.endpoint.is_some()
            && !self.is_suspect()
    }

    fn is_suspect(&self) -> bool {
        self.suspect_until.is_some_and(|t| Instant::now() < t)
    }

    /// Lower is better: requests waiting or running, then CPU.
    fn load_key(&self) -> (u32, u32) {
        let reported = self.load.active_requests + self.load.queued_requests;
        let ours = self.inflight.load(Ordering::Relaxed);
        // The router's own count is exact for its traffic; the report adds other clients'.
        let requests = ours.max(reported);
        // CPU in coarse steps: small differences between samples are noise, and treating
        // them as ties lets the rotation spread requests over equally idle nodes.
        (
            requests,
            (self.load.cpu_percent.clamp(0.0, 100.0) / 20.0) as u32,
        )
    }

    fn view(&self) -> NodeView {
        let status = match (self.status, self.drained) {
            (NodeState::Online, true) => NodeState::Draining,
            (NodeState::Online, false) if self.is_suspect() => NodeState::Suspect,
            (status, _) => status,
        };
        NodeView {
            node_id: self.registration.node_id.clone(),
            url: self.url.clone(),
            status,
            version: self.registration.version.clone(),
            backends: self.registration.backends.clone(),
            devices: self.registration.devices.clone(),
            models_available: self.registration.models_available.clone(),
            models_loaded: self.load.models_loaded.clone(),
            capacity: self.registration.capacity,
            load: self.load.clone(),
            inflight: self.inflight.load(Ordering::Relaxed),
            last_seen_ms_ago: self.last_seen.map(|t| t.elapsed().as_millis() as u64),
            registered_at_ms: self.registered_at_ms,
        }
    }

    fn stored(&self, now_ms: i64) -> StoredNode {
        StoredNode {
            registration: self.registration.clone(),
            url: self.url.clone(),
            status: self.status,
            drained: self.drained,
            registered_at_ms: self.registered_at_ms,
            last_seen_ms: self.last_seen.map(|_| now_ms),
            secret_hash: self.secret_hash.clone(),
        }
    }
}

/// A node picked for a request: where to send it and the in-flight counter to hold.
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoint: Arc<Endpoint>,
    pub inflight: Arc<AtomicU32>,
    /// Cancelled when the node goes offline.
    pub down: CancellationToken,
}

/// What a model lookup found.
pub enum Pick {
    /// Healthy nodes, best first.
    Nodes(Vec<Target>),
    /// Some node knows the model but none can take requests now.
    NoneHealthy,
    /// No registered node lists the model.
    UnknownModel,
}

/// A status change worth persisting and logging.
#[derive(Debug, Clone)]
pub struct Change {
    pub stored: StoredNode,
}

#[derive(Default)]
pub struct Nodes {
    map: RwLock<BTreeMap<String, Node>>,
    next: AtomicUsize,
}

impl Nodes {
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, Node>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Node>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads nodes from the database after a restart: offline until heard from.
    pub fn restore(&self, stored: Vec<StoredNode>) {
        let mut map = self.write();
        for s in stored {
            let load = Heartbeat {
                models_loaded: s.registration.models_loaded.clone(),
                ..Heartbeat::default()
            };
            map.insert(
                s.registration.node_id.clone(),
                Node {
                    endpoint: Endpoint::new(&s.registration.node_id, &s.url),
                    url: s.url,
                    status: NodeState::Offline,
                    drained: s.drained,
                    load,
                    last_seen: None,
                    registered_at_ms: s.registered_at_ms,
                    inflight: Arc::default(),
                    secret_hash: s.secret_hash,
                    suspect_until: None,
                    down: cancelled(),
                    registration: s.registration,
                },
            );
        }
    }

    /// Adds or refreshes a node; it is online from now on (a drain survives re-registering).
    ///
    /// A known id needs the secret issued when it was first registered (`secret`), so a
    /// join-token holder cannot point another node's id at its own URL. Returns the change
    /// and, for a new (or unclaimed) id, the secret to hand to the node.
    pub fn register(
        &self,
        registration: Registration,
        url: String,
        secret: Option<&str>,
        now_ms: i64,
    ) -> Result<(Change, Option<String>), RouterError> {
        let mut map = self.write();
        let id = registration.node_id.clone();
        let owned = map.get(&id).and_then(|n| n.secret_hash.as_deref());
        if let Some(hash) = owned {
            if !secret.is_some_and(|s| auth::secret_matches_hash(s, hash)) {
                return Err(RouterError::NodeSecret(id));
            }
        }
        let issued = owned.is_none().then(auth::generate_token);
        let load = Heartbeat {
            models_loaded: registration.models_loaded.clone(),
            ..Heartbeat::default()
        };
        let endpoint = Endpoint::new(&id, &url);
        let mut node = match map.remove(&id) {
            Some(old) => Node {
                registration,
                endpoint,
                url,
                status: NodeState::Online,
                load,
                last_seen: Some(Instant::now()),
                suspect_until: None,
                down: alive(old.down),
                ..old
            },
            None => Node {
                registration,
                endpoint,
                url,
                status: NodeState::Online,
                drained: false,
                load,
                last_seen: Some(Instant::now()),
                registered_at_ms: now_ms,
                inflight: Arc::default(),
                secret_hash: None,
                suspect_until: None,
                down: CancellationToken::new(),
            },
        };
        if let Some(secret) = &issued {
            node.secret_hash = Some(auth::hash_secret(secret));
        }
        let change = Change {
            stored: node.stored(now_ms),
        };
        map.insert(id, node);
        Ok((change, issued))
    }

    /// Records a heartbeat sent with the node's `secret`. `Ok(Some(change))`: it came back
    /// online. An unknown or unclaimed id is an error the agent answers by registering.
    pub fn heartbeat(
        &self,
        id: &str,
        beat: Heartbeat,
        secret: Option<&str>,
        now_ms: i64,
    ) -> Result<Option<Change>, RouterError> {
        let mut map = self.write();
        let node = map
            .get_mut(id)
            .ok_or_else(|| RouterError::UnknownNode(id.to_string()))?;
        let Some(hash) = node.secret_hash.as_deref() else {
            return Err(RouterError::NodeUnclaimed(id.to_string()));
        };
        if !secret.is_some_and(|s| auth::secret_matches_hash(s, hash)) {
            return Err(RouterError::NodeSecret(id.to_string()));
        }
        if let Some(models) = &beat.models_available {
            node.registration.models_available = models.clone();
        }
        node.load = beat;
        Ok(mark_seen(node, now_ms))
    }

    /// A successful `/health` probe counts as hearing from the node.
    pub fn probe_ok(&self, id: &str, now_ms: i64) -> Option<Change> {
        let mut map = self.write();
        mark_seen(map.get_mut(id)?, now_ms)
    }

    /// Marks a node offline (missed heartbeats, failed probe or refused connection).
    pub fn mark_offline(&self, id: &str, now_ms: i64) -> Option<Change> {
        let mut map = self.write();
        let node = map.get_mut(id)?;
        if node.status == NodeState::Offline {
            return None;
        }
        node.status = NodeState::Offline;
        node.down.cancel();
        Some(Change {
            stored: node.stored(now_ms),
        })
    }

    /// A request to the node timed out: skip it for `cool_down` or until it is heard from.
    pub fn mark_suspect(&self, id: &str, cool_down: std::time::Duration) {
        if let Some(node) = self.write().get_mut(id) {
            node.suspect_until = Some(Instant::now() + cool_down);
        }
    }

    pub fn set_drained(&self, id: &str, drained: bool, now_ms: i64) -> Option<Change> {
        let mut map = self.write();
        let node = map.get_mut(id)?;
        node.drained = drained;
        Some(Change {
            stored: node.stored(now_ms),
        })
    }

    pub fn remove(&self, id: &str) -> bool {
        self.write().remove(id).is_some()
    }

    /// Nodes to check: (id, url, time since last heard, currently offline).
    pub fn silent_since(&self) -> Vec<(String, String, Option<std::time::Duration>, bool)> {
        self.read()
            .values()
            .map(|n| {
                (
                    n.registration.node_id.clone(),
                    n.url.clone(),
                    n.last_seen.map(|t| t.elapsed()),
                    n.status == NodeState::Offline,
                )
            })
            .collect()
    }

    pub fn views(&self) -> Vec<NodeView> {
        self.read().values().map(Node::view).collect()
    }

    pub fn view(&self, id: &str) -> Option<NodeView> {
        self.read().get(id).map(Node::view)
    }

    /// Up to `limit` healthy nodes for a request without a model (e.g. `/api/version`),
    /// best first.
    pub fn any(&self, strategy: Strategy, limit: usize) -> Vec<Target> {
        let map = self.read();
        let nodes: Vec<&Node> = map.values().filter(|n| n.takes_requests()).collect();
        self.order(nodes, strategy, None, limit)
    }

    /// Up to `limit` healthy nodes that serve `model`, in the order to try them.
    pub fn pick(&self, model: &str, strategy: Strategy, limit: usize) -> Pick {
        let map = self.read();
        let mut nodes: Vec<&Node> = map.values().filter(|n| n.serves(model)).collect();
        if nodes.is_empty() {
            return Pick::UnknownModel;
        }
        nodes.retain(|n| n.takes_requests());
        if nodes.is_empty() {
            return Pick::NoneHealthy;
        }
        Pick::Nodes(self.order(nodes, strategy, Some(model), limit))
    }

    /// Orders candidates by strategy; the rest follow as failover choices. Only the first
    /// `limit` become targets: a request never tries more, and with many nodes copying
    /// them all would be per-request work for nothing.
    fn order(
        &self,
        mut nodes: Vec<&Node>,
        strategy: Strategy,
        model: Option<&str>,
        limit: usize,
    ) -> Vec<Target> {
        if nodes.is_empty() {
            return Vec::new();
        }
        // Rotate first so that ties (and round-robin) spread over the nodes.
        let start = self.next.fetch_add(1, Ordering::Relaxed) % nodes.len();
        nodes.rotate_left(start);
        match strategy {
            Strategy::RoundRobin => {}
            Strategy::LeastLoaded => nodes.sort_by_key(|n| n.load_key()),
            Strategy::PreferLoaded => {
                let loaded = |n: &Node| model.is_some_and(|m| n.has_loaded(m));
                nodes.sort_by_key(|n| (!loaded(n), n.load_key()));
            }
        }
        nodes
            .into_iter()
            .take(limit)
            .filter_map(|n| {
                Some(Target {
                    endpoint: n.endpoint.clone()?,
                    inflight: n.inflight.clone(),
                    down: n.down.clone(),
                })
            })
            .collect()
    }
}

/// A token for a node restored offline: already cancelled, like one that went down.
fn cancelled() -> CancellationToken {
    let token = CancellationToken::new();
    token.cancel();
    token
}

/// `token` while the node stayed up, else a fresh one.
fn alive(token: CancellationToken) -> CancellationToken {
    if token.is_cancelled() {
        CancellationToken::new()
    } else {
        token
    }
}

fn mark_seen(node: &mut Node, now_ms: i64) -> Option<Change> {
    node.last_seen = Some(Instant::now());
    // Heard from: whatever timed out there, the node is alive.
    node.suspect_until = None;
    if node.status == NodeState::Online {
        return None;
    }
    node.status = NodeState::Online;
    node.down = alive(std::mem::take(&mut node.down));
    Some(Change {
        stored: node.stored(now_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str, models: &[&str], loaded: &[&str]) -> Registration {
        Registration {
            node_id: id.into(),
            url: format!("http://127.0.0.1:1/{id}"),
            version: String::new(),
            backends: vec![],
            devices: vec![],
            models_available: models.iter().map(|s| s.to_string()).collect(),
            models_loaded: loaded.iter().map(|s| s.to_string()).collect(),
            capacity: 1,
        }
    }

    type Secrets = std::cell::RefCell<std::collections::HashMap<String, String>>;

    /// Registers `r` and keeps the secret it was issued.
    fn add(nodes: &Nodes, secrets: &Secrets, r: Registration) {
        let (id, url) = (r.node_id.clone(), r.url.clone());
        let (_, secret) = nodes.register(r, url, None, 0).unwrap();
        secrets.borrow_mut().insert(id, secret.unwrap());
    }

    fn beat(nodes: &Nodes, secrets: &Secrets, id: &str, hb: Heartbeat) {
        let secret = secrets.borrow()[id].clone();
        nodes.heartbeat(id, hb, Some(&secret), 0).unwrap();
    }

    #[test]
    fn node_ids_belong_to_their_secret() {
        let nodes = Nodes::default();
        let r = reg("a", &["m"], &[]);
        let (_, secret) = nodes.register(r.clone(), r.url.clone(), None, 0).unwrap();
        let secret = secret.unwrap();
        let hijack =
            |given: Option<&str>| nodes.register(r.clone(), "http://127.0.0.1:2".into(), given, 0);
        assert!(matches!(hijack(None), Err(RouterError::NodeSecret(_))));
        assert!(matches!(
            hijack(Some("guess")),
            Err(RouterError::NodeSecret(_))
        ));
        assert_eq!(nodes.view("a").unwrap().url, r.url);
        let beat = |given: Option<&str>| nodes.heartbeat("a", Heartbeat::default(), given, 0);
        assert!(matches!(beat(None), Err(RouterError::NodeSecret(_))));
        assert!(beat(Some(&secret)).is_ok());
        // The owner re-registers with its secret; no new one is issued.
        let (_, again) = nodes
            .register(r.clone(), r.url.clone(), Some(&secret), 0)
            .unwrap();
        assert_eq!(again, None);
    }

    fn first(nodes: &Nodes, model: &str, strategy: Strategy) -> String {
        match nodes.pick(model, strategy, 3) {
            Pick::Nodes(t) => t[0].endpoint.node_id.clone(),
            _ => panic!("no node"),
        }
    }

    #[test]
    fn endpoint_urls_keep_the_base_path() {
        let plain = Endpoint::new("a", "http://127.0.0.1:8080").unwrap();
        assert_eq!(
            plain.url_for("/v1/chat/completions", None).as_str(),
            "http://127.0.0.1:8080/v1/chat/completions"
        );
        let prefixed = Endpoint::new("b", "http://node.lan:9000/llm").unwrap();
        assert_eq!(
            prefixed.url_for("/api/tags", Some("x=1&y=2")).as_str(),
            "http://node.lan:9000/llm/api/tags?x=1&y=2"
        );
        assert_eq!(prefixed.header.as_ref().unwrap(), "b");
        assert!(Endpoint::new("c", "not a url").is_none());
    }

    #[test]
    fn picks_at_most_the_limit() {
        let (nodes, secrets) = (Nodes::default(), Secrets::default());
        for id in ["a", "b", "c"] {
            let r = reg(id, &["m"], &[]);
            add(&nodes, &secrets, r);
        }
        match nodes.pick("m", Strategy::LeastLoaded, 2) {
            Pick::Nodes(t) => assert_eq!(t.len(), 2),
            _ => panic!("no node"),
        }
        assert_eq!(nodes.any(Strategy::RoundRobin, 5).len(), 3);
    }

    #[test]
    fn least_loaded_breaks_ties_by_cpu() {
        let (nodes, secrets) = (Nodes::default(), Secrets::default());
        for id in ["hot", "cool"] {
            let r = reg(id, &["m"], &[]);
            add(&nodes, &secrets, r);
        }
        let cpu = |cpu_percent| Heartbeat {
            cpu_percent,
            active_requests: 1,
            ..Heartbeat::default()
        };
        beat(&nodes, &secrets, "hot", cpu(90.0));
        beat(&nodes, &secrets, "cool", cpu(10.0));
        for _ in 0..4 {
            assert_eq!(first(&nodes, "m", Strategy::LeastLoaded), "cool");
        }
        // Within one 20-point step the nodes tie and take turns.
        beat(&nodes, &secrets, "hot", cpu(12.0));
        let picks: std::collections::BTreeSet<String> = (0..4)
            .map(|_| first(&nodes, "m", Strategy::LeastLoaded))
            .collect();
        assert_eq!(picks.len(), 2);
    }

    #[test]
    fn strategies_pick_as_documented() {
        let (nodes, secrets) = (Nodes::default(), Secrets::default());
        for (id, loaded) in [("a", vec![]), ("b", vec!["m"]), ("c", vec![])] {
            let r = reg(id, &["m"], &loaded);
            add(&nodes, &secrets, r);
        }
        let mut seen: Vec<String> = (0..3)
            .map(|_| first(&nodes, "m", Strategy::RoundRobin))
            .collect();
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"]);
        for _ in 0..3 {
            assert_eq!(first(&nodes, "m", Strategy::PreferLoaded), "b");
        }
        let busy = Heartbeat {
            active_requests: 3,
            ..Heartbeat::default()
        };
        beat(&nodes, &secrets, "a", busy.clone());
        beat(&nodes, &secrets, "b", busy);
        for _ in 0..3 {
            assert_eq!(first(&nodes, "m", Strategy::LeastLoaded), "c");
        }
        nodes.set_drained("c", true, 0);
        assert_ne!(first(&nodes, "m", Strategy::LeastLoaded), "c");
        assert!(matches!(
            nodes.pick("x", Strategy::RoundRobin, 3),
            Pick::UnknownModel
        ));
        for id in ["a", "b", "c"] {
            nodes.mark_offline(id, 0);
        }
        assert!(matches!(
            nodes.pick("m", Strategy::RoundRobin, 3),
            Pick::NoneHealthy
        ));
    }
}
