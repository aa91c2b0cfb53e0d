//! Logging to stderr: quiet (warnings) by default, `-v` raises the level, `$LLMLOCAL_LOG` or
//! `$RUST_LOG` give a full filter.

use std::io::IsTerminal as _;
use tracing_subscriber::EnvFilter;

pub const LOG_ENV: &str = "LLMLOCAL_LOG";

pub fn init(verbose: u8) {
    let filter = match verbose {
        0 => env_filter().unwrap_or_else(|| EnvFilter::new("warn")),
        1 => EnvFilter::new("info"),
        2 => EnvFilter::new("debug"),
        _ => EnvFilter::new("trace"),
    };
    // Fails only if a subscriber is already set (tests); keep that one.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn env_filter() -> Option<EnvFilter> {
    [LOG_ENV, "RUST_LOG"].iter().find_map(|var| {
        let value = std::env::var(var).ok().filter(|v| !v.trim().is_empty())?;
        match EnvFilter::try_new(&value) {
            Ok(filter) => Some(filter),
            Err(err) => {
                eprintln!("warning: ignoring ${var}={value:?}: {err}");
                None
            }
        }
    })
}
