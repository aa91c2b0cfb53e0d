//! The engine facade: `generate(model, prompt or messages, config)` = ensure the model's files
//! are cached (downloading them) -> ensure it is loaded (in the backend the request, the model's
//! config or the default names, else the first that reads its format) -> stream tokens.
//!
//! Several models stay loaded; the least recently used idle one is unloaded when a load would
//! not fit in memory, and any idle one after its keep-alive. Generations run on blocking
//! threads that pull from the plugin and push text into a bounded channel; dropping the
//! stream cancels the generation. Chat templates and stop sequences are handled here, the
//! same for every backend.

mod app;
pub mod defaults;
pub mod embedding;
mod error;
mod facade;
pub mod kv_cache;
pub mod limits;
pub mod logprobs;
mod lora;
pub mod memory;
pub mod metrics;
mod pool;
mod prompt_cache;
mod request;
mod runner;
pub mod settings;
pub mod stop;
pub mod template;
pub mod template_override;
pub mod tools;
mod view;

pub use app::SetupError;
pub use defaults::SamplingDefaults;
pub use embedding::{EmbedConfig, EmbedInput, Embeddings};
pub use error::{EngineError, ErrorClass};
pub use facade::{Engine, ResolvedFiles};
pub use kv_cache::KvCacheOptions;
pub use logprobs::{TokenLogprob, TokenLogprobs};
pub use metrics::Metrics;
pub use pool::LoadedInfo;
pub use request::{
    Completion, Constraint, Event, FinishReason, GenerationConfig, Prompt, TokenStream,
};
pub use settings::{EngineSettings, ModelEntry};
pub use template::{ChatMessage, ChatTemplate};
pub use tools::{ToolCall, ToolChoice, ToolSpec, Tools};
pub use view::ModelView;
