//! `direct-bench` (scripts/gpu/direct_bench.c) as a child process loaded once for all
//! rounds: `serve` makes single runs on request (llama.cpp driven through its C API), `http`
//! answers streamed completions itself (the HTTP floor).

use super::Server;
use crate::{plugin::Kind, Setup};
use anyhow::{anyhow, bail, Context as _};
use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

/// `direct-bench MODE MODEL N_PROMPT N_GEN` on `setup`'s model, started with its stdout piped.
fn spawn(exe: &Path, mode: &str, setup: &Setup, stdin: Stdio) -> anyhow::Result<Child> {
    Command::new(exe)
        .arg(mode)
        .arg(&setup.model)
        .arg(setup.prompt_tokens.to_string())
        .arg(setup.gen_tokens.to_string())
        // The plugin's thread count when the bench sets one (direct-bench keeps llama.cpp's
        // default of 4 otherwise).
        .env("DIRECT_BENCH_THREADS", setup.threads.to_string())
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {} {mode}", exe.display()))
}

/// `direct-bench http` on `setup`'s model, once it says on which port it listens.
pub fn start_http(exe: &Path, setup: &Setup) -> anyhow::Result<Server> {
    let mut child = spawn(exe, "http", setup, Stdio::null())?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    let port = line.trim().strip_prefix("ready ").map(str::to_owned);
    // Owned by `Server` from here: killed on drop, also on the error below.
    let server = Server {
        child,
        addr: format!("127.0.0.1:{}", port.as_deref().unwrap_or_default()),
    };
    match port {
        Some(port) if port.parse::<u16>().is_ok() => Ok(server),
        _ => bail!(
            "direct-bench http said {:?} instead of \"ready PORT\"",
            line.trim()
        ),
    }
}

/// The running `direct-bench serve`; killed on drop.
pub struct DirectProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Drop for DirectProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DirectProcess {
    /// Starts it on `setup`'s model and waits until the model is loaded.
    pub fn start(exe: &Path, setup: &Setup) -> anyhow::Result<Self> {
        let mut child = spawn(exe, "serve", setup, Stdio::piped())?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("no pipes to {}", exe.display());
        };
        let mut direct = DirectProcess {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let line = direct.read_line()?;
        if line != "ready" {
            bail!("direct-bench serve said {line:?} instead of \"ready\"");
        }
        Ok(direct)
    }

    /// Tokens/s of one run: prompt-only for [`Kind::Prompt`], the generation of a run of
    /// prompt + generation for [`Kind::Generation`].
    pub fn run(&mut self, kind: Kind) -> anyhow::Result<f64> {
        let command = match kind {
            Kind::Prompt => "pp\n",
            Kind::Generation => "tg\n",
        };
        self.stdin
            .write_all(command.as_bytes())
            .and_then(|()| self.stdin.flush())
            .context("write to direct-bench")?;
        let line = self.read_line()?;
        match line.parse::<f64>() {
            Ok(tps) if tps > 0.0 => Ok(tps),
            _ => bail!("direct-bench answered {line:?} instead of a speed"),
        }
    }

    /// The next line of its output, without the newline; EOF (it ended) is an error.
    fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait().ok();
            return Err(anyhow!("direct-bench serve ended ({status:?})"));
        }
        Ok(line.trim_end().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for direct-bench: `script` as an executable shell script in `dir`.
    fn stand_in(dir: &Path, script: &str) -> std::path::PathBuf {
        let path = dir.join("direct-bench");
        std::fs::write(&path, format!("#!/bin/sh\n{script}")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn setup() -> Setup {
        Setup {
            model: "model.gguf".into(),
            threads: 0,
            batch_size: 512,
            prompt_tokens: 512,
            gen_tokens: 128,
            parallel: 1,
            repeat: 1,
            context_length: 656,
        }
    }

    #[test]
    fn runs_are_asked_for_one_line_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Answers with the arguments it got, so the test sees them passed through.
        let exe = stand_in(
            dir.path(),
            "echo ready\nwhile read c; do case $c in pp) echo $3;; tg) echo $4;; *) exit 2;; esac; done\n",
        );
        let mut direct = DirectProcess::start(&exe, &setup()).expect("start");
        assert_eq!(direct.run(Kind::Prompt).expect("pp"), 512.0);
        assert_eq!(direct.run(Kind::Generation).expect("tg"), 128.0);
        assert_eq!(direct.run(Kind::Prompt).expect("pp again"), 512.0);
    }

    #[test]
    fn a_process_that_fails_or_answers_nonsense_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = stand_in(dir.path(), "echo 'cannot load model'\n");
        assert!(DirectProcess::start(&exe, &setup()).is_err());
        let exe = stand_in(dir.path(), "echo ready\nread c\necho oops\n");
        let mut direct = DirectProcess::start(&exe, &setup()).expect("start");
        assert!(direct.run(Kind::Prompt).is_err());
        // It has ended: the next run is an error too, not a hang.
        assert!(direct.run(Kind::Prompt).is_err());
    }

    #[test]
    fn the_http_floor_is_reached_on_the_port_it_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The mode and the arguments come through, and the port it prints is the address.
        let exe = stand_in(
            dir.path(),
            "[ \"$1 $3 $4\" = \"http 512 128\" ] && echo 'ready 40123' && sleep 5\n",
        );
        let server = start_http(&exe, &setup()).expect("start");
        assert_eq!(server.addr, "127.0.0.1:40123");
        for said in ["echo 'cannot load model'", "echo 'ready soon'", "true"] {
            let exe = stand_in(dir.path(), &format!("{said}\n"));
            match start_http(&exe, &setup()) {
                Ok(server) => panic!("{said}: started at {}", server.addr),
                Err(err) => assert!(err.to_string().contains("instead of"), "{said}: {err}"),
            }
        }
    }
}
