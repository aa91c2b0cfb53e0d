//! Helpers for the engine and server tests: the built plugins, scripted models, an
//! in-process server on loopback, SSE/NDJSON parsing and metric reading.
#![allow(dead_code)] // each test binary uses a different subset

use llmlocal::{
    engine::{Engine, EngineSettings, ModelEntry},
    plugins::{library_file_name, PluginRegistry},
    server::{self, ServerSettings},
};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

/// Where built plugins are looked for, in order.
pub fn plugin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["LLMLOCAL_TEST_PLUGIN_DIR", "LLMLOCAL_PLUGIN_DIR_BUILT"] {
        if let Some(dir) = std::env::var_os(var).filter(|d| !d.is_empty()) {
            dirs.push(PathBuf::from(dir));
        }
    }
    // The test binary is target/<profile>/deps/<name>-<hash>.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile) = exe.parent().and_then(Path::parent) {
            dirs.push(profile.to_path_buf());
            if let Some(target) = profile.parent() {
                dirs.push(target.join("test-plugins"));
                dirs.push(target.join("plugins"));
            }
        }
    }
    dirs
}

/// The library of backend `name` (e.g. `scripted`, `llama_cpp`); fails the test if missing.
pub fn plugin_library(name: &str) -> PathBuf {
    let file = library_file_name(name);
    let dirs = plugin_dirs();
    dirs.iter()
        .map(|d| d.join(&file))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "plugin {file} not found in {dirs:?}: run cargo xtask build-plugins first \
                 (or cargo build -p llmlocal-backend-<name>), or set $LLMLOCAL_TEST_PLUGIN_DIR"
            )
        })
}

/// A registry holding only the named backends.
pub fn registry(names: &[&str]) -> Arc<PluginRegistry> {
    let files: Vec<PathBuf> = names.iter().map(|n| plugin_library(n)).collect();
    let registry = PluginRegistry::load_files(&files);
    assert_eq!(
        registry.backend_names().len(),
        names.len(),
        "every plugin loads: {:?}",
        registry.entries()
    );
    Arc::new(registry)
}

/// Writes a scripted model replaying `script`.
pub fn write_script(dir: &Path, file: &str, script: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, format!("llmlocal-scripted-model v1\n{script}"))
        .expect("write script model");
    path
}

/// Engine settings with scripted models `name -> script` written under `dir`.
pub fn scripted_settings(dir: &Path, models: &[(&str, &str)]) -> EngineSettings {
    let mut settings = EngineSettings {
        open_specs: false,
        ..EngineSettings::default()
    };
    for (name, script) in models {
        let path = write_script(dir, &format!("{name}.txt"), script);
        settings
            .models
            .insert(name.to_string(), ModelEntry::new(path.to_string_lossy()));
    }
    settings
}

/// Settings serving the GGUF at `path` as model `name` on the llama.cpp backend.
pub fn llama_cpp_settings(name: &str, path: &Path) -> EngineSettings {
    let mut settings = EngineSettings {
        open_specs: false,
        ..EngineSettings::default()
    };
    let entry = ModelEntry {
        backend: Some("llama-cpp".into()),
        ..ModelEntry::new(path.to_string_lossy())
    };
    settings.models.insert(name.into(), entry);
    settings
}

/// A scripted engine.
pub fn scripted_engine(settings: EngineSettings) -> Engine {
    Engine::new(settings, registry(&["scripted"]), None)
}

/// A server running in this process on a free loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub engine: Engine,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(engine: Engine, settings: ServerSettings) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(
            listener,
            engine.clone(),
            settings,
            async move {
                let _ = rx.await;
            },
        ));
        TestServer {
            addr,
            engine,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Starts the graceful shutdown; returns the server task to await.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("server task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// POSTs a JSON body; returns the status and the body text.
pub async fn post(server: &TestServer, path: &str, body: serde_json::Value) -> (u16, String) {
    let response = send_json(client().post(server.url(path)), body).await;
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

async fn send_json(request: reqwest::RequestBuilder, body: serde_json::Value) -> reqwest::Response {
    request.json(&body).send().await.expect("request")
}

/// GETs `path`; returns its JSON body.
pub async fn get_json(server: &TestServer, path: &str) -> serde_json::Value {
    client()
        .get(server.url(path))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

/// DELETEs `path` with a JSON body; returns the status.
pub async fn delete(server: &TestServer, path: &str, body: serde_json::Value) -> u16 {
    let response = send_json(client().delete(server.url(path)), body).await;
    response.status().as_u16()
}

/// The JSON payloads of an SSE body, and whether it ended with `data: [DONE]`.
pub fn parse_sse(body: &str) -> (Vec<serde_json::Value>, bool) {
    let mut events = Vec::new();
    let mut done = false;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            assert!(line.is_empty(), "unexpected SSE line {line:?}");
            continue;
        };
        assert!(!done, "data after [DONE]");
        if data == "[DONE]" {
            done = true;
        } else {
            events.push(serde_json::from_str(data).expect("SSE data is JSON"));
        }
    }
    (events, done)
}

/// The JSON lines of an NDJSON body.
pub fn parse_ndjson(body: &str) -> Vec<serde_json::Value> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("NDJSON line is JSON"))
        .collect()
}

/// The value of the sample `series` (`name{labels}` exactly as exposed) in Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits until `check` holds, up to `timeout`.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `request` (raw HTTP/1.1 text, which should say `Connection: close`) over a new
/// connection; returns the status code and the whole response text.
pub async fn raw_exchange(addr: SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .expect("the server answers and closes")
        .expect("read response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    (status, text)
}

/// A raw HTTP/1.1 request with `headers` (each `Name: value`) and `body`, closing after.
pub fn raw_request(method: &str, path: &str, headers: &[&str], body: &str) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\n");
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    text.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    text
}

/// The real tiny stories260K GGUF shipped in the repository (models/stories260K), so tests
/// that need a trained model run on a fresh clone instead of skipping.
pub fn stories260k_gguf() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/stories260K/stories260K.gguf");
    assert!(
        path.is_file(),
        "{} is part of the repository",
        path.display()
    );
    path
}
