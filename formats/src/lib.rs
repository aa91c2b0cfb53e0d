//! File formats shared by the llmlocal host, its backend plugins and its test tools.
//!
//! Plain readers and writers with no engine behind them, so the host (adapter conversion,
//! memory estimates), the plugins (checking a file before the backend sees it) and the
//! fixture and benchmark generators all read and write these files the same way.

#[doc(hidden)]
pub mod fuzz;
pub mod gguf;
pub mod peft;
