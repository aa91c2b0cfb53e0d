//! The blocking side of a generation: a thread pulls tokens from the backend and sends text
//! into a bounded channel. A full channel blocks the thread (back-pressure); a closed one
//! (the consumer dropped the stream: the client went away) stops it, and dropping the
//! plugin's generation cancels it there.

use super::{
    error::EngineError,
    logprobs::{Aligner, Pieces, TokenLogprobs},
    metrics::{FinishLabel, Metrics},
    pool::BusyGuard,
    request::{Completion, Event, FinishReason},
    stop::{Scan, StopMatcher},
};
use crate::plugins::{self, GenerateRequest, LoadedModel, Step};
use std::{sync::Arc, time::Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// Events buffered between the generation thread and its consumer.
pub const CHANNEL_CAPACITY: usize = 16;

/// Everything one generation thread needs.
pub struct Job {
    pub model: LoadedModel,
    pub name: String,
    pub request: GenerateRequest,
    pub stop: StopMatcher,
    /// Present when the request asked for logprobs.
    pub logprobs: Option<LogprobTrack>,
    pub metrics: Arc<Metrics>,
    /// When the engine received the request (time to first token counts from here).
    pub received: Instant,
    pub load_ms: f64,
    pub queue_ms: f64,
    pub permit: OwnedSemaphorePermit,
    pub busy: BusyGuard,
    /// Called when the generation ends, with its completion if it finished.
    pub on_end: OnEnd,
}

type Sender = mpsc::Sender<Result<Event, EngineError>>;

/// What a generation with logprobs needs: token texts, and the tokens not yet let out.
pub struct LogprobTrack {
    pieces: Pieces,
    aligner: Aligner,
}

impl LogprobTrack {
    /// `bos`: the model's BOS token, if it has one (see [`Pieces`]).
    pub fn new(model: LoadedModel, bos: Option<u32>) -> LogprobTrack {
        LogprobTrack {
            pieces: Pieces::new(model, bos),
            aligner: Aligner::default(),
        }
    }
}

/// The consumer went away.
struct Gone;

/// Called once when a generation ends, with its completion if it finished.
pub type OnEnd = Box<dyn FnOnce(Option<&Completion>) + Send>;

/// How the token loop ended.
enum Outcome {
    Finished(FinishReason),
    /// The consumer went away.
    Cancelled,
    Failed(EngineError),
}

/// Starts the generation, then runs its token loop on a blocking thread.
///
/// On the multi-thread runtime the backend's `generate` is called here, on the request's
/// thread: a backend with a thread of its own (llama.cpp's decode thread) then starts on the
/// prompt at once, not after a blocking-pool thread has woken up (0.06 ms of a 0.3 ms
/// request overhead on the 2-core dev VM, measured with the engine's first-token debug line).
/// `block_in_place` keeps the runtime's other tasks moving should a backend's `generate`
/// block (test: `a_backend_that_blocks_in_generate_does_not_stall_other_requests`). It needs
/// the multi-thread runtime; on a current-thread one (some tests) the call happens on the
/// blocking thread instead.
pub fn spawn(job: Job, sender: Sender) {
    let flavor = tokio::runtime::Handle::current().runtime_flavor();
    if flavor == tokio::runtime::RuntimeFlavor::MultiThread {
        let started = Instant::now();
        let generation = tokio::task::block_in_place(|| job.model.generate(job.request.clone()));
        tokio::task::spawn_blocking(move || run(job, sender, started, generation));
    } else {
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let generation = job.model.generate(job.request.clone());
            run(job, sender, started, generation)
        });
    }
}

