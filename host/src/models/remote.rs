//! Talking to the hub: repository info (through hf-hub's `info_request`, so endpoint and token
//! handling match hf-hub) and file metadata (`HEAD .../resolve/...`), with one retry policy and
//! one place that turns HTTP statuses into errors a user can act on.
//!
//! File transfers use our own reqwest client (see `download.rs` for why): it follows no
//! redirects by itself, so the HEAD can read the hub's `x-linked-*` headers on the redirect, as
//! huggingface_hub does, and so the bearer token is sent to the hub only, never to the CDN.

use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION, LOCATION};
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::config::ManagerConfig;
use super::error::{ModelError, Result};
use super::hub_input::{check_commit, check_etag, check_repo_file};

const MAX_REDIRECTS: usize = 10;
/// Retries when no connection can be made at all (refused, no route, DNS): that is rarely
/// over within seconds, and a pull with a complete cache, or a clear error, should not wait
/// out the whole backoff.
const CONNECT_RETRIES: u32 = 2;

/// A file of a repository as listed by the hub (`?blobs=true` adds sizes and LFS hashes).
#[derive(Debug, Clone, Deserialize)]
pub struct Sibling {
    pub rfilename: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LfsInfo {
    pub sha256: String,
    pub size: u64,
}

/// `GET /api/models/{repo}/revision/{rev}`.
#[derive(Debug, Clone, Deserialize)]
pub struct RepoInfo {
    pub sha: String,
    #[serde(default)]
    pub siblings: Vec<Sibling>,
}

impl RepoInfo {
    /// Refuses a listing whose commit or file names would become paths outside the cache.
    fn check(&self, url: &str) -> Result<()> {
        check_commit(&self.sha)
            .map_err(|why| ModelError::unsafe_value("commit (sha)", &self.sha, url, why))?;
        for sibling in &self.siblings {
            check_repo_file(&sibling.rfilename).map_err(|why| {
                ModelError::unsafe_value("file name (rfilename)", &sibling.rfilename, url, why)
            })?;
        }
        Ok(())
    }
}

/// What the `HEAD` of a `resolve` URL says about one file.
#[derive(Debug, Clone)]
pub struct FileMeta {
    pub commit: String,
    /// Normalised etag: the sha256 for LFS files, the git blob id otherwise.
    pub etag: String,
    pub size: u64,
    /// True when the etag is an LFS sha256 (from `x-linked-etag`) that the bytes must match.
    pub sha256: bool,
    /// Where to GET the bytes (the CDN location of an LFS file, else the resolve URL).
    pub location: String,
}

/// What kind of failure a request ended in, for the retry policy.
enum Failure {
    /// Worth another try: timeouts, resets, 5xx, 429.
    Transient(String),
    /// No connection could be made: worth a try or two.
    Unreachable(String),
    Fatal(ModelError),
}

/// The hub endpoint with its clients and retry policy.
#[derive(Clone)]
pub struct Hub {
    pub(crate) endpoint: String,
    token: Option<String>,
    pub(crate) http: Client,
    api: hf_hub::api::tokio::Api,
    pub(crate) retries: u32,
    pub(crate) backoff: Duration,
    /// A request or transfer that receives nothing for this long is retried.
    pub(crate) read_timeout: Duration,
}

impl Hub {
    pub fn new(config: &ManagerConfig) -> Result<Self> {
        let user_agent = format!("llmlocal/{}", env!("CARGO_PKG_VERSION"));
        // reqwest reads HTTP_PROXY / HTTPS_PROXY / NO_PROXY from the environment by default.
        // No reqwest `read_timeout`: it arms and drops a timer for every body frame (two trips
        // through the timer wheel per ~16 KiB), which measurably slowed large downloads. Stalls
        // are caught instead by one watchdog per transfer (`download.rs`) and a timeout on
        // waiting for response headers (`send_with_retry`).
        let http = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .user_agent(&user_agent)
            .build()
            .map_err(|e| ModelError::Client(e.to_string()))?;
        let api = hf_hub::api::tokio::ApiBuilder::from_cache(hf_hub::Cache::new(
            config.cache_dir.clone(),
        ))
        .with_endpoint(config.endpoint.clone())
        .with_token(config.token.clone())
        .with_progress(false)
        .build()
        .map_err(|e| ModelError::Client(e.to_string()))?;
        Ok(Hub {
            endpoint: config.endpoint.trim_end_matches('/').to_string(),
            token: config.token.clone(),
            http,
            api,
            retries: config.max_retries,
            backoff: config.retry_base_delay,
            read_timeout: config.read_timeout,
        })
    }

    /// The same hub, retrying transient failures `retries` times (0: one try).
    pub(crate) fn with_retries(&self, retries: u32) -> Hub {
        Hub {
            retries,
            ..self.clone()
        }
    }

