//! The worker process (`llmlocal plugin-worker LIB`): loads one plugin library with the same
//! checks as the host and serves the contract's calls arriving on fd 0 (a Unix socket).
//! Every call but `next`/`stats` runs on a thread of its own (a slow load never holds up a
//! tokenize); each generation has one thread that owns it and answers its `next`/`stats` in
//! order. The worker exits when the host closes the socket.

use super::{
    frame,
    wire::{self, Call, Reply, Request, Response},
};
use crate::plugins::load::{self, Candidate};
use abi_stable::std_types::{RSlice, RStr};
use llmlocal_plugin_api::ffi::{BackendBox, GenerationBox, ModelBox};
use std::{
    collections::HashMap,
    os::{fd::FromRawFd, unix::net::UnixStream},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex, OnceLock,
    },
};

type PluginResult<T> = abi_stable::std_types::RResult<T, llmlocal_plugin_api::PluginError>;

/// Serves the host until it closes the socket on fd 0; never returns normally.
pub fn serve(library: &Path) -> ! {
    // SAFETY: the host started us with our end of a socket pair as fd 0; nothing else in
    // this process uses fd 0.
    let socket = unsafe { UnixStream::from_raw_fd(0) };
    let out = match socket.try_clone() {
        Ok(out) => out,
        Err(err) => exit(&format!("cannot clone the host socket: {err}")),
    };
    let worker = Arc::new(Worker {
        out: Mutex::new(out),
        candidate: OnceLock::new(),
        backend: OnceLock::new(),
        models: Mutex::new(HashMap::new()),
        generations: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        threads: Threads::default(),
    });
    worker.greet(library);
    let mut input = socket;
    loop {
        match frame::read::<_, Request>(&mut input) {
            Ok(Some(request)) => Arc::clone(&worker).dispatch(request),
            // The host is gone (or closed us on purpose): no one to serve.
            Ok(None) => std::process::exit(0),
            Err(err) => exit(&format!("unreadable request from the host: {err}")),
        }
    }
}

fn exit(message: &str) -> ! {
    tracing::error!("{message}");
    std::process::exit(2)
}

enum GenerationCall {
    Next(u64),
    Stats(u64),
}

struct Worker {
    out: Mutex<UnixStream>,
    candidate: OnceLock<Candidate>,
    backend: OnceLock<Arc<BackendBox>>,
    models: Mutex<HashMap<u64, Arc<ModelBox>>>,
    generations: Mutex<HashMap<u64, mpsc::Sender<GenerationCall>>>,
    next_id: AtomicU64,
    threads: Threads,
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads kept for the next call once theirs is done. Not a fixed pool: a call never
/// waits for a thread (a generation holds its thread until dropped). Reuse matters for
/// speed: OpenMP (llama.cpp) keeps one thread team per calling thread, so a fresh thread per
/// generation would build a new team each time (milliseconds of time to first token).
#[derive(Default)]
struct Threads {
    idle: Arc<Mutex<Vec<mpsc::Sender<Job>>>>,
}

impl Threads {
    fn run(&self, job: Job) {
        let mut job = job;
        while let Some(thread) = lock(&self.idle).pop() {
            match thread.send(job) {
                Ok(()) => return,
                // That thread is gone: take the job back and try the next.
                Err(mpsc::SendError(back)) => job = back,
            }
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let idle = Arc::clone(&self.idle);
        let spawned = std::thread::Builder::new()
            .name("plugin-call".into())
            .spawn(move || {
                let mut job = Some(job);
                while let Some(current) = job.take() {
                    current();
                    lock(&idle).push(tx.clone());
                    job = rx.recv().ok();
                }
            });
        if let Err(err) = spawned {
            tracing::error!("cannot start a thread for a call: {err}");
        }
    }
}

impl Worker {
    fn reply(&self, id: u64, reply: Reply) {
        let written = frame::write(&mut *lock(&self.out), &Response { id, reply });
        if let Err(err) = written {
            // The host is gone.
            tracing::debug!("cannot answer the host: {err}");
            std::process::exit(0);
        }
    }

    fn greet(&self, library: &Path) {
        let greeting = match load::open(library) {
            Ok(candidate) => {
                let manifest = wire::Manifest::from(&candidate.manifest);
                let _ = self.candidate.set(candidate);
                Reply::Opened(manifest)
            }
            Err(refusal) => Reply::Refused(refusal.to_string()),
        };
        self.reply(0, greeting);
    }

    fn dispatch(self: Arc<Self>, request: Request) {
        let id = request.id;
        match request.call {
            Call::Next { generation } => {
                self.to_generation(id, generation, GenerationCall::Next(id))
            }
            Call::Stats { generation } => {
                self.to_generation(id, generation, GenerationCall::Stats(id))
            }
            Call::DropGeneration { generation } => {
                // The generation's thread sees its channel close and drops the generation.
                lock(&self.generations).remove(&generation);
            }
            Call::DropModel { model } => {
                lock(&self.models).remove(&model);
            }
            Call::Construct => {
                let reply = self.construct();
                self.reply(id, reply);
            }
            call => {
                let worker = Arc::clone(&self);
                self.threads.run(Box::new(move || {
                    if let Some(reply) = worker.model_call(id, call) {
                        worker.reply(id, reply);
                    }
                }));
            }
        }
    }

