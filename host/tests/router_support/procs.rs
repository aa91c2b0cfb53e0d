//! `llmlocal router` and `llmlocal serve` child processes for the end-to-end tests.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_llmlocal");

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub stdout_lines: Vec<String>,
}

impl Proc {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `llmlocal ARGS` and waits for its "listening on http://ADDR" line.
pub fn spawn(args: &[String]) -> Proc {
    spawn_with_env(args, &[])
}

/// [`spawn`] with extra environment variables.
pub fn spawn_with_env(args: &[String], env: &[(&str, &Path)]) -> Proc {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start llmlocal");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    // Keep reading so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("llmlocal {args:?} did not report its address; stdout: {lines:?}");
            }
        };
        if let Some(at) = line.find("listening on http://") {
            let addr = line[at + "listening on http://".len()..]
                .trim()
                .parse()
                .expect("address");
            // Lines printed right after the address (the join token) are wanted too.
            std::thread::sleep(Duration::from_millis(50));
            lines.push(line);
            lines.extend(rx.try_iter());
            return Proc {
                child,
                addr,
                stdout_lines: lines,
            };
        }
        lines.push(line);
    }
}

/// The built plugin library of backend crate `name` (`scripted`, `llama_cpp`):
/// `$LLMLOCAL_TEST_PLUGIN_DIR` or next to the test binary.
pub fn plugin_library(name: &str) -> PathBuf {
    let file = llmlocal::plugins::library_file_name(name);
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("LLMLOCAL_TEST_PLUGIN_DIR").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(dir));
    }
    if let Some(profile) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(Path::to_path_buf))
    {
        dirs.push(profile);
    }
    dirs.iter()
        .map(|d| d.join(&file))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{file} not found in {dirs:?}: run `cargo xtask build-plugins` (or cargo build \
                 -p llmlocal-backend-<name>), or set $LLMLOCAL_TEST_PLUGIN_DIR"
            )
        })
}

/// The scripted test backend.
pub fn scripted_plugin() -> PathBuf {
    plugin_library("scripted")
}

/// A temporary directory whose `plugins/` holds a copy of `plugin` alone.
fn dir_with_plugin(plugin: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(plugin, plugins.join(plugin.file_name().unwrap())).unwrap();
    dir
}

/// A directory holding only the scripted plugin, and a scripted model `s`.
pub struct NodeFiles {
    pub dir: tempfile::TempDir,
}

impl NodeFiles {
    pub fn new() -> Self {
        let dir = dir_with_plugin(&scripted_plugin());
        let script = "The quick brown fox jumps over the lazy dog. ".repeat(4);
        std::fs::write(
            dir.path().join("s.txt"),
            format!("llmlocal-scripted-model v1\n{script}"),
        )
        .unwrap();
        Self { dir }
    }

    pub fn plugin_dir(&self) -> String {
        self.dir.path().join("plugins").display().to_string()
    }

    pub fn model(&self) -> String {
        format!("s={}", self.dir.path().join("s.txt").display())
    }
}

/// `llmlocal router` on `port` (0: any) with a short offline timeout.
pub fn router(db: &Path, port: u16, strategy: &str, token: &str, admin: &str) -> Proc {
    spawn(&[
        "router".into(),
        "--bind".into(),
        format!("127.0.0.1:{port}"),
        "--db".into(),
        db.display().to_string(),
        "--strategy".into(),
        strategy.into(),
        "--join-token".into(),
        token.into(),
        "--admin-key".into(),
        admin.into(),
        "--offline-after".into(),
        "1.5".into(),
        "--heartbeat-interval".into(),
        "0.2".into(),
    ])
}

/// `llmlocal serve` with the scripted model `s`, joined to `router_url` as `id`; its data
/// directory (where it keeps its node secret) is in `files`.
pub fn node(files: &NodeFiles, id: &str, port: u16, router_url: &str, token: &str) -> Proc {
    let data = files.dir.path().join("data");
    spawn_with_env(
        &[
            "serve".into(),
            "--bind".into(),
            format!("127.0.0.1:{port}"),
            "--plugin-dir".into(),
            files.plugin_dir(),
            "--backend".into(),
            "scripted".into(),
            "--model".into(),
            files.model(),
            "--join".into(),
            router_url.into(),
            "--join-token".into(),
            token.into(),
            "--node-id".into(),
            id.into(),
        ],
        &[("XDG_DATA_HOME", &data)],
    )
}

/// A directory holding only the llama.cpp plugin.
pub struct LlamaFiles {
    pub dir: tempfile::TempDir,
}

impl LlamaFiles {
    pub fn new() -> Self {
        Self {
            dir: dir_with_plugin(&plugin_library("llama_cpp")),
        }
    }
}

/// `llmlocal serve` running `model` (a GGUF) as `real` through llama.cpp, joined as `id`.
pub fn llama_node(
    files: &LlamaFiles,
    model: &Path,
    id: &str,
    router_url: &str,
    token: &str,
) -> Proc {
    let data = files.dir.path().join("data");
    spawn_with_env(
        &[
            "serve".into(),
            "--bind".into(),
            "127.0.0.1:0".into(),
            "--plugin-dir".into(),
            files.dir.path().join("plugins").display().to_string(),
            "--backend".into(),
            "llama-cpp".into(),
            "--model".into(),
            format!("real={}", model.display()),
            "--context-length".into(),
            "4096".into(),
            "--join".into(),
            router_url.into(),
            "--join-token".into(),
            token.into(),
            "--node-id".into(),
            id.into(),
        ],
        &[("XDG_DATA_HOME", &data)],
    )
}
