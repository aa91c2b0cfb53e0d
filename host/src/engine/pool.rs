//! The models loaded now, with their use times, pins and request queues.

use super::{error::EngineError, metrics::Metrics, template::ChatTemplate};
use crate::plugins::{LoadedModel, ModelMetadata};
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant, SystemTime},
};
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

/// A bounded queue in front of one model: `permits` generations run, `depth` more may wait.
#[derive(Debug)]
pub struct Gate {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    depth: usize,
    /// Generations it runs at once.
    parallel: usize,
    /// Generations running or queued: a model with any is not unloaded.
    pub(crate) busy: AtomicUsize,
}

/// Holds a model busy (running or queued); released on drop.
#[derive(Debug)]
pub struct BusyGuard(Arc<Gate>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

struct WaitGuard<'a>(&'a Gate, &'a Metrics, &'a str);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        self.1
            .queue_depth
            .get_or_create(&Metrics::model(self.2))
            .dec();
    }
}

impl Gate {
    pub fn new(parallel: u32, depth: usize) -> Arc<Gate> {
        Arc::new(Gate {
            permits: Arc::new(Semaphore::new(parallel.max(1) as usize)),
            waiting: AtomicUsize::new(0),
            depth,
            parallel: parallel.max(1) as usize,
            busy: AtomicUsize::new(0),
        })
    }

    /// Generations it runs at once.
    pub fn parallel(&self) -> usize {
        self.parallel
    }

    /// Generations running or waiting now.
    pub fn busy_count(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    /// Marks the model busy until the guard drops.
    pub fn busy(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::SeqCst);
        BusyGuard(Arc::clone(self))
    }

    /// A run slot: at once if one is free, else after waiting in the queue; `QueueFull` when
    /// the queue is full.
    pub async fn enter(
        &self,
        model: &str,
        metrics: &Metrics,
    ) -> Result<OwnedSemaphorePermit, EngineError> {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.depth {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::QueueFull {
                model: model.to_string(),
                depth: self.depth,
            });
        }
        metrics
            .queue_depth
            .get_or_create(&Metrics::model(model))
            .inc();
        let _waiting = WaitGuard(self, metrics, model);
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| EngineError::ShuttingDown)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

/// One loaded model.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The name requests use.
    pub name: String,
    pub backend: String,
    pub model: LoadedModel,
    pub metadata: ModelMetadata,
    pub template: Arc<ChatTemplate>,
    pub path: PathBuf,
    /// Estimated bytes it holds (weights + KV cache).
    pub bytes: u64,
    pub pinned: bool,
    pub keep_alive: Option<Duration>,
    pub last_used: Instant,
    pub loaded_at: SystemTime,
    pub gate: Arc<Gate>,
}

impl Slot {
    pub fn is_idle(&self) -> bool {
        self.gate.busy.load(Ordering::SeqCst) == 0
    }

    /// May be unloaded to make room or because it is idle.
    pub fn is_evictable(&self) -> bool {
        !self.pinned && self.is_idle()
    }

    /// When the keep-alive unloads it if it stays idle.
    pub fn expires_at(&self) -> Option<SystemTime> {
        let keep = self.keep_alive?;
        let idle_for = self.last_used.elapsed();
        Some(SystemTime::now() + keep.saturating_sub(idle_for))
    }
}

/// Information about a loaded model, for listings (`/api/ps`).
#[derive(Debug, Clone)]
pub struct LoadedInfo {
    pub name: String,
    pub backend: String,
    pub metadata: ModelMetadata,
    pub path: PathBuf,
    pub bytes: u64,
    pub pinned: bool,
    pub expires_at: Option<SystemTime>,
    pub loaded_at: SystemTime,
    pub queued: usize,
    pub chat_template: String,
}

impl From<&Slot> for LoadedInfo {
    fn from(slot: &Slot) -> Self {
        LoadedInfo {
            name: slot.name.clone(),
            backend: slot.backend.clone(),
            metadata: slot.metadata.clone(),
            path: slot.path.clone(),
            bytes: slot.bytes,
            pinned: slot.pinned,
            expires_at: if slot.pinned { None } else { slot.expires_at() },
            loaded_at: slot.loaded_at,
            queued: slot.gate.waiting(),
            chat_template: slot.template.source().to_string(),
        }
    }
}

/// The loaded models, least recently used first when evicting, and the loads in flight.
#[derive(Debug, Default)]
pub struct Pool {
    slots: Vec<Slot>,
    /// One load slot per model name: concurrent requests for one model share its load (the
    /// later ones wait, then find it loaded); loads of different models run side by side.
    loading: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Bytes promised to loads in flight, so two loads at once cannot both take the same room.
    reserved: HashMap<String, u64>,
}

