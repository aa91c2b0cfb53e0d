//! Prompt-prefix reuse (capability `prefix-cache`): a small LRU of the KV caches that
//! finished generations leave behind, one LRU per loaded model.
//!
//! A generation with `cache_prompt` takes the kept cache that shares the longest prefix with
//! its prompt and runs only the rest; when it ends normally its cache (prompt plus the
//! generated tokens that went through the network) goes back. A failed or cancelled
//! generation never returns its cache, so state that could be wrong is never reused. The
//! adapters are part of a loaded model (candle merges them at load), so a cache is never
//! shared between adapter sets: each load has its own LRU.
//!
//! How much of a kept cache can serve depends on how the network stores it ([`Kv`]):
//! - our dense llama ([`crate::dense_llama`]) writes its cache in place and can cut it at
//!   any length: a hit reuses the whole common prefix, and the generation takes the cache
//!   out of the LRU (two generations never write one cache);
//! - candle-transformers' models (HF llama/mistral/qwen/phi3, GGUF llama on the CPU) grow
//!   their caches by concatenation, so a clone is an immutable snapshot that costs only
//!   pointers, but their cache fields are private and cannot be cut. Such a cache serves
//!   whole (its tokens are all a prefix of the prompt: a chat's next turn), and otherwise
//!   through *checkpoints*: snapshots kept while the cache grew, at positions 8, 16, 32,
//!   ... and just before the prompt's last token (the same prompt again: a regenerated
//!   answer). A hit then starts from the longest checkpoint inside the common prefix (at
//!   least half of it). Prompts are always split at those positions for these models, with
//!   the cache or without, so a run from a checkpoint computes what a run from empty would;
//! - GGUF qwen3 and phi3 keep nothing ([`Kv::can_keep`]): quantized_qwen3 on the CPU
//!   keeps prompt chunks and decoded tokens in two different caches, so a prompt run after
//!   decoded tokens would not see them; quantized_phi3's cache is written in place and
//!   cannot be cut. Their generations report 0 cached tokens.

use crate::model::ModelInfo;
use crate::net::Session;

/// The first checkpoint position; the next ones double it.
pub const FIRST_CHECKPOINT: usize = 8;
/// Kept caches per model when nothing else is said (the README documents it).
pub const DEFAULT_ENTRIES: usize = 4;
/// Bytes of kept caches per model when nothing else is said (the README documents it).
pub const DEFAULT_BYTES: usize = 1 << 30;

/// What the LRU needs from a sequence's state.
pub trait Kv: Sized {
    /// Whether a later generation may continue from this state at all.
    fn can_keep(&self) -> bool;
    /// Whether [`Kv::share`] gives copies.
    fn can_share(&self) -> bool;
    /// A copy that later forward passes of either side cannot change, where the state is
    /// never written in place; `None` where it is.
    fn share(&self) -> Option<Self>;
    /// Whether [`Kv::truncate`] can cut the state at any length.
    fn can_truncate(&self) -> bool;
    /// Keeps the first `len` positions (only called where [`Kv::can_truncate`]).
    fn truncate(&mut self, len: usize);
}

/// Whether `pos` is a checkpoint position (see the module docs).
pub fn is_checkpoint(pos: usize) -> bool {
    pos >= FIRST_CHECKPOINT && pos.is_power_of_two()
}

/// The doubling checkpoint positions strictly between `start` and `end`, in order.
pub fn checkpoints_between(start: usize, end: usize) -> impl Iterator<Item = usize> {
    std::iter::successors(Some(FIRST_CHECKPOINT), |c| c.checked_mul(2))
        .take_while(move |&c| c < end)
        .filter(move |&c| c > start)
}

/// Where a run over positions `start..end` of a sequence whose prompt has `prompt_len`
/// tokens must stop for a snapshot, in order: the doubling checkpoints and the position
/// before the prompt's last token, strictly inside the run.
pub fn stops(start: usize, end: usize, prompt_len: usize) -> Vec<usize> {
    let mut stops: Vec<usize> = checkpoints_between(start, end).collect();
    let before_last = prompt_len.saturating_sub(1);
    if before_last > start && before_last < end && !stops.contains(&before_last) {
        let at = stops.partition_point(|&s| s < before_last);
        stops.insert(at, before_last);
    }
    stops
}