    fn construct(&self) -> Reply {
        let Some(candidate) = self.candidate.get() else {
            return error("the library was refused; there is nothing to construct");
        };
        match candidate.construct() {
            Ok(backend) => {
                let _ = self.backend.set(Arc::new(backend));
                Reply::Done
            }
            Err(refusal) => Reply::Refused(refusal.to_string()),
        }
    }

    fn to_generation(&self, id: u64, generation: u64, call: GenerationCall) {
        let sender = lock(&self.generations).get(&generation).cloned();
        let sent = sender.is_some_and(|s| s.send(call).is_ok());
        if !sent {
            self.reply(
                id,
                error(&format!("no generation {generation} in this worker")),
            );
        }
    }

    fn model(&self, model: u64) -> Option<Arc<ModelBox>> {
        lock(&self.models).get(&model).cloned()
    }

    /// Runs a call on a model (or the load); `None` when the reply was already sent.
    fn model_call(self: &Arc<Self>, id: u64, call: Call) -> Option<Reply> {
        let reply = match call {
            Call::Load(request) => self.load(request.into()),
            Call::Metadata { model } => self.on_model(model, |m| {
                answer(m.metadata(), |meta| Reply::Metadata((&meta).into()))
            }),
            Call::Tokenize {
                model,
                text,
                add_special,
                parse_special,
            } => self.on_model(model, |m| {
                let tokens = m.tokenize(RStr::from_str(&text), add_special, parse_special);
                answer(tokens, |t| Reply::Tokens(t.into()))
            }),
            Call::Detokenize {
                model,
                tokens,
                skip_special,
            } => self.on_model(model, |m| {
                let text = m.detokenize(RSlice::from_slice(&tokens), skip_special);
                answer(text, |t| Reply::Text(t.into()))
            }),
            Call::Logits { model, tokens } => self.on_model(model, |m| {
                answer(m.logits(RSlice::from_slice(&tokens)), |l| {
                    Reply::Floats(l.into())
                })
            }),
            Call::Embed { model, request } => self.on_model(model, |m| {
                answer(m.embed(request.into()), |v| {
                    Reply::Vectors(v.into_iter().map(Into::into).collect())
                })
            }),
            Call::Generate { model, request } => {
                return self.generate(id, model, request.into());
            }
            other => error(&format!("`{}` is not a model call", other.name())),
        };
        Some(reply)
    }

    fn on_model(&self, model: u64, f: impl FnOnce(&ModelBox) -> Reply) -> Reply {
        match self.model(model) {
            Some(m) => f(&m),
            None => no_model(model),
        }
    }

    fn load(&self, request: llmlocal_plugin_api::LoadRequest) -> Reply {
        let Some(backend) = self.backend.get() else {
            return error("the backend was not constructed");
        };
        answer(backend.load(request), |model| {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            lock(&self.models).insert(id, Arc::new(model));
            Reply::Model(id)
        })
    }

    fn generate(
        self: &Arc<Self>,
        id: u64,
        model: u64,
        request: llmlocal_plugin_api::GenerateRequest,
    ) -> Option<Reply> {
        let Some(model) = self.model(model) else {
            return Some(no_model(model));
        };
        let generation = match model.generate(request).into_result() {
            Ok(g) => g,
            Err(err) => return Some(Reply::Error(err.into())),
        };
        let gen_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        lock(&self.generations).insert(gen_id, tx);
        // This thread now owns the generation: answer first, then serve its steps.
        self.reply(id, Reply::Generation(gen_id));
        self.run_generation(generation, model, rx);
        None
    }

    /// Answers the generation's calls in order until the host drops it. After answering a
    /// token it computes the next step at once and holds it (one step, never more: the
    /// back-pressure stays), so the plugin works while the token crosses the socket and the
    /// host handles it: the IPC round trip overlaps the compute instead of adding to it.
    /// Dropping the generation then wastes at most one step.
    fn run_generation(
        &self,
        mut generation: GenerationBox,
        model: Arc<ModelBox>,
        calls: mpsc::Receiver<GenerationCall>,
    ) {
        let mut ahead: Option<Reply> = None;
        for call in calls {
            match call {
                GenerationCall::Next(id) => {
                    let step = ahead.take().unwrap_or_else(|| next_step(&mut generation));
                    let more = matches!(step, Reply::Step(wire::Step::Token(_)));
                    self.reply(id, step);
                    if more {
                        ahead = Some(next_step(&mut generation));
                    }
                }
                GenerationCall::Stats(id) => {
                    let held = matches!(ahead, Some(Reply::Step(wire::Step::Token(_))));
                    let stats = answer(generation.stats(), |mut s| {
                        // The token computed ahead has not been returned by `next` yet.
                        if held {
                            s.generated_tokens = s.generated_tokens.saturating_sub(1);
                        }
                        Reply::Stats(s.into())
                    });
                    self.reply(id, stats);
                }
            }
        }
        // Field order is drop order: the generation goes before our hold on its model.
        drop(generation);
        drop(model);
    }
}

fn next_step(generation: &mut GenerationBox) -> Reply {
    answer(generation.next(), |s| Reply::Step((&s).into()))
}

fn answer<T>(result: PluginResult<T>, ok: impl FnOnce(T) -> Reply) -> Reply {
    match result.into_result() {
        Ok(value) => ok(value),
        Err(err) => Reply::Error(err.into()),
    }
}

fn no_model(model: u64) -> Reply {
    error(&format!("no model {model} in this worker"))
}

fn error(message: &str) -> Reply {
    Reply::Error(llmlocal_plugin_api::PluginError::internal(message).into())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
