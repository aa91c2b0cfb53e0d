//! The `scripted` test backend (exported by the `llmlocal-backend-scripted` plugin): a
//! deterministic test backend for the host's plugin plumbing. It is not a
//! language model: a "model" is a text file whose script it replays byte by byte.
//!
//! Model file: UTF-8 text whose first line is [`HEADER`]; the rest of the file is the script.
//! Tokens are bytes (ids 0..=255) plus [`BOS`] and [`EOS`]. A greedy generation emits the
//! script's bytes in order, starting after whatever prefix of the script the prompt already
//! ends with (like a language model that knows one text), then ends with `EndOfGeneration`. With `temperature > 0` the script
//! is rotated by `(sum of prompt ids + seed) mod len`, so sampling settings matter observably
//! while staying deterministic.
//!
//! The broken test plugins reuse this crate, some with a [`Behaviour`] that misbehaves on
//! purpose. It exports nothing itself: each plugin crate calls `export_backend!`.

mod generation;
mod model;
mod script;

pub use generation::ScriptedGeneration;
pub use model::ScriptedModel;
pub use script::{Script, BOS, EOS, HEADER, VOCAB_SIZE};

use llmlocal_plugin_api::{Backend, LoadRequest, Manifest, Model, PluginError};

/// The backend name users select this plugin by.
pub const NAME: &str = "scripted";

/// How many generations one model runs at once (each generation is independent state).
pub const PARALLEL_GENERATIONS: u32 = 4;

/// Deliberate misbehaviour for the host's tests. The default behaves well.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Behaviour {
    /// Panic inside `Generation::next` when producing this token (1-based).
    pub panic_at_token: Option<u32>,
    /// Block inside `Model::generate` this long, after creating `<model file>.generating`
    /// (so that a test knows the call has begun).
    pub generate_delay: Option<std::time::Duration>,
    /// Write to an unmapped address (SIGSEGV) in `Generation::next` at this token (1-based).
    pub segfault_at_token: Option<u32>,
    /// Never return from `Generation::next` when producing this token (1-based).
    pub hang_at_token: Option<u32>,
    /// Call `abort()` (SIGABRT) in `Generation::next` at this token (1-based).
    pub abort_at_token: Option<u32>,
    /// Allocate (and touch) memory without end in `Generation::next` at this token
    /// (1-based): under an address-space limit the allocator fails and the process aborts.
    pub allocate_at_token: Option<u32>,
    /// Never return from `Backend::load` when the script contains [`HANG_MARKER`] (other
    /// models load, so a test sees the backend recover after its worker is killed).
    pub hang_in_load: bool,
    /// Never return from `Model::tokenize` when the text contains [`HANG_MARKER`].
    pub hang_in_tokenize: bool,
    /// Report probabilities where the contract asks for log-probabilities (when a request
    /// asks for logprobs; only a manifest declaring `logprobs` gets such requests).
    pub wrong_logprobs: bool,
}

/// The text that makes the `hang_in_*` behaviours hang.
pub const HANG_MARKER: &str = "HANG";

/// A plugin call that never returns: the host's deadline must catch it.
pub(crate) fn hang_forever() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// The scripted backend: loads script files as models.
#[derive(Debug, Clone, Default)]
pub struct ScriptedBackend {
    behaviour: Behaviour,
}

impl ScriptedBackend {
    pub fn new() -> Result<Self, PluginError> {
        Ok(Self::default())
    }

    pub fn with_behaviour(behaviour: Behaviour) -> Self {
        ScriptedBackend { behaviour }
    }
}

impl Backend for ScriptedBackend {
    fn load(&self, request: LoadRequest) -> Result<Box<dyn Model>, PluginError> {
        Ok(Box::new(ScriptedModel::load(&request, self.behaviour)?))
    }
}

/// The manifest of a scripted-like backend named `name`.
pub fn manifest_named(name: &str, description: &str) -> Manifest {
    let mut manifest = Manifest::new(name, env!("CARGO_PKG_VERSION"), description);
    manifest.capabilities.parallel_generations = PARALLEL_GENERATIONS;
    manifest
}

pub fn manifest() -> Manifest {
    manifest_named(
        NAME,
        "deterministic test backend for the llmlocal host's plugin plumbing, not a model: \
         replays the script of a `llmlocal-scripted-model v1` text file byte by byte",
    )
}
