//! The decode thread: continuous batching over the sequences of one llama.cpp context.
//!
//! One thread per loaded model owns the `LlamaContext` (it borrows the model and llama.cpp
//! contexts must not be used from two threads at once). Callers talk to it through a command
//! channel: [`Job`]s to start, `Wake` when a consumer made room, `Shutdown` when the last user
//! of the model is gone. Each step the thread
//!
//! 1. takes new jobs into free sequence slots (FIFO; a job that needs a different LoRA set
//!    than the running ones waits until they finish, because adapters apply to the whole
//!    context; when that job names an adapter file the model has not read yet, the thread
//!    drops its context, reads the file into the model under the model's write lock and
//!    creates the context again: queued jobs stay queued, nothing was running),
//! 2. frees the slots of cancelled or finished sequences (`llama_memory_seq_rm` at once),
//! 3. builds ONE batch: the next token of every generating sequence whose output channel has
//!    room, then prompt chunks of the sequences still reading their prompt, up to
//!    `batch_size` tokens in all,
//! 4. runs one `llama_decode`, then samples one token per sequence that asked for logits and
//!    sends it without blocking (a full channel just makes that sequence sit out the next
//!    steps; the others go on).

use crate::{
    adapters::{AdapterSet, AdapterStore},
    model::SharedModel,
    sampler::SamplerChain,
};
use llama_cpp_2::{
    context::LlamaContext, llama_batch::LlamaBatch, model::LlamaModel, token::LlamaToken,
};
use llmlocal_plugin_api::{
    abi_stable::std_types::RString, FinishReason, PluginError, Step, Token, Utf8Decoder,
};
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

/// Tokens a sequence may run ahead of its consumer (the bounded output channel).
pub const OUTPUT_CHANNEL_CAPACITY: usize = 4;
/// How long the idle thread sleeps before re-checking cancel flags, in case a wake-up was lost.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// What a caller sends to the decode thread.
pub enum Command {
    Start(Box<Job>),
    /// A consumer took a token or dropped a generation: look at the slots again.
    Wake,
    Shutdown,
}

/// A piece of work for one sequence slot.
pub struct Job {
    pub prompt: Vec<LlamaToken>,
    pub cancel: Arc<AtomicBool>,
    /// `None`: the adapters given at load.
    pub adapters: Option<AdapterSet>,
    pub kind: JobKind,
}

pub enum JobKind {
    Generate(GenerateJob),
    /// Next-token logits after the prompt, from a clean sequence.
    Logits(SyncSender<Result<Vec<f32>, PluginError>>),
}

pub struct GenerateJob {
    pub sampler: SamplerChain,
    /// 0 = until the context is full.
    pub max_tokens: u32,
    pub ignore_eos: bool,
    pub out: SyncSender<Result<Step, PluginError>>,
}

/// The context settings the thread creates its context with.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub context_per_sequence: u32,
    pub parallel: u32,
    pub batch_size: u32,
    pub threads: i32,
}

/// The handle shared by the model and its running generations: the thread stops when the
/// last of them is dropped.
pub struct Engine {
    commands: Mutex<Sender<Command>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Starts the decode thread and waits until it has created its context.
    pub fn start(
        model: SharedModel,
        config: EngineConfig,
        adapters: AdapterStore,
    ) -> Result<Arc<Engine>, PluginError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("llama-cpp-decode".into())
            .spawn(move || thread_main(&model, &config, adapters, &rx, ready_tx))
            .map_err(|e| PluginError::internal(format!("cannot start the decode thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Arc::new(Engine {
                commands: Mutex::new(tx),
                thread: Mutex::new(Some(thread)),
            })),
            Ok(Err(err)) => {
                let _ = thread.join();
                Err(err)
            }
            Err(_) => {
                let _ = thread.join();
                Err(PluginError::internal(
                    "the decode thread stopped while creating its context",
                ))
            }
        }
    }

    pub fn send(&self, command: Command) -> Result<(), PluginError> {
        let sender = self
            .commands
            .lock()
            .map_err(|_| PluginError::internal("the decode thread's command lock is poisoned"))?;
        sender
            .send(command)
            .map_err(|_| PluginError::internal("the llama.cpp decode thread has stopped"))
    }

    pub fn wake(&self) {
        let _ = self.send(Command::Wake);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.send(Command::Shutdown);
        if let Ok(mut thread) = self.thread.lock() {
            if let Some(handle) = thread.take() {
                let _ = handle.join();
            }
        }
    }
}

