//! The host end of plugin logging: plugins forward their `tracing` events through the sink
//! in [`BackendConfig`], and the host re-emits them into its own subscriber.

use abi_stable::std_types::RStr;
use llmlocal_plugin_api::log::{BackendConfig, LogLevel};
use tracing::level_filters::LevelFilter;

/// The target plugin log lines are re-emitted under (filter with `llmlocal::plugin=debug`).
pub const PLUGIN_LOG_TARGET: &str = "llmlocal::plugin";

/// The config handed to every plugin constructor: our sink, and the most verbose level the
/// host's subscriber currently wants (so a quiet host keeps plugins cheap).
pub fn backend_config() -> BackendConfig {
    BackendConfig {
        log_sink: sink,
        max_log_level: to_plugin_level(LevelFilter::current()),
    }
}

fn to_plugin_level(filter: LevelFilter) -> LogLevel {
    match filter {
        LevelFilter::OFF => LogLevel::Off,
        LevelFilter::ERROR => LogLevel::Error,
        LevelFilter::WARN => LogLevel::Warn,
        LevelFilter::INFO => LogLevel::Info,
        LevelFilter::DEBUG => LogLevel::Debug,
        _ => LogLevel::Trace,
    }
}

extern "C" fn sink(level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
    // A panic must not unwind back into the plugin.
    let _ = std::panic::catch_unwind(|| emit(level, target.as_str(), message.as_str()));
}

fn emit(level: LogLevel, plugin_target: &str, message: &str) {
    match level {
        LogLevel::Off => {}
        LogLevel::Error => {
            tracing::error!(target: PLUGIN_LOG_TARGET, plugin_target, "{message}")
        }
        LogLevel::Warn => tracing::warn!(target: PLUGIN_LOG_TARGET, plugin_target, "{message}"),
        LogLevel::Info => tracing::info!(target: PLUGIN_LOG_TARGET, plugin_target, "{message}"),
        LogLevel::Debug => {
            tracing::debug!(target: PLUGIN_LOG_TARGET, plugin_target, "{message}")
        }
        LogLevel::Trace => {
            tracing::trace!(target: PLUGIN_LOG_TARGET, plugin_target, "{message}")
        }
    }
}
