//! Adapters published as GitHub release assets.
//!
//! `GET {api}/repos/{owner}/{repo}/releases/tags/{tag}` lists the release's assets; the asset
//! is then fetched from its API `url` with `Accept: application/octet-stream` (GitHub answers
//! with a redirect to its storage; reqwest follows it and drops the Authorization header on
//! the cross-host hop). `GITHUB_TOKEN` is sent as a bearer token (private repositories); the
//! API base is configurable (GitHub Enterprise: `https://HOST/api/v3`; tests: a loopback mock).
//!
//! The model manager's transfer layer is specific to the Hugging Face cache layout (etag
//! blobs, snapshots, `x-linked-etag`), so this is a small transfer of its own with the same
//! rules: bytes go to a temporary file next to the target, size (and the release's sha256
//! digest when GitHub gives one) are checked, and only then is the file renamed into the
//! cache; any failure removes the temporary file. Network errors and 5xx are retried with
//! the model manager's backoff.

use std::path::Path;
use std::time::Duration;

use reqwest::{header, Client, StatusCode, Url};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::convert::{hex, temp_path};
use super::error::{io_err, AdapterError, Result};
use super::spec::GitHubAsset;
use crate::models::backoff_delay;

/// The public GitHub REST API.
pub const DEFAULT_API: &str = "https://api.github.com";

/// How to reach GitHub.
#[derive(Debug, Clone)]
pub struct GitHubConfig {
    /// API base URL, without a trailing slash.
    pub api_base: String,
    pub token: Option<String>,
    /// Retries after the first attempt on network errors and 5xx.
    pub max_retries: u32,
    pub retry_base_delay: Duration,
    pub connect_timeout: Duration,
}