/// What outlives one context: the queue and the adapters (a context is re-created after
/// reading an adapter into the model).
struct Pending {
    queue: VecDeque<Job>,
    adapters: AdapterStore,
    /// The adapter set active on the current context.
    active: AdapterSet,
    shutting_down: bool,
}

/// Why [`State::run`] returned.
enum Exit {
    Shutdown,
    /// No sequence is running and the next job needs these adapter files read into the model.
    Read(Vec<String>),
}

fn thread_main(
    model: &SharedModel,
    config: &EngineConfig,
    adapters: AdapterStore,
    commands: &Receiver<Command>,
    ready: SyncSender<Result<(), PluginError>>,
) {
    let active = adapters.load_set().clone();
    let mut pending = Pending {
        queue: VecDeque::new(),
        adapters,
        active,
        shutting_down: false,
    };
    let mut ready = Some(ready);
    loop {
        let guard = crate::model::read(model);
        let context = match open(&guard, config, &mut pending) {
            Ok(context) => context,
            Err(err) => {
                match ready.take() {
                    Some(ready) => {
                        let _ = ready.send(Err(err));
                    }
                    // The context cannot be re-created: fail what waits; later calls see the
                    // thread gone and say so.
                    None => (pending.queue.drain(..)).for_each(|job| fail_job(job, err.clone())),
                }
                return;
            }
        };
        if let Some(ready) = ready.take() {
            if ready.send(Ok(())).is_err() {
                return;
            }
        }
        let state = State::new(&guard, context, config, pending);
        let (exit, left) = state.run(commands);
        // The context is gone (dropped with the state) before the read lock is released.
        drop(guard);
        pending = left;
        match exit {
            Exit::Shutdown => return,
            Exit::Read(paths) => {
                read_adapters(model, &mut pending, &paths);
                // The next context starts with no adapters; admission sets what it needs.
                pending.active = AdapterSet::default();
            }
        }
    }
}

/// A context with `pending.active` set on it (the load set at first, none after a re-creation).
fn open<'m>(
    model: &'m LlamaModel,
    config: &EngineConfig,
    pending: &mut Pending,
) -> Result<LlamaContext<'m>, PluginError> {
    let mut context = crate::context::create(model, config)?;
    if !pending.active.is_empty() {
        let active = pending.active.clone();
        pending.adapters.activate(&mut context, &active)?;
    }
    Ok(context)
}

/// Reads `paths` into the model under its write lock (no context exists now). A file that
/// fails fails every queued job that wants it; the others go on.
fn read_adapters(model: &SharedModel, pending: &mut Pending, paths: &[String]) {
    let mut model = model
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for path in paths {
        if let Err(err) = pending.adapters.read(&mut model, path) {
            tracing::warn!("{err}");
            let (failed, kept): (VecDeque<Job>, VecDeque<Job>) =
                pending.queue.drain(..).partition(|job| {
                    job.adapters
                        .as_ref()
                        .is_some_and(|set| set.paths().any(|p| p == path))
                });
            pending.queue = kept;
            failed
                .into_iter()
                .for_each(|job| fail_job(job, err.clone()));
        }
    }
}

/// One sequence slot in use.
struct Sequence {
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already decoded.
    prefilled: usize,
    /// Position of the next token fed to this sequence.
    n_past: i32,
    /// A sampled token to feed in the next batch.
    next_input: Option<LlamaToken>,
    /// Index in the current batch whose logits belong to this sequence.
    logits_index: Option<i32>,
    cancel: Arc<AtomicBool>,
    kind: SequenceKind,
    done: bool,
    /// Has tokens in the batch being decoded.
    in_batch: bool,
}

