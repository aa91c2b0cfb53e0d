//! A loopback mock of the Hugging Face hub for the model manager tests and the download bench.
//!
//! Endpoints (the ones hf-hub, huggingface_hub and llmlocal use):
//! - `GET /api/models/{org}/{name}[/revision/{rev}]`: repo info with siblings (sizes, LFS sha256);
//! - `HEAD|GET /{org}/{name}/resolve/{rev}/{file}`: small files served directly with an `ETag`;
//!   LFS files answered with a 302 to `/cdn/{sha256}` carrying `X-Repo-Commit`,
//!   `X-Linked-Etag`, `X-Linked-Size`;
//! - `HEAD|GET /cdn/{sha256}`: the bytes, with `Range` support (206 + `Content-Range`).
//!
//! Optional bearer auth; per-file faults consumed one per content GET; counters of requests and
//! of body bytes actually sent. Generated contents are produced chunk by chunk, so a 1 GiB file
//! is never held in memory.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use axum::Router;
use bytes::Bytes;
use sha2::{Digest, Sha256};

const CHUNK: usize = 256 * 1024;
const BLOCK: usize = 1 << 20;

/// What a file holds.
#[derive(Clone)]
pub enum Content {
    Bytes(Bytes),
    /// `len` pseudo-random bytes from `seed`, generated on the fly.
    Generated {
        len: u64,
        block: Arc<Vec<u8>>,
    },
}

impl Content {
    pub fn generated(len: u64, seed: u64) -> Self {
        let mut block = vec![0u8; BLOCK];
        let mut x = seed;
        for word in block.chunks_mut(8) {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            word.copy_from_slice(&z.to_le_bytes()[..word.len()]);
        }
        Content::Generated {
            len,
            block: Arc::new(block),
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Generated { len, .. } => *len,
        }
    }

    /// Bytes `[start, start + n)` (n <= CHUNK for generated contents).
    pub fn slice(&self, start: u64, n: usize) -> Bytes {
        match self {
            Content::Bytes(b) => b.slice(start as usize..start as usize + n),
            Content::Generated { block, .. } => {
                let mut out = Vec::with_capacity(n);
                let mut pos = start;
                while out.len() < n {
                    let in_block = (pos as usize) % BLOCK;
                    let take = (BLOCK - in_block).min(n - out.len());
                    let salt = (pos / BLOCK as u64) as u8;
                    out.extend(block[in_block..in_block + take].iter().map(|b| b ^ salt));
                    pos += take as u64;
                }
                Bytes::from(out)
            }
        }
    }

    /// The whole content (tests compare the cache with it; avoid for huge files).
    pub fn to_vec(&self) -> Vec<u8> {
        self.slice_all()
    }

    fn slice_all(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() as usize);
        let mut pos = 0;
        while pos < self.len() {
            let n = (self.len() - pos).min(CHUNK as u64) as usize;
            out.extend_from_slice(&self.slice(pos, n));
            pos += n as u64;
        }
        out
    }

    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        let mut pos = 0;
        while pos < self.len() {
            let n = (self.len() - pos).min(CHUNK as u64) as usize;
            h.update(self.slice(pos, n));
            pos += n as u64;
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A fault applied to the next content GET of a file.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Send this many body bytes, then drop the connection.
    DropAfter(u64),
    /// Flip the bits of the first byte sent.
    Corrupt,
    /// Answer with this status and no body.
    Status(u16),
    /// Send `chunk` bytes every `delay`.
    Trickle { chunk: usize, delay: Duration },
    /// Ignore the Range header (answer 200 with the whole file).
    IgnoreRange,
}

pub struct MockFile {
    pub content: Content,
    pub sha256: String,
    pub lfs: bool,
}

pub struct MockRepo {
    pub commit: String,
    pub files: Vec<(String, Arc<MockFile>)>,
}