/// Whether a run that reached `pos` keeps a snapshot there (see [`stops`]).
pub fn snapshot_at(pos: usize, prompt_len: usize) -> bool {
    is_checkpoint(pos) || (pos > 0 && pos + 1 == prompt_len)
}

/// Snapshots of one sequence at checkpoint positions, ascending.
pub type Checkpoints<S> = Vec<(usize, S)>;

/// Bounds of one model's LRU.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub entries: usize,
    pub bytes: usize,
    /// The KV bytes one position costs (an upper bound: see [`kv_bytes_per_token`]).
    pub bytes_per_token: usize,
}

/// An upper bound of one position's KV bytes: K and V of `hidden` values in every layer, in
/// F32. Grouped-query models keep fewer (and GPU caches may be half precision), so the
/// budget errs on the side of keeping less; candle's model structs do not expose their
/// head counts.
pub fn kv_bytes_per_token(layers: usize, hidden: usize) -> usize {
    2 * layers * hidden * std::mem::size_of::<f32>()
}

/// What a generation starts from after a hit.
pub struct Hit<S> {
    pub session: S,
    /// Prompt positions already in `session`.
    pub len: usize,
    /// The kept checkpoints inside `len`, which the generation keeps in turn.
    pub checkpoints: Checkpoints<S>,
}

struct Entry<S> {
    /// The tokens at positions `0..` of `session`.
    tokens: Vec<u32>,
    session: S,
    checkpoints: Checkpoints<S>,
    bytes: usize,
    /// A counter, not a clock: only the order of uses matters.
    used: u64,
}

/// How an entry serves a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Whole,
    Truncated,
    Checkpoint(usize),
}

/// One model's kept caches.
pub struct PrefixCache<S> {
    entries: Vec<Entry<S>>,
    limits: Limits,
    uses: u64,
}

impl<S: Kv> PrefixCache<S> {
    /// A model's LRU with the default limits.
    pub fn for_model(info: &ModelInfo) -> Self {
        PrefixCache::new(Limits {
            entries: DEFAULT_ENTRIES,
            bytes: DEFAULT_BYTES,
            bytes_per_token: kv_bytes_per_token(info.layer_count, info.embedding_length),
        })
    }

    pub fn new(limits: Limits) -> Self {
        PrefixCache {
            entries: Vec::new(),
            limits,
            uses: 0,
        }
    }

    /// Kept caches now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The state with the longest reusable prefix of `prompt`, leaving at least the last
    /// prompt token to run (its logits start the generation). Ties go to the most recently
    /// used. `None` when nothing kept shares a prefix.
    pub fn take(&mut self, prompt: &[u32]) -> Option<Hit<S>> {
        let limit = prompt.len().checked_sub(1)?;
        let (index, len, source) = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| reusable(e, prompt, limit).map(|(len, s)| (i, len, s)))
            .max_by_key(|&(i, len, _)| (len, self.entries[i].used))?;
        self.uses += 1;
        self.entries[index].used = self.uses;
        let checkpoints = shared_checkpoints(&self.entries[index].checkpoints, len);
        let session = match source {
            Source::Checkpoint(i) => self.entries[index].checkpoints[i].1.share()?,
            Source::Whole | Source::Truncated => {
                let mut session = match self.entries[index].session.share() {
                    Some(copy) => copy,
                    // Written in place: the generation owns it from now on.
                    None => self.entries.swap_remove(index).session,
                };
                if source == Source::Truncated {
                    session.truncate(len);
                }
                session
            }
        };
        Some(Hit {
            session,
            len,
            checkpoints,
        })
    }

    /// Keeps `session`, whose positions hold `tokens`, with its checkpoints; evicts the
    /// least recently used caches to stay within the limits. A cache larger than the whole
    /// budget is dropped.
    pub fn put(&mut self, tokens: Vec<u32>, session: S, checkpoints: Checkpoints<S>) {
        let positions = tokens.len() + checkpoints.iter().map(|(c, _)| c).sum::<usize>();
        let bytes = positions.saturating_mul(self.limits.bytes_per_token);
        let fits = self.limits.entries > 0 && bytes <= self.limits.bytes;
        if tokens.is_empty() || !fits || !session.can_keep() {
            return;
        }
        self.entries.retain(|e| e.tokens != tokens);
        while self.entries.len() >= self.limits.entries || self.bytes() + bytes > self.limits.bytes
        {
            let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].used) else {
                break;
            };
            self.entries.swap_remove(oldest);
        }
        self.uses += 1;
        self.entries.push(Entry {
            tokens,
            session,
            checkpoints,
            bytes,
            used: self.uses,
        });
    }

    /// Forgets every kept cache.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The bytes the kept caches count against the budget (their upper bound, see
    /// [`kv_bytes_per_token`]): what the model reports as `prompt-cache-bytes`.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.bytes).sum()
    }
}

