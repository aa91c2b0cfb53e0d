//! Stop sequences across token boundaries: text that could be the start of a stop sequence
//! is held back until the next pieces show whether it is one.

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
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        let mut stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        stops.sort();
        stops.dedup();
        StopMatcher {
            stops,
            pending: String::new(),
        }
    }

    /// Adds the next piece of generated text.
    pub fn push(&mut self, piece: &str) -> Scan {
        if self.stops.is_empty() {
            return Scan::Emit(piece.to_string());
        }
        self.pending.push_str(piece);
        if let Some(at) = self.first_stop() {
            let before = self.pending[..at].to_string();
            self.pending.clear();
            return Scan::Stopped(before);
        }
        let keep = self.held_suffix_len();
        let split = self.pending.len() - keep;
        let emit = self.pending[..split].to_string();
        self.pending.drain(..split);
        Scan::Emit(emit)
    }

    /// The end of the generation: what was held back is plain text after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// The earliest position where any stop sequence starts.
    fn first_stop(&self) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
    }

    /// The longest tail of the pending text that is a proper prefix of a stop sequence.
    fn held_suffix_len(&self) -> usize {
        let text = self.pending.as_str();
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        (1..=longest.min(text.len()))
            .rev()
            .filter(|&k| text.is_char_boundary(text.len() - k))
            .find(|&k| {
                let tail = &text[text.len() - k..];
                self.stops
                    .iter()
                    .any(|s| s.len() > k && s.starts_with(tail))
            })
            .unwrap_or(0)
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
    fn no_stops_passes_everything() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }
}