enum SequenceKind {
    Generate(Generating),
    Logits(SyncSender<Result<Vec<f32>, PluginError>>),
}

struct Generating {
    job: GenerateJob,
    outbox: VecDeque<Result<Step, PluginError>>,
    decoder: Utf8Decoder,
    generated: u32,
    finished: bool,
}

impl Generating {
    /// Sends what is waiting without blocking. Returns false if the consumer is gone.
    fn flush(&mut self) -> bool {
        while let Some(item) = self.outbox.pop_front() {
            match self.job.out.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(item)) => {
                    self.outbox.push_front(item);
                    return true;
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        true
    }

    fn finish(&mut self, reason: FinishReason) {
        self.outbox.push_back(Ok(Step::Finished(reason)));
        self.finished = true;
    }
}

struct State<'m> {
    model: &'m LlamaModel,
    context: LlamaContext<'m>,
    slots: Vec<Option<Sequence>>,
    batch: LlamaBatch<'static>,
    batch_size: usize,
    context_per_sequence: i32,
    pending: Pending,
}

impl<'m> State<'m> {
    fn new(
        model: &'m LlamaModel,
        context: LlamaContext<'m>,
        config: &EngineConfig,
        pending: Pending,
    ) -> Self {
        // llama.cpp may lower n_batch (never above n_ctx): a batch must not exceed its value.
        let batch_size = config.batch_size.min(context.n_batch()).max(1) as usize;
        State {
            model,
            context,
            slots: (0..config.parallel.max(1)).map(|_| None).collect(),
            batch: LlamaBatch::new(batch_size, 1),
            batch_size,
            context_per_sequence: i32::try_from(config.context_per_sequence).unwrap_or(i32::MAX),
            pending,
        }
    }

    /// Runs until shutdown, or until adapters must be read into the model (then no sequence
    /// is running); hands back what outlives the context.
    fn run(mut self, commands: &Receiver<Command>) -> (Exit, Pending) {
        let mut wait = false;
        let exit = loop {
            if !self.receive(commands, wait) {
                break Exit::Shutdown;
            }
            self.reap();
            if let Some(paths) = self.admit() {
                break Exit::Read(paths);
            }
            wait = !self.step();
        };
        (exit, self.pending)
    }

