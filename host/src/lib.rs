//! llmlocal: the plugin host library. Backends are stable-ABI plugin libraries found and
//! checked at run time ([`plugins`]); [`config`] reads the config file; [`cli`] is the
//! `llmlocal` command line.

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