#[derive(Default)]
pub struct Inner {
    base: Mutex<String>,
    repos: Mutex<HashMap<String, MockRepo>>,
    faults: Mutex<HashMap<String, VecDeque<Fault>>>,
    token: Mutex<Option<String>>,
    /// Headers set on every `resolve` answer, replacing the true ones (a lying mirror).
    header_overrides: Mutex<Vec<(String, String)>>,
    log: Mutex<Vec<String>>,
    bytes_served: AtomicU64,
    content_gets: AtomicU64,
}

/// The running mock.
pub struct MockHub {
    /// The hub endpoint (HF_ENDPOINT).
    pub url: String,
    /// The CDN origin LFS files redirect to.
    pub cdn_url: String,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockHub {
    /// Starts on 127.0.0.1 with an ephemeral port.
    pub async fn start() -> MockHub {
        let inner = Arc::new(Inner::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        // The CDN is another origin (another port), as on the real hub: clients must not
        // follow the redirect for metadata, nor send the token there.
        let cdn = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let cdn_url = format!("http://{}", cdn.local_addr().expect("local addr"));
        *inner.base.lock().unwrap() = cdn_url.clone();
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let cdn_app = app.clone();
        let task = tokio::spawn(async move {
            let _ = tokio::join!(axum::serve(listener, app), axum::serve(cdn, cdn_app));
        });
        MockHub {
            url,
            cdn_url,
            inner,
            task,
        }
    }

    /// A model manager config for `cache` that talks to this hub and fails fast: four
    /// retries 10 ms apart, a 5 s read timeout.
    pub fn manager_config(&self, cache: &std::path::Path) -> llmlocal::models::ManagerConfig {
        let mut config = llmlocal::models::ManagerConfig::new(cache);
        config.endpoint = self.url.clone();
        config.max_retries = 4;
        config.retry_base_delay = Duration::from_millis(10);
        config.read_timeout = Duration::from_secs(5);
        config
    }

    /// Adds (or replaces) a repository; `files` are (name, content, is_lfs).
    pub fn add_repo(&self, repo: &str, commit: &str, files: Vec<(&str, Content, bool)>) {
        let files = files
            .into_iter()
            .map(|(name, content, lfs)| {
                let sha256 = content.sha256();
                (
                    name.to_string(),
                    Arc::new(MockFile {
                        content,
                        sha256,
                        lfs,
                    }),
                )
            })
            .collect();
        self.inner.repos.lock().unwrap().insert(
            repo.to_string(),
            MockRepo {
                commit: commit.to_string(),
                files,
            },
        );
    }

    /// Adds an LFS file to an existing repository under a made-up sha256, without hashing
    /// its contents (for advertised sizes too large to generate, e.g. 1 EiB).
    pub fn add_unhashed_lfs_file(&self, repo: &str, name: &str, content: Content, sha256: &str) {
        let mut repos = self.inner.repos.lock().unwrap();
        let file = Arc::new(MockFile {
            content,
            sha256: sha256.to_string(),
            lfs: true,
        });
        repos
            .get_mut(repo)
            .expect("add the repository first")
            .files
            .push((name.to_string(), file));
    }

    pub fn sha256_of(&self, repo: &str, file: &str) -> String {
        let repos = self.inner.repos.lock().unwrap();
        let r = &repos[repo];
        r.files
            .iter()
            .find(|(n, _)| n == file)
            .map(|(_, f)| f.sha256.clone())
            .expect("file")
    }

    pub fn push_fault(&self, file: &str, fault: Fault) {
        self.inner
            .faults
            .lock()
            .unwrap()
            .entry(file.to_string())
            .or_default()
            .push_back(fault);
    }

    /// From now on every `resolve` answer carries `name: value` instead of the true header
    /// (a hostile hub or mirror; e.g. `x-repo-commit: ../../x`).
    pub fn override_header(&self, name: &str, value: &str) {
        self.inner
            .header_overrides
            .lock()
            .unwrap()
            .push((name.to_string(), value.to_string()));
    }

    pub fn require_token(&self, token: Option<&str>) {
        *self.inner.token.lock().unwrap() = token.map(str::to_string);
    }

    /// Body bytes sent for file contents since the start (or the last reset).
    pub fn bytes_served(&self) -> u64 {
        self.inner.bytes_served.load(Ordering::SeqCst)
    }

    /// Content GETs (resolve of a small file, or CDN) so far.
    pub fn content_gets(&self) -> u64 {
        self.inner.content_gets.load(Ordering::SeqCst)
    }

    /// Every request, as `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        self.inner.log.lock().unwrap().clone()
    }

    pub fn reset_counters(&self) {
        self.inner.bytes_served.store(0, Ordering::SeqCst);
        self.inner.content_gets.store(0, Ordering::SeqCst);
        self.inner.log.lock().unwrap().clear();
    }
}

type Resp = Response<Body>;

fn status(code: u16, error_code: Option<&str>) -> Resp {
    let mut r = Response::builder().status(code);
    if let Some(c) = error_code {
        r = r.header("x-error-code", c);
    }
    r.body(Body::empty()).unwrap()
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Resp {
    let path = uri.path().to_string();
    inner.log.lock().unwrap().push(format!("{method} {path}"));
    if let Some(sha) = path.strip_prefix("/cdn/") {
        return cdn(&inner, &method, sha, &headers).await;
    }
    if let Some(token) = inner.token.lock().unwrap().clone() {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {token}")) {
            return status(401, None);
        }
    }
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(decode)
        .collect();
    match segs
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["api", "models", org, name] => info(&inner, &format!("{org}/{name}"), "main"),
        ["api", "models", org, name, "revision", rev @ ..] => {
            info(&inner, &format!("{org}/{name}"), &rev.join("/"))
        }
        [org, name, "resolve", rev, file @ ..] if !file.is_empty() => {
            let mut r = resolve(
                &inner,
                &method,
                &format!("{org}/{name}"),
                rev,
                &file.join("/"),
                &headers,
            )
            .await;
            for (k, v) in inner.header_overrides.lock().unwrap().iter() {
                let name = axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
                r.headers_mut()
                    .insert(name, HeaderValue::from_str(v).unwrap());
            }
            r
        }
        _ => status(404, None),
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn info(inner: &Inner, repo: &str, rev: &str) -> Resp {
    let repos = inner.repos.lock().unwrap();
    let Some(r) = repos.get(repo) else {
        return status(404, Some("RepoNotFound"));
    };
    if rev != "main" && rev != r.commit {
        return status(404, Some("RevisionNotFound"));
    }
    let siblings: Vec<serde_json::Value> = r
        .files
        .iter()
        .map(|(name, f)| {
            let mut v = serde_json::json!({"rfilename": name, "size": f.content.len(), "blobId": &f.sha256[..40]});
            if f.lfs {
                v["lfs"] = serde_json::json!({"sha256": f.sha256, "size": f.content.len(), "pointerSize": 134});
            }
            v
        })
        .collect();
    let body =
        serde_json::json!({"id": repo, "modelId": repo, "sha": r.commit, "siblings": siblings});
    Response::builder()
        .header("content-type", "application/json")
        .header("x-repo-commit", &r.commit)
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn resolve(
    inner: &Arc<Inner>,
    method: &Method,
    repo: &str,
    rev: &str,
    file: &str,
    headers: &HeaderMap,
) -> Resp {
    let (commit, found) = {
        let repos = inner.repos.lock().unwrap();
        let Some(r) = repos.get(repo) else {
            return status(404, Some("RepoNotFound"));
        };
        if rev != "main" && rev != r.commit {
            return status(404, Some("RevisionNotFound"));
        }
        (
            r.commit.clone(),
            r.files
                .iter()
                .find(|(n, _)| n == file)
                .map(|(_, f)| f.clone()),
        )
    };
    let Some(f) = found else {
        return status(404, Some("EntryNotFound"));
    };
    if f.lfs {
        let base = inner.base.lock().unwrap().clone();
        return Response::builder()
            .status(302)
            .header("location", format!("{base}/cdn/{}", f.sha256))
            .header("x-repo-commit", &commit)
            .header("x-linked-etag", format!("\"{}\"", f.sha256))
            .header("x-linked-size", f.content.len())
            .header("etag", format!("\"{}\"", f.sha256))
            .body(Body::empty())
            .unwrap();
    }
    let mut r = serve(inner, method, file, &f, headers);
    let h = r.headers_mut();
    h.insert("x-repo-commit", HeaderValue::from_str(&commit).unwrap());
    h.insert(
        "etag",
        HeaderValue::from_str(&format!("\"{}\"", &f.sha256[..40])).unwrap(),
    );
    r
}

async fn cdn(inner: &Arc<Inner>, method: &Method, sha: &str, headers: &HeaderMap) -> Resp {
    let found = {
        let repos = inner.repos.lock().unwrap();
        repos
            .values()
            .flat_map(|r| r.files.iter())
            .find(|(_, f)| f.sha256 == sha)
            .map(|(n, f)| (n.clone(), f.clone()))
    };
    match found {
        Some((name, f)) => {
            let mut r = serve(inner, method, &name, &f, headers);
            r.headers_mut().insert(
                "etag",
                HeaderValue::from_str(&format!("\"{sha}\"")).unwrap(),
            );
            r
        }
        None => status(404, None),
    }
}

fn range_start(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("range")?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Serves a file's bytes (whole or from a Range start), applying the next fault if any.
fn serve(
    inner: &Arc<Inner>,
    method: &Method,
    name: &str,
    f: &Arc<MockFile>,
    headers: &HeaderMap,
) -> Resp {
    let len = f.content.len();
    let fault = if method == Method::GET {
        inner.content_gets.fetch_add(1, Ordering::SeqCst);
        inner
            .faults
            .lock()
            .unwrap()
            .get_mut(name)
            .and_then(|q| q.pop_front())
    } else {
        None
    };
    if let Some(Fault::Status(code)) = fault {
        return status(code, None);
    }
    let range = if matches!(fault, Some(Fault::IgnoreRange)) {
        None
    } else {
        range_start(headers)
    };
    let start = range.unwrap_or(0);
    if start > len || (start == len && len > 0 && range.is_some()) {
        return Response::builder()
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header("content-range", format!("bytes */{len}"))
            .body(Body::empty())
            .unwrap();
    }
    let mut r = Response::builder()
        .header("accept-ranges", "bytes")
        .header("content-length", len - start)
        .header("content-type", "application/octet-stream");
    if range.is_some() {
        r = r.status(206).header(
            "content-range",
            format!("bytes {start}-{}/{len}", len.saturating_sub(1)),
        );
    }
    if method == Method::HEAD {
        return r.body(Body::empty()).unwrap();
    }
    r.body(body_stream(inner.clone(), f.content.clone(), start, fault))
        .unwrap()
}

fn body_stream(inner: Arc<Inner>, content: Content, start: u64, fault: Option<Fault>) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let len = content.len();
        let mut pos = start;
        let mut sent = 0u64;
        while pos < len {
            let mut n = (len - pos).min(CHUNK as u64) as usize;
            if let Some(Fault::Trickle { chunk, .. }) = &fault {
                n = n.min(*chunk);
            }
            if let Some(Fault::DropAfter(limit)) = &fault {
                if sent >= *limit {
                    let _ = tx
                        .send(Err(std::io::Error::other("injected connection drop")))
                        .await;
                    return;
                }
                n = n.min((*limit - sent) as usize);
            }
            let mut chunk = content.slice(pos, n);
            if sent == 0 && matches!(fault, Some(Fault::Corrupt)) {
                let mut v = chunk.to_vec();
                v[0] ^= 0xFF;
                chunk = Bytes::from(v);
            }
            if tx.send(Ok(chunk)).await.is_err() {
                return; // client went away
            }
            inner.bytes_served.fetch_add(n as u64, Ordering::SeqCst);
            pos += n as u64;
            sent += n as u64;
            if let Some(Fault::Trickle { delay, .. }) = &fault {
                tokio::time::sleep(*delay).await;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Body::from_stream(stream)
}
