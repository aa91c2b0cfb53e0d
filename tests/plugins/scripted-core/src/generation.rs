//! A running replay of the script: the `Generation` implementation. All state is local, so
//! several generations run at once and dropping one costs nothing.

use crate::{
    model::check_tokens,
    script::{token_bytes, Script, EOS},
    Behaviour,
};
use llmlocal_plugin_api::{
    FinishReason, GenerateRequest, Generation, GenerationStats, PluginError, StatsClock, Step,
    Token, TokenLogprobs, Utf8Decoder,
};

pub struct ScriptedGeneration {
    script: Script,
    /// Where the replay started in the script (rotation).
    offset: usize,
    /// Script bytes emitted in the current pass.
    position: usize,
    generated: u32,
    /// 0 = no limit besides the context (and the end of the script).
    max_tokens: u32,
    /// Tokens that still fit in the context after the prompt.
    room: u32,
    ignore_eos: bool,
    finished: Option<FinishReason>,
    clock: StatsClock,
    decoder: Utf8Decoder,
    behaviour: Behaviour,
    /// The request asked for logprobs.
    logprobs: bool,
}

impl ScriptedGeneration {
    pub fn start(
        script: Script,
        request: &GenerateRequest,
        context_length: u32,
        behaviour: Behaviour,
    ) -> Result<Self, PluginError> {
        let prompt = request.prompt_tokens.as_slice();
        check_tokens(prompt)?;
        if request
            .adapters
            .as_ref()
            .into_option()
            .is_some_and(|a| !a.is_empty())
        {
            return Err(PluginError::unsupported(
                "the scripted backend does not take LoRA adapters",
            ));
        }
        let prompt_len = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        if prompt_len >= context_length {
            return Err(PluginError::invalid_request(format!(
                "the prompt has {prompt_len} tokens but the context holds {context_length}"
            )));
        }
        let sampling = &request.sampling;
        // Greedy continues the script after whatever of it the prompt already ends with (as
        // `logits` predicts); sampling replays the whole script from a rotated start. top_k 1
        // leaves only the most likely token: greedy, as the contract says.
        let (offset, position) = if sampling.is_greedy() || sampling.top_k == 1 {
            (0, script.matched_prefix(prompt))
        } else {
            (script.start_offset(prompt, sampling.seed_or_random()), 0)
        };
        Ok(ScriptedGeneration {
            script,
            offset,
            position,
            generated: 0,
            max_tokens: request.max_tokens,
            room: context_length - prompt_len,
            ignore_eos: request.ignore_eos,
            finished: None,
            clock: StatsClock::start(prompt_len),
            decoder: Utf8Decoder::new(),
            behaviour,
            logprobs: request.logprobs.is_some(),
        })
    }

    /// The next scripted token, or `None` at the end of the script.
    fn next_id(&mut self) -> Option<u32> {
        let len = self.script.len();
        if self.position >= len {
            // ignore_eos: start the script over instead of ending (an empty script has
            // nothing to loop, so it repeats EOS).
            if !self.ignore_eos {
                return None;
            }
            self.position = 0;
            if len == 0 {
                return Some(EOS);
            }
        }
        let byte = self.script.bytes()[(self.offset + self.position) % len];
        self.position += 1;
        Some(u32::from(byte))
    }

    fn finish(&mut self, reason: FinishReason) -> Step {
        self.finished = Some(reason);
        Step::finished_with(reason, self.decoder.finish())
    }
}

impl Generation for ScriptedGeneration {
    fn next(&mut self) -> Result<Step, PluginError> {
        if let Some(reason) = self.finished {
            return Ok(Step::finished(reason));
        }
        if self.max_tokens > 0 && self.generated >= self.max_tokens {
            return Ok(self.finish(FinishReason::Length));
        }
        if self.generated >= self.room {
            return Ok(self.finish(FinishReason::ContextFull));
        }
        if self.behaviour.hang_at_token == Some(self.generated + 1) {
            // A plugin that never answers: the suite's time limit must catch it.
            crate::hang_forever();
        }
        if self.behaviour.panic_at_token == Some(self.generated + 1) {
            panic!(
                "deliberate test panic in next() at token {}",
                self.generated + 1
            );
        }
        if self.behaviour.segfault_at_token == Some(self.generated + 1) {
            segfault();
        }
        if self.behaviour.abort_at_token == Some(self.generated + 1) {
            std::process::abort();
        }
        if self.behaviour.allocate_at_token == Some(self.generated + 1) {
            allocate_without_end();
        }
        let Some(id) = self.next_id() else {
            return Ok(self.finish(FinishReason::EndOfGeneration));
        };
        let text = self.decoder.push(token_bytes(id, true)?);
        self.generated += 1;
        self.clock.token();
        let mut token = Token::new(id, text);
        if self.logprobs && self.behaviour.wrong_logprobs {
            // The bug on purpose: the probability the logits give the token, not its log.
            token.logprobs = Some(TokenLogprobs {
                logprob: 0.975,
                top: Vec::new().into(),
            })
            .into();
        }
        Ok(Step::Token(token))
    }

    fn stats(&self) -> GenerationStats {
        self.clock.stats()
    }
}

/// A real invalid memory access in this library's code (not `raise`, whose instruction is in
/// libc): what a buggy native backend does.
#[inline(never)]
/// Holds on to 64 MiB blocks, each touched so it is really committed, until the allocator
/// fails (Rust then aborts the process) or the kernel's OOM killer ends it.
fn allocate_without_end() {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        held.push(vec![1u8; 64 << 20]);
        std::hint::black_box(&held);
    }
}

fn segfault() {
    // An address in the never-mapped first page, hidden from the optimiser.
    let address = std::hint::black_box(16usize) as *mut u32;
    // SAFETY: deliberately not safe: the point of the segfaulting-generation test plugin.
    unsafe { address.write_volatile(1) };
}
