//! Adapters from GitHub releases, against a loopback mock of the GitHub REST API: release by
//! tag, asset download through a redirect, bearer auth, broken downloads.

mod adapters_common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use llmlocal::adapters::{
    cli, AdapterConfig, AdapterError, AdapterFormat, AdapterManager, AdapterSpec, GitHubConfig,
};
use serde_json::json;

const TOKEN: &str = "test-token-123";

#[derive(Clone)]
struct MockAsset {
    id: u64,
    name: String,
    /// What the release lists (size, digest) ...
    listed: Vec<u8>,
    with_digest: bool,
    /// ... and what the storage actually serves.
    served: Vec<u8>,
}

struct Mock {
    base: String,
    releases: Vec<(String, Vec<MockAsset>)>,
    downloads: AtomicUsize,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"))
}

async fn release_by_tag(
    State(mock): State<Arc<Mock>>,
    UrlPath((owner, repo, tag)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Bad credentials"})),
        )
            .into_response();
    }
    let found = (owner == "acme" && repo == "loras")
        .then(|| mock.releases.iter().find(|(t, _)| *t == tag))
        .flatten();
    let Some((tag, assets)) = found else {
        return (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response();
    };
    let assets: Vec<_> = assets
        .iter()
        .map(|a| {
            json!({
                "id": a.id,
                "name": a.name,
                "size": a.listed.len(),
                "url": format!("{}/repos/acme/loras/releases/assets/{}", mock.base, a.id),
                "browser_download_url": format!("{}/download/{tag}/{}", mock.base, a.name),
                "digest": a.with_digest.then(|| format!("sha256:{}", sha256_hex(&a.listed))),
            })
        })
        .collect();
    Json(json!({"tag_name": tag, "assets": assets})).into_response()
}

async fn asset_api(
    State(mock): State<Arc<Mock>>,
    UrlPath((_owner, _repo, id)): UrlPath<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let wants_bytes = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
        == Some("application/octet-stream");
    if !wants_bytes {
        return (StatusCode::OK, Json(json!({"id": id}))).into_response();
    }
    // Like GitHub: a redirect to the storage host.
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("{}/storage/{id}", mock.base))],
    )
        .into_response()
}

