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
//!    creates the context again: queued jobs stay queued, nothing was running; when the model
//!    already holds [`crate::adapters::MAX_ADAPTERS`] files, it first reloads the model to
//!    free them all, see `reload`),
//! 2. frees the slots of cancelled or finished sequences (`llama_memory_seq_rm` at once,
//!    except for kept prefixes, below),
//! 3. builds ONE batch: the next token of every generating sequence whose output channel has
//!    room, then prompt chunks of the sequences still reading their prompt, up to
//!    `batch_size` tokens in all,
//! 4. runs one `llama_decode`, then samples one token per sequence that asked for logits and
//!    sends it without blocking (a full channel just makes that sequence sit out the next
//!    steps; the others go on).
//!
//! # Prompt-prefix reuse (capability `prefix-cache`)
//!
//! A generation that ends normally (a finish reason, not an error or a cancel) with
//! `cache_prompt` on leaves its KV cells in its slot; [`SlotMemory`] remembers the tokens they
//! hold: the prompt and the generated tokens that were decoded (the last sampled token never
//! was). A new job takes the free slot whose tokens share the longest common prefix with its
//! prompt, if that keeps at least half of the slot's tokens (ties: the least recently used;
//! otherwise an empty slot first, then the longest common prefix, then the least recently
//! used: see [`SlotMemory::pick`]), removes that slot's cells from the common length on and
//! reads only the rest of the prompt. The last prompt token is always evaluated again (its logits
//! give the first token), so a prompt found whole reuses `len - 1` tokens. The count is
//! reported as `GenerationStats::cached_prompt_tokens`. Kept cells are dropped whenever they
//! could be wrong or are in the way:
//! - a job with `cache_prompt: false` or a `logits` call starts from empty cells, and a
//!   `cache_prompt: false` generation does not keep its own;
//! - cancelled or failed sequences are cleared;
//! - switching the context's adapter set drops every kept prefix (KV depends on the
//!   adapters); a re-created context (after reading an adapter, or a model reload) starts
//!   with none;
//! - a batch that finds no KV slot drops the kept prefixes and is decoded once more;
//! - a model whose cells cannot be cut at the common length (recurrent state, or a
//!   sliding-window cache that already dropped early cells) starts from empty cells.
//!
//! # The host-RAM prompt cache (capability `host-ram-prompt-cache`)
//!
//! With `cache-ram-mib` > 0, a slot's kept cells are copied into host RAM
//! ([`crate::ram_cache`], under the active adapter set) before they are lost: when a job
//! takes the slot and keeps less than half of them (llama-server's rule), and when kept
//! prefixes are dropped for an adapter switch or a full KV cache. A job whose prompt shares a
//! longer reusable prefix with a saved state than with the slot [`SlotMemory::pick`] chose
//! takes an empty (else the least recently used) free slot instead, gets the state copied in
//! and trimmed to the common prefix, and counts those tokens as cached. A state llama.cpp
//! does not take back is dropped from the cache and the job reads its whole prompt. The cache
//! outlives the context: before the decode thread re-creates it (to read adapter files), the
//! kept prefixes are saved too.
//!
//! Greedy output is the same with and without reuse (the conformance suite checks it); the
//! prompt tokens are the same computation, only batched differently.

use crate::{
    adapters::{AdapterSet, AdapterStore},
    load::{ModelShape, Reload},
    model::SharedModel,
    prefix::{reusable, SlotMemory},
    ram_cache::RamCache,
    sampler::{GuidanceCache, SamplerChain, SamplingPlan},
};
use llama_cpp_2::{
    context::{
        session::{LlamaStateSeqFlags, SeqState},
        LlamaContext,
    },
    llama_batch::LlamaBatch,
    model::LlamaModel,
    token::LlamaToken,
    DecodeError,
};
use llmlocal_plugin_api::{FinishReason, PluginError, Step, Token, Utf8Decoder};
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
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
    /// When the caller sent the job: the start of its time to first token.
    pub sent: Instant,
}

