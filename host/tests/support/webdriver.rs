//! Headless Chromium driven over WebDriver (Debian's chromium + chromium-driver, installed
//! with apt-get when missing) with plain HTTP: the page tests (router dashboard, chat page)
//! share it. Screenshots go to target/test-artifacts/.
#![allow(dead_code)] // each test binary uses a different subset

use serde_json::{json, Value};
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub fn ensure_chromium() {
    if PathBuf::from(CHROMIUM).is_file() && PathBuf::from(CHROMEDRIVER).is_file() {
        return;
    }
    let install = || {
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "chromium",
                "chromium-driver",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").arg("update").status();
        assert!(
            install(),
            "cannot install chromium and chromium-driver with apt-get"
        );
    }
    assert!(
        PathBuf::from(CHROMEDRIVER).is_file(),
        "{CHROMEDRIVER} missing after install"
    );
}

pub fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver, killed on drop.
pub struct Driver {
    child: Child,
    url: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Ending the session makes chromedriver quit Chromium; killing chromedriver alone
        // left the browser running after every test run.
        if !self.session.is_empty() {
            end_session(&self.url, &self.session);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `DELETE /session/{id}` over a plain socket (this runs in `Drop`, possibly while
/// panicking, where no async client can be awaited); waits for the answer, which
/// chromedriver sends once the browser has exited.
fn end_session(base: &str, session: &str) {
    use std::io::{Read as _, Write as _};
    let Some(addr) = base.strip_prefix("http://") else {
        return;
    };
    let Ok(mut conn) = std::net::TcpStream::connect(addr) else {
        return;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    if conn.write_all(request.as_bytes()).is_ok() {
        let _ = conn.read_to_end(&mut Vec::new());
    }
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> Value {
    let mut req = client().request(method, url);
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let resp = req.send().await.expect("chromedriver answers");
    let bytes = resp.bytes().await.unwrap();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if let Some(err) = value["value"]["error"].as_str() {
        panic!("webdriver error {err}: {}", value["value"]["message"]);
    }
    value["value"].clone()
}

impl Driver {
    pub async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        while client().get(format!("{url}/status")).send().await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,900",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        } } });
        let mut driver = Driver {
            child,
            url,
            session: String::new(),
            _profile: profile,
        };
        let session = call(
            reqwest::Method::POST,
            format!("{}/session", driver.url),
            Some(caps),
        )
        .await;
        driver.session = session["sessionId"]
            .as_str()
            .expect("session id")
            .to_string();
        driver
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.url, self.session)
    }

    pub async fn open(&self, url: &str) {
        call(
            reqwest::Method::POST,
            self.at("/url"),
            Some(json!({ "url": url })),
        )
        .await;
    }

    pub async fn run(&self, script: &str) -> Value {
        let body = json!({ "script": script, "args": [] });
        call(reqwest::Method::POST, self.at("/execute/sync"), Some(body)).await
    }

    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let data = call(reqwest::Method::GET, self.at("/screenshot"), None).await;
        let png = base64_decode(data.as_str().expect("base64 screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = artifacts().join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let digits: Vec<u8> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}
