//! SQLite persistence: settings (the generated join token), nodes and request history.
//! Schema changes are numbered migrations recorded in `PRAGMA user_version`.

use super::types::{NodeState, Registration, RequestRecord};
use rusqlite::{params, Connection, OptionalExtension as _};
use std::{
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

/// Each entry moves the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // v1: first schema.
    "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE nodes (
         node_id TEXT PRIMARY KEY,
         url TEXT NOT NULL,
         registration TEXT NOT NULL,
         status TEXT NOT NULL,
         drained INTEGER NOT NULL DEFAULT 0,
         registered_at_ms INTEGER NOT NULL,
         last_seen_ms INTEGER
     );
     CREATE TABLE requests (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         ts_ms INTEGER NOT NULL,
         method TEXT NOT NULL,
         path TEXT NOT NULL,
         model TEXT,
         node_id TEXT,
         status INTEGER NOT NULL,
         latency_ms REAL NOT NULL,
         ttfb_ms REAL NOT NULL,
         tokens_in INTEGER,
         tokens_out INTEGER,
         attempts INTEGER NOT NULL,
         error TEXT
     );
     CREATE INDEX requests_ts ON requests (ts_ms);",
    // v2: nodes own their id through a secret issued at first registration (its hash).
    "ALTER TABLE nodes ADD COLUMN secret_hash TEXT;",
];

/// A node as stored.
#[derive(Debug, Clone)]
pub struct StoredNode {
    pub registration: Registration,
    pub url: String,
    pub status: NodeState,
    pub drained: bool,
    pub registered_at_ms: i64,
    pub last_seen_ms: Option<i64>,
    /// SHA-256 of the node's secret (None: a node stored before secrets existed; its next
    /// registration claims the id).
    pub secret_hash: Option<String>,
}

/// How much history to keep.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_rows: u64,
    pub max_age: Duration,
}

/// One connection behind a mutex: every statement here is small, and the request log
/// batches its inserts, so contention stays low.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (or creates) the database and brings its schema up to date.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// A private in-memory database (nothing survives the process).
    pub fn in_memory() -> rusqlite::Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> rusqlite::Result<Self> {
        conn.busy_timeout(Duration::from_secs(5))?;
        // WAL: readers do not block the writer; NORMAL sync is safe with WAL.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (statements are atomic).
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn schema_version(&self) -> rusqlite::Result<u32> {
        self.lock()
            .pragma_query_value(None, "user_version", |row| row.get(0))
    }

    pub fn setting(&self, key: &str) -> rusqlite::Result<Option<String>> {
        self.lock()
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
    }

    pub fn set_setting(&self, key: &str, value: &str) -> rusqlite::Result<()> {
        self.lock().execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    pub fn upsert_node(&self, node: &StoredNode) -> rusqlite::Result<()> {
        let registration = serde_json::to_string(&node.registration)
            .map_err(|err| rusqlite::Error::ToSqlConversionFailure(Box::new(err)))?;
        self.lock().execute(
            "INSERT INTO nodes (node_id, url, registration, status, drained, registered_at_ms,
                                last_seen_ms, secret_hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(node_id) DO UPDATE SET url = excluded.url,
                 registration = excluded.registration, status = excluded.status,
                 drained = excluded.drained, last_seen_ms = excluded.last_seen_ms,
                 secret_hash = COALESCE(excluded.secret_hash, nodes.secret_hash)",
            params![
                node.registration.node_id,
                node.url,
                registration,
                node.status.as_str(),
                node.drained,
                node.registered_at_ms,
                node.last_seen_ms,
                node.secret_hash
            ],
        )?;
        Ok(())
    }

    pub fn set_node_status(
        &self,
        node_id: &str,
        status: NodeState,
        drained: bool,
        last_seen_ms: Option<i64>,
    ) -> rusqlite::Result<()> {
        self.lock().execute(
            "UPDATE nodes SET status = ?2, drained = ?3,
                 last_seen_ms = COALESCE(?4, last_seen_ms) WHERE node_id = ?1",
            params![node_id, status.as_str(), drained, last_seen_ms],
        )?;
        Ok(())
    }

    pub fn delete_node(&self, node_id: &str) -> rusqlite::Result<bool> {
        let n = self
            .lock()
            .execute("DELETE FROM nodes WHERE node_id = ?1", [node_id])?;
        Ok(n > 0)
    }

    /// Every stored node; rows that no longer parse are skipped with a warning.
    pub fn nodes(&self) -> rusqlite::Result<Vec<StoredNode>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT node_id, url, registration, status, drained, registered_at_ms, last_seen_ms,
                    secret_hash
             FROM nodes ORDER BY node_id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, bool>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, Option<i64>>(6)?,
                row.get::<_, Option<String>>(7)?,
            ))
        })?;
        let mut nodes = Vec::new();
        for row in rows {
            let (id, url, reg, status, drained, registered_at_ms, last_seen_ms, secret_hash) = row?;
            match serde_json::from_str::<Registration>(&reg) {
                Ok(registration) => nodes.push(StoredNode {
                    registration,
                    url,
                    status: NodeState::parse(&status).unwrap_or(NodeState::Offline),
                    drained,
                    registered_at_ms,
                    last_seen_ms,
                    secret_hash,
                }),
                Err(err) => tracing::warn!("router db: skipping node {id}: {err}"),
            }
        }
        Ok(nodes)
    }

    /// Inserts the rows in one transaction.
    pub fn insert_requests<'a>(
        &self,
        records: impl IntoIterator<Item = &'a RequestRecord>,
    ) -> rusqlite::Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO requests (ts_ms, method, path, model, node_id, status, latency_ms,
                     ttfb_ms, tokens_in, tokens_out, attempts, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for r in records {
                stmt.execute(params![
                    r.ts_ms,
                    r.method,
                    r.path,
                    r.model,
                    r.node_id,
                    r.status,
                    r.latency_ms,
                    r.ttfb_ms,
                    r.tokens_in.map(|n| n as i64),
                    r.tokens_out.map(|n| n as i64),
                    r.attempts,
                    r.error
                ])?;
            }
        }
        tx.commit()
    }

    /// The newest `limit` requests, oldest first.
    pub fn recent_requests(&self, limit: u32) -> rusqlite::Result<Vec<RequestRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT ts_ms, method, path, model, node_id, status, latency_ms, ttfb_ms, tokens_in,
                    tokens_out, attempts, error
             FROM requests ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |row| {
            Ok(RequestRecord {
                ts_ms: row.get(0)?,
                method: row.get(1)?,
                path: row.get(2)?,
                model: row.get(3)?,
                node_id: row.get(4)?,
                status: row.get(5)?,
                latency_ms: row.get(6)?,
                ttfb_ms: row.get(7)?,
                tokens_in: row.get::<_, Option<i64>>(8)?.map(|n| n.max(0) as u64),
                tokens_out: row.get::<_, Option<i64>>(9)?.map(|n| n.max(0) as u64),
                attempts: row.get(10)?,
                error: row.get(11)?,
            })
        })?;
        let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    pub fn request_count(&self) -> rusqlite::Result<u64> {
        self.lock()
            .query_row("SELECT COUNT(*) FROM requests", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|n| n.max(0) as u64)
    }

    /// Drops history older than the age limit and beyond the row limit; returns rows removed.
    pub fn prune(&self, retention: Retention, now_ms: i64) -> rusqlite::Result<usize> {
        let conn = self.lock();
        let cutoff = now_ms.saturating_sub(retention.max_age.as_millis() as i64);
        let by_age = conn.execute("DELETE FROM requests WHERE ts_ms < ?1", [cutoff])?;
        // Ids only grow (AUTOINCREMENT) and pruning removes the oldest, so the newest
        // `max_rows` rows are the ids above MAX(id) - max_rows (fewer where the age pass cut
        // a gap): a lookup at the end of the rowid tree, where `ORDER BY id DESC LIMIT 1
        // OFFSET n` walked n index entries on every pass.
        let by_rows = conn.execute(
            "DELETE FROM requests WHERE id <= (SELECT MAX(id) FROM requests) - ?1",
            [retention.max_rows as i64],
        )?;
        Ok(by_age + by_rows)
    }
}

