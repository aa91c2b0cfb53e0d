//! Turns a generation's event stream into a streamed HTTP body: SSE for OpenAI, NDJSON for
//! Ollama. The body owns the [`TokenStream`]: when the client goes away, hyper drops the
//! body, the stream is dropped and the generation is cancelled.

use crate::engine::{Completion, EngineError, Event, TokenLogprobs, TokenStream};
use axum::body::{Body, Bytes};
use futures_util::{stream, StreamExt};
use std::convert::Infallible;

/// Writes the frames of one protocol.
pub trait Framer: Send + 'static {
    /// Frames before the first token.
    fn start(&mut self) -> Vec<String> {
        Vec::new()
    }
    fn text(&mut self, text: &str) -> Vec<String>;
    /// The tokens of the text that comes next (only when the request asked for logprobs);
    /// a framer that reports them keeps them for its next frame.
    fn logprobs(&mut self, _tokens: Vec<TokenLogprobs>) -> Vec<String> {
        Vec::new()
    }
    fn done(&mut self, done: &Completion) -> Vec<String>;
    fn error(&mut self, err: &EngineError) -> Vec<String>;
}

/// One Server-Sent Event carrying JSON.
pub fn sse(value: &serde_json::Value) -> String {
    format!("data: {value}\n\n")
}

pub const SSE_DONE: &str = "data: [DONE]\n\n";

/// One NDJSON line.
pub fn ndjson(value: &serde_json::Value) -> String {
    format!("{value}\n")
}

/// A frame with one string slot, serialized once, so each token only escapes its own text.
#[derive(Debug, Clone)]
pub struct Slotted {
    prefix: String,
    suffix: String,
}

/// The placeholder a [`Slotted`] frame is built around.
pub const SLOT: &str = "\u{1}llmlocal-slot\u{1}";

impl Slotted {
    /// `frame` is the whole rendered frame (e.g. `sse(&value)`) with [`SLOT`] as one string
    /// value inside.
    pub fn new(frame: &str) -> Slotted {
        let slot = serde_json::Value::from(SLOT).to_string();
        match frame.split_once(&slot) {
            Some((prefix, suffix)) => Slotted {
                prefix: prefix.to_string(),
                suffix: suffix.to_string(),
            },
            None => Slotted {
                prefix: frame.to_string(),
                suffix: String::new(),
            },
        }
    }

    pub fn fill(&self, text: &str) -> String {
        let text = serde_json::Value::from(text).to_string();
        let mut out = String::with_capacity(self.prefix.len() + text.len() + self.suffix.len());
        out.push_str(&self.prefix);
        out.push_str(&text);
        out.push_str(&self.suffix);
        out
    }
}

struct State<F> {
    tokens: Option<TokenStream>,
    framer: F,
    started: bool,
    /// Whether the first token's frame was logged.
    logged: bool,
}

/// Frames for one event; true when it was the last.
fn frame_event<F: Framer>(
    framer: &mut F,
    event: Result<Event, EngineError>,
    out: &mut String,
) -> bool {
    let (frames, last) = match event {
        Ok(Event::Text(text)) => (framer.text(&text), false),
        Ok(Event::Logprobs(tokens)) => (framer.logprobs(tokens), false),
        Ok(Event::Done(done)) => (framer.done(&done), true),
        Err(err) => (framer.error(&err), true),
    };
    frames.iter().for_each(|f| out.push_str(f));
    last
}

/// The streamed body for a running generation. Events already waiting are written together
/// (one write instead of one per token when the client reads slower than tokens come).
pub fn body<F: Framer>(tokens: TokenStream, framer: F) -> Body {
    let state = State {
        tokens: Some(tokens),
        framer,
        started: false,
        logged: false,
    };
    let chunks = stream::unfold(state, |mut state| async move {
        if !state.started {
            state.started = true;
            let start = state.framer.start().concat();
            return Some((Ok::<_, Infallible>(Bytes::from(start)), state));
        }
        let mut tokens = state.tokens.take()?;
        let mut out = String::new();
        let mut last = frame_event(&mut state.framer, tokens.next().await?, &mut out);
        if !state.logged {
            state.logged = true;
            log_first_frame(&tokens);
        }
        while !last {
            match tokens.try_next() {
                Some(event) => last = frame_event(&mut state.framer, event, &mut out),
                None => break,
            }
        }
        if !last {
            state.tokens = Some(tokens);
        }
        Some((Ok(Bytes::from(out)), state))
    });
    Body::from_stream(chunks)
}

/// The engine's own debug line says when the token left the backend; this one says when it
/// was framed for the client, after the hop from the generation thread to the connection's.
fn log_first_frame(tokens: &TokenStream) {
    tracing::debug!(
        model = %tokens.model,
        "first frame {:.3} ms after the request",
        tokens.received.elapsed().as_secs_f64() * 1000.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slotted_frames_escape_the_text() {
        let frame = sse(&serde_json::json!({"a": 1, "delta": {"content": SLOT}, "z": null}));
        let slotted = Slotted::new(&frame);
        let filled = slotted.fill("say \"hi\"\n✓");
        let expected =
            sse(&serde_json::json!({"a": 1, "delta": {"content": "say \"hi\"\n✓"}, "z": null}));
        assert_eq!(filled, expected);
    }
}