async fn storage(State(mock): State<Arc<Mock>>, UrlPath(id): UrlPath<u64>) -> Response {
    let asset = mock
        .releases
        .iter()
        .flat_map(|(_, a)| a)
        .find(|a| a.id == id)
        .cloned();
    match asset {
        Some(a) => {
            mock.downloads.fetch_add(1, Ordering::SeqCst);
            a.served.into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn asset(id: u64, name: &str, bytes: Vec<u8>) -> MockAsset {
    MockAsset {
        id,
        name: name.into(),
        listed: bytes.clone(),
        with_digest: true,
        served: bytes,
    }
}

/// Starts the mock; returns its state (with the base URL).
async fn start_mock() -> Arc<Mock> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let lora = std::fs::read(&adapters_common::fixtures().lora_gguf).expect("fixture lora");
    let v1 = b"version one of the adapter".to_vec();
    let v2 = b"version two of the adapter, longer".to_vec();
    let mut truncated = asset(13, "truncated.gguf", vec![7u8; 4096]);
    truncated.served.truncate(1000);
    let mut altered = asset(14, "altered.gguf", vec![1u8; 512]);
    altered.served[100] = 2;
    let mut altered_no_digest = altered.clone();
    altered_no_digest.id = 15;
    altered_no_digest.name = "same-size.gguf".into();
    altered_no_digest.with_digest = false;
    let mock = Arc::new(Mock {
        base,
        releases: vec![
            (
                "v1".into(),
                vec![asset(11, "tiny.gguf", v1), asset(12, "lora.gguf", lora)],
            ),
            ("v2".into(), vec![asset(21, "tiny.gguf", v2)]),
            ("broken".into(), vec![truncated, altered, altered_no_digest]),
        ],
        downloads: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route(
            "/repos/{owner}/{repo}/releases/tags/{tag}",
            get(release_by_tag),
        )
        .route("/repos/{owner}/{repo}/releases/assets/{id}", get(asset_api))
        .route("/storage/{id}", get(storage))
        .with_state(Arc::clone(&mock));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    mock
}

fn config(root: &Path, api: &str, token: Option<&str>) -> AdapterConfig {
    let mut c = AdapterConfig::new(root);
    c.github = GitHubConfig {
        api_base: api.to_string(),
        token: token.map(str::to_string),
        max_retries: 1,
        retry_base_delay: Duration::from_millis(1),
        connect_timeout: Duration::from_secs(2),
    };
    c
}

fn manager(root: &Path, mock: &Mock) -> AdapterManager {
    AdapterManager::new(config(root, &mock.base, Some(TOKEN))).expect("manager")
}

fn spec(s: &str) -> AdapterSpec {
    AdapterSpec::parse(s).expect("spec")
}

/// Every file under `dir` (recursively), including hidden temporary files.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(read) = std::fs::read_dir(dir) {
        for e in read.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(all_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn pull_follows_the_redirect_with_token_and_caches_by_tag() {
    let mock = start_mock().await;
    let root = tempfile::tempdir().expect("tmp");
    let m = manager(root.path(), &mock);
    let path = m
        .fetch(&spec("gh:acme/loras@v1/tiny.gguf"))
        .await
        .expect("pull");
    assert_eq!(path, root.path().join("github/acme/loras/v1/tiny.gguf"));
    assert_eq!(
        std::fs::read(&path).expect("read"),
        b"version one of the adapter"
    );
    assert_eq!(mock.downloads.load(Ordering::SeqCst), 1);
    // cached: no second download
    let again = m
        .fetch(&spec("gh:acme/loras@v1/tiny.gguf:0.5"))
        .await
        .expect("cached");
    assert_eq!(again, path);
    assert_eq!(mock.downloads.load(Ordering::SeqCst), 1);
    assert_eq!(all_files(root.path()), vec![path]);
}

#[tokio::test]
async fn two_versions_sit_side_by_side_and_rm_removes_one() {
    let mock = start_mock().await;
    let root = tempfile::tempdir().expect("tmp");
    let m = manager(root.path(), &mock);
    let v1 = m
        .fetch(&spec("gh:acme/loras@v1/tiny.gguf"))
        .await
        .expect("v1");
    let v2 = m
        .fetch(&spec("gh:acme/loras@v2/tiny.gguf"))
        .await
        .expect("v2");
    assert_ne!(v1, v2);
    assert_eq!(
        std::fs::read(&v1).expect("v1"),
        b"version one of the adapter"
    );
    assert_eq!(
        std::fs::read(&v2).expect("v2"),
        b"version two of the adapter, longer"
    );
    let names: Vec<String> = m
        .list()
        .expect("list")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(
        names,
        ["gh:acme/loras@v1/tiny.gguf", "gh:acme/loras@v2/tiny.gguf"]
    );
    let freed = m.remove("gh:acme/loras@v1").expect("rm v1");
    assert_eq!(freed, 26);
    assert!(!v1.exists() && v2.exists());
    assert!(matches!(
        m.remove("gh:acme/loras@v1"),
        Err(AdapterError::NotCached(_))
    ));
    m.remove("gh:acme/loras").expect("rm all");
    assert!(m.list().expect("list").is_empty());
    assert!(all_files(root.path()).is_empty());
}

#[tokio::test]
async fn missing_tag_and_missing_asset_are_named() {
    let mock = start_mock().await;
    let root = tempfile::tempdir().expect("tmp");
    let m = manager(root.path(), &mock);
    let err = m
        .fetch(&spec("gh:acme/loras@v9/tiny.gguf"))
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::ReleaseNotFound { .. }), "{err}");
    assert!(err.to_string().contains("`v9` of acme/loras"), "{err}");
    let err = m
        .fetch(&spec("gh:acme/other@v1/tiny.gguf"))
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::ReleaseNotFound { .. }), "{err}");
    let err = m
        .fetch(&spec("gh:acme/loras@v1/nope.gguf"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AdapterError::AssetNotFound { .. }), "{msg}");
    assert!(
        msg.contains("`nope.gguf`") && msg.contains("tiny.gguf, lora.gguf"),
        "{msg}"
    );
    assert!(all_files(root.path()).is_empty());
}

#[tokio::test]
async fn a_wrong_token_asks_for_github_token() {
    let mock = start_mock().await;
    let root = tempfile::tempdir().expect("tmp");
    for token in [None, Some("wrong")] {
        let m = AdapterManager::new(config(root.path(), &mock.base, token)).expect("manager");
        let err = m
            .fetch(&spec("gh:acme/loras@v1/tiny.gguf"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, AdapterError::Unauthorized { status: 401, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("GITHUB_TOKEN"), "{err}");
    }
    assert!(all_files(root.path()).is_empty());
}

#[tokio::test]
async fn bad_api_urls_are_clear_errors() {
    let root = tempfile::tempdir().expect("tmp");
    for bad in ["not a url", "ftp://example.com/api"] {
        let err = AdapterManager::new(config(root.path(), bad, None))
            .err()
            .expect("refused");
        assert!(matches!(err, AdapterError::BadUrl { .. }), "{err}");
        assert!(err.to_string().contains(bad), "{err}");
    }
    // nothing listens on port 1
    let m = AdapterManager::new(config(root.path(), "http://127.0.0.1:1", None)).expect("manager");
    let err = m
        .fetch(&spec("gh:acme/loras@v1/tiny.gguf"))
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::Network { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    assert!(all_files(root.path()).is_empty());
}

#[tokio::test]
async fn corrupt_downloads_leave_nothing_in_the_cache() {
    let mock = start_mock().await;
    let root = tempfile::tempdir().expect("tmp");
    let m = manager(root.path(), &mock);
    let err = m
        .fetch(&spec("gh:acme/loras@broken/truncated.gguf"))
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("got 1000 bytes, the release lists 4096"),
        "{err}"
    );
    let err = m
        .fetch(&spec("gh:acme/loras@broken/altered.gguf"))
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("sha256"), "{err}");
    // retried once (max_retries 1) before giving up
    assert_eq!(mock.downloads.load(Ordering::SeqCst), 4);
    assert!(
        all_files(root.path()).is_empty(),
        "{:?}",
        all_files(root.path())
    );
    // without a digest the size check is all there is: same-size bytes are accepted
    m.fetch(&spec("gh:acme/loras@broken/same-size.gguf"))
        .await
        .expect("no digest");
}

#[tokio::test]
async fn resolve_checks_and_converts_for_the_backend() {
    let mock = start_mock().await;
    let root = tempfile::tempdir().expect("tmp");
    let m = manager(root.path(), &mock);
    let base = adapters_common::base_hf();
    let gguf = m
        .resolve(
            &spec("gh:acme/loras@v1/lora.gguf:0.5"),
            &base,
            &[AdapterFormat::Gguf],
        )
        .await
        .expect("gguf");
    assert_eq!(gguf.format, AdapterFormat::Gguf);
    assert_eq!(gguf.request().scale, 0.5);
    // a PEFT folder for llama.cpp is converted (into the adapters root) ...
    let peft = adapters_common::fixtures().lora_dir.display().to_string();
    let converted = m
        .resolve(&spec(&peft), &base, &[AdapterFormat::Gguf])
        .await
        .expect("convert");
    assert!(converted.path.starts_with(root.path().join("converted")));
    assert_eq!(
        std::fs::read(&converted.path).expect("read"),
        std::fs::read(&gguf.path).expect("read")
    );
    // ... and left alone for candle
    let same = m
        .resolve(
            &spec(&peft),
            &base,
            &[AdapterFormat::Peft, AdapterFormat::Gguf],
        )
        .await
        .expect("peft");
    assert_eq!(same.format, AdapterFormat::Peft);
    // GGUF cannot serve a PEFT-only backend
    let err = m
        .resolve(
            &spec("gh:acme/loras@v1/lora.gguf"),
            &base,
            &[AdapterFormat::Peft],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::Incompatible { .. }), "{err}");
    // a file that is not an adapter is refused before any backend sees it
    let err = m
        .resolve(
            &spec("gh:acme/loras@v1/tiny.gguf"),
            &base,
            &[AdapterFormat::Gguf],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a GGUF file"), "{err}");
}

#[tokio::test]
async fn cli_pull_list_rm() {
    let mock = start_mock().await;
    let root = tempfile::tempdir().expect("tmp");
    let m = manager(root.path(), &mock);
    let mut out = Vec::new();
    let base = adapters_common::fixtures().hf_dir.clone();
    let path = cli::pull(&m, "gh:acme/loras@v1/lora.gguf", Some(&base), &mut out)
        .await
        .expect("pull");
    let text = String::from_utf8(out).expect("utf8");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("compatible with"), "{text}");
    let mut out = Vec::new();
    assert_eq!(cli::list(&m, &mut out).expect("list"), 1);
    assert!(String::from_utf8(out)
        .expect("utf8")
        .starts_with("gh:acme/loras@v1/lora.gguf\t"));
    let mut out = Vec::new();
    let freed = cli::rm(&m, "gh:acme/loras@v1/lora.gguf", &mut out).expect("rm");
    assert!(freed > 0);
    let mut out = Vec::new();
    assert_eq!(cli::list(&m, &mut out).expect("list"), 0);
    let err = cli::pull(&m, "gh:acme", None, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::InvalidSpec { .. }), "{err}");
}
