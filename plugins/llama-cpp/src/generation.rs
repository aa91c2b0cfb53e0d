//! A running generation as the host sees it: the receiving end of its sequence's channel plus
//! the cancel flag the decode thread checks every step.

use crate::engine::Engine;
use llmlocal_plugin_api::{
    FinishReason, Generation, GenerationStats, PluginError, StatsClock, Step,
};
use std::sync::{
    atomic::{AtomicBool, AtomicU32, Ordering},
    mpsc::Receiver,
    Arc,
};

pub struct LlamaGeneration {
    steps: Receiver<Result<Step, PluginError>>,
    cancel: Arc<AtomicBool>,
    /// Prompt tokens reused from kept KV cells, set by the decode thread when the job takes
    /// a slot (0 until then).
    cached: Arc<AtomicU32>,
    /// Keeps the decode thread (and the model) alive while this generation exists.
    engine: Arc<Engine>,
    clock: StatsClock,
    /// Once ended, every later `next` returns the same reason (with no trailing text: it
    /// was handed out once) or the same error.
    ended: Option<Result<FinishReason, PluginError>>,
}

impl LlamaGeneration {
    /// `clock` must have been started before the job was sent to the decode thread: started
    /// after, a caller thread descheduled between the two would let the whole prompt pass
    /// (and the first token) happen before the clock runs, and `time_to_first_token_ms`
    /// (the server's `prompt_ms`) would read close to 0.
    pub fn new(
        steps: Receiver<Result<Step, PluginError>>,
        cancel: Arc<AtomicBool>,
        cached: Arc<AtomicU32>,
        engine: Arc<Engine>,
        clock: StatsClock,
    ) -> Self {
        LlamaGeneration {
            steps,
            cancel,
            cached,
            engine,
            clock,
            ended: None,
        }
    }
}

impl Generation for LlamaGeneration {
    fn next(&mut self) -> Result<Step, PluginError> {
        if let Some(end) = &self.ended {
            return end.clone().map(Step::finished);
        }
        let step = match self.steps.recv() {
            Ok(step) => step,
            Err(_) => Err(PluginError::internal(
                "the llama.cpp decode thread stopped before the generation ended",
            )),
        };
        // The channel had room again: the decode thread may have skipped this sequence.
        self.engine.wake();
        match step {
            Ok(Step::Token(token)) => {
                self.clock.token();
                Ok(Step::Token(token))
            }
            Ok(Step::Finished(end)) => {
                self.ended = Some(Ok(end.reason));
                Ok(Step::Finished(end))
            }
            Err(err) => {
                self.ended = Some(Err(err.clone()));
                Err(err)
            }
        }
    }

    fn stats(&self) -> GenerationStats {
        let mut clock = self.clock.clone();
        clock.cached(self.cached.load(Ordering::Relaxed));
        clock.stats()
    }
}

impl Drop for LlamaGeneration {
    /// Cancelling: the decode thread frees this sequence's KV cells on its next step, and the
    /// wake-up makes that step happen now even if the thread was idle.
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.engine.wake();
    }
}
