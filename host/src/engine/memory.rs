//! Memory: what the OS has, what a model will need, and the default context length.

use super::kv_cache::KvCacheOptions;
use crate::models::quant::COMPUTE_ALLOWANCE;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

const GIB: u64 = 1 << 30;
/// The largest context chosen by default (an explicit setting may go higher).
pub const MAX_DEFAULT_CONTEXT: u32 = 8192;

/// Total and available memory of the machine, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryInfo {
    pub total: u64,
    pub available: u64,
}

/// The machine's memory figures now, as far as they are known: a failed read of the OS's
/// figures gives the last good ones (see [`MemoryMonitor`]).
pub fn read() -> MemoryInfo {
    static OS: OnceLock<MemoryMonitor<OsMemory>> = OnceLock::new();
    OS.get_or_init(|| MemoryMonitor::new(OsMemory)).read()
}

/// Where memory figures come from: the OS, or a test's script.
pub trait MemorySource {
    /// One reading; `None` when it failed.
    fn sample(&self) -> Option<MemoryInfo>;
}

/// The OS's figures through sysinfo. sysinfo reports a failed read (e.g. `/proc/meminfo`
/// not openable because the process is at its file-descriptor limit) as zeros, never as an
/// error; no running machine has 0 bytes in total or available, so zero means failed.
pub struct OsMemory;

impl MemorySource for OsMemory {
    fn sample(&self) -> Option<MemoryInfo> {
        let mut system = sysinfo::System::new();
        system.refresh_memory();
        let info = MemoryInfo {
            total: system.total_memory(),
            available: system.available_memory(),
        };
        (info.total > 0 && info.available > 0).then_some(info)
    }
}

/// Readings that survive failed reads. Near the file-descriptor limit the OS's figures read
/// as 0 MiB available, and the low-memory watch unloaded a model for it: a failed read now
/// gives the last good reading (warned about once per run of failures). Before any good
/// reading, memory is unknown and reported as unlimited available ([`UNKNOWN`]), so nothing
/// is unloaded or refused on a guess, and the default context stays the smallest.
pub struct MemoryMonitor<S> {
    source: S,
    last_good: Mutex<Option<MemoryInfo>>,
    failing: AtomicBool,
}

/// What [`MemoryMonitor::read`] gives before any reading succeeded.
pub const UNKNOWN: MemoryInfo = MemoryInfo {
    total: 0,
    available: u64::MAX,
};

impl<S: MemorySource> MemoryMonitor<S> {
    pub fn new(source: S) -> Self {
        MemoryMonitor {
            source,
            last_good: Mutex::new(None),
            failing: AtomicBool::new(false),
        }
    }

    /// A fresh reading, or the last good one when this one failed.
    pub fn read(&self) -> MemoryInfo {
        let mut last = self.last_good.lock().unwrap_or_else(|e| e.into_inner());
        match self.source.sample() {
            Some(info) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("memory figures can be read again");
                }
                *last = Some(info);
                info
            }
            None => {
                let kept = last.unwrap_or(UNKNOWN);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        kept_available_mib = kept.available >> 20,
                        "could not read the OS's memory figures (at the open-file limit?); \
                         keeping the last good reading until they can be read again"
                    );
                }
                kept
            }
        }
    }
}

/// The context length for a model when nothing sets one: <= 8 GiB of RAM -> 2048,
/// <= 12 GiB -> 4096, else the model's own maximum capped at 8192.
pub fn default_context_length(total_memory: u64, model_max: Option<u32>) -> u32 {
    let by_machine = if total_memory <= 8 * GIB {
        2048
    } else if total_memory <= 12 * GIB {
        4096
    } else {
        MAX_DEFAULT_CONTEXT
    };
    match model_max.filter(|&m| m > 0) {
        Some(max) => by_machine.min(max),
        None => by_machine,
    }
}

/// What a load will allocate beyond its weights.
#[derive(Debug, Clone, Copy)]
pub struct LoadPlan<'a> {
    pub context_length: u32,
    /// Sequences the backend gives cells of their own (its `parallel` generations).
    pub parallel: u32,
    pub kv_cache: &'a KvCacheOptions,
}