impl Default for GitHubConfig {
    fn default() -> Self {
        GitHubConfig {
            api_base: DEFAULT_API.to_string(),
            token: None,
            max_retries: 3,
            retry_base_delay: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl GitHubConfig {
    /// `LLMLOCAL_GITHUB_API` (else the public API) and `GITHUB_TOKEN`.
    pub fn from_env() -> Self {
        let nonempty = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        GitHubConfig {
            api_base: nonempty("LLMLOCAL_GITHUB_API").unwrap_or_else(|| DEFAULT_API.to_string()),
            token: nonempty("GITHUB_TOKEN"),
            ..GitHubConfig::default()
        }
    }
}

/// One asset of a release, as the API describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct ReleaseAsset {
    pub name: String,
    pub size: u64,
    /// The API URL (downloads with `Accept: application/octet-stream`, also for private repos).
    pub url: String,
    pub browser_download_url: Option<String>,
    /// `sha256:<hex>` on recent GitHub versions.
    pub digest: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Release {
    assets: Vec<ReleaseAsset>,
}

/// A GitHub API client.
pub struct GitHub {
    config: GitHubConfig,
    client: Client,
    api: Url,
}

/// Outcome of one attempt: retry or give up.
enum Attempt {
    Retry(AdapterError),
    Fail(AdapterError),
}

impl GitHub {
    pub fn new(config: GitHubConfig) -> Result<Self> {
        let bad = |reason: String| AdapterError::BadUrl {
            url: config.api_base.clone(),
            reason,
        };
        let api =
            Url::parse(config.api_base.trim_end_matches('/')).map_err(|e| bad(e.to_string()))?;
        if !matches!(api.scheme(), "http" | "https") || api.cannot_be_a_base() {
            return Err(bad("it must be an http(s) URL".into()));
        }
        let client = Client::builder()
            .user_agent(concat!("llmlocal/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|source| AdapterError::Network {
                url: config.api_base.clone(),
                source,
            })?;
        Ok(GitHub {
            config,
            client,
            api,
        })
    }

    fn release_url(&self, a: &GitHubAsset) -> Url {
        let mut url = self.api.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend(["repos", &a.owner, &a.repo, "releases", "tags", &a.tag]);
        }
        url
    }

    fn get(&self, url: &str, accept: &str) -> reqwest::RequestBuilder {
        let req = self
            .client
            .get(url)
            .header(header::ACCEPT, accept)
            .header("X-GitHub-Api-Version", "2022-11-28");
        match &self.config.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// Runs `op` with retries on [`Attempt::Retry`].
    async fn with_retries<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Attempt>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry(e)) if attempt >= self.config.max_retries => return Err(e),
                Err(Attempt::Retry(e)) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "GitHub request failed, retrying");
                    tokio::time::sleep(backoff_delay(self.config.retry_base_delay, attempt)).await;
                }
            }
        }
    }

    /// The release's description of `a.asset`.
    pub async fn find_asset(&self, a: &GitHubAsset) -> Result<ReleaseAsset> {
        let url = self.release_url(a);
        let release: Release = self
            .with_retries(|| async {
                let resp = self
                    .send(url.as_str(), "application/vnd.github+json")
                    .await?;
                if resp.status() == StatusCode::NOT_FOUND {
                    return Err(Attempt::Fail(AdapterError::ReleaseNotFound {
                        owner: a.owner.clone(),
                        repo: a.repo.clone(),
                        tag: a.tag.clone(),
                        url: url.to_string(),
                    }));
                }
                let resp = check_status(resp)?;
                resp.json::<Release>().await.map_err(|e| {
                    Attempt::Fail(AdapterError::Http {
                        url: url.to_string(),
                        status: 200,
                        detail: Some(format!("not a GitHub release description ({e})")),
                    })
                })
            })
            .await?;
        let available = release.assets.iter().map(|x| x.name.clone()).collect();
        release
            .assets
            .into_iter()
            .find(|x| x.name == a.asset)
            .ok_or_else(|| AdapterError::AssetNotFound {
                tag: a.tag.clone(),
                asset: a.asset.clone(),
                available,
            })
    }

    async fn send(
        &self,
        url: &str,
        accept: &str,
    ) -> std::result::Result<reqwest::Response, Attempt> {
        self.get(url, accept).send().await.map_err(|source| {
            Attempt::Retry(AdapterError::Network {
                url: url.to_string(),
                source,
            })
        })
    }

    /// Downloads `asset` to `dest` (verified; nothing left behind on failure); returns bytes.
    pub async fn download(&self, asset: &ReleaseAsset, dest: &Path) -> Result<u64> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(dir).await.map_err(io_err(dir))?;
        self.with_retries(|| async {
            let tmp = temp_path(dest);
            let result = self.download_once(asset, &tmp).await;
            let result = match result {
                Ok(()) => tokio::fs::rename(&tmp, dest)
                    .await
                    .map_err(|e| Attempt::Fail(io_err(dest)(e))),
                Err(e) => Err(e),
            };
            if result.is_err() {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            result.map(|()| asset.size)
        })
        .await
    }

    async fn download_once(
        &self,
        asset: &ReleaseAsset,
        tmp: &Path,
    ) -> std::result::Result<(), Attempt> {
        let resp = check_status(self.send(&asset.url, "application/octet-stream").await?)?;
        let mut file = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| Attempt::Fail(io_err(tmp)(e)))?;
        let mut hasher = Sha256::new();
        let mut got: u64 = 0;
        let mut resp = resp;
        loop {
            let chunk = resp.chunk().await.map_err(|source| {
                Attempt::Retry(AdapterError::Network {
                    url: asset.url.clone(),
                    source,
                })
            })?;
            let Some(chunk) = chunk else { break };
            got += chunk.len() as u64;
            if got > asset.size {
                return Err(corrupt(
                    asset,
                    format!("more than the {} bytes the release lists", asset.size),
                ));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| Attempt::Fail(io_err(tmp)(e)))?;
        }
        file.flush()
            .await
            .map_err(|e| Attempt::Fail(io_err(tmp)(e)))?;
        if got != asset.size {
            return Err(corrupt(
                asset,
                format!("got {got} bytes, the release lists {}", asset.size),
            ));
        }
        if let Some(expected) = asset
            .digest
            .as_deref()
            .and_then(|d| d.strip_prefix("sha256:"))
        {
            let actual = hex(&hasher.finalize());
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(corrupt(
                    asset,
                    format!("sha256 {actual}, the release lists {expected}"),
                ));
            }
        }
        Ok(())
    }
}

fn corrupt(asset: &ReleaseAsset, reason: String) -> Attempt {
    // A short or altered body is often a dropped connection: worth another try.
    Attempt::Retry(AdapterError::Corrupt {
        asset: asset.name.clone(),
        reason,
    })
}

fn check_status(resp: reqwest::Response) -> std::result::Result<reqwest::Response, Attempt> {
    let status = resp.status();
    let url = resp.url().to_string();
    if status.is_success() {
        return Ok(resp);
    }
    let err = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => AdapterError::Unauthorized {
            url,
            status: status.as_u16(),
        },
        _ => AdapterError::Http {
            url,
            status: status.as_u16(),
            detail: None,
        },
    };
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Err(Attempt::Retry(err))
    } else {
        Err(Attempt::Fail(err))
    }
}