    /// Takes commands; blocks (briefly) only when the last step had nothing to do.
    /// Returns false on shutdown.
    fn receive(&mut self, commands: &Receiver<Command>, wait: bool) -> bool {
        if wait {
            match commands.recv_timeout(IDLE_POLL) {
                Ok(command) => self.handle(command),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.pending.shutting_down = true,
            }
        }
        while let Ok(command) = commands.try_recv() {
            self.handle(command);
        }
        !self.pending.shutting_down
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Start(job) => self.pending.queue.push_back(*job),
            Command::Wake => {}
            Command::Shutdown => self.pending.shutting_down = true,
        }
    }

    /// Frees the slots of finished, cancelled or abandoned sequences.
    fn reap(&mut self) {
        for (id, slot) in self.slots.iter_mut().enumerate() {
            let Some(seq) = slot else { continue };
            let mut free = seq.done || seq.cancel.load(Ordering::Relaxed);
            if let SequenceKind::Generate(gen) = &mut seq.kind {
                if !gen.flush() {
                    free = true; // the consumer is gone
                } else if gen.finished && gen.outbox.is_empty() {
                    free = true;
                }
            }
            if free {
                *slot = None;
                let seq_id = u32::try_from(id).unwrap_or(0);
                if let Err(err) = self.context.clear_kv_cache_seq(Some(seq_id), None, None) {
                    tracing::warn!("could not clear the KV cells of sequence {id}: {err}");
                }
            }
        }
        // Jobs cancelled while still queued never take a slot.
        (self.pending.queue).retain(|job| !job.cancel.load(Ordering::Relaxed));
    }

    /// Moves queued jobs into free slots, strictly in order. A job whose adapter set differs
    /// from the running sequences' waits until they are done, then the set is switched.
    /// Returns the files to read first when the front job needs adapters the model does not
    /// hold yet and nothing is running.
    fn admit(&mut self) -> Option<Vec<String>> {
        while let Some(free) = self.slots.iter().position(Option::is_none) {
            let front = self.pending.queue.front()?;
            let wanted = front
                .adapters
                .clone()
                .unwrap_or_else(|| self.pending.adapters.load_set().clone());
            if wanted != self.pending.active {
                if self.slots.iter().any(Option::is_some) {
                    return None; // wait for the running group to finish
                }
                let missing = self.pending.adapters.missing(&wanted);
                if !missing.is_empty() {
                    return Some(missing);
                }
                if let Err(err) = self.pending.adapters.activate(&mut self.context, &wanted) {
                    if let Some(job) = self.pending.queue.pop_front() {
                        fail_job(job, err);
                    }
                    continue;
                }
                self.pending.active = wanted;
            }
            if let Some(job) = self.pending.queue.pop_front() {
                self.slots[free] = Some(start_sequence(job));
            }
        }
        None
    }

    /// Builds and decodes one batch. Returns false if there was nothing to do.
    fn step(&mut self) -> bool {
        self.batch.clear();
        let mut budget = self.batch_size;
        // Generating sequences first: one token each keeps every stream moving.
        for (id, slot) in self.slots.iter_mut().enumerate() {
            let Some(seq) = slot else { continue };
            seq.logits_index = None;
            seq.in_batch = false;
            if budget == 0 || !seq.ready_for_token() {
                continue;
            }
            if let Some(token) = seq.next_input.take() {
                let index = self.batch.n_tokens();
                if add(&mut self.batch, token, seq.n_past, id, true) {
                    seq.n_past += 1;
                    seq.logits_index = Some(index);
                    seq.in_batch = true;
                    budget -= 1;
                } else {
                    seq.next_input = Some(token);
                }
            }
        }
        // Then prompt chunks with what is left of the batch.
        for (id, slot) in self.slots.iter_mut().enumerate() {
            let Some(seq) = slot else { continue };
            if budget == 0 || seq.prefilled >= seq.prompt.len() {
                continue;
            }
            let take = budget.min(seq.prompt.len() - seq.prefilled);
            for i in 0..take {
                let last = seq.prefilled + i + 1 == seq.prompt.len();
                let index = self.batch.n_tokens();
                let token = seq.prompt[seq.prefilled + i];
                if !add(&mut self.batch, token, seq.n_past, id, last) {
                    break;
                }
                seq.n_past += 1;
                if last {
                    seq.logits_index = Some(index);
                }
            }
            seq.prefilled += take;
            seq.in_batch = true;
            budget -= take;
        }
        if self.batch.n_tokens() == 0 {
            return false;
        }
        if let Err(err) = self.context.decode(&mut self.batch) {
            self.fail_batch(&format!("llama.cpp could not decode a batch: {err}"));
            return true;
        }
        self.after_decode();
        true
    }

    /// Samples (or reads logits) for every sequence that had logits in the batch.
    fn after_decode(&mut self) {
        let vocab = self.model.vocab();
        // Greedy picks for the whole batch at once (possibly on several threads).
        let greedy: Vec<(usize, i32)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(id, slot)| match slot {
                Some(Sequence {
                    logits_index: Some(index),
                    kind: SequenceKind::Generate(gen),
                    ..
                }) if gen.job.sampler.is_greedy() => Some((id, *index)),
                _ => None,
            })
            .collect();
        let rows: Vec<&[f32]> = greedy
            .iter()
            .map(|&(_, index)| self.context.get_logits_ith(index))
            .collect();
        let mut picked: Vec<Option<LlamaToken>> = vec![None; self.slots.len()];
        for ((id, _), token) in greedy.iter().zip(crate::sampler::argmax_all(&rows)) {
            picked[*id] = Some(token);
        }
        for (id, slot) in self.slots.iter_mut().enumerate() {
            let Some(seq) = slot else { continue };
            let Some(index) = seq.logits_index.take() else {
                continue;
            };
            match &mut seq.kind {
                SequenceKind::Logits(reply) => {
                    let logits = self.context.get_logits_ith(index).to_vec();
                    let _ = reply.send(Ok(logits));
                    seq.done = true;
                }
                SequenceKind::Generate(gen) => {
                    let token = match picked[id] {
                        Some(token) => token,
                        None => gen.job.sampler.sample(&self.context, index),
                    };
                    if vocab.is_eog(token) && !gen.job.ignore_eos {
                        gen.finish(FinishReason::EndOfGeneration);
                    } else {
                        let piece = vocab.token_to_piece(token, false, None);
                        let text = gen.decoder.push(&piece);
                        gen.outbox.push_back(Ok(Step::Token(Token {
                            id: u32::try_from(token.0).unwrap_or(0),
                            text: RString::from(text),
                        })));
                        gen.generated += 1;
                        if gen.job.max_tokens != 0 && gen.generated >= gen.job.max_tokens {
                            gen.finish(FinishReason::Length);
                        } else if seq.n_past >= self.context_per_sequence {
                            gen.finish(FinishReason::ContextFull);
                        } else {
                            seq.next_input = Some(token);
                        }
                    }
                    if !gen.flush() {
                        seq.done = true;
                    }
                }
            }
        }
    }

    /// A failed decode: every sequence in the batch gets the error and is freed.
    fn fail_batch(&mut self, message: &str) {
        tracing::error!("{message}");
        for slot in self.slots.iter_mut() {
            let Some(seq) = slot else { continue };
            if !seq.in_batch {
                continue;
            }
            let err = PluginError::internal(message);
            match &mut seq.kind {
                SequenceKind::Logits(reply) => {
                    let _ = reply.send(Err(err));
                }
                SequenceKind::Generate(gen) => {
                    gen.outbox.push_back(Err(err));
                    gen.finished = true;
                    gen.flush();
                }
            }
            seq.done = true;
        }
    }
}

