//! Stop sequences across token boundaries: text that could be the start of a stop sequence
//! is held back until the next pieces show whether it is one.
//!
//! Matching is linear in the text, whatever the number of stop sequences, with two
//! Aho-Corasick automata over the stops (the aho-corasick crate): a leftmost search finds the
//! earliest stop in the pending text, and a standard automaton walked over the same text ends
//! in the trie node of the longest tail that is a prefix of a stop, whose depth is the number
//! of bytes to hold back. Checking every stop at every offset made 13,000 stops of 300
//! characters cost one request 44 s of CPU. Requests are also limited ([`MAX_STOPS`],
//! [`MAX_STOP_BYTES`], checked by the server) so the automata stay small.

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::nfa::noncontiguous::NFA;
use aho_corasick::{AhoCorasick, Anchored, MatchKind};

/// Most stop sequences one request may name (OpenAI allows 4; llama-server has no limit; 16
/// leaves room for chat templates' own and clients that send a few per role).
pub const MAX_STOPS: usize = 16;
/// Longest stop sequence a request may name, in bytes of UTF-8.
pub const MAX_STOP_BYTES: usize = 256;

/// `Err(message)` naming the limit when a request's stop list is over [`MAX_STOPS`] or one of
/// them over [`MAX_STOP_BYTES`] (or empty).
pub fn check_stop_limits(stops: &[String]) -> Result<(), String> {
    if stops.len() > MAX_STOPS {
        return Err(format!(
            "stop: at most {MAX_STOPS} stop sequences are allowed, got {}",
            stops.len()
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err("stop sequences must not be empty".into());
    }
    if let Some(long) = stops.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(format!(
            "stop: a stop sequence may be at most {MAX_STOP_BYTES} bytes long, got one of {} bytes",
            long.len()
        ));
    }
    Ok(())
}

/// What a piece of text did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Text safe to emit now (may be empty while a possible stop sequence is held back).
    Emit(String),
    /// A stop sequence was found: emit this text (what came before it) and end.
    Stopped(String),
}

/// Finds stop sequences in streamed text. Works on whole characters: the pieces it is given
/// are valid UTF-8 and it only splits at character boundaries.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    automata: Option<Automata>,
    pending: String,
    /// The stops, in the automata's pattern order.
    stops: Vec<String>,
    /// The stop that ended the text, once one did.
    matched: Option<String>,
}

/// The stops compiled once per generation.
#[derive(Debug, Clone)]
struct Automata {
    /// Leftmost search: the earliest start of any stop.
    find: AhoCorasick,
    /// Standard semantics (failure links untouched by leftmost rules), walked byte by byte.
    walk: NFA,
    /// Trie depth of each state reached by a prefix of a stop (indexed by state id).
    depth: Vec<usize>,
}

impl Automata {
    fn new(stops: &[String]) -> Option<Automata> {
        let find = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(stops)
            .ok()?;
        let walk = NFA::builder()
            .match_kind(MatchKind::Standard)
            .build(stops)
            .ok()?;
        let start = walk.start_state(Anchored::No).ok()?;
        let mut depth = Vec::new();
        // From the start, a prefix of a stop walks trie edges only, so the state it ends in
        // is that prefix's node: record its length there.
        for stop in stops {
            let mut sid = start;
            for (i, byte) in stop.bytes().enumerate() {
                sid = walk.next_state(Anchored::No, sid, byte);
                set_depth(&mut depth, sid, i + 1);
            }
        }
        Some(Automata { find, walk, depth })
    }

    /// The longest tail of `text` that is a prefix of a stop (the caller has checked that
    /// no whole stop occurs in `text`, so the prefix is a proper one).
    fn held_suffix_len(&self, text: &str) -> usize {
        let Ok(mut sid) = self.walk.start_state(Anchored::No) else {
            return 0;
        };
        for byte in text.bytes() {
            sid = self.walk.next_state(Anchored::No, sid, byte);
        }
        self.depth.get(sid.as_usize()).copied().unwrap_or(0)
    }
}

