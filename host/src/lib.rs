//! llmlocal: the plugin host library. Backends are stable-ABI plugin libraries found and
//! checked at run time ([`plugins`]); [`config`] reads the config file; [`cli`] is the
//! `llmlocal` command line.
//!
//! # Quick start: the engine in your application
//!
//! [`engine::Engine`] is the whole service: it resolves a model name (a preset such as
//! `stories` or `qwen3:0.6b`, a Hugging Face spec, or a path; see [`models::presets`]),
//! downloads it into the shared Hugging Face cache, loads it in a backend plugin and streams
//! tokens. Drop the stream to cancel.
//!
//! ```no_run
//! use futures_util::StreamExt as _;
//! use llmlocal::{config::Config, engine::{Engine, Event, GenerationConfig, Prompt}};
//! use llmlocal::models::CancellationToken;
//!
//! # async fn app() -> anyhow::Result<()> {
//! // Config file, plugin folders and model cache, as `llmlocal serve` finds them.
//! let engine = Engine::from_config(&Config::load(None)?, &[])?;
//! let model = "stories"; // built in: works offline; try "qwen3:0.6b"
//! if !engine.is_cached(model) {
//!     let cancel = CancellationToken::new(); // cancel() stops; the next prefetch resumes
//!     engine
//!         .prefetch_with_progress(model, |p| eprintln!("{:.0}%", p.fraction * 100.0), cancel)
//!         .await?;
//! }
//! let prompt = Prompt::Text("Once upon a time".into());
//! let mut stream = engine.generate(model, prompt, GenerationConfig::greedy(64)).await?;
//! while let Some(event) = stream.next().await {
//!     match event? {
//!         Event::Text(piece) => print!("{piece}"),
//!         Event::Done(done) => println!("\n{} tokens", done.completion_tokens),
//!     }
//! }
//! let stats = engine.last_stats(); // tokens/s, time to first token, load and queue time
//! # let _ = stats;
//! engine.unload_all(); // e.g. when the OS warns that memory is short
//! # Ok(()) }
//! ```
//!
//! Errors are [`engine::EngineError`]: [`engine::EngineError::class`] says what kind (not
//! found, bad request, busy, unavailable) and [`engine::EngineError::code`] gives a stable
//! string; the message says what to do. `host/examples/app.rs` is the full example
//! (`cargo run -p llmlocal --example app`), and CI runs it on the built-in model.

pub mod adapters;
pub mod cli;
pub mod config;
pub mod engine;
pub mod models;
pub mod plugins;
pub mod router;
pub mod server;

/// The plugin contract, for code that uses the host's handles (requests, steps, metadata).
pub use llmlocal_plugin_api as api;
