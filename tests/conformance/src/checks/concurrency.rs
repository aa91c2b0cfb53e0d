//! Several generations and models at once, and cancellation by drop.

use super::{load_request, ModelCtx};
use crate::{
    generate::{compare_ids, greedy, run_to_end, with_timeout, Run},
    outcome::{ensure, fail, Failure, Outcome},
};
use llmlocal::plugins::{LoadedBackend, LoadedModel, RunningGeneration};
use std::{
    path::Path,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

/// How long dropping a running generation may take.
const DROP_WITHIN: Duration = Duration::from_secs(2);
/// A generous limit for work that should take well under a second on a tiny model; it only
/// exists so a deadlocked plugin fails a check instead of hanging the suite.
const HANG_LIMIT: Duration = Duration::from_secs(120);

/// Check "drop cancels": dropping a long generation returns promptly and frees its slot.
pub fn drop_cancels(ctx: &ModelCtx) -> Outcome {
    let model = ctx.model.clone();
    let prompt = ctx.prompt.clone();
    let dropped_in = with_timeout(HANG_LIMIT, "start, 2 tokens, drop", move || {
        let mut generation = model.generate(greedy(&prompt, 100_000, true))?;
        take_tokens(&mut generation, 2)?;
        let start = Instant::now();
        drop(generation);
        Ok::<_, Failure>(start.elapsed())
    })??;
    ensure!(
        dropped_in < DROP_WITHIN,
        "dropping the generation took {} ms",
        dropped_in.as_millis()
    );
    let slots = ctx.slots;
    let model = ctx.model.clone();
    let prompt = ctx.prompt.clone();
    with_timeout(HANG_LIMIT, "new generations after the drop", move || {
        let mut all = (0..slots)
            .map(|_| model.generate(greedy(&prompt, 4, true)))
            .collect::<Result<Vec<_>, _>>()?;
        for generation in &mut all {
            take_tokens(generation, 1)?;
        }
        Ok::<_, Failure>(())
    })??;
    Ok(format!(
        "dropped in {} ms; then {slots} generation(s) at once each produced a token",
        dropped_in.as_millis()
    ))
}

fn take_tokens(generation: &mut RunningGeneration, n: usize) -> Result<(), Failure> {
    for i in 0..n {
        if let Some(reason) = generation.next()?.finish_reason() {
            return Err(fail(format!(
                "the generation ended ({reason:?}) after {i} tokens; expected at least {n}"
            )));
        }
    }
    Ok(())
}

/// Check "parallel generations": two generations on one model, started together, each
/// give the solo greedy output.
pub fn parallel_generations(ctx: &ModelCtx, solo: &Run) -> Outcome {
    let models = [ctx.model.clone(), ctx.model.clone()];
    together(models, &ctx.prompt, solo)?;
    Ok("2 generations on one model matched the solo run".to_string())
}

/// Check "two loaded models": the same file loaded twice, both generating at once, each
/// give the solo greedy output.
pub fn two_models(ctx: &ModelCtx, backend: &LoadedBackend, path: &Path, solo: &Run) -> Outcome {
    let second = backend.load_model(load_request(path, ctx.slots, &ctx.device))?;
    together([ctx.model.clone(), second], &ctx.prompt, solo)?;
    Ok("2 loads of the model generating at once matched the solo run".to_string())
}

/// Runs one solo-length greedy generation per model on its own thread, all released at
/// once, and compares each with `solo`.
fn together(models: [LoadedModel; 2], prompt: &[u32], solo: &Run) -> Result<(), Failure> {
    let barrier = Arc::new(Barrier::new(models.len()));
    let max = solo.ids.len().max(1) as u32;
    let handles: Vec<_> = models
        .into_iter()
        .map(|model| {
            let barrier = Arc::clone(&barrier);
            let request = greedy(prompt, max, true);
            with_timeout_handle(move || {
                barrier.wait();
                run_to_end(&model, request)
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let run = handle()?;
        compare_ids(&solo.ids, &run.ids).map_err(|d| fail(format!("generation {} {d}", i + 1)))?;
    }
    Ok(())
}

/// Starts `work` now; the returned closure waits for it (at most [`HANG_LIMIT`]).
fn with_timeout_handle(
    work: impl FnOnce() -> Result<Run, Failure> + Send + 'static,
) -> impl FnOnce() -> Result<Run, Failure> {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        // The receiver is gone only after a timeout was already reported.
        let _ = tx.send(work());
    });
    move || match rx.recv_timeout(HANG_LIMIT) {
        Ok(result) => result,
        Err(_) => Err(fail(format!(
            "a concurrent generation did not finish within {} s (or its thread panicked)",
            HANG_LIMIT.as_secs()
        ))),
    }
}