/// Bytes a load of the model at `path` will need: the weights (file size), compute buffers,
/// and the KV cache of `context_length` x `parallel` cells in the configured types — exact
/// from a GGUF header's geometry, else the model manager's per-token heuristic.
pub fn estimate_load_bytes(path: &Path, plan: LoadPlan<'_>) -> u64 {
    let weights = model_bytes(path);
    let cells = u64::from(plan.context_length) * u64::from(plan.parallel.max(1));
    let kv = plan.kv_cache.gguf_bytes(path, cells).unwrap_or_else(|| {
        let per_sequence = crate::models::quant::kv_allowance(weights, plan.context_length)
            .saturating_sub(COMPUTE_ALLOWANCE);
        let f16 = per_sequence.saturating_mul(u64::from(plan.parallel.max(1)));
        (f16 as f64 * plan.kv_cache.ratio_to_f16()) as u64
    });
    weights + COMPUTE_ALLOWANCE + kv
}

/// Size of a model on disk: a file, or every file in a folder (one level, symlinks followed).
pub fn model_bytes(path: &Path) -> u64 {
    if path.is_file() {
        return std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The context length the model was trained with, read from its files before loading:
/// `max_position_embeddings` in a folder's config.json, `<arch>.context_length` in a GGUF.
pub fn model_max_context(path: &Path) -> Option<u32> {
    if path.is_dir() {
        let text = std::fs::read_to_string(path.join("config.json")).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let n = json.get("max_position_embeddings")?.as_u64()?;
        return u32::try_from(n).ok();
    }
    gguf_context_length(path)
}

/// The first `*.context_length` integer in a GGUF header (`None` when the file is not a
/// readable GGUF or has none).
fn gguf_context_length(path: &Path) -> Option<u32> {
    let header = llmlocal_formats::gguf::read_file_header(path).ok()?;
    header
        .metadata
        .iter()
        .filter(|(key, _)| key.ends_with(".context_length"))
        .find_map(|(_, value)| value.as_u64())
        .and_then(|n| u32::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays back a script of readings (`None` = a failed read), then repeats the last.
    struct Script(Mutex<Vec<Option<MemoryInfo>>>);

    impl MemorySource for Script {
        fn sample(&self) -> Option<MemoryInfo> {
            let mut left = self.0.lock().unwrap();
            if left.len() > 1 {
                left.remove(0)
            } else {
                left[0]
            }
        }
    }

    fn info(total_gib: u64, available_gib: u64) -> MemoryInfo {
        MemoryInfo {
            total: total_gib * GIB,
            available: available_gib * GIB,
        }
    }

    #[test]
    fn failed_reads_keep_the_last_good_reading() {
        let monitor = MemoryMonitor::new(Script(Mutex::new(vec![
            None,
            Some(info(16, 9)),
            None,
            None,
            Some(info(16, 3)),
            None,
        ])));
        // Nothing known yet: not "0 available".
        assert_eq!(monitor.read(), UNKNOWN);
        assert_eq!(monitor.read(), info(16, 9));
        assert_eq!(monitor.read(), info(16, 9));
        assert!(monitor.failing.load(Ordering::Relaxed));
        assert_eq!(monitor.read(), info(16, 9));
        assert_eq!(monitor.read(), info(16, 3));
        assert!(!monitor.failing.load(Ordering::Relaxed));
        assert_eq!(monitor.read(), info(16, 3));
    }

    #[test]
    fn the_os_source_reads_real_figures() {
        // On a machine with its files to spare, the OS reading succeeds and is non-zero.
        let got = OsMemory.sample().expect("memory figures");
        assert!(got.total >= got.available && got.available > 0);
    }

    #[test]
    fn default_context_follows_the_machine() {
        assert_eq!(default_context_length(8 * GIB, None), 2048);
        assert_eq!(default_context_length(12 * GIB, Some(32768)), 4096);
        assert_eq!(default_context_length(64 * GIB, Some(32768)), 8192);
        assert_eq!(default_context_length(64 * GIB, Some(512)), 512);
        assert_eq!(default_context_length(4 * GIB, Some(512)), 512);
    }

    #[test]
    fn reads_context_length_from_a_gguf_header() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(3u64.to_le_bytes());
        let mut kv = |key: &str, kind: u32, value: &[u8]| {
            bytes.extend((key.len() as u64).to_le_bytes());
            bytes.extend(key.as_bytes());
            bytes.extend(kind.to_le_bytes());
            bytes.extend(value);
        };
        let mut name = 5u64.to_le_bytes().to_vec();
        name.extend(b"llama");
        kv("general.architecture", 8, &name);
        let mut array = 4u32.to_le_bytes().to_vec();
        array.extend(2u64.to_le_bytes());
        array.extend([0u8; 8]);
        kv("llama.some_array", 9, &array);
        kv("llama.context_length", 4, &1234u32.to_le_bytes());
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, bytes).expect("write");
        assert_eq!(model_max_context(&path), Some(1234));
    }
}