/// The generation's token loop and its end; `started`: when `generate` was called.
fn run(
    mut job: Job,
    sender: Sender,
    started: Instant,
    generation: Result<plugins::RunningGeneration, plugins::BackendError>,
) {
    let label = Metrics::model(&job.name);
    job.metrics.active_generations.inc();
    job.metrics
        .prompt_tokens
        .get_or_create(&label)
        .inc_by(job.request.prompt_tokens.len() as u64);
    let outcome = match generation {
        Ok(mut generation) => {
            let outcome = pump(&mut job, &mut generation, &sender, started);
            let stats = generation.stats().unwrap_or_default();
            job.metrics
                .prompt_tokens_cached
                .get_or_create(&label)
                .inc_by(u64::from(stats.cached_prompt_tokens));
            // Dropping the generation here cancels it in the plugin when it did not finish.
            drop(generation);
            (outcome, stats)
        }
        Err(err) => (Outcome::Failed(err.into()), Default::default()),
    };
    finish(job, sender, outcome);
}

fn finish(job: Job, sender: Sender, (outcome, stats): (Outcome, plugins::GenerationStats)) {
    let reason_label = match &outcome {
        Outcome::Finished(reason) => reason.as_str(),
        Outcome::Cancelled => "cancelled",
        Outcome::Failed(_) => "error",
    };
    job.metrics
        .generations
        .get_or_create(&FinishLabel {
            model: job.name.clone(),
            reason: reason_label.to_string(),
        })
        .inc();
    job.metrics.active_generations.dec();
    let (completion, failure) = match outcome {
        Outcome::Finished(reason) => {
            let done = Completion {
                model: job.name.clone(),
                backend: job.model.backend_name().to_string(),
                finish_reason: reason,
                prompt_tokens: job.request.prompt_tokens.len() as u32,
                completion_tokens: stats.generated_tokens,
                cached_tokens: stats
                    .cached_prompt_tokens
                    .min(job.request.prompt_tokens.len() as u32),
                stats,
                load_ms: job.load_ms,
                queue_ms: job.queue_ms,
                total_ms: job.received.elapsed().as_secs_f64() * 1000.0,
                stop_sequence: job.stop.matched().map(str::to_string),
            };
            (Some(done), None)
        }
        Outcome::Cancelled => {
            tracing::debug!(model = %job.name, "generation cancelled: the consumer went away");
            (None, None)
        }
        Outcome::Failed(err) => {
            job.metrics.error(err.code());
            (None, Some(err))
        }
    };
    (job.on_end)(completion.as_ref());
    // Free the run slot and the busy mark before the consumer hears of the end, so a
    // request it makes next sees the model idle.
    drop(job.permit);
    drop(job.busy);
    let last = match (completion, failure) {
        (Some(done), _) => Ok(Event::Done(done)),
        (None, Some(err)) => Err(err),
        (None, None) => return,
    };
    let _ = sender.blocking_send(last);
}

/// Pulls tokens until the end, a stop sequence, an error, or the consumer leaving.
/// `started`: when this thread asked the backend for the generation.
fn pump(
    job: &mut Job,
    generation: &mut plugins::RunningGeneration,
    sender: &Sender,
    started: Instant,
) -> Outcome {
    let label = Metrics::model(&job.name);
    let tokens_out = job.metrics.generated_tokens.get_or_create(&label).clone();
    let latency = job.metrics.token_latency.get_or_create(&label).clone();
    let mut last_token: Option<Instant> = None;
    loop {
        if sender.is_closed() {
            return Outcome::Cancelled;
        }
        let step = match generation.next() {
            Ok(step) => step,
            Err(err) => return Outcome::Failed(err.into()),
        };
        let token = match step {
            Step::Token(token) => token,
            Step::Finished(end) => {
                // The decoder's remainder comes with the end; it still passes the stop scan.
                return match finish_text(job, sender, end.text.as_str()) {
                    Ok(true) => Outcome::Finished(FinishReason::Stop),
                    Ok(false) => Outcome::Finished(map_reason(end.reason)),
                    Err(Gone) => Outcome::Cancelled,
                };
            }
        };
        let now = Instant::now();
        let first = last_token.is_none();
        match last_token {
            None => job
                .metrics
                .time_to_first_token
                .get_or_create(&label)
                .observe((now - job.received).as_secs_f64()),
            Some(previous) => latency.observe((now - previous).as_secs_f64()),
        }
        last_token = Some(now);
        tokens_out.inc();
        let logprobs = match (&mut job.logprobs, token.logprobs.as_ref().into_option()) {
            (Some(track), Some(lp)) => Some(track.pieces.resolve(token.id, lp)),
            (Some(_), None) => Some(TokenLogprobs::id_only(token.id)),
            (None, _) => None,
        };
        let Ok(stopped) = emit(job, sender, token.text.as_str(), logprobs) else {
            return Outcome::Cancelled;
        };
        // After the send, so that the log line does not hold the first token back.
        if first {
            log_first_token(job, started, now);
        }
        if stopped {
            return Outcome::Finished(FinishReason::Stop);
        }
    }
}

