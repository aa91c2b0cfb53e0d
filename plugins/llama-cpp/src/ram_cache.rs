//! The host-RAM prompt cache (capability `host-ram-prompt-cache`, load option
//! `cache-ram-mib`; llama-server's `--cache-ram`).
//!
//! A free slot keeps its KV cells for prefix reuse ([`crate::prefix::SlotMemory`]), but only
//! until another prompt takes the slot: with more conversations than slots, every turn would
//! read its whole history again. So before a slot's cells are given to a prompt that keeps
//! less than half of them, the engine copies the slot's state (`llama_state_seq_get_data_ext`)
//! into this cache, keyed by the tokens it holds and the adapter set it was computed under;
//! when a later prompt shares a longer prefix with a saved entry than with any free slot, the
//! engine copies the entry back into a slot (`llama_state_seq_set_data_ext`) and trims it to
//! the common prefix, as it trims a slot. Entries are copied, not moved: an entry stays
//! usable for another prompt (an edited turn, a second chat with the same start) until the
//! cap pushes it out, least recently used first.
//!
//! This module keeps the books only, generic over the saved state so it is tested without
//! llama.cpp; the engine owns the context and does the copies.

use crate::prefix::common_prefix;
use llama_cpp_2::token::LlamaToken;
use llmlocal_plugin_api::{request::load_option, ExtValue, Extension, PluginError};
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

/// Prompts shorter than this are not saved: re-reading 32 tokens costs a few milliseconds
/// on a CPU for small models, and such entries (a system prompt, a one-line request) would
/// crowd the cache and be found as the "best" match for unrelated chats that share a chat
/// template's first tokens. llama-server saves any non-empty slot; we pick a floor.
pub const MIN_TOKENS: usize = 32;

/// The cache's size in bytes from the load request's `cache-ram-mib` (0 when absent: off).
/// The export glue has already refused the key unless the manifest declares the capability.
pub fn cap_from_extensions(extensions: &[Extension]) -> Result<usize, PluginError> {
    let Some(extension) = extensions
        .iter()
        .find(|e| e.key.as_str() == load_option::CACHE_RAM_MIB)
    else {
        return Ok(0);
    };
    let mib = match &extension.value {
        ExtValue::Int(mib) => u64::try_from(*mib).ok(),
        ExtValue::Text(text) => text.trim().parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        PluginError::invalid_request(format!(
            "{} must be a whole number of MiB >= 0 (0 = off), got {:?}",
            load_option::CACHE_RAM_MIB,
            extension.value
        ))
    })?;
    Ok(usize::try_from(mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX))
}

/// One saved prompt: the tokens its state holds at positions `0..tokens.len()`.
struct Entry<K, S> {
    /// What the state was computed under (the adapter set): only a prompt under the same
    /// key may use it.
    key: K,
    tokens: Vec<LlamaToken>,
    state: S,
    bytes: usize,
    last_used: u64,
}

/// A saved prompt that shares a prefix with a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// Index of the entry, valid until the cache changes.
    pub index: usize,
    /// Tokens the entry shares with the prompt from the start.
    pub common: usize,
}

/// Saved slot states under a byte cap, least recently used out first.
pub struct RamCache<K, S> {
    entries: Vec<Entry<K, S>>,
    cap: usize,
    used: usize,
    /// `used`, readable from other threads: the model's `metadata()` reports it without
    /// waiting for the decode thread, which owns the cache.
    shown: Arc<AtomicU64>,
    /// A counter, not a clock: only the order of uses matters.
    uses: u64,
}

impl<K: PartialEq, S> RamCache<K, S> {
    /// A cache of at most `cap` bytes; 0 = off (nothing is ever saved).
    pub fn new(cap: usize) -> Self {
        RamCache {
            entries: Vec::new(),
            cap,
            used: 0,
            shown: Arc::new(AtomicU64::new(0)),
            uses: 0,
        }
    }

