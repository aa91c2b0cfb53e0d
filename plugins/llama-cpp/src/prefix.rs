//! Which sequence slot a new job takes, and what each free slot's KV cells still hold
//! (prompt-prefix reuse, capability `prefix-cache`).
//!
//! A generation that ended normally with `cache_prompt` on leaves its KV cells in place;
//! [`SlotMemory`] remembers the tokens they hold (the prompt plus the generated tokens that
//! were decoded, positions `0..n`). A new job takes the free slot whose tokens share the
//! longest common prefix with its prompt, as llama-server does per slot; the engine then
//! removes only the differing tail of the KV cells and evaluates the rest of the prompt.
//! This module only keeps the books; the engine owns the KV cells.

use llama_cpp_2::token::LlamaToken;

/// The tokens each slot's KV cells hold while it is free, and when each was last used.
#[derive(Debug)]
pub struct SlotMemory {
    held: Vec<Vec<LlamaToken>>,
    last_used: Vec<u64>,
    /// A counter, not a clock: only the order of uses matters.
    uses: u64,
}

/// The slot a job gets and how many of its prompt tokens are already in that slot's cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub slot: usize,
    /// Tokens of the prompt the slot holds at positions `0..common` (before the engine
    /// keeps at least one prompt token to evaluate, see [`reusable`]).
    pub common: usize,
}

impl SlotMemory {
    pub fn new(slots: usize) -> Self {
        SlotMemory {
            held: vec![Vec::new(); slots],
            last_used: vec![0; slots],
            uses: 0,
        }
    }

    /// The free slot for `prompt` among `free`. A *hit* is a slot whose common prefix with
    /// the prompt keeps at least half of what the slot holds; the longest hit wins (ties: the
    /// least recently used). Without a hit (or for `prompt` = `None`: a job that must start
    /// from empty cells) an empty slot comes first, so a new conversation that shares only
    /// a chat template's first tokens with a kept one does not wipe that one's history; then
    /// the longest common prefix, then the least recently used. `None` when no slot is free.
    pub fn pick(&self, free: &[usize], prompt: Option<&[LlamaToken]>) -> Option<Pick> {
        let common = |slot: usize| prompt.map_or(0, |p| common_prefix(&self.held[slot], p));
        free.iter()
            .map(|&slot| Pick {
                slot,
                common: common(slot),
            })
            .min_by_key(|pick| {
                let held = self.held[pick.slot].len();
                let hit = pick.common > 0 && pick.common * 2 >= held;
                (
                    !hit,
                    std::cmp::Reverse(if hit { pick.common } else { 0 }),
                    held > 0,
                    std::cmp::Reverse(pick.common),
                    self.last_used[pick.slot],
                )
            })
    }

    /// Records that `slot` was taken now.
    pub fn touch(&mut self, slot: usize) {
        self.uses += 1;
        self.last_used[slot] = self.uses;
    }

    /// What `slot`'s cells hold from now on (its KV is kept while the slot is free).
    pub fn remember(&mut self, slot: usize, tokens: Vec<LlamaToken>) {
        self.held[slot] = tokens;
    }

    /// `slot`'s cells are (about to be) cleared or taken over by a running sequence.
    pub fn forget(&mut self, slot: usize) {
        self.held[slot].clear();
    }

    /// The tokens `slot`'s cells hold (empty while it runs a sequence or holds nothing).
    pub fn held(&self, slot: usize) -> &[LlamaToken] {
        self.held.get(slot).map_or(&[], Vec::as_slice)
    }

    /// The slots whose cells hold kept tokens.
    pub fn holding(&self) -> Vec<usize> {
        (0..self.held.len())
            .filter(|&slot| !self.held[slot].is_empty())
            .collect()
    }
}