    /// The `resolve` URL of a file (the path is percent-encoded per segment).
    pub fn resolve_url(&self, repo: &str, revision: &str, file: &str) -> String {
        let file = file
            .split('/')
            .map(encode_segment)
            .collect::<Vec<_>>()
            .join("/");
        format!(
            "{}/{repo}/resolve/{}/{file}",
            self.endpoint,
            encode_segment(revision)
        )
    }

    /// Repository info with file sizes, for the revision named.
    pub async fn repo_info(&self, repo: &str, revision: &str) -> Result<RepoInfo> {
        let hf_repo =
            hf_hub::Repo::with_revision(repo.into(), hf_hub::RepoType::Model, revision.into());
        let api_repo = self.api.repo(hf_repo);
        let url = format!("{}/api/models/{repo}/revision/{revision}", self.endpoint);
        let ctx = Ctx {
            repo,
            revision,
            file: None,
        };
        let response = self
            .send_with_retry(&url, &ctx, || {
                api_repo
                    .info_request()
                    .query(&[("blobs", "true")])
                    .timeout(Duration::from_secs(60))
            })
            .await?;
        let info: RepoInfo = response.json().await.map_err(|e| ModelError::Protocol {
            url: url.clone(),
            reason: format!("repository info is not valid JSON: {e}"),
        })?;
        info.check(&url)?;
        Ok(info)
    }

    /// `HEAD` of the resolve URL: commit, etag, size, and where the bytes are.
    pub async fn file_meta(&self, repo: &str, revision: &str, file: &str) -> Result<FileMeta> {
        let url = self.resolve_url(repo, revision, file);
        let ctx = Ctx {
            repo,
            revision,
            file: Some(file),
        };
        let mut current = url.clone();
        // Follow relative redirects (renamed repos) but stop at an absolute one (the CDN).
        for _ in 0..MAX_REDIRECTS {
            let response = self
                .send_with_retry(&current, &ctx, || {
                    self.authorized(self.http.head(&current), &current)
                        .header("accept-encoding", "identity")
                })
                .await?;
            let headers = response.headers();
            if response.status().is_redirection() {
                let location =
                    header(headers, LOCATION.as_str()).ok_or_else(|| ModelError::Protocol {
                        url: current.clone(),
                        reason: "redirect without a Location header".into(),
                    })?;
                if location.starts_with('/') {
                    current = join_origin(&current, &location);
                    continue;
                }
                return meta_from_headers(headers, location, &current);
            }
            return meta_from_headers(headers, current.clone(), &current);
        }
        Err(ModelError::Protocol {
            url,
            reason: "too many redirects".into(),
        })
    }

    /// A GET of `url` from `offset`, following redirects by hand; 200 or 206.
    pub(crate) async fn get_from(&self, url: &str, offset: u64, ctx: &Ctx<'_>) -> Result<Response> {
        let mut current = url.to_string();
        for _ in 0..MAX_REDIRECTS {
            let response = self
                .send_with_retry(&current, ctx, || {
                    let req = self
                        .authorized(self.http.get(&current), &current)
                        .header("accept-encoding", "identity");
                    if offset > 0 {
                        req.header("range", format!("bytes={offset}-"))
                    } else {
                        req
                    }
                })
                .await?;
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let location = header(response.headers(), LOCATION.as_str()).ok_or_else(|| {
                ModelError::Protocol {
                    url: current.clone(),
                    reason: "redirect without a Location header".into(),
                }
            })?;
            current = if location.starts_with('/') {
                join_origin(&current, &location)
            } else {
                location
            };
        }
        Err(ModelError::Protocol {
            url: url.to_string(),
            reason: "too many redirects".into(),
        })
    }

    /// The bearer token goes to the hub's own origin only, never to a CDN.
    fn authorized(&self, req: RequestBuilder, url: &str) -> RequestBuilder {
        match &self.token {
            Some(token) if origin(url) == origin(&self.endpoint) => {
                req.header(AUTHORIZATION, format!("Bearer {token}"))
            }
            _ => req,
        }
    }