    /// The bytes held, kept current on every insert and removal, for other threads.
    pub fn gauge(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.shown)
    }

    /// Whether saving `tokens` (computed under `key`) could add anything: the cache is on,
    /// they are long enough, and no entry holds them already (that entry is then marked
    /// used: its conversation is alive). Checked before the engine copies the state.
    pub fn wants(&mut self, key: &K, tokens: &[LlamaToken]) -> bool {
        if self.cap == 0 || tokens.len() < MIN_TOKENS {
            return false;
        }
        let holder = self
            .entries
            .iter()
            .position(|e| e.key == *key && e.tokens.starts_with(tokens));
        match holder {
            Some(index) => {
                self.touch(index);
                false
            }
            None => true,
        }
    }

    /// Whether a state of `bytes` can be kept at all (not larger than the whole cache).
    pub fn fits(&self, bytes: usize) -> bool {
        bytes <= self.cap
    }

    /// Saves `state` (`bytes` long) for `tokens` under `key`; entries it makes useless (a
    /// prefix of `tokens` under the same key) go, then the least recently used ones until
    /// the cap holds. Returns false, keeping nothing, when the state is larger than the cap.
    pub fn insert(&mut self, key: K, tokens: Vec<LlamaToken>, state: S, bytes: usize) -> bool {
        if !self.fits(bytes) || tokens.is_empty() {
            return false;
        }
        let mut index = 0;
        while index < self.entries.len() {
            let entry = &self.entries[index];
            if entry.key == key && tokens.starts_with(&entry.tokens) {
                self.remove(index);
            } else {
                index += 1;
            }
        }
        self.uses += 1;
        self.used += bytes;
        self.entries.push(Entry {
            key,
            tokens,
            state,
            bytes,
            last_used: self.uses,
        });
        self.evict_to_cap();
        self.show();
        true
    }

    /// The entry under `key` sharing the longest prefix with `prompt` (ties: the most
    /// recently used); `None` when no entry shares a token.
    pub fn best(&self, key: &K, prompt: &[LlamaToken]) -> Option<Hit> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.key == *key)
            .map(|(index, e)| (index, common_prefix(&e.tokens, prompt), e.last_used))
            .filter(|&(_, common, _)| common > 0)
            .max_by_key(|&(_, common, last_used)| (common, last_used))
            .map(|(index, common, _)| Hit { index, common })
    }

    /// The state and tokens of entry `index`, marked as used now.
    pub fn open(&mut self, index: usize) -> Option<(&S, &[LlamaToken])> {
        self.touch(index);
        self.entries
            .get(index)
            .map(|e| (&e.state, e.tokens.as_slice()))
    }

    /// Drops entry `index` (a state llama.cpp would not take back).
    pub fn remove(&mut self, index: usize) {
        if index < self.entries.len() {
            let entry = self.entries.swap_remove(index);
            self.used -= entry.bytes;
            self.show();
        }
    }

    fn show(&self) {
        self.shown.store(
            u64::try_from(self.used).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Bytes held and entries, for logs.
    pub fn usage(&self) -> (usize, usize) {
        (self.used, self.entries.len())
    }

    fn touch(&mut self, index: usize) {
        self.uses += 1;
        if let Some(entry) = self.entries.get_mut(index) {
            entry.last_used = self.uses;
        }
    }

    fn evict_to_cap(&mut self) {
        while self.used > self.cap {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(index, _)| index);
            match oldest {
                Some(index) => self.remove(index),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::std_types::RString;

    /// `n` tokens counting up from `start`.
    fn run(start: i32, n: usize) -> Vec<LlamaToken> {
        (0..n as i32).map(|i| LlamaToken::new(start + i)).collect()
    }

    fn joined(a: &[LlamaToken], b: &[LlamaToken]) -> Vec<LlamaToken> {
        a.iter().chain(b).copied().collect()
    }

    #[test]
    fn the_longest_common_prefix_under_the_same_key_wins() {
        let mut cache = RamCache::new(1000);
        let a = run(0, 40);
        let b = joined(&run(0, 10), &run(500, 40));
        assert!(cache.insert(1u8, a.clone(), "a", 10));
        assert!(cache.insert(1u8, b.clone(), "b", 10));
        let prompt = joined(&a, &run(900, 5));
        let hit = cache.best(&1, &prompt).expect("a hit");
        assert_eq!(hit.common, 40);
        assert_eq!(cache.open(hit.index).map(|(s, _)| *s), Some("a"));
        // Another key (adapter set) never matches.
        assert_eq!(cache.best(&2, &prompt), None);
        // Nothing in common: no hit.
        assert_eq!(cache.best(&1, &run(7000, 40)), None);
    }

    #[test]
    fn the_least_recently_used_entry_goes_first_when_over_the_cap() {
        let mut cache = RamCache::new(25);
        cache.insert(0u8, run(0, 40), "a", 10);
        cache.insert(0u8, run(100, 40), "b", 10);
        // Using `a` makes `b` the least recently used.
        let hit = cache.best(&0, &run(0, 41)).expect("a");
        cache.open(hit.index);
        cache.insert(0u8, run(200, 40), "c", 10);
        assert_eq!(cache.usage(), (20, 2));
        assert_eq!(
            cache.gauge().load(Ordering::Relaxed),
            20,
            "the gauge follows"
        );
        assert!(cache.best(&0, &run(100, 40)).is_none(), "b was evicted");
        assert!(cache.best(&0, &run(0, 40)).is_some());
        assert!(cache.best(&0, &run(200, 40)).is_some());
    }

    #[test]
    fn a_state_larger_than_the_cap_is_not_kept_and_evicts_nothing() {
        let mut cache = RamCache::new(15);
        cache.insert(0u8, run(0, 40), "a", 10);
        assert!(!cache.fits(16));
        assert!(!cache.insert(0u8, run(100, 40), "big", 16));
        assert_eq!(cache.usage(), (10, 1));
        let mut off = RamCache::new(0);
        assert!(!off.wants(&0u8, &run(0, 40)));
        assert!(!off.insert(0u8, run(0, 40), "a", 1));
    }

    #[test]
    fn short_prompts_and_prompts_already_held_are_not_wanted() {
        let mut cache = RamCache::new(100);
        assert!(!cache.wants(&0u8, &run(0, MIN_TOKENS - 1)));
        assert!(cache.wants(&0u8, &run(0, MIN_TOKENS)));
        cache.insert(0u8, run(0, 50), "long", 10);
        // A prefix of a saved entry adds nothing.
        assert!(!cache.wants(&0u8, &run(0, 40)));
        // ...unless it was computed under other adapters.
        assert!(cache.wants(&1u8, &run(0, 40)));
        assert!(cache.wants(&0u8, &run(0, 60)));
    }

    #[test]
    fn a_longer_save_replaces_the_entries_it_extends() {
        let mut cache = RamCache::new(100);
        let turn1 = run(0, 40);
        let turn2 = joined(&turn1, &run(300, 20));
        cache.insert(0u8, turn1.clone(), "turn1", 10);
        cache.insert(1u8, turn1.clone(), "turn1 under other adapters", 10);
        cache.insert(0u8, turn2.clone(), "turn2", 15);
        assert_eq!(cache.usage(), (25, 2));
        let hit = cache.best(&0, &turn1).expect("turn2 holds turn1");
        assert_eq!(cache.open(hit.index).map(|(s, _)| *s), Some("turn2"));
    }

    #[test]
    fn the_size_comes_from_the_load_option() {
        let ext = |value| Extension {
            key: RString::from(load_option::CACHE_RAM_MIB),
            value,
        };
        assert_eq!(cap_from_extensions(&[]), Ok(0));
        assert_eq!(cap_from_extensions(&[ext(ExtValue::Int(3))]), Ok(3 << 20));
        assert_eq!(
            cap_from_extensions(&[ext(ExtValue::Text(" 2 ".into()))]),
            Ok(2 << 20)
        );
        for bad in [ExtValue::Int(-1), ExtValue::Text("lots".into())] {
            let err = cap_from_extensions(&[ext(bad)]).expect_err("refused");
            assert!(err.message.contains("cache-ram-mib"), "{err:?}");
        }
    }
}