/// Where the time to the first token went on the host's side, at debug level (the backend
/// may split its own part further, as llama.cpp's plugin does).
fn log_first_token(job: &Job, started: Instant, now: Instant) {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    tracing::debug!(
        model = %job.name,
        "first token {:.3} ms after the request: load {:.3} ms, queue {:.3} ms, \
         until the backend was asked {:.3} ms, in the backend {:.3} ms",
        ms(now - job.received),
        job.load_ms,
        job.queue_ms,
        ms(started.saturating_duration_since(job.received)) - job.load_ms - job.queue_ms,
        ms(now - started),
    );
}

/// Feeds a piece through the stop matcher (and its token's logprobs through the aligner)
/// and sends what comes out, logprobs first. `Ok(true)`: a stop sequence ended the text.
fn emit(
    job: &mut Job,
    sender: &Sender,
    piece: &str,
    logprobs: Option<TokenLogprobs>,
) -> Result<bool, Gone> {
    if let Some(track) = &mut job.logprobs {
        track.aligner.push(logprobs, piece.len());
    }
    let (text, stopped) = match job.stop.push(piece) {
        Scan::Emit(text) => (text, false),
        Scan::Stopped(text) => (text, true),
    };
    let released = match &mut job.logprobs {
        Some(track) => {
            let released = track.aligner.release(text.len());
            if stopped {
                track.aligner.stopped();
            }
            released
        }
        None => Vec::new(),
    };
    send_logprobs(sender, released)?;
    if !send_text(sender, text) {
        return Err(Gone);
    }
    Ok(stopped)
}

/// The end's remainder, then (without a stop sequence in it) whatever was held back.
fn finish_text(job: &mut Job, sender: &Sender, remainder: &str) -> Result<bool, Gone> {
    if emit(job, sender, remainder, None)? {
        return Ok(true);
    }
    let held = job.stop.finish();
    let released = match &mut job.logprobs {
        Some(track) => {
            let mut released = track.aligner.release(held.len());
            released.extend(track.aligner.finish());
            released
        }
        None => Vec::new(),
    };
    send_logprobs(sender, released)?;
    if !send_text(sender, held) {
        return Err(Gone);
    }
    Ok(false)
}

fn send_logprobs(sender: &Sender, tokens: Vec<TokenLogprobs>) -> Result<(), Gone> {
    if tokens.is_empty() {
        return Ok(());
    }
    sender
        .blocking_send(Ok(Event::Logprobs(tokens)))
        .map_err(|_| Gone)
}

/// Sends non-empty text; false when the consumer is gone.
fn send_text(sender: &Sender, text: String) -> bool {
    text.is_empty() || sender.blocking_send(Ok(Event::Text(text))).is_ok()
}

fn map_reason(reason: plugins::FinishReason) -> FinishReason {
    match reason {
        plugins::FinishReason::Length => FinishReason::Length,
        plugins::FinishReason::ContextFull => FinishReason::ContextFull,
        // EndOfGeneration, and reasons of a newer contract minor (never sent to us).
        _ => FinishReason::Stop,
    }
}