    /// Sends with retries (exponential backoff with jitter) on transient failures; a 4xx ends
    /// at once with an error that says what to do.
    pub(crate) async fn send_with_retry(
        &self,
        url: &str,
        ctx: &Ctx<'_>,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Response> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match tokio::time::timeout(self.read_timeout, make().send()).await {
                Ok(Ok(resp)) => match classify(resp, ctx, &self.endpoint) {
                    Ok(resp) => return Ok(resp),
                    Err(f) => f,
                },
                Ok(Err(e)) if e.is_connect() => Failure::Unreachable(describe(&e)),
                Ok(Err(e)) => Failure::Transient(describe(&e)),
                Err(_) => Failure::Transient(format!("no response within {:?}", self.read_timeout)),
            };
            let (reason, limit) = match failure {
                Failure::Fatal(e) => return Err(e),
                Failure::Transient(reason) => (reason, self.retries),
                Failure::Unreachable(reason) => (reason, self.retries.min(CONNECT_RETRIES)),
            };
            if attempt > limit {
                return Err(ModelError::Network {
                    url: url.to_string(),
                    attempts: attempt,
                    reason,
                });
            }
            let delay = backoff_delay(self.backoff, attempt);
            tracing::warn!(url, attempt, %reason, ?delay, "request failed, retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Which repo/revision/file a request is about, for error messages.
pub(crate) struct Ctx<'a> {
    pub repo: &'a str,
    pub revision: &'a str,
    pub file: Option<&'a str>,
}

/// `base * 2^(attempt-1)`, capped at 30 s, times a random factor in [0.5, 1.5).
pub fn backoff_delay(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << (attempt.saturating_sub(1)).min(16));
    let capped = exp.min(Duration::from_secs(30));
    capped.mul_f64(0.5 + rand::random::<f64>())
}

fn classify(
    resp: Response,
    ctx: &Ctx<'_>,
    endpoint: &str,
) -> std::result::Result<Response, Failure> {
    let status = resp.status();
    if status.is_success() || status.is_redirection() {
        return Ok(resp);
    }
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        return Err(Failure::Transient(format!("HTTP {status}")));
    }
    let code = header(resp.headers(), "x-error-code").unwrap_or_default();
    let message = header(resp.headers(), "x-error-message").unwrap_or_default();
    Err(Failure::Fatal(client_error(
        status, &code, &message, ctx, endpoint,
    )))
}

fn client_error(
    status: StatusCode,
    code: &str,
    message: &str,
    ctx: &Ctx<'_>,
    endpoint: &str,
) -> ModelError {
    let repo = ctx.repo.to_string();
    match (status.as_u16(), code) {
        (401 | 403, "GatedRepo") => ModelError::Unauthorized {
            repo: repo.clone(),
            status: status.as_u16(),
            hint: format!("the repository is gated: accept its license on the hub page of `{repo}`, then set HF_TOKEN to a token of that account"),
        },
        (401 | 403, _) => ModelError::Unauthorized {
            repo,
            status: status.as_u16(),
            hint: "set HF_TOKEN to a valid access token with read access (or check that the one set is not expired)".into(),
        },
        (404, "RevisionNotFound") => ModelError::RevisionNotFound { repo, revision: ctx.revision.into() },
        (404, "EntryNotFound") => file_not_found(ctx),
        (404, "RepoNotFound") => ModelError::RepoNotFound { repo, endpoint: endpoint.into() },
        (404, _) => match ctx.file {
            Some(_) => file_not_found(ctx),
            None => ModelError::RepoNotFound { repo, endpoint: endpoint.into() },
        },
        (s, _) => ModelError::Protocol {
            url: endpoint.into(),
            reason: format!("HTTP {s} for `{repo}`{}", if message.is_empty() { String::new() } else { format!(": {message}") }),
        },
    }
}

fn file_not_found(ctx: &Ctx<'_>) -> ModelError {
    ModelError::FileNotFound {
        repo: ctx.repo.into(),
        revision: ctx.revision.into(),
        file: ctx.file.unwrap_or_default().into(),
    }
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "connection error"
    };
    let mut msg = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

fn meta_from_headers(headers: &HeaderMap, location: String, url: &str) -> Result<FileMeta> {
    let missing = |what: &str| ModelError::Protocol {
        url: url.to_string(),
        reason: format!("the hub sent no {what} header; is HF_ENDPOINT a Hugging Face hub?"),
    };
    let commit = header(headers, "x-repo-commit").ok_or_else(|| missing("X-Repo-Commit"))?;
    let linked = header(headers, "x-linked-etag");
    let sha256 = linked.is_some();
    let etag = linked
        .or_else(|| header(headers, "etag"))
        .map(|e| normalize_etag(&e))
        .ok_or_else(|| missing("ETag"))?;
    let size = header(headers, "x-linked-size")
        .or_else(|| header(headers, "content-length"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| missing("X-Linked-Size or Content-Length"))?;
    check_commit(&commit)
        .map_err(|why| ModelError::unsafe_value("commit (X-Repo-Commit)", &commit, url, why))?;
    check_etag(&etag).map_err(|why| ModelError::unsafe_value("etag", &etag, url, why))?;
    // Only a 64-hex linked etag is a sha256 we can check.
    let sha256 = sha256 && is_sha256(&etag);
    Ok(FileMeta {
        commit,
        etag,
        size,
        sha256,
        location,
    })
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// `W/"abc"` -> `abc`.
pub fn normalize_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

fn join_origin(url: &str, path: &str) -> String {
    format!("{}{path}", origin(url))
}

/// Percent-encodes one path segment (RFC 3986 unreserved characters stay).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