/// How many of `prompt`'s first `limit` positions `entry` can serve, and how.
fn reusable<S: Kv>(entry: &Entry<S>, prompt: &[u32], limit: usize) -> Option<(usize, Source)> {
    let common = common_prefix(&entry.tokens, prompt).min(limit);
    let (len, source) = if common == entry.tokens.len() {
        (common, Source::Whole)
    } else if entry.session.can_truncate() {
        (common, Source::Truncated)
    } else {
        let (i, (pos, _)) = entry
            .checkpoints
            .iter()
            .enumerate()
            .rev()
            .find(|(_, (pos, _))| *pos <= common)?;
        (*pos, Source::Checkpoint(i))
    };
    // Taking a cache written in place out of the LRU destroys it for everyone else: only
    // when the prompt keeps at least half of it (as the llama-cpp plugin picks slots), so
    // a new conversation that shares a chat template's first tokens leaves it alone.
    let worth_it = entry.session.can_share() || len * 2 >= entry.tokens.len();
    (len > 0 && worth_it).then_some((len, source))
}

/// Copies of the checkpoints at or before `len`: the new generation's cache holds the same
/// positions, so they stay valid for it.
fn shared_checkpoints<S: Kv>(checkpoints: &[(usize, S)], len: usize) -> Checkpoints<S> {
    checkpoints
        .iter()
        .filter(|(pos, _)| *pos <= len)
        .filter_map(|(pos, s)| Some((*pos, s.share()?)))
        .collect()
}

/// The length of the longest common prefix.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Which of the networks' caches are snapshots, which can be cut (see the module docs).
/// A network whose cache is changed to be written in place MUST move out of the shared
/// arm, or kept caches would change under the generations that reuse them (the plugin's
/// `prefix_cache` tests catch it: two continuations of one kept cache).
impl Kv for Session {
    fn can_keep(&self) -> bool {
        !matches!(self, Session::GgufQwen3(_) | Session::GgufPhi3(_))
    }

    fn can_share(&self) -> bool {
        matches!(
            self,
            Session::Llama { .. }
                | Session::Mistral(_)
                | Session::Qwen2(_)
                | Session::Qwen3(_)
                | Session::Phi3(_)
                | Session::Gguf(_)
                | Session::Gemma3(_)
        )
    }

    fn share(&self) -> Option<Self> {
        // Concatenating caches: the clone's tensors are never written again, by either side.
        Some(match self {
            Session::Llama { model, cache } => Session::Llama {
                model: model.clone(),
                cache: cache.clone(),
            },
            Session::Mistral(m) => Session::Mistral(m.clone()),
            Session::Qwen2(m) => Session::Qwen2(m.clone()),
            Session::Qwen3(m) => Session::Qwen3(m.clone()),
            Session::Phi3(m) => Session::Phi3(m.clone()),
            Session::Gguf(m) => Session::Gguf(m.clone()),
            Session::Gemma3(m) => Session::Gemma3(m.clone()),
            // Written in place.
            Session::GgufQwen3(_) | Session::GgufPhi3(_) | Session::Dense(_) => return None,
        })
    }