impl Sequence {
    /// A generating sequence takes a token this step only if its consumer has room.
    fn ready_for_token(&self) -> bool {
        match &self.kind {
            SequenceKind::Generate(gen) => !gen.finished && gen.outbox.is_empty(),
            SequenceKind::Logits(_) => false,
        }
    }
}

fn add(batch: &mut LlamaBatch, token: LlamaToken, pos: i32, seq: usize, logits: bool) -> bool {
    let seq = i32::try_from(seq).unwrap_or(0);
    batch.add(token, pos, &[seq], logits).is_ok()
}

fn start_sequence(job: Job) -> Sequence {
    let kind = match job.kind {
        JobKind::Logits(reply) => SequenceKind::Logits(reply),
        JobKind::Generate(generate) => {
            let mut gen = Generating {
                job: generate,
                outbox: VecDeque::new(),
                decoder: Utf8Decoder::new(),
                generated: 0,
                finished: false,
            };
            // The repeat penalty looks at the prompt too, as in llama.cpp's own tools.
            gen.job.sampler.accept_prompt(&job.prompt);
            SequenceKind::Generate(gen)
        }
    };
    Sequence {
        prompt: job.prompt,
        prefilled: 0,
        n_past: 0,
        next_input: None,
        logits_index: None,
        cancel: job.cancel,
        kind,
        done: false,
        in_batch: false,
    }
}

fn fail_job(job: Job, err: PluginError) {
    match job.kind {
        JobKind::Logits(reply) => {
            let _ = reply.send(Err(err));
        }
        JobKind::Generate(generate) => {
            let _ = generate.out.try_send(Err(err));
        }
    }
}