/// Runs every migration past the stored `user_version`, each in its own transaction.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: u32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if current as usize > MIGRATIONS.len() {
        tracing::warn!(
            "router db schema v{current} is newer than this llmlocal (v{}); using it as is",
            MIGRATIONS.len()
        );
        return Ok(());
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as u32)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ts_ms: i64) -> RequestRecord {
        RequestRecord {
            ts_ms,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            model: Some("m".into()),
            node_id: Some("n1".into()),
            status: 200,
            latency_ms: 1.5,
            ttfb_ms: 0.5,
            tokens_in: Some(3),
            tokens_out: Some(7),
            attempts: 1,
            error: None,
        }
    }

    #[test]
    fn migrates_and_keeps_settings() {
        let store = Store::in_memory().unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as u32);
        assert_eq!(store.setting("join_token").unwrap(), None);
        store.set_setting("join_token", "abc").unwrap();
        store.set_setting("join_token", "def").unwrap();
        assert_eq!(store.setting("join_token").unwrap().as_deref(), Some("def"));
    }

    #[test]
    fn prunes_by_rows_and_age() {
        let store = Store::in_memory().unwrap();
        let now = 1_000_000_000;
        let old: Vec<_> = (0..5).map(|i| record(now - 100_000 + i)).collect();
        let new: Vec<_> = (0..10).map(|i| record(now - 10 + i)).collect();
        store.insert_requests(&old).unwrap();
        store.insert_requests(&new).unwrap();
        let retention = Retention {
            max_rows: 4,
            max_age: Duration::from_secs(60),
        };
        assert_eq!(store.prune(retention, now).unwrap(), 11);
        let left = store.recent_requests(100).unwrap();
        assert_eq!(left.len(), 4);
        assert_eq!(left.last().unwrap().ts_ms, now - 1);
        assert_eq!(left[0].tokens_out, Some(7));
    }
}