    fn can_truncate(&self) -> bool {
        matches!(self, Session::Dense(_))
    }

    fn truncate(&mut self, len: usize) {
        if let Session::Dense(session) = self {
            session.truncate(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in state: the tokens it holds, shared or owned.
    #[derive(Debug, Clone, PartialEq)]
    struct Fake {
        tokens: Vec<u32>,
        in_place: bool,
    }

    impl Kv for Fake {
        fn can_keep(&self) -> bool {
            !self.tokens.contains(&666)
        }
        fn can_share(&self) -> bool {
            !self.in_place
        }
        fn share(&self) -> Option<Self> {
            (!self.in_place).then(|| self.clone())
        }
        fn can_truncate(&self) -> bool {
            self.in_place
        }
        fn truncate(&mut self, len: usize) {
            self.tokens.truncate(len);
        }
    }

    fn limits(entries: usize) -> Limits {
        Limits {
            entries,
            bytes: 1000,
            bytes_per_token: 1,
        }
    }

    fn fake(tokens: &[u32], in_place: bool) -> Fake {
        Fake {
            tokens: tokens.to_vec(),
            in_place,
        }
    }

    fn seq(n: u32) -> Vec<u32> {
        (0..n).collect()
    }

    /// A shared cache with its checkpoints, as a generation over `tokens` leaves it.
    fn put_shared(cache: &mut PrefixCache<Fake>, tokens: &[u32]) {
        let checkpoints = checkpoints_between(0, tokens.len() + 1)
            .map(|c| (c, fake(&tokens[..c], false)))
            .collect();
        cache.put(tokens.to_vec(), fake(tokens, false), checkpoints);
    }

    #[test]
    fn a_run_stops_at_checkpoints_and_before_the_last_prompt_token() {
        assert_eq!(stops(0, 40, 40), [8, 16, 32, 39]);
        assert_eq!(stops(0, 33, 33), [8, 16, 32]);
        assert_eq!(stops(20, 40, 30), [29, 32]);
        assert_eq!(stops(39, 40, 40), Vec::<usize>::new());
        assert!(snapshot_at(39, 40) && snapshot_at(64, 40) && !snapshot_at(40, 40));
    }

    #[test]
    fn checkpoints_double_from_eight() {
        assert_eq!(
            checkpoints_between(0, 100).collect::<Vec<_>>(),
            [8, 16, 32, 64]
        );
        assert_eq!(checkpoints_between(16, 64).collect::<Vec<_>>(), [32]);
        assert!(is_checkpoint(64) && !is_checkpoint(4) && !is_checkpoint(48));
    }

    #[test]
    fn a_whole_shared_cache_serves_a_longer_prompt_and_stays() {
        let mut cache = PrefixCache::new(limits(4));
        put_shared(&mut cache, &seq(40));
        let hit = cache.take(&seq(50)).expect("hit");
        assert_eq!((hit.len, hit.session.tokens), (40, seq(40)));
        assert_eq!(hit.checkpoints.len(), 3, "8, 16 and 32 go with it");
        assert_eq!(cache.len(), 1, "a shared cache stays kept");
    }

    #[test]
    fn the_last_prompt_token_is_always_run() {
        let mut cache = PrefixCache::new(limits(4));
        cache.put(seq(20), fake(&seq(20), true), Vec::new());
        let hit = cache.take(&seq(20)).expect("hit");
        assert_eq!((hit.len, hit.session.tokens), (19, seq(19)));
        assert!(cache.take(&seq(1)).is_none());
    }

    #[test]
    fn a_shared_cache_serves_a_shorter_or_edited_prompt_from_a_checkpoint() {
        let mut cache = PrefixCache::new(limits(4));
        put_shared(&mut cache, &seq(70));
        let hit = cache.take(&seq(40)).expect("hit");
        assert_eq!((hit.len, hit.session.tokens), (32, seq(32)));
        let mut edited = seq(70);
        edited[20] = 999;
        let hit = cache.take(&edited).expect("hit");
        assert_eq!(hit.len, 16);
        assert_eq!(hit.checkpoints.len(), 2);
        edited[5] = 999;
        assert!(cache.take(&edited).is_none(), "no checkpoint before 5");
    }

    #[test]
    fn an_in_place_cache_is_taken_only_for_at_least_half_of_it() {
        let mut cache = PrefixCache::new(limits(4));
        cache.put(seq(30), fake(&seq(30), true), Vec::new());
        let mut other = seq(30);
        other[14] = 999;
        assert!(cache.take(&other).is_none(), "14 of 30 kept");
        other[14] = 14;
        other[15] = 999;
        assert_eq!(cache.take(&other).expect("hit").len, 15);
    }

    #[test]
    fn an_in_place_cache_is_cut_and_taken_out() {
        let mut cache = PrefixCache::new(limits(4));
        cache.put(seq(30), fake(&seq(30), true), Vec::new());
        let mut edited = seq(30);
        edited[20] = 999;
        let hit = cache.take(&edited).expect("hit");
        assert_eq!((hit.len, hit.session.tokens), (20, seq(20)));
        assert!(
            cache.is_empty(),
            "two generations never share an in-place cache"
        );
        assert!(cache.take(&seq(30)).is_none());
    }

    #[test]
    fn the_longest_prefix_wins() {
        let mut cache = PrefixCache::new(limits(4));
        let other: Vec<u32> = (100..140).collect();
        put_shared(&mut cache, &other);
        put_shared(&mut cache, &seq(20));
        put_shared(&mut cache, &seq(40));
        assert_eq!(cache.take(&seq(60)).expect("hit").len, 40);
        assert_eq!(cache.take(&other).expect("hit").len, 32);
    }

    #[test]
    fn the_least_recently_used_goes_first() {
        let mut cache = PrefixCache::new(limits(2));
        let a: Vec<u32> = (100..120).collect();
        let b: Vec<u32> = (200..220).collect();
        put_shared(&mut cache, &a);
        put_shared(&mut cache, &b);
        assert!(cache.take(&[&a[..], &[1]].concat()).is_some());
        put_shared(&mut cache, &seq(20));
        assert_eq!(cache.len(), 2);
        assert!(
            cache.take(&[&b[..], &[1]].concat()).is_none(),
            "b was evicted"
        );
        assert!(cache.take(&[&a[..], &[1]].concat()).is_some());
    }

    #[test]
    fn the_byte_budget_bounds_what_is_kept() {
        let mut cache = PrefixCache::new(Limits {
            entries: 10,
            bytes: 100,
            bytes_per_token: 1,
        });
        cache.put(seq(60), fake(&seq(60), true), Vec::new());
        assert_eq!(cache.bytes(), 60);
        cache.put((100..150).collect(), fake(&seq(50), true), Vec::new());
        assert_eq!(cache.len(), 1, "60 + 50 bytes exceed 100");
        assert_eq!(cache.bytes(), 50, "the sum follows evictions");
        cache.put(seq(101), fake(&seq(101), true), Vec::new());
        assert_eq!(cache.len(), 1, "a cache over the whole budget is not kept");
        assert!(cache.take(&seq(101)).is_none());
    }

    #[test]
    fn a_state_that_cannot_be_continued_is_not_kept() {
        let mut cache = PrefixCache::new(limits(4));
        cache.put(vec![666; 20], fake(&[666; 20], true), Vec::new());
        assert!(cache.is_empty());
    }

    #[test]
    fn the_same_tokens_replace_their_entry() {
        let mut cache = PrefixCache::new(limits(4));
        put_shared(&mut cache, &seq(20));
        put_shared(&mut cache, &seq(20));
        assert_eq!(cache.len(), 1);
    }
}