fn set_depth(depth: &mut Vec<usize>, sid: StateID, len: usize) {
    let at = sid.as_usize();
    if depth.len() <= at {
        depth.resize(at + 1, 0);
    }
    depth[at] = len;
}

impl StopMatcher {
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        let mut stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        stops.sort();
        stops.dedup();
        let automata = if stops.is_empty() {
            None
        } else {
            let built = Automata::new(&stops);
            if built.is_none() {
                // Only an automaton too large for the crate's state ids fails to build;
                // request limits keep far below that.
                tracing::warn!(
                    stops = stops.len(),
                    "stop sequences could not be compiled; ignoring them"
                );
            }
            built
        };
        StopMatcher {
            automata,
            pending: String::new(),
            stops,
            matched: None,
        }
    }

    /// The stop sequence that ended the generation (Anthropic's `stop_sequence` names it).
    pub fn matched(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// Adds the next piece of generated text.
    pub fn push(&mut self, piece: &str) -> Scan {
        let Some(automata) = &self.automata else {
            return Scan::Emit(piece.to_string());
        };
        self.pending.push_str(piece);
        if let Some(found) = automata.find.find(self.pending.as_str()) {
            let before = self.pending[..found.start()].to_string();
            self.pending.clear();
            self.matched = self.stops.get(found.pattern().as_usize()).cloned();
            return Scan::Stopped(before);
        }
        let keep = automata.held_suffix_len(&self.pending);
        let split = self.pending.len() - keep;
        let emit = self.pending[..split].to_string();
        self.pending.drain(..split);
        Scan::Emit(emit)
    }

    /// The end of the generation: what was held back is plain text after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()));
        let mut out = String::new();
        for piece in pieces {
            match m.push(piece) {
                Scan::Emit(text) => out.push_str(&text),
                Scan::Stopped(text) => {
                    out.push_str(&text);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn the_matched_stop_is_named() {
        let mut m = StopMatcher::new(["zz".to_string(), "END".to_string(), "E".to_string()]);
        assert_eq!(m.push("abEN"), Scan::Stopped("ab".into()));
        // The earliest start wins; among stops starting there, the sorted list's first.
        assert_eq!(m.matched(), Some("E"));
        let mut m = StopMatcher::new(["zz".to_string(), "END".to_string()]);
        assert_eq!(m.push("a"), Scan::Emit("a".into()));
        assert_eq!(m.matched(), None);
        assert_eq!(m.push("bzz"), Scan::Stopped("b".into()));
        assert_eq!(m.matched(), Some("zz"));
    }

    #[test]
    fn stop_split_over_pieces() {
        assert_eq!(
            run(&["END"], &["ab", "cE", "N", "Dxyz"]),
            ("abc".into(), true)
        );
    }

    #[test]
    fn a_false_start_is_released() {
        assert_eq!(run(&["END"], &["aE", "Nb", "c"]), ("aENbc".into(), false));
        assert_eq!(run(&["END"], &["aE", "N"]), ("aEN".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["yz", "x"], &["wxyz"]), ("w".into(), true));
    }

    #[test]
    fn multibyte_text_is_split_at_char_boundaries() {
        let mut m = StopMatcher::new(["éé".to_string()]);
        assert_eq!(m.push("aé"), Scan::Emit("a".into()));
        assert_eq!(m.push("b"), Scan::Emit("éb".into()));
        assert_eq!(m.push("éé"), Scan::Stopped(String::new()));
    }

    #[test]
    fn a_stop_split_over_pieces_is_named() {
        let mut m = StopMatcher::new(["zz".to_string(), "END".to_string()]);
        assert_eq!(m.push("aEN"), Scan::Emit("a".into()));
        assert_eq!(m.matched(), None);
        assert_eq!(m.push("D"), Scan::Stopped(String::new()));
        assert_eq!(m.matched(), Some("END"));
    }

    #[test]
    fn no_stops_passes_everything() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    /// The matcher before Aho-Corasick, kept as the reference: every stop at every offset.
    struct Naive {
        stops: Vec<String>,
        pending: String,
    }

    impl Naive {
        fn push(&mut self, piece: &str) -> Scan {
            if self.stops.is_empty() {
                return Scan::Emit(piece.to_string());
            }
            self.pending.push_str(piece);
            let first = self
                .stops
                .iter()
                .filter_map(|s| self.pending.find(s.as_str()))
                .min();
            if let Some(at) = first {
                let before = self.pending[..at].to_string();
                self.pending.clear();
                return Scan::Stopped(before);
            }
            let text = self.pending.as_str();
            let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
            let keep = (1..=longest.min(text.len()))
                .rev()
                .filter(|&k| text.is_char_boundary(text.len() - k))
                .find(|&k| {
                    let tail = &text[text.len() - k..];
                    self.stops
                        .iter()
                        .any(|s| s.len() > k && s.starts_with(tail))
                })
                .unwrap_or(0);
            let split = self.pending.len() - keep;
            let emit = self.pending[..split].to_string();
            self.pending.drain(..split);
            Scan::Emit(emit)
        }
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
        /// Text over a tiny alphabet (with a 2-byte character), so stops overlap a lot.
        fn text(&mut self, len: usize) -> String {
            (0..len)
                .map(|_| ['a', 'a', 'b', 'é'][self.below(4)])
                .collect()
        }
    }

    /// Feeds the same pieces to both matchers; every step must agree.
    fn agree(stops: &[String], text: &str, rng: &mut Rng) {
        let mut fast = StopMatcher::new(stops.iter().cloned());
        let mut naive = Naive {
            stops: stops.to_vec(),
            pending: String::new(),
        };
        let chars: Vec<char> = text.chars().collect();
        let mut at = 0;
        while at < chars.len() {
            let n = 1 + rng.below(6);
            let piece: String = chars[at..(at + n).min(chars.len())].iter().collect();
            at += n;
            let (got, want) = (fast.push(&piece), naive.push(&piece));
            assert_eq!(got, want, "stops {stops:?}, text {text:?}, piece {piece:?}");
            if matches!(got, Scan::Stopped(_)) {
                return;
            }
        }
        assert_eq!(fast.finish(), naive.pending);
    }

    #[test]
    fn agrees_with_the_naive_matcher_on_overlapping_stops() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..3000 {
            let count = 1 + rng.below(MAX_STOPS);
            let stops: Vec<String> = (0..count)
                .map(|_| {
                    let len = 1 + rng.below(6);
                    rng.text(len)
                })
                .collect();
            let len = rng.below(60);
            let text = rng.text(len);
            agree(&stops, &text, &mut rng);
        }
    }

    #[test]
    fn a_full_list_of_long_overlapping_stops_agrees_too() {
        // The worst case for the old matcher: MAX_STOPS stops of MAX_STOP_BYTES, each a long
        // run of `a` with a different end, over text that is mostly `a`.
        let mut rng = Rng(42);
        let stops: Vec<String> = (0..MAX_STOPS)
            .map(|i| {
                let mut s = "a".repeat(MAX_STOP_BYTES - 1 - i);
                s.push_str(&"b".repeat(i + 1));
                s
            })
            .collect();
        assert!(check_stop_limits(&stops).is_ok());
        let mut text = "a".repeat(700);
        text.push_str(&"b".repeat(3));
        text.push_str(&"a".repeat(300));
        agree(&stops, &text, &mut rng);
        let mut mixed = rng.text(400);
        mixed.push_str(&stops[5]);
        agree(&stops, &mixed, &mut rng);
    }

    #[test]
    fn limits_name_the_limit() {
        let many = vec!["x".to_string(); MAX_STOPS + 1];
        assert!(check_stop_limits(&many).unwrap_err().contains("at most 16"));
        let long = vec!["x".repeat(MAX_STOP_BYTES + 1)];
        assert!(check_stop_limits(&long).unwrap_err().contains("256 bytes"));
        assert!(check_stop_limits(&[String::new()]).is_err());
        assert!(check_stop_limits(&vec!["x".repeat(MAX_STOP_BYTES); MAX_STOPS]).is_ok());
    }
}
