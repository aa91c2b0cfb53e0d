//! Streaming with tools: text that may be a call is held back until the end of the answer
//! (a call is only complete there), text that clearly is prose streams at once.
//!
//! Until the answer shows it is prose (see [`parse::may_be_call`]) everything is held. Once
//! it is prose, it streams, except a tail that could begin a call marker (`<tool_call>`,
//! `[TOOL_CALLS]`, `<|python_tag|>`); when a marker appears, the rest is held. At the end
//! [`CallBuffer::finish`] parses what was held: calls, plus the content not yet sent.

use super::{parse, ToolSpec};

const MARKERS: [&str; 3] = ["<tool_call>", "[TOOL_CALLS]", "<|python_tag|>"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing shows yet whether this is a call.
    Undecided,
    /// Prose; a possible marker's start is held.
    Content,
    /// A call started: everything is held until the end.
    Calls,
}

/// Splits a streamed answer into content to send now and calls at the end.
#[derive(Debug)]
pub struct CallBuffer {
    tools: Vec<ToolSpec>,
    /// `parallel_tool_calls: false`: only the first call is kept.
    parallel: bool,
    held: String,
    mode: Mode,
}

impl CallBuffer {
    pub fn new(tools: Vec<ToolSpec>, parallel: bool) -> Self {
        CallBuffer {
            tools,
            parallel,
            held: String::new(),
            mode: Mode::Undecided,
        }
    }

    /// Takes the next piece; returns the content that can be sent now (maybe empty).
    pub fn push(&mut self, piece: &str) -> String {
        self.held.push_str(piece);
        if self.mode == Mode::Undecided {
            if parse::may_be_call(&self.held) {
                return String::new();
            }
            self.mode = Mode::Content;
        }
        if self.mode == Mode::Calls {
            return String::new();
        }
        if let Some(at) = MARKERS.iter().filter_map(|m| self.held.find(m)).min() {
            self.mode = Mode::Calls;
            return self.held.drain(..at).collect();
        }
        let keep = partial_marker_start(&self.held).unwrap_or(self.held.len());
        self.held.drain(..keep).collect()
    }

    /// The end of the answer: the content still held and the calls.
    pub fn finish(self) -> parse::Parsed {
        if self.mode == Mode::Content {
            return parse::Parsed {
                content: self.held,
                calls: Vec::new(),
            };
        }
        let mut parsed = parse::parse(&self.held, &self.tools);
        if !self.parallel {
            parsed.calls.truncate(1);
        }
        parsed
    }
}

/// Where a tail of `text` starts that is the beginning of a marker (`<tool`, `[TOOL_`).
fn partial_marker_start(text: &str) -> Option<usize> {
    text.char_indices()
        .filter(|(_, c)| *c == '<' || *c == '[')
        .map(|(at, _)| at)
        .find(|&at| MARKERS.iter().any(|m| m.starts_with(&text[at..])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn buffer() -> CallBuffer {
        CallBuffer::new(
            vec![ToolSpec {
                name: "get_time".into(),
                description: None,
                parameters: json!({"type": "object"}),
            }],
            true,
        )
    }

    /// Feeds `text` a few bytes at a time (on char boundaries); returns what streamed.
    fn feed(buffer: &mut CallBuffer, text: &str) -> String {
        let chars: Vec<char> = text.chars().collect();
        chars
            .chunks(3)
            .map(|c| buffer.push(&c.iter().collect::<String>()))
            .collect()
    }

    #[test]
    fn prose_streams_and_nothing_is_left() {
        let mut b = buffer();
        let text = "It is [roughly] noon <b>now</b>.";
        let sent = feed(&mut b, text);
        let rest = b.finish();
        assert_eq!(format!("{sent}{}", rest.content), text);
        assert!(sent.len() >= "It is [roughly] noon".len(), "{sent:?}");
        assert!(rest.calls.is_empty());
    }

    #[test]
    fn a_call_is_held_and_parsed_at_the_end() {
        let mut b = buffer();
        let sent = feed(&mut b, "{\"name\": \"get_time\", \"arguments\": {}}");
        assert_eq!(sent, "");
        let parsed = b.finish();
        assert_eq!(parsed.calls.len(), 1);
        assert_eq!(parsed.content, "");
    }

    #[test]
    fn prose_then_a_hermes_call() {
        let mut b = buffer();
        let sent = feed(
            &mut b,
            "Checking.\n<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>",
        );
        assert_eq!(sent, "Checking.\n");
        let parsed = b.finish();
        assert_eq!(parsed.calls.len(), 1);
        assert_eq!(parsed.content, "");
    }

    #[test]
    fn without_parallel_calls_only_the_first_is_kept() {
        let spec = buffer().tools;
        let mut b = CallBuffer::new(spec, false);
        let two = "<tool_call>{\"name\": \"get_time\"}</tool_call><tool_call>{\"name\": \"get_time\"}</tool_call>";
        feed(&mut b, two);
        assert_eq!(b.finish().calls.len(), 1);
    }

    #[test]
    fn json_that_is_not_a_call_comes_back_as_content() {
        let mut b = buffer();
        let text = "{\"answer\": 42}";
        assert_eq!(feed(&mut b, text), "");
        let parsed = b.finish();
        assert_eq!(parsed.content, text);
        assert!(parsed.calls.is_empty());
    }
}
