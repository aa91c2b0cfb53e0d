//! The models loaded now, with their use times, pins and request queues.

use super::{error::EngineError, metrics::Metrics, template::ChatTemplate};
use crate::plugins::{LoadedModel, ModelMetadata};
use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A bounded queue in front of one model: `permits` generations run, `depth` more may wait.
#[derive(Debug)]
pub struct Gate {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    depth: usize,
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
            busy: AtomicUsize::new(0),
        })
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

/// The loaded models, least recently used first when evicting.
#[derive(Debug, Default)]
pub struct Pool {
    slots: Vec<Slot>,
}

impl Pool {
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

    pub fn bytes(&self) -> u64 {
        self.slots.iter().map(|s| s.bytes).sum()
    }

    pub fn infos(&self) -> Vec<LoadedInfo> {
        self.slots.iter().map(LoadedInfo::from).collect()
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