fn lock(pool: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The right to load one model: held while it loads; dropping it frees the model's load
/// slot and any memory reserved for a load that did not finish.
#[derive(Debug)]
pub struct LoadTurn {
    pool: Arc<Mutex<Pool>>,
    name: String,
    _turn: OwnedMutexGuard<()>,
}

impl Drop for LoadTurn {
    fn drop(&mut self) {
        let mut pool = lock(&self.pool);
        pool.reserved.remove(&self.name);
        // The map and this turn hold the slot: nobody else waits for this model.
        if pool
            .loading
            .get(&self.name)
            .is_some_and(|slot| Arc::strong_count(slot) <= 2)
        {
            pool.loading.remove(&self.name);
        }
    }
}

impl Pool {
    /// Waits for the turn to load `name`: at once unless another request is loading it (then
    /// the caller should look again whether it is loaded when its turn comes).
    pub async fn begin_load(pool: &Arc<Mutex<Pool>>, name: &str) -> LoadTurn {
        let slot = Arc::clone(lock(pool).loading.entry(name.to_string()).or_default());
        LoadTurn {
            pool: Arc::clone(pool),
            name: name.to_string(),
            _turn: slot.lock_owned().await,
        }
    }

    /// Promises `bytes` to the load of `name` until it is inserted or its turn ends.
    pub fn reserve(&mut self, name: &str, bytes: u64) {
        self.reserved.insert(name.to_string(), bytes);
    }

    /// Bytes promised to loads in flight.
    pub fn reserved(&self) -> u64 {
        self.reserved.values().sum()
    }

    /// Sets how long the model stays loaded when idle (`None` = until unloaded); false if it
    /// is not loaded.
    pub fn set_keep_alive(&mut self, name: &str, keep_alive: Option<Duration>) -> bool {
        let mut found = false;
        for slot in self.slots.iter_mut().filter(|s| s.name == name) {
            slot.keep_alive = keep_alive;
            slot.last_used = Instant::now();
            found = true;
        }
        found
    }

    /// A loaded instance of `name` (on `backend` if given); marks it used.
    pub fn find(&mut self, name: &str, backend: Option<&str>) -> Option<Slot> {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.name == name && backend.is_none_or(|b| b == s.backend))?;
        slot.last_used = Instant::now();
        Some(slot.clone())
    }

    pub fn insert(&mut self, slot: Slot) {
        self.reserved.remove(&slot.name);
        self.slots.push(slot);
    }

    pub fn touch(&mut self, name: &str, backend: &str) {
        if let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| s.name == name && s.backend == backend)
        {
            slot.last_used = Instant::now();
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes the loaded models hold plus those promised to loads in flight.
    pub fn bytes(&self) -> u64 {
        self.slots.iter().map(|s| s.bytes).sum::<u64>() + self.reserved()
    }

    pub fn infos(&self) -> Vec<LoadedInfo> {
        self.slots.iter().map(LoadedInfo::from).collect()
    }

    /// The loaded models' names and handles, to ask them something outside the pool's lock.
    pub fn handles(&self) -> Vec<(String, LoadedModel)> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), s.model.clone()))
            .collect()
    }

    /// Removes every instance of `name`, busy or not (running generations keep their model
    /// alive until they end); returns how many.
    pub fn remove(&mut self, name: &str) -> usize {
        let before = self.slots.len();
        self.slots.retain(|s| s.name != name);
        before - self.slots.len()
    }

    pub fn set_pinned(&mut self, name: &str, pinned: bool) -> bool {
        let mut found = false;
        for slot in self.slots.iter_mut().filter(|s| s.name == name) {
            slot.pinned = pinned;
            found = true;
        }
        found
    }

    /// Unloads the least recently used evictable model; returns it.
    pub fn evict_lru(&mut self) -> Option<Slot> {
        let index = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_evictable())
            .min_by_key(|(_, s)| s.last_used)
            .map(|(i, _)| i)?;
        Some(self.slots.remove(index))
    }

    /// Unloads every evictable model idle longer than its keep-alive; returns their names.
    pub fn evict_expired(&mut self, now: Instant) -> Vec<String> {
        let mut gone = Vec::new();
        self.slots.retain(|s| {
            let expired = s
                .keep_alive
                .is_some_and(|k| now.duration_since(s.last_used) >= k);
            if expired && s.is_evictable() {
                gone.push(format!("{} ({})", s.name, s.backend));
                false
            } else {
                true
            }
        });
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn load_turns_are_per_model_and_carry_the_reservation() {
        let pool = Arc::new(Mutex::new(Pool::default()));
        let a = Pool::begin_load(&pool, "a").await;
        lock(&pool).reserve("a", 100);
        // Another model's turn comes at once.
        let b = Pool::begin_load(&pool, "b").await;
        lock(&pool).reserve("b", 50);
        assert_eq!(lock(&pool).bytes(), 150);
        // A second turn for `a` waits for the first.
        let waiting = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { drop(Pool::begin_load(&pool, "a").await) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(a);
        waiting.await.expect("the second turn for `a` comes");
        assert_eq!(
            lock(&pool).bytes(),
            50,
            "a's reservation ended with its turn"
        );
        drop(b);
        let pool = lock(&pool);
        assert_eq!(pool.bytes(), 0);
        assert!(
            pool.loading.is_empty(),
            "finished turns leave no slot behind"
        );
    }
}