/// How many tokens two sequences share from the start.
pub fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Of a `common` prefix of a prompt of `prompt_len` tokens, how many can be reused: the last
/// prompt token is always evaluated again, because its logits give the first new token and
/// llama.cpp keeps logits only for the batch just decoded.
pub fn reusable(common: usize, prompt_len: usize) -> usize {
    common.min(prompt_len.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(ids: &[i32]) -> Vec<LlamaToken> {
        ids.iter().map(|&id| LlamaToken::new(id)).collect()
    }

    #[test]
    fn longest_common_prefix_wins() {
        let mut memory = SlotMemory::new(3);
        memory.remember(0, toks(&[1, 2, 9]));
        memory.remember(1, toks(&[1, 2, 3, 4]));
        memory.remember(2, toks(&[7]));
        let prompt = toks(&[1, 2, 3, 5]);
        let pick = memory.pick(&[0, 1, 2], Some(&prompt));
        assert_eq!(pick, Some(Pick { slot: 1, common: 3 }));
        // Only free slots count.
        let pick = memory.pick(&[0, 2], Some(&prompt));
        assert_eq!(pick, Some(Pick { slot: 0, common: 2 }));
    }

    #[test]
    fn no_match_prefers_an_empty_slot_then_the_least_recently_used() {
        let mut memory = SlotMemory::new(3);
        memory.remember(0, toks(&[4]));
        memory.touch(0);
        memory.remember(1, toks(&[5]));
        memory.touch(1);
        memory.touch(2); // used last, but empty
        let prompt = toks(&[1, 2]);
        assert_eq!(
            memory.pick(&[0, 1, 2], Some(&prompt)).map(|p| p.slot),
            Some(2)
        );
        assert_eq!(memory.pick(&[0, 1], Some(&prompt)).map(|p| p.slot), Some(0));
        // A job that must start clean picks the same way.
        assert_eq!(
            memory.pick(&[0, 1], None),
            Some(Pick { slot: 0, common: 0 })
        );
    }

    #[test]
    fn equal_prefixes_go_to_the_least_recently_used() {
        let mut memory = SlotMemory::new(2);
        memory.touch(1);
        memory.touch(0);
        memory.remember(0, toks(&[1, 2]));
        memory.remember(1, toks(&[1, 2]));
        let prompt = toks(&[1, 2, 3]);
        assert_eq!(
            memory.pick(&[0, 1], Some(&prompt)),
            Some(Pick { slot: 1, common: 2 })
        );
    }

    #[test]
    fn a_short_match_on_a_long_history_takes_an_empty_slot_instead() {
        let mut memory = SlotMemory::new(3);
        memory.remember(0, toks(&[1, 2, 3, 4, 5, 6, 7, 8]));
        memory.remember(1, toks(&[1, 2, 9]));
        let prompt = toks(&[1, 2, 10, 11]);
        // Slot 1 keeps 2 of its 3 tokens: a hit; slot 0 would lose 6 of 8.
        assert_eq!(
            memory.pick(&[0, 1, 2], Some(&prompt)),
            Some(Pick { slot: 1, common: 2 })
        );
        assert_eq!(
            memory.pick(&[0, 2], Some(&prompt)),
            Some(Pick { slot: 2, common: 0 })
        );
        // Nothing empty: the longest common prefix still saves work.
        assert_eq!(
            memory.pick(&[0], Some(&prompt)),
            Some(Pick { slot: 0, common: 2 })
        );
    }

    #[test]
    fn nothing_free_picks_nothing() {
        assert_eq!(SlotMemory::new(2).pick(&[], Some(&toks(&[1]))), None);
    }

    #[test]
    fn the_last_prompt_token_is_always_evaluated() {
        assert_eq!(reusable(5, 5), 4);
        assert_eq!(reusable(3, 5), 3);
        assert_eq!(reusable(9, 5), 4); // the cells hold more than the prompt
        assert_eq!(reusable(0, 1), 0);
    }

    #[test]
    fn forget_and_holding() {
        let mut memory = SlotMemory::new(3);
        memory.remember(0, toks(&[1]));
        memory.remember(2, toks(&[2]));
        assert_eq!(memory.holding(), vec![0, 2]);
        assert_eq!(memory.held(2), toks(&[2]).as_slice());
        assert!(memory.held(1).is_empty() && memory.held(9).is_empty());
        memory.forget(0);
        assert_eq!(memory.holding(), vec![2]);
    }
}
