//! Request history: a bounded in-memory list for the dashboard, and a background thread
//! that batches rows into SQLite (so a request never waits on the disk) and applies the
//! retention limit.

use super::{
    series::Series,
    store::{Retention, Store},
    types::RequestRecord,
};
use serde::Serialize;
use std::{
    collections::VecDeque,
    sync::{mpsc, Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Requests kept in memory for the dashboard.
const RECENT: usize = 200;
/// Written rows between retention passes.
const PRUNE_EVERY: usize = 1000;
/// Most rows in one transaction.
const BATCH: usize = 1000;
/// How long the writer gathers rows after the first one before it commits: under load,
/// one transaction per window instead of one per request, and senders rarely have to
/// wake the writer thread.
const LINGER: Duration = Duration::from_millis(50);

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Totals shown on the dashboard.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub requests_total: u64,
    pub errors_total: u64,
    /// Requests that finished in the last 60 s, per second.
    pub requests_per_second: f64,
}

struct Inner {
    /// Shared with the writer's queue: one record, no deep copy per request.
    recent: VecDeque<Arc<RequestRecord>>,
    total: u64,
    errors: u64,
    /// The dashboard charts' last hour (in memory only; starts empty after a restart).
    series: Series,
}

#[derive(Clone)]
pub struct History {
    inner: Arc<Mutex<Inner>>,
    writer: mpsc::Sender<Arc<RequestRecord>>,
}

impl History {
    /// Starts the writer thread and loads the newest rows for the dashboard.
    pub fn start(store: Store, retention: Retention) -> Self {
        let recent: VecDeque<Arc<RequestRecord>> = store
            .recent_requests(RECENT as u32)
            .unwrap_or_else(|err| {
                tracing::warn!("router db: cannot read request history: {err}");
                Vec::new()
            })
            .into_iter()
            .map(Arc::new)
            .collect();
        let total = store.request_count().unwrap_or(recent.len() as u64);
        let errors = recent.iter().filter(|r| r.status >= 400).count() as u64;
        let (writer, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("router-history".into())
            .spawn(move || write_loop(&store, retention, &rx));
        if let Err(err) = spawned {
            tracing::warn!("router: cannot start the history writer ({err}); history is not saved");
        }
        Self {
            inner: Arc::new(Mutex::new(Inner {
                recent,
                total,
                errors,
                series: Series::default(),
            })),
            writer,
        }
    }

    pub fn record(&self, record: RequestRecord) {
        let record = Arc::new(record);
        {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.total += 1;
            if record.status >= 400 || record.error.is_some() {
                inner.errors += 1;
            }
            if inner.recent.len() == RECENT {
                inner.recent.pop_front();
            }
            inner.recent.push_back(record.clone());
            inner.series.record(&record, now_ms());
        }
        // The writer only stops with the process; a send error just loses this row.
        let _ = self.writer.send(record);
    }

    /// The newest `limit` requests, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<RequestRecord> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let skip = inner.recent.len().saturating_sub(limit);
        inner
            .recent
            .iter()
            .skip(skip)
            .map(|r| RequestRecord::clone(r))
            .collect()
    }

    /// The last hour per minute, per node and in total (see [`Series::view`]).
    pub fn series(&self) -> serde_json::Value {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.series.view(now_ms())
    }

    pub fn stats(&self) -> Stats {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let since = now_ms() - 60_000;
        let last_minute = inner.recent.iter().filter(|r| r.ts_ms >= since).count();
        Stats {
            requests_total: inner.total,
            errors_total: inner.errors,
            requests_per_second: last_minute as f64 / 60.0,
        }
    }
}

fn write_loop(store: &Store, retention: Retention, rx: &mpsc::Receiver<Arc<RequestRecord>>) {
    let mut since_prune = PRUNE_EVERY; // prune once at start
    let mut batch = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(first) => batch.push(first),
            Err(mpsc::RecvTimeoutError::Timeout) => since_prune = PRUNE_EVERY,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        gather(rx, &mut batch);
        if !batch.is_empty() {
            if let Err(err) = store.insert_requests(batch.iter().map(|r| &**r)) {
                tracing::warn!("router db: cannot save {} request(s): {err}", batch.len());
            }
            since_prune += batch.len();
            batch.clear();
        }
        if since_prune >= PRUNE_EVERY {
            since_prune = 0;
            if let Err(err) = store.prune(retention, now_ms()) {
                tracing::warn!("router db: cannot prune request history: {err}");
            }
        }
    }
}

/// Adds rows that arrive within [`LINGER`] of the first (up to [`BATCH`]). Sleeping
/// instead of waiting on the channel keeps senders from waking this thread per row.
fn gather(rx: &mpsc::Receiver<Arc<RequestRecord>>, batch: &mut Vec<Arc<RequestRecord>>) {
    if batch.is_empty() {
        return;
    }
    batch.extend(rx.try_iter().take(BATCH - batch.len()));
    if batch.len() < BATCH {
        // A backlog (a full batch) is written at once; a trickle waits to share a commit.
        std::thread::sleep(LINGER);
        batch.extend(rx.try_iter().take(BATCH - batch.len()));
    }
}
