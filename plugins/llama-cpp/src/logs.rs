//! llama.cpp's and ggml's own logs, routed into `tracing` one level lower than llama.cpp gives
//! them (and from there, through the plugin-api glue, to the host's logger).
//!
//! Why not llama-cpp-2's `send_logs_to_tracing`: it keeps llama.cpp's levels, and llama.cpp
//! warns at loads about things a user of llmlocal cannot act on (a GGUF's unset special-token
//! ids, Flash Attention falling back on small heads), which the host's default `warn` level
//! then prints on every `llmlocal run`. What fails reaches the user as this plugin's own error
//! anyway. So llama.cpp's warnings are `info` here, its info `debug`, its debug `trace`; its
//! errors stay errors. `LLMLOCAL_LOG=info` shows the warnings again.

use llama_cpp_sys_2::{
    ggml_log_level, ggml_log_set, llama_log_set, GGML_LOG_LEVEL_CONT, GGML_LOG_LEVEL_DEBUG,
    GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_INFO, GGML_LOG_LEVEL_WARN,
};
use std::{
    cell::RefCell,
    ffi::{c_char, c_void, CStr},
};
use tracing::Level;

/// The `tracing` target of llama.cpp's lines.
const TARGET: &str = "llama.cpp";

/// Sends llama.cpp's and ggml's logs to [`on_log`]. Call before any other llama.cpp call.
pub fn install() {
    // SAFETY: `on_log` is a plain function that lives as long as the process and accepts any
    // pointer llama.cpp passes; no user data is used.
    unsafe {
        llama_log_set(Some(on_log), std::ptr::null_mut());
        // Set after llama's: `llama_log_set` also sets ggml's logger.
        ggml_log_set(Some(on_log), std::ptr::null_mut());
    }
}

/// The level a llama.cpp line is logged at; `None` for llama.cpp's "none".
fn level_for(level: ggml_log_level) -> Option<Level> {
    match level {
        GGML_LOG_LEVEL_ERROR => Some(Level::ERROR),
        GGML_LOG_LEVEL_WARN => Some(Level::INFO),
        GGML_LOG_LEVEL_INFO => Some(Level::DEBUG),
        GGML_LOG_LEVEL_DEBUG => Some(Level::TRACE),
        _ => None,
    }
}

/// The pieces of one thread's unfinished line. llama.cpp sends some lines in pieces: a piece
/// without a trailing newline is continued by `GGML_LOG_LEVEL_CONT` pieces.
#[derive(Debug, Default)]
struct Lines {
    level: ggml_log_level,
    text: String,
}

impl Lines {
    /// Takes one piece; returns the lines it finishes, with their levels (a new message after
    /// an unfinished one ends that one too).
    fn push(&mut self, level: ggml_log_level, piece: &str) -> Vec<(ggml_log_level, String)> {
        let mut done = Vec::new();
        if level != GGML_LOG_LEVEL_CONT {
            if !self.text.is_empty() {
                done.push((self.level, std::mem::take(&mut self.text)));
            }
            self.level = level;
        }
        self.text.push_str(piece);
        if self.text.ends_with('\n') {
            let line = std::mem::take(&mut self.text);
            done.push((self.level, line.trim_end_matches('\n').to_string()));
        }
        done
    }
}

thread_local! {
    static LINES: RefCell<Lines> = RefCell::new(Lines::default());
}

unsafe extern "C" fn on_log(level: ggml_log_level, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string that is valid for this call.
    let piece = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    // Nothing may unwind into C; a log line lost to a panic is acceptable.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lines = LINES.with(|lines| match lines.try_borrow_mut() {
            Ok(mut lines) => lines.push(level, &piece),
            Err(_) => Vec::new(),
        });
        for (level, line) in lines {
            emit(level, &line);
        }
    }));
}

fn emit(level: ggml_log_level, line: &str) {
    match level_for(level) {
        Some(Level::ERROR) => tracing::error!(target: TARGET, "{line}"),
        Some(Level::INFO) => tracing::info!(target: TARGET, "{line}"),
        Some(Level::DEBUG) => tracing::debug!(target: TARGET, "{line}"),
        Some(_) => tracing::trace!(target: TARGET, "{line}"),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_levels_go_one_lower_and_errors_stay() {
        assert_eq!(level_for(GGML_LOG_LEVEL_ERROR), Some(Level::ERROR));
        assert_eq!(level_for(GGML_LOG_LEVEL_WARN), Some(Level::INFO));
        assert_eq!(level_for(GGML_LOG_LEVEL_INFO), Some(Level::DEBUG));
        assert_eq!(level_for(GGML_LOG_LEVEL_DEBUG), Some(Level::TRACE));
        assert_eq!(level_for(0), None);
    }

    #[test]
    fn continued_pieces_make_one_line_at_the_first_pieces_level() {
        let mut lines = Lines::default();
        assert!(lines.push(GGML_LOG_LEVEL_WARN, "a").is_empty());
        assert!(lines.push(GGML_LOG_LEVEL_CONT, "b").is_empty());
        assert_eq!(
            lines.push(GGML_LOG_LEVEL_CONT, "c\n"),
            vec![(GGML_LOG_LEVEL_WARN, "abc".to_string())]
        );
        assert_eq!(
            lines.push(GGML_LOG_LEVEL_INFO, "whole\n"),
            vec![(GGML_LOG_LEVEL_INFO, "whole".to_string())]
        );
    }

    #[test]
    fn a_new_message_ends_an_unfinished_one() {
        let mut lines = Lines::default();
        assert!(lines.push(GGML_LOG_LEVEL_INFO, "no newline").is_empty());
        assert_eq!(
            lines.push(GGML_LOG_LEVEL_ERROR, "boom\n"),
            vec![
                (GGML_LOG_LEVEL_INFO, "no newline".to_string()),
                (GGML_LOG_LEVEL_ERROR, "boom".to_string())
            ]
        );
    }
}
