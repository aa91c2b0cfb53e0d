//! llmlocal backend plugin on llama.cpp (through `llama-cpp-2`): GGUF models on the CPU, on
//! CUDA GPUs (feature `cuda`) and on Metal (feature `metal`).
//!
//! # Design
//!
//! * **Load** ([`load`]): the plugin checks the path and reads the GGUF header itself before
//!   llama.cpp sees the file, so a missing file, a non-GGUF file, a truncated file and an
//!   unknown architecture each give their own [`llmlocal_plugin_api::ErrorKind`] with a clear
//!   message. The weights are memory-mapped. The KV cache size is estimated
//!   (`2 x n_layer x n_ctx x n_parallel x n_embd_kv x 2 bytes`) and compared with available
//!   memory before the context is created.
//! * **Continuous batching** ([`engine`]): one decode thread per loaded model owns the
//!   `LlamaContext` (it borrows the model and is created inside the thread). The context has
//!   `n_seq_max = parallel` sequences of `context_length` cells each (`n_ctx = context_length x
//!   parallel`, `kv_unified` off so every sequence has its own KV stream). Every step batches
//!   the next token of every generating sequence plus prompt chunks of newly started ones, up
//!   to `batch_size` tokens, into a single `llama_decode`. Requests beyond `parallel` wait in
//!   a FIFO queue inside the plugin.
//! * **A generation** ([`generation`]) is the receiving end of a bounded channel (a few
//!   tokens: back-pressure) plus a cancel flag. A sequence whose channel is full sits out
//!   the step; the other sequences go on. Dropping the generation sets the flag and wakes the
//!   thread, which removes the sequence's KV cells at once and gives its slot to the queue.
//!   Consequence for callers: a running generation keeps its slot until its consumer has read
//!   it to the end (or dropped it), so a caller that blocks on a *queued* generation while
//!   not reading the running ones waits forever. Read each generation on its own thread (as
//!   the server does), or in start order.
//! * **Prompt-prefix reuse** ([`prefix`], capability `prefix-cache`): a generation that
//!   ended normally with `cache_prompt` leaves its KV cells in its slot; the next job takes
//!   the free slot sharing the longest prompt prefix and evaluates only the rest (see
//!   [`engine`]).
//! * **Sampling** ([`sampler`]): one llama.cpp sampler chain per sequence: penalties ->
//!   top_k -> top_p -> min_p -> temperature -> dist(seed); temperature 0 is plain argmax.
//!   Token text is made from the raw piece bytes with `Utf8Decoder`, so characters split
//!   over tokens arrive whole.
//! * **LoRA** ([`adapters`]): GGUF LoRA files given at load are read with the model; a
//!   generation may name any other GGUF LoRA file, which the decode thread reads into the
//!   *same* loaded model at run time (the model sits in a `RwLock`: when nothing is running,
//!   the thread drops its context, reads the adapter under the write lock, creates the
//!   context again). Read adapters stay cached by path, at most
//!   [`adapters::MAX_ADAPTERS`] at a time: llama.cpp frees them only with the model, so past
//!   that the thread reloads the model from its file to free them all. Adapters apply
//!   to the whole context, so the decode thread only batches sequences with the same set:
//!   queued jobs are admitted in FIFO order, and a job wanting a different set waits until
//!   the running group has finished, then the context's set is switched. One adapter is
//!   active at a time (llama-cpp-2 0.1.160 exposes no way to stack several on a context);
//!   the host stacks several into one file first.
//! * **Logs**: llama.cpp's and ggml's logs go to `tracing` (the plugin-api glue forwards them
//!   to the host), never straight to the terminal.

pub mod adapters;
mod context;
pub mod embed;
pub mod engine;
pub mod generation;
pub mod gguf;
pub mod kv;
pub mod load;
mod logs;
pub mod model;
pub mod prefix;
pub mod ram_cache;
pub mod runtime;
pub mod sampler;

use llmlocal_plugin_api::{
    abi_stable::std_types::RString, capability, format, Backend, LoadRequest, Manifest, Model,
    PluginError,
};

/// The name users select this backend by.
pub const BACKEND_NAME: &str = "llama-cpp";

/// Generations run at once per model when the load request does not say.
pub const DEFAULT_PARALLEL: u32 = 4;

/// What this plugin is and can do; `devices` lists what llama.cpp reports usable right now.
pub fn manifest() -> Manifest {
    let mut manifest = Manifest::new(
        BACKEND_NAME,
        env!("CARGO_PKG_VERSION"),
        "llama.cpp (llama-cpp-2): GGUF models, continuous batching, LoRA",
    );
    manifest.add_format(format::GGUF);
    manifest.devices = runtime::devices()
        .into_iter()
        .map(|d| RString::from(d.name))
        .collect();
    for name in [
        capability::LORA,
        capability::LORA_PER_GENERATION,
        capability::LOGIT_BIAS,
        capability::FULL_SAMPLING,
        capability::LOGPROBS,
        capability::GRAMMAR,
        capability::JSON_SCHEMA,
        capability::EMBEDDINGS,
        capability::PREFIX_CACHE,
        capability::KV_CACHE_TYPES,
        capability::FLASH_ATTENTION,
        capability::HOST_RAM_PROMPT_CACHE,
    ] {
        manifest.capabilities.insert(name);
    }
    manifest.capabilities.parallel_generations = DEFAULT_PARALLEL;
    manifest
}

/// The backend object: stateless, every model owns its own decode thread.
#[derive(Debug)]
pub struct LlamaCppBackend;

impl LlamaCppBackend {
    pub fn new() -> Result<Self, PluginError> {
        runtime::backend()?;
        Ok(LlamaCppBackend)
    }
}

impl Backend for LlamaCppBackend {
    fn load(&self, request: LoadRequest) -> Result<Box<dyn Model>, PluginError> {
        Ok(Box::new(load::load(&request)?))
    }
}

llmlocal_plugin_api::export_backend! {
    manifest: manifest,
    backend: LlamaCppBackend::new,
}
