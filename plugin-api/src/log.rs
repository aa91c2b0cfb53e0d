//! Logging across the boundary. A plugin has its own copy of `tracing`'s statics, so its
//! events (and llama.cpp's, routed into `tracing` inside the plugin) would vanish. The host
//! passes a [`LogSink`] in [`BackendConfig`]; the export glue installs a subscriber in the
//! plugin that forwards every enabled event to it.

use abi_stable::{std_types::RStr, StableAbi};
use std::fmt::Write as _;
use tracing::{
    field::{Field, Visit},
    Event, Level, Metadata, Subscriber,
};
use tracing_subscriber::{layer::Context, prelude::*, Layer};

#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn from_tracing(level: &Level) -> LogLevel {
        match *level {
            Level::ERROR => LogLevel::Error,
            Level::WARN => LogLevel::Warn,
            Level::INFO => LogLevel::Info,
            Level::DEBUG => LogLevel::Debug,
            Level::TRACE => LogLevel::Trace,
        }
    }
}

/// Receives one formatted log line from a plugin: level, the event's target, the message.
pub type LogSink = extern "C" fn(level: LogLevel, target: RStr<'_>, message: RStr<'_>);

/// What the host hands to a plugin's constructor.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct BackendConfig {
    /// Where log lines go. Ignored when `max_log_level` is `Off`.
    pub log_sink: extern "C" fn(level: LogLevel, target: RStr<'_>, message: RStr<'_>),
    /// Events above this level are dropped inside the plugin (cheap when quiet).
    pub max_log_level: LogLevel,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            log_sink: discard,
            max_log_level: LogLevel::Off,
        }
    }
}

extern "C" fn discard(_level: LogLevel, _target: RStr<'_>, _message: RStr<'_>) {}

struct ForwardLayer {
    sink: LogSink,
    max: LogLevel,
}

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn enabled(&self, metadata: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        LogLevel::from_tracing(metadata.level()) <= self.max
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut line = MessageVisitor(String::new());
        event.record(&mut line);
        let meta = event.metadata();
        (self.sink)(
            LogLevel::from_tracing(meta.level()),
            RStr::from_str(meta.target()),
            RStr::from_str(line.0.trim_end()),
        );
    }
}

/// Writes `message` first, then the other fields as `name=value`.
struct MessageVisitor(String);

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

/// Installs the forwarding subscriber as this plugin's global default. Later calls (a second
/// backend from the same library) keep the first one.
pub fn install(config: &BackendConfig) {
    if config.max_log_level == LogLevel::Off {
        return;
    }
    let layer = ForwardLayer {
        sink: config.log_sink,
        max: config.max_log_level,
    };
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
}