pub enum JobKind {
    Generate(GenerateJob),
    /// Next-token logits after the prompt, from a clean sequence.
    Logits(SyncSender<Result<Vec<f32>, PluginError>>),
}

pub struct GenerateJob {
    /// Turned into samplers when the job takes a slot (see [`SamplingPlan`]).
    pub plan: SamplingPlan,
    pub guidance: GuidanceCache,
    /// 0 = until the context is full.
    pub max_tokens: u32,
    pub ignore_eos: bool,
    /// May start from a slot's kept KV cells, and keeps its own when it ends normally.
    pub cache_prompt: bool,
    /// Set when the job takes a slot: prompt tokens reused from kept KV cells.
    pub cached: Arc<AtomicU32>,
    pub out: SyncSender<Result<Step, PluginError>>,
}

/// The context settings the thread creates its context with.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub context_per_sequence: u32,
    pub parallel: u32,
    pub batch_size: u32,
    pub threads: i32,
    /// KV cache element types and the flash-attention policy.
    pub kv: crate::kv::KvOptions,
    /// Host RAM for the states of prompts pushed out of their slots (see
    /// [`crate::ram_cache`]); 0 = off.
    pub ram_cache_bytes: usize,
}

/// The handle shared by the model and its running generations: the thread stops when the
/// last of them is dropped.
pub struct Engine {
    commands: Mutex<Sender<Command>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Bytes the host-RAM prompt cache holds ([`RamCache::gauge`]; the cache itself is the
    /// decode thread's).
    ram_cache_bytes: Arc<AtomicU64>,
}

impl Engine {
    /// Starts the decode thread and waits until it has created its context. `reload` says how
    /// to load the model again when its adapters must be freed.
    pub fn start(
        model: SharedModel,
        config: EngineConfig,
        reload: Reload,
        adapters: AdapterStore,
    ) -> Result<Arc<Engine>, PluginError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let ram = RamCache::new(config.ram_cache_bytes);
        let ram_cache_bytes = ram.gauge();
        let thread = std::thread::Builder::new()
            .name("llama-cpp-decode".into())
            .spawn(move || {
                let shared = Shared {
                    model: &model,
                    config: &config,
                    reload: &reload,
                };
                thread_main(&shared, adapters, ram, &rx, ready_tx)
            })
            .map_err(|e| PluginError::internal(format!("cannot start the decode thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Arc::new(Engine {
                commands: Mutex::new(tx),
                thread: Mutex::new(Some(thread)),
                ram_cache_bytes,
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
        sender.send(command).map_err(|_| {
            PluginError::internal(
                "the llama.cpp decode thread has stopped (its model or context could not be \
                 re-created, the log says why); unload the model and load it again",
            )
        })
    }

    pub fn wake(&self) {
        let _ = self.send(Command::Wake);
    }

    /// Bytes of prompt states the host-RAM cache holds now (0 when it is off).
    pub fn ram_cache_bytes(&self) -> u64 {
        self.ram_cache_bytes.load(Ordering::Relaxed)
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
    /// States of prompts pushed out of their slots, by the adapter set they were computed
    /// under (host-RAM prompt cache; off at 0 bytes). They stay valid in a re-created context:
    /// same weights (a reload reads the same file), same context settings.
    ram: RamCache<AdapterSet, SeqState>,
    shutting_down: bool,
}

/// Why [`State::run`] returned.
enum Exit {
    Shutdown,
    /// No sequence is running and the next job needs these adapter files read into the model.
    Read(Vec<String>),
}

/// What the decode thread reads but never owns.
struct Shared<'a> {
    model: &'a SharedModel,
    config: &'a EngineConfig,
    reload: &'a Reload,
}

fn thread_main(
    shared: &Shared<'_>,
    adapters: AdapterStore,
    ram: RamCache<AdapterSet, SeqState>,
    commands: &Receiver<Command>,
    ready: SyncSender<Result<(), PluginError>>,
) {
    let active = adapters.load_set().clone();
    let mut pending = Pending {
        queue: VecDeque::new(),
        adapters,
        active,
        ram,
        shutting_down: false,
    };
    let mut ready = Some(ready);
    loop {
        let guard = match crate::model::read(shared.model) {
            Ok(guard) => guard,
            Err(err) => return stop(ready.take(), &mut pending, &err),
        };
        let context = match open(&guard, shared.config, &mut pending) {
            Ok(context) => context,
            Err(err) => return stop(ready.take(), &mut pending, &err),
        };
        if let Some(ready) = ready.take() {
            if ready.send(Ok(())).is_err() {
                return;
            }
        }
        let state = State::new(&guard, context, shared.config, pending);
        let (exit, left) = state.run(commands);
        // The context is gone (dropped with the state) before the read lock is released.
        drop(guard);
        pending = left;
        match exit {
            Exit::Shutdown => return,
            Exit::Read(paths) => {
                if let Err(err) = make_room_and_read(shared, &mut pending, &paths) {
                    tracing::error!("{err}");
                    fail_queue(&mut pending, &err);
                    return;
                }
                // The next context starts with no adapters; admission sets what it needs.
                pending.active = AdapterSet::default();
            }
        }
    }
}

/// The thread cannot go on: a failed start tells `load`; later, what waits fails, and later
/// calls see the thread gone and say so.
fn stop(
    ready: Option<SyncSender<Result<(), PluginError>>>,
    pending: &mut Pending,
    err: &PluginError,
) {
    match ready {
        Some(ready) => {
            let _ = ready.send(Err(err.clone()));
        }
        None => fail_queue(pending, err),
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

/// Reads `paths` (what the front job needs) into the model; when they do not fit under
/// [`crate::adapters::MAX_ADAPTERS`], reloads the model first and then also reads what the
/// jobs queued behind it need. An error here means the model is gone.
fn make_room_and_read(
    shared: &Shared<'_>,
    pending: &mut Pending,
    paths: &[String],
) -> Result<(), PluginError> {
    if paths.len() <= pending.adapters.room() {
        read_adapters(shared.model, pending, paths);
        return Ok(());
    }
    reload(shared, pending)?;
    // The front job's files come first in queue order; the cap holds for this cycle too.
    let mut wanted = queued_paths(pending);
    wanted.truncate(pending.adapters.room());
    read_adapters(shared.model, pending, &wanted);
    Ok(())
}

/// Frees every adapter read into the model by loading the model again from its file.
///
/// llama-cpp-2 0.1.160 cannot free one adapter: `LlamaLoraAdapter` has no `Drop` and its
/// pointer is private. llama.cpp itself frees a model's adapters with the model: in the
/// vendored llama.cpp (llama-cpp-sys-2 0.1.161), `llama_adapter_lora_init` registers each
/// adapter in `model.loras` (src/llama-adapter.cpp, `model.loras.insert(&adapter)`), and
/// `llama_model::~llama_model()` deletes every adapter in that set (src/llama-model.cpp);
/// `LlamaModel`'s `Drop` calls `llama_free_model`, which deletes the model. So dropping the
/// `LlamaModel` frees the weights and all adapters; the same parameters load it again.
///
/// Order matters: the store's handles point into the old model, so they are forgotten first;
/// the old model is dropped before the new one loads, so two copies of the weights never sit
/// in memory at once. No context exists now (the thread dropped it) and the write lock keeps
/// tokenizing callers out until the new model (same file, same vocabulary) is in place. On an
/// error the slot stays empty: the caller fails the queue and the thread stops.
fn reload(shared: &Shared<'_>, pending: &mut Pending) -> Result<(), PluginError> {
    let started = Instant::now();
    let path = shared.reload.source.path.display();
    let mut slot = crate::model::write(shared.model);
    let freed = pending.adapters.forget_all();
    *slot = None;
    let failed = |err: PluginError| {
        PluginError::new(
            err.kind,
            format!(
                "cannot reload model '{path}' to free the {freed} LoRA adapters it had read \
                 (llama.cpp frees them only with the model): {}; unload the model and load \
                 it again",
                err.message
            ),
        )
    };
    let mut model = shared.reload.source.reload().map_err(failed)?;
    if ModelShape::of(&model) != shared.reload.shape {
        return Err(failed(PluginError::unsupported_format(
            "the file now holds a different model than the one loaded",
        )));
    }
    pending.adapters.read_load_set(&mut model).map_err(failed)?;
    *slot = Some(model);
    tracing::info!(
        model = %path,
        ms = started.elapsed().as_secs_f64() * 1000.0,
        freed,
        "reloaded the model to free its LoRA adapters"
    );
    Ok(())
}

/// The adapter files the queued jobs need and the model does not hold, in queue order, each
/// once (a job without its own set uses the load set, which a reload reads itself).
fn queued_paths(pending: &Pending) -> Vec<String> {
    let mut paths: Vec<String> = Vec::new();
    for set in pending.queue.iter().filter_map(|job| job.adapters.as_ref()) {
        for path in pending.adapters.missing(set) {
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
    }
    paths
}

/// Reads `paths` into the model under its write lock (no context exists now). A file that
/// fails fails every queued job that wants it; the others go on.
fn read_adapters(model: &SharedModel, pending: &mut Pending, paths: &[String]) {
    let mut slot = crate::model::write(model);
    let Some(model) = slot.as_mut() else {
        fail_queue(pending, &crate::model::gone());
        return;
    };
    for path in paths {
        if let Err(err) = pending.adapters.read(model, path) {
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

/// Fails every queued job with `err`.
fn fail_queue(pending: &mut Pending, err: &PluginError) {
    pending
        .queue
        .drain(..)
        .for_each(|job| fail_job(job, err.clone()));
}

/// One sequence slot in use.
struct Sequence {
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already decoded (or found in the slot's kept cells).
    prefilled: usize,
    /// Prompt tokens found in the slot's kept cells.
    cached: usize,
    /// Position of the next token fed to this sequence.
    n_past: i32,
    /// A sampled token to feed in the next batch.
    next_input: Option<LlamaToken>,
    /// Generated tokens added to a batch after the prompt: with the prompt, what the
    /// sequence's KV cells hold (positions `0..n_past`), kept for prefix reuse.
    fed: Vec<LlamaToken>,
    /// Index in the current batch whose logits belong to this sequence.
    logits_index: Option<i32>,
    cancel: Arc<AtomicBool>,
    kind: SequenceKind,
    done: bool,
    /// Has tokens in the batch being decoded.
    in_batch: bool,
    /// Where the time to this sequence's first token went (logged at debug level).
    prompt_clock: PromptClock,
}

/// The parts of a sequence's time to first token: waiting for a slot, inside `llama_decode`,
/// and the rest: sampling, the decode thread's own work between batches and, on a GPU, the
/// wait for it (`llama_decode` returns once the work is queued; reading the logits waits).
struct PromptClock {
    sent: Instant,
    taken: Instant,
    decoding: Duration,
    batches: u32,
}

impl PromptClock {
    fn new(sent: Instant) -> Self {
        PromptClock {
            sent,
            taken: Instant::now(),
            decoding: Duration::ZERO,
            batches: 0,
        }
    }

    /// Logs the split once the first token is sampled (`LLMLOCAL_LOG=llmlocal::plugin=debug`
    /// on the host): where a time to first token longer than llama.cpp's prompt pass went.
    fn report(&self, prompt_tokens: usize, cached: usize) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let total = self.sent.elapsed();
        let queued = self.taken.saturating_duration_since(self.sent);
        tracing::debug!(
            "first token after {:.3} ms: {prompt_tokens} prompt tokens ({cached} cached), \
             queued {:.3} ms, \
             llama_decode {:.3} ms in {} batches, other {:.3} ms",
            ms(total),
            ms(queued),
            ms(self.decoding),
            self.batches,
            ms(total.saturating_sub(queued + self.decoding)),
        );
    }
}

enum SequenceKind {
    /// Boxed: the samplers make it much larger than the other variant.
    Generate(Box<Generating>),
    Logits(SyncSender<Result<Vec<f32>, PluginError>>),
}

struct Generating {
    job: GenerateJob,
    sampler: SamplerChain,
    outbox: VecDeque<Result<Step, PluginError>>,
    decoder: Utf8Decoder,
    generated: u32,
    finished: bool,
    /// Ended with a finish reason (not an error): every batch it was in decoded, so its KV
    /// cells are whole and may be kept.
    completed: bool,
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

    /// Ends the generation; what the UTF-8 decoder still holds goes with the end.
    fn finish(&mut self, reason: FinishReason) {
        let rest = self.decoder.finish();
        self.outbox.push_back(Ok(Step::finished_with(reason, rest)));
        self.finished = true;
        self.completed = true;
    }

    fn fail(&mut self, err: PluginError) {
        self.outbox.push_back(Err(err));
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
    /// What free slots' KV cells still hold (prefix reuse); empty in a new context.
    memory: SlotMemory,
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
            memory: SlotMemory::new(config.parallel.max(1) as usize),
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
                // The context goes: its kept prefixes go to the RAM cache, which stays.
                self.drop_kept();
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

    /// Frees the slots of finished, cancelled or abandoned sequences: a generation that
    /// ended normally with `cache_prompt` keeps its KV cells for prefix reuse, every other
    /// sequence's cells are removed at once.
    fn reap(&mut self) {
        for id in 0..self.slots.len() {
            let Some(seq) = &mut self.slots[id] else {
                continue;
            };
            let mut free = seq.done || seq.cancel.load(Ordering::Relaxed);
            if let SequenceKind::Generate(gen) = &mut seq.kind {
                if !gen.flush() {
                    free = true; // the consumer is gone
                } else if gen.finished && gen.outbox.is_empty() {
                    free = true;
                }
            }
            if !free {
                continue;
            }
            match self.slots[id].take().and_then(Sequence::into_kept) {
                Some(tokens) => self.memory.remember(id, tokens),
                None => self.clear_slot(id),
            }
        }
        // Jobs cancelled while still queued never take a slot.
        (self.pending.queue).retain(|job| !job.cancel.load(Ordering::Relaxed));
    }

    /// Removes every KV cell of slot `id` and forgets what it held.
    fn clear_slot(&mut self, id: usize) {
        self.memory.forget(id);
        let seq_id = u32::try_from(id).unwrap_or(0);
        if let Err(err) = self.context.clear_kv_cache_seq(Some(seq_id), None, None) {
            tracing::warn!("could not clear the KV cells of sequence {id}: {err}");
        }
    }

    /// Drops every kept prefix (a different adapter set makes them invalid; a full KV cache
    /// needs their cells), saving each in the RAM cache first. Returns whether there was any.
    fn drop_kept(&mut self) -> bool {
        let holding = self.memory.holding();
        for &id in &holding {
            self.save_slot(id);
            self.clear_slot(id);
        }
        !holding.is_empty()
    }

    /// Copies slot `id`'s kept cells into the RAM cache, if it is on and wants them (long
    /// enough, not held already, not larger than the whole cache).
    fn save_slot(&mut self, id: usize) {
        let held = self.memory.held(id);
        if !self.pending.ram.wants(&self.pending.active, held) {
            return;
        }
        let Ok(seq_id) = i32::try_from(id) else {
            return;
        };
        let flags = LlamaStateSeqFlags::empty();
        let size = self.context.state_seq_get_size_ext(seq_id, flags);
        if !self.pending.ram.fits(size) {
            tracing::debug!(
                "the state of {} tokens ({size} bytes) is larger than the whole host-RAM prompt \
                 cache: not saved",
                held.len()
            );
            return;
        }
        let started = Instant::now();
        match self.context.state_seq_get(seq_id, flags) {
            Ok(state) => {
                let bytes = state.byte_len();
                let (tokens, key) = (held.to_vec(), self.pending.active.clone());
                self.pending.ram.insert(key, tokens, state, bytes);
                let (used, entries) = self.pending.ram.usage();
                tracing::debug!(
                    "saved {} tokens ({bytes} bytes) to the host-RAM prompt cache in {:.3} ms; \
                     it holds {entries} prompts in {used} bytes",
                    held.len(),
                    started.elapsed().as_secs_f64() * 1000.0
                );
            }
            Err(err) => tracing::warn!("could not save sequence {id}'s state to host RAM: {err}"),
        }
    }

    /// Whether a saved state would give `prompt` more reusable tokens than the `common`
    /// prefix of the slot it was given.
    fn ram_beats(&self, prompt: &[LlamaToken], common: usize) -> bool {
        let better = |hit: crate::ram_cache::Hit| {
            reusable(hit.common, prompt.len()) > reusable(common, prompt.len())
        };
        self.pending
            .ram
            .best(&self.pending.active, prompt)
            .is_some_and(better)
    }

    /// Fills slot `id` from the saved state that best matches `prompt` (saving what the slot
    /// held first) and trims it to the common prefix. Returns the prompt tokens kept; 0 when
    /// llama.cpp does not take the state (then it leaves the cache) or cannot trim it.
    fn restore_slot(&mut self, id: usize, prompt: &[LlamaToken]) -> usize {
        self.save_slot(id);
        self.clear_slot(id);
        self.memory.touch(id);
        // Looked up after the save, which may have replaced or evicted entries.
        let Some(hit) = self.pending.ram.best(&self.pending.active, prompt) else {
            return 0;
        };
        let (Ok(seq_id), Some((state, _))) = (i32::try_from(id), self.pending.ram.open(hit.index))
        else {
            return 0;
        };
        let started = Instant::now();
        if let Err(err) = self.context.state_seq_set(state, seq_id) {
            tracing::warn!("llama.cpp did not take a state from the host-RAM prompt cache: {err}");
            self.pending.ram.remove(hit.index);
            self.clear_slot(id);
            return 0;
        }
        let keep = reusable(hit.common, prompt.len());
        if keep == 0 || !self.trim_slot(id, keep) {
            self.clear_slot(id);
            return 0;
        }
        tracing::debug!(
            "restored {keep} of {} prompt tokens from the host-RAM prompt cache in {:.3} ms",
            prompt.len(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        keep
    }

    /// Gets slot `id`'s cells ready for `job`: keeps the longest usable part of the common
    /// prefix (`common` tokens match) and removes the rest, saving the slot's cells in the
    /// RAM cache first when that loses more than half of them. Returns the prompt tokens kept.
    fn prepare_slot(&mut self, id: usize, common: usize, prompt_len: usize) -> usize {
        let keep = reusable(common, prompt_len);
        if keep * 2 < self.memory.held(id).len() {
            self.save_slot(id);
        }
        self.memory.forget(id);
        self.memory.touch(id);
        if keep == 0 || !self.trim_slot(id, keep) {
            self.clear_slot(id);
            return 0;
        }
        keep
    }

    /// Removes slot `id`'s cells from position `keep` on. False when llama.cpp cannot keep
    /// the first `keep`: a recurrent model's state cannot be cut (`llama_memory_seq_rm`
    /// answers false), and a sliding-window cache may already have dropped early cells that
    /// the positions after `keep` would need (llama-server checks the same).
    fn trim_slot(&mut self, id: usize, keep: usize) -> bool {
        let (Ok(seq_id), Ok(p0)) = (u32::try_from(id), u32::try_from(keep)) else {
            return false;
        };
        match self
            .context
            .clear_kv_cache_seq(Some(seq_id), Some(p0), None)
        {
            Ok(true) => {}
            Ok(false) | Err(_) => return false,
        }
        let seq_id = i32::try_from(id).unwrap_or(0);
        self.context.kv_cache_seq_pos_min(seq_id) == 0
    }

    /// Moves queued jobs into free slots, strictly in order. A job whose adapter set differs
    /// from the running sequences' waits until they are done, then the set is switched.
    /// Returns the files to read first when the front job needs adapters the model does not
    /// hold yet and nothing is running.
    fn admit(&mut self) -> Option<Vec<String>> {
        loop {
            let free: Vec<usize> = (0..self.slots.len())
                .filter(|&id| self.slots[id].is_none())
                .collect();
            if free.is_empty() {
                return None;
            }
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
                // KV cells computed under the old adapters are not valid under new ones.
                self.drop_kept();
                if let Err(err) = self.pending.adapters.activate(&mut self.context, &wanted) {
                    if let Some(job) = self.pending.queue.pop_front() {
                        fail_job(job, err);
                    }
                    continue;
                }
                self.pending.active = wanted;
            }
            if let Some(job) = self.pending.queue.pop_front() {
                self.start(job, &free);
            }
        }
    }

    /// Puts `job` into the best of the `free` slots (see [`SlotMemory::pick`]).
    fn start(&mut self, job: Job, free: &[usize]) {
        // Logits jobs and `cache_prompt: false` start from empty cells.
        let reuse = match &job.kind {
            JobKind::Generate(generate) => generate.cache_prompt,
            JobKind::Logits(_) => false,
        };
        let prompt = reuse.then_some(job.prompt.as_slice());
        let Some(pick) = self.memory.pick(free, prompt) else {
            // `admit` only calls with a free slot; failing beats losing the job.
            return fail_job(
                job,
                PluginError::internal("no free sequence slot for the job"),
            );
        };
        let (slot, kept) = match prompt {
            Some(prompt) if self.ram_beats(prompt, pick.common) => {
                // The saved state replaces what the slot holds: take the slot that holds
                // the least, as for a job without a prefix.
                let slot = self.memory.pick(free, None).map_or(pick.slot, |p| p.slot);
                (slot, self.restore_slot(slot, prompt))
            }
            _ => (
                pick.slot,
                self.prepare_slot(pick.slot, pick.common, job.prompt.len()),
            ),
        };
        if let JobKind::Generate(generate) = &job.kind {
            let kept = u32::try_from(kept).unwrap_or(0);
            generate.cached.store(kept, Ordering::Relaxed);
        }
        self.slots[slot] = Some(start_sequence(job, self.model, kept));
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
                    seq.fed.push(token);
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
        let started = Instant::now();
        let mut decoded = self.context.decode(&mut self.batch);
        // No room for the batch's cells: kept prefixes are only a cache, their cells go
        // first (llama.cpp changes nothing when it finds no slot, so the batch can retry).
        if decoded == Err(DecodeError::NoKvCacheSlot) && self.drop_kept() {
            tracing::debug!("the KV cache is full: dropped the kept prompt prefixes");
            decoded = self.context.decode(&mut self.batch);
        }
        self.count_prompt_decode(started.elapsed());
        if let Err(err) = decoded {
            self.fail_batch(&format!("llama.cpp could not decode a batch: {err}"));
            return true;
        }
        self.after_decode();
        true
    }

    /// Adds a batch's decode time to the prompt clock of each sequence still before its
    /// first token.
    fn count_prompt_decode(&mut self, took: Duration) {
        for seq in self.slots.iter_mut().flatten() {
            let before_first = match &seq.kind {
                SequenceKind::Generate(gen) => gen.generated == 0,
                SequenceKind::Logits(_) => true,
            };
            if seq.in_batch && before_first {
                seq.prompt_clock.decoding += took;
                seq.prompt_clock.batches += 1;
            }
        }
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
                }) if gen.sampler.is_greedy() => Some((id, *index)),
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
                    let sampled = match picked[id] {
                        Some(token) => Ok((token, None)),
                        None => gen.sampler.sample(&self.context, index),
                    };
                    let before = gen.generated;
                    match sampled {
                        Err(err) => gen.fail(err),
                        Ok((token, _)) if vocab.is_eog(token) && !gen.job.ignore_eos => {
                            gen.finish(FinishReason::EndOfGeneration);
                        }
                        Ok((token, logprobs)) => {
                            let piece = vocab.token_to_piece(token, false, None);
                            let mut step = Token::new(
                                u32::try_from(token.0).unwrap_or(0),
                                gen.decoder.push(&piece),
                            );
                            step.logprobs = logprobs.into();
                            gen.outbox.push_back(Ok(Step::Token(step)));
                            gen.generated += 1;
                            // The contract: prompt + generated tokens never exceed the
                            // context; `n_past` counts the evaluated ones, which excludes the
                            // token just sampled.
                            if gen.job.max_tokens != 0 && gen.generated >= gen.job.max_tokens {
                                gen.finish(FinishReason::Length);
                            } else if seq.n_past + 1 >= self.context_per_sequence {
                                gen.finish(FinishReason::ContextFull);
                            } else {
                                seq.next_input = Some(token);
                            }
                        }
                    }
                    if !gen.flush() {
                        seq.done = true;
                    }
                    // After the flush: the first token is not held back by the log line.
                    if before == 0 && gen.generated == 1 {
                        seq.prompt_clock.report(seq.prompt.len(), seq.cached);
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
    /// The tokens this ended sequence's KV cells hold, if they are worth keeping: a
    /// generation that completed normally and allows prompt caching. `None`: clear them.
    fn into_kept(self) -> Option<Vec<LlamaToken>> {
        let SequenceKind::Generate(gen) = &self.kind else {
            return None;
        };
        if !gen.completed || !gen.job.cache_prompt || self.prefilled < self.prompt.len() {
            return None;
        }
        let mut tokens = self.prompt;
        tokens.extend_from_slice(&self.fed);
        // Every fed token was decoded, so the cells hold exactly these; a mismatch would be
        // a bookkeeping bug, and clearing is always safe.
        (i32::try_from(tokens.len()) == Ok(self.n_past)).then_some(tokens)
    }

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

/// A sequence for `job`. Samplers that cannot be built (the caller checked them, so only an
/// unexpected failure) end the sequence with the error before its prompt is read.
/// `kept`: prompt tokens already in the slot's KV cells (prefix reuse).
fn start_sequence(job: Job, model: &LlamaModel, kept: usize) -> Sequence {
    let mut prefilled = kept;
    let kind = match job.kind {
        JobKind::Logits(reply) => SequenceKind::Logits(reply),
        JobKind::Generate(generate) => {
            let built = SamplerChain::new(&generate.plan, model, &generate.guidance);
            let mut gen = Generating {
                job: generate,
                sampler: SamplerChain::greedy(),
                outbox: VecDeque::new(),
                decoder: Utf8Decoder::new(),
                generated: 0,
                finished: false,
                completed: false,
            };
            match built {
                Ok(mut sampler) => {
                    // The penalties look at the prompt too, as in llama.cpp's own tools.
                    sampler.accept_prompt(&job.prompt);
                    gen.sampler = sampler;
                }
                Err(err) => {
                    gen.fail(err);
                    prefilled = job.prompt.len();
                }
            }
            SequenceKind::Generate(Box::new(gen))
        }
    };
    Sequence {
        prompt: job.prompt,
        prefilled,
        cached: kept,
        n_past: i32::try_from(kept).unwrap_or(0),
        next_input: None,
        fed: Vec::new(),
        logits_index: None,
        cancel: job.cancel,
        kind,
        done: false,
        in_batch: false,
        prompt_clock: PromptClock::new(job.sent),
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
