//! The dashboard in real headless Chromium, driven over WebDriver (chromedriver) with
//! plain HTTP: the node table fills from the WebSocket, a killed node turns offline
//! without a reload, and the page reconnects after a router restart. Screenshots go to
//! target/test-artifacts/. Installs Debian's chromium + chromium-driver when missing.

mod router_support;

use router_support::*;
use serde_json::{json, Value};
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn ensure_chromium() {
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

fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver, killed on drop.
struct Driver {
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
    async fn start() -> Driver {
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

    fn at(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.url, self.session)
    }

    async fn open(&self, url: &str) {
        call(
            reqwest::Method::POST,
            self.at("/url"),
            Some(json!({ "url": url })),
        )
        .await;
    }

    async fn run(&self, script: &str) -> Value {
        let body = json!({ "script": script, "args": [] });
        call(reqwest::Method::POST, self.at("/execute/sync"), Some(body)).await
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let data = call(reqwest::Method::GET, self.at("/screenshot"), None).await;
        let png = base64_decode(data.as_str().expect("base64 screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = artifacts().join(name);
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Rows of the node table as (id, status).
    async fn rows(&self) -> Vec<(String, String)> {
        let value = self
            .run("return Array.from(document.querySelectorAll('#nodes tbody tr')).map(r => [r.dataset.node, r.dataset.status]);")
            .await;
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap().to_string(),
                    r[1].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    async fn wait_rows(&self, within: Duration, check: impl Fn(&[(String, String)]) -> bool) {
        let start = Instant::now();
        loop {
            let rows = self.rows().await;
            if check(&rows) {
                return;
            }
            assert!(
                start.elapsed() < within,
                "page never matched; rows: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, id: &str) -> String {
        self.run(&format!(
            "return document.getElementById('{id}').textContent;"
        ))
        .await
        .as_str()
        .unwrap_or("")
        .to_string()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_shows_nodes_live_in_headless_chromium() {
    ensure_chromium();
    let router = TestRouter::start(settings(None)).await;
    let url = router.url();
    let mut nodes = three_nodes(&url).await;
    for _ in 0..5 {
        assert_eq!(chat(&url, "m").await.0, 200);
    }
    let driver = Driver::start().await;
    driver.open(&format!("{url}/dashboard#key={ADMIN}")).await;
    driver
        .wait_rows(Duration::from_secs(10), |rows| {
            rows.len() == 3 && rows.iter().all(|(_, s)| s == "online")
        })
        .await;
    assert_eq!(driver.text("conn").await, "live");
    let recent = driver
        .run("return document.querySelectorAll('#requests tbody tr').length;")
        .await;
    assert_eq!(recent, 5, "recent requests listed");
    driver.screenshot("router_dashboard_online.png").await;

    // Kill n2: its row turns offline with no reload (the marker survives).
    driver.run("window.__noReload = 42; return null;").await;
    nodes[1].kill();
    driver
        .wait_rows(Duration::from_secs(5), |rows| {
            status_of(rows, "n2") == Some("offline") && status_of(rows, "n1") == Some("online")
        })
        .await;
    assert_eq!(
        driver.run("return window.__noReload;").await,
        42,
        "page reloaded"
    );
    let shot = driver.screenshot("router_dashboard_offline.png").await;
    eprintln!("screenshot: {}", shot.display());

    // Without an admin key the socket is refused: the page shows it is not live.
    driver.open(&format!("{url}/dashboard")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(driver.rows().await.len(), 0);
    assert_ne!(driver.text("conn").await, "live");

    // Router restart on the same address: the page reconnects by itself. (about:blank
    // first: a change of the fragment alone would not load the page again.)
    driver.open("about:blank").await;
    driver.open(&format!("{url}/dashboard#key={ADMIN}")).await;
    driver
        .wait_rows(Duration::from_secs(5), |rows| rows.len() == 3)
        .await;
    driver.run("window.__noReload = 7; return null;").await;
    let addr = router.addr;
    router.stop().await;
    let start = Instant::now();
    while driver.text("conn").await == "live" {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "page never noticed the router went away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let router = TestRouter::start_on(settings(None), addr).await;
    let start = Instant::now();
    while driver.text("conn").await != "live" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "page never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // In-memory database: the agents of n1 and n3 register again on their next heartbeat;
    // n2 (killed) is unknown to the new router, so its row is gone: fresh data.
    driver
        .wait_rows(Duration::from_secs(10), |rows| {
            rows.len() == 2
                && status_of(rows, "n1") == Some("online")
                && status_of(rows, "n3") == Some("online")
        })
        .await;
    assert_eq!(
        driver.run("return window.__noReload;").await,
        7,
        "page reloaded"
    );
    drop(nodes);
    router.stop().await;
}
