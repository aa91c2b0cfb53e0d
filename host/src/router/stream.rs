//! The response body relay: chunks go to the client as they arrive; an upstream failure
//! after the first byte — an error, a silence longer than the idle timeout, or the node
//! going offline — becomes a clean error event in the stream's own format; the request is
//! recorded (latency, status, tokens from `usage`) when the body ends.

use super::{history::History, proxy::Outgoing, types::RequestRecord};
use axum::{body::Bytes, http::HeaderMap};
use futures_util::{Stream, StreamExt as _};
use std::future::Future as _;
use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Bytes of the response end kept to find token counts.
const TAIL: usize = 16 * 1024;

/// How to tell a client that a stream broke after it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorFlavor {
    /// OpenAI server-sent events: `data: {"error":{...}}`.
    Sse,
    /// Ollama NDJSON: one `{"error":"..."}` line.
    Ndjson,
    /// Anything else: the body is cut off (the client sees an incomplete message).
    Abort,
}

impl ErrorFlavor {
    pub fn of(headers: &HeaderMap) -> Self {
        let content_type = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if content_type.starts_with("text/event-stream") {
            ErrorFlavor::Sse
        } else if content_type.starts_with("application/x-ndjson") {
            ErrorFlavor::Ndjson
        } else {
            ErrorFlavor::Abort
        }
    }

    fn event(self, message: &str) -> Option<Bytes> {
        let text = match self {
            ErrorFlavor::Sse => {
                let body = serde_json::json!({
                    "error": { "message": message, "type": "upstream_error" }
                });
                format!("data: {body}\n\n")
            }
            ErrorFlavor::Ndjson => format!("{}\n", serde_json::json!({ "error": message })),
            ErrorFlavor::Abort => return None,
        };
        Some(Bytes::from(text))
    }
}

/// Collects what the history row needs while the body flows.
pub struct Recorder {
    history: History,
    record: RequestRecord,
    started: Instant,
    tail: Vec<u8>,
    pub attempts: u32,
    done: bool,
}

impl Recorder {
    pub fn new(history: History, req: &Outgoing, ts_ms: i64, started: Instant) -> Self {
        Self {
            history,
            record: RequestRecord {
                ts_ms,
                method: req.method.to_string(),
                path: req.uri.path().to_string(),
                model: req.model.clone(),
                node_id: None,
                status: 0,
                latency_ms: 0.0,
                ttfb_ms: 0.0,
                tokens_in: None,
                tokens_out: None,
                attempts: 0,
                error: None,
            },
            started,
            tail: Vec::new(),
            attempts: 0,
            done: false,
        }
    }

    /// The node answered with `status` (its headers are in).
    pub fn node(&mut self, node_id: &str, status: u16) {
        self.record.node_id = Some(node_id.to_string());
        self.record.status = status;
        self.record.ttfb_ms = ms(self.started);
    }

    fn chunk(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > 2 * TAIL {
            self.tail.drain(..self.tail.len() - TAIL);
        }
    }

    /// No node could answer: record the error status the client got.
    pub fn fail(&mut self, status: u16, error: String) {
        self.record.status = status;
        self.record.ttfb_ms = ms(self.started);
        self.record.error = Some(error);
        self.finish();
    }

    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.record.latency_ms = ms(self.started);
        self.record.attempts = self.attempts + 1;
        let (tokens_in, tokens_out) = token_counts(&self.tail);
        self.record.tokens_in = tokens_in;
        self.record.tokens_out = tokens_out;
        if self.record.error.is_none() && self.record.status >= 400 {
            self.record.error = error_message(&self.tail);
        }
        self.history.record(std::mem::take(&mut self.record));
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.done {
            // The client went away before the end of the body.
            if self.record.error.is_none() && self.record.status != 0 {
                self.record.error = Some("client disconnected".into());
            }
            self.finish();
        }
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

type Upstream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// What ends a body that stops flowing.
pub struct Watch {
    /// Longest silence between chunks.
    pub idle: Duration,
    /// Cancelled when the node goes offline.
    pub down: CancellationToken,
    /// Called when the idle timeout ends the body (marks the node suspect).
    pub on_stall: Box<dyn FnOnce() + Send>,
}

/// The body sent to the client.
pub struct RelayStream {
    upstream: Upstream,
    flavor: ErrorFlavor,
    recorder: Recorder,
    inflight: Arc<AtomicU32>,
    idle: Duration,
    /// Fires `idle` after the last chunk; re-armed lazily (a chunk only notes its time,
    /// so streams of many small chunks do not touch the timer wheel for each).
    timer: Pin<Box<tokio::time::Sleep>>,
    last_chunk: tokio::time::Instant,
    down: Pin<Box<WaitForCancellationFutureOwned>>,
    on_stall: Option<Box<dyn FnOnce() + Send>>,
    /// Bytes still to pass on when the client was promised a length: the server stops
    /// polling (and drops this stream) once it has them, without waiting for the end.
    left: Option<u64>,
    finished: bool,
}

impl RelayStream {
    pub fn new(
        upstream: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
        flavor: ErrorFlavor,
        recorder: Recorder,
        inflight: Arc<AtomicU32>,
        watch: Watch,
    ) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            upstream: Box::pin(upstream),
            flavor,
            recorder,
            inflight,
            idle: watch.idle,
            timer: Box::pin(tokio::time::sleep_until(now + watch.idle)),
            last_chunk: now,
            down: Box::pin(watch.down.cancelled_owned()),
            on_stall: Some(watch.on_stall),
            left: None,
            finished: false,
        }
    }

    /// The response carries `Content-Length: length` to the client.
    pub fn with_length(mut self, length: Option<u64>) -> Self {
        self.left = length;
        self
    }

    /// Ends the body with an error the client can see (an event, or a cut connection) and
    /// lets go of the node's connection.
    fn fail(&mut self, message: String) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        tracing::warn!("router: {message}");
        self.recorder.record.error = Some(message.clone());
        let event = self.flavor.event(&message);
        self.upstream = Box::pin(futures_util::stream::empty());
        self.end();
        match event {
            Some(bytes) => Poll::Ready(Some(Ok(bytes))),
            None => Poll::Ready(Some(Err(std::io::Error::other(message)))),
        }
    }

    /// While the node sends nothing: has it gone offline, or been silent too long?
    fn stalled(&mut self, cx: &mut Context<'_>) -> Option<String> {
        if self.down.as_mut().poll(cx).is_ready() {
            return Some(format!("node {} went offline mid-response", self.node()));
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let due = self.last_chunk + self.idle;
            if due <= tokio::time::Instant::now() {
                break;
            }
            // Chunks came since the timer was set: wait from the last one.
            self.timer.as_mut().reset(due);
        }
        if let Some(on_stall) = self.on_stall.take() {
            on_stall();
        }
        let idle = super::proxy::seconds(self.idle);
        Some(format!(
            "node {} sent nothing for {idle} mid-response",
            self.node()
        ))
    }

    fn node(&self) -> &str {
        self.recorder.record.node_id.as_deref().unwrap_or_default()
    }

    fn end(&mut self) {
        if !self.finished {
            self.finished = true;
            self.inflight.fetch_sub(1, Ordering::Relaxed);
            self.recorder.finish();
        }
    }
}

