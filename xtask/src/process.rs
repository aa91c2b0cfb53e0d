//! Running child processes: cargo with the right toolchain, commands echoed before they run,
//! children with a time limit and their output in a log file.

use anyhow::{bail, Context, Result};
use std::{
    env, fs,
    path::Path,
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

/// `cargo` (the one that runs xtask, via `$CARGO`) in `root`.
pub fn cargo(root: &Path) -> Command {
    let program = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(program);
    command.current_dir(root);
    command
}

/// The command line, for echoing.
pub fn shown(command: &Command) -> String {
    let program = Path::new(command.get_program());
    // `$CARGO` is a long toolchain path; the name says enough.
    let program = match program.file_stem() {
        Some(stem) if stem == "cargo" => "cargo".into(),
        _ => program.display().to_string(),
    };
    let mut parts = vec![program];
    parts.extend(command.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.contains(' ') || a.is_empty() {
            format!("{a:?}")
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

/// Runs `command` with the terminal attached; a non-zero exit is an error naming `what`.
pub fn run(command: &mut Command, what: &str) -> Result<()> {
    println!("$ {}", shown(command));
    let status = command
        .status()
        .with_context(|| format!("{what}: could not start `{}`", shown(command)))?;
    if !status.success() {
        bail!("{what} failed ({})", describe(status));
    }
    Ok(())
}

/// How a child ended, in words (a signal is named: an abort shows as signal 6).
pub fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => "no exit status".to_string(),
    }
}

/// How a child run with a time limit ended.
pub enum Finished {
    Exited(ExitStatus),
    TimedOut,
}

/// Runs `command` with stdout and stderr going to `log`, killing it after `limit`.
pub fn run_logged(command: &mut Command, log: &Path, limit: Duration) -> Result<Finished> {
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = file.try_clone()?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting `{}`", shown(command)))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Finished::Exited(status));
        }
        if start.elapsed() > limit {
            // Our own child, by its handle.
            child.kill().ok();
            child.wait().ok();
            return Ok(Finished::TimedOut);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The last `lines` lines of a log file (for showing why a child failed).
pub fn tail(log: &Path, lines: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
