//! Generation helpers shared by the checks: run a request to its end, run work under a time
//! limit so a hung plugin fails a check instead of hanging the suite.

use crate::outcome::{fail, Failure};
use llmlocal::{
    api::{FinishReason, GenerateRequest, GenerationStats, Step},
    plugins::LoadedModel,
};
use std::{sync::mpsc, thread, time::Duration};

/// Everything one generation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub ids: Vec<u32>,
    pub pieces: Vec<String>,
    pub finish: FinishReason,
    pub stats: GenerationStats,
}

impl Run {
    pub fn text(&self) -> String {
        self.pieces.concat()
    }
}

/// A greedy request for `prompt`.
pub fn greedy(prompt: &[u32], max_tokens: u32, ignore_eos: bool) -> GenerateRequest {
    let mut request = GenerateRequest::greedy(prompt.to_vec(), max_tokens);
    request.ignore_eos = ignore_eos;
    request
}

/// The most tokens [`run_to_end`] pulls from a generation without `max_tokens`.
const NO_LIMIT_CAP: usize = 100_000;

/// Pulls tokens until the generation ends. More tokens than `max_tokens` is a failure (and
/// stops the pull, so a plugin that never ends cannot loop forever here).
pub fn run_to_end(model: &LoadedModel, request: GenerateRequest) -> Result<Run, Failure> {
    // max_tokens 0 = no limit (the context ends it): still, never pull forever.
    let max = match request.max_tokens {
        0 => NO_LIMIT_CAP,
        n => n as usize,
    };
    let mut generation = model.generate(request)?;
    let mut ids = Vec::new();
    let mut pieces = Vec::new();
    let finish = loop {
        match generation.next()? {
            Step::Token(token) => {
                if ids.len() >= max {
                    return Err(fail(format!(
                        "the generation went past max_tokens = {max} without finishing"
                    )));
                }
                ids.push(token.id);
                pieces.push(token.text.to_string());
            }
            Step::Finished(end) => {
                if !end.text.is_empty() {
                    pieces.push(end.text.to_string());
                }
                break end.reason;
            }
        }
    };
    let stats = generation.stats()?;
    Ok(Run {
        ids,
        pieces,
        finish,
        stats,
    })
}

/// Runs `work` on its own thread and waits at most `limit`. On timeout the thread is left
/// behind (it cannot be killed); the check fails with `what` in its message.
pub fn with_timeout<T: Send + 'static>(
    limit: Duration,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failure> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // The receiver may be gone after a timeout; nothing to do then.
        let _ = tx.send(work());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => Ok(value),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(fail(format!(
            "{what} did not finish within {} s",
            limit.as_secs()
        ))),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(fail(format!("{what}: its thread panicked")))
        }
    }
}

/// Same ids, or where the two first differ.
pub fn compare_ids(expected: &[u32], got: &[u32]) -> Result<(), String> {
    if expected == got {
        return Ok(());
    }
    let at = expected
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(got.len()));
    Err(format!(
        "differs at token {at}: expected {} tokens {:?}, got {} tokens {:?}",
        expected.len(),
        window(expected, at),
        got.len(),
        window(got, at)
    ))
}

fn window(ids: &[u32], at: usize) -> &[u32] {
    let start = at.saturating_sub(2).min(ids.len());
    let end = (at + 3).min(ids.len());
    &ids[start..end]
}

#[cfg(test)]
mod tests {
    use super::compare_ids;

    #[test]
    fn equal_ids_compare_equal() {
        assert_eq!(compare_ids(&[1, 2, 3], &[1, 2, 3]), Ok(()));
    }

    #[test]
    fn a_difference_names_its_position() {
        let message = compare_ids(&[1, 2, 3, 4], &[1, 2, 9, 4]).unwrap_err();
        assert!(message.contains("differs at token 2"), "{message}");
        let message = compare_ids(&[1, 2], &[1, 2, 3]).unwrap_err();
        assert!(message.contains("differs at token 2"), "{message}");
    }
}