impl Drop for RelayStream {
    fn drop(&mut self) {
        if self.left == Some(0) {
            // Everything promised was passed on (or nothing was promised: an empty body).
            self.end();
        } else if !self.finished {
            // Cut short: the recorder's own drop records the client going away.
            self.finished = true;
            self.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Stream for RelayStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.upstream.poll_next_unpin(cx) {
            Poll::Pending => match self.stalled(cx) {
                Some(message) => self.fail(message),
                None => Poll::Pending,
            },
            Poll::Ready(Some(Ok(bytes))) => {
                self.last_chunk = tokio::time::Instant::now();
                self.recorder.chunk(&bytes);
                if let Some(left) = &mut self.left {
                    *left = left.saturating_sub(bytes.len() as u64);
                }
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(None) => {
                self.end();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                let node = self.recorder.record.node_id.clone().unwrap_or_default();
                let message = format!(
                    "node {node} failed mid-response: {}",
                    super::proxy::describe(&err)
                );
                self.fail(message)
            }
        }
    }
}

/// Prompt and completion tokens from the last `usage` object (OpenAI) or the last
/// `prompt_eval_count` / `eval_count` (Ollama) in the response's end.
pub fn token_counts(tail: &[u8]) -> (Option<u64>, Option<u64>) {
    // Typed rather than `serde_json::Value`: this runs at the end of every response, and a
    // `Value` allocates a map and a string per field.
    #[derive(serde::Deserialize)]
    struct Usage {
        prompt_tokens: Option<serde_json::Number>,
        completion_tokens: Option<serde_json::Number>,
    }
    let count = |n: Option<serde_json::Number>| n.and_then(|n| n.as_u64());
    if let Some(Some(usage)) = last_of::<Option<Usage>>(tail, b"\"usage\":") {
        return (count(usage.prompt_tokens), count(usage.completion_tokens));
    }
    let number = |key: &[u8]| last_of::<serde_json::Number>(tail, key).and_then(|n| n.as_u64());
    (
        number(b"\"prompt_eval_count\":"),
        number(b"\"eval_count\":"),
    )
}

/// The error message of a JSON error body (`{"error":"..."}` or `{"error":{"message":..}}`).
fn error_message(tail: &[u8]) -> Option<String> {
    let value = last_value(tail, b"\"error\":")?;
    let text = value
        .get("message")
        .and_then(|m| m.as_str())
        .or(value.as_str())
        .map(str::to_string);
    text.or_else(|| Some(value.to_string()))
}

/// The JSON value that follows the last occurrence of `key`.
fn last_value(haystack: &[u8], key: &[u8]) -> Option<serde_json::Value> {
    last_of(haystack, key)
}

/// The value of type `T` that follows the last occurrence of `key` (None: absent or not a `T`).
fn last_of<T: serde::de::DeserializeOwned>(haystack: &[u8], key: &[u8]) -> Option<T> {
    let at = haystack.windows(key.len()).rposition(|w| w == key)?;
    let rest = &haystack[at + key.len()..];
    serde_json::Deserializer::from_slice(rest)
        .into_iter::<T>()
        .next()?
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_token_counts() {
        let openai = br#"data: {"usage":null}

data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14}}

data: [DONE]
"#;
        assert_eq!(token_counts(openai), (Some(5), Some(9)));
        let ollama = br#"{"done":false}
{"done":true,"prompt_eval_count":4,"eval_count":12}
"#;
        assert_eq!(token_counts(ollama), (Some(4), Some(12)));
        assert_eq!(token_counts(b"{}"), (None, None));
        // A `usage` that is not an object falls back to Ollama's counts.
        assert_eq!(
            token_counts(br#"{"usage":null,"prompt_eval_count":2,"eval_count":3}"#),
            (Some(2), Some(3))
        );
        assert_eq!(
            token_counts(br#"{"usage":{"prompt_tokens":4,"total_tokens":4,"x":{"y":[1]}}}"#),
            (Some(4), None)
        );
        assert_eq!(
            error_message(br#"{"error":{"message":"bad","type":"x"}}"#).as_deref(),
            Some("bad")
        );
    }
}
