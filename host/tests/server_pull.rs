//! `/api/pull` downloads through the model manager from a loopback mock of the Hugging Face
//! hub, reporting progress as NDJSON; the pulled model then serves requests, and
//! `/api/delete` removes it from the cache.

#[path = "support/hf_mock.rs"]
mod hf_mock;
mod server_support;

use hf_mock::{Content, MockHub};
use llmlocal::{
    engine::Engine,
    models::{ModelManager, ModelSpec},
    server::ServerSettings,
};
use serde_json::{json, Value};
use server_support::{delete, get_json, parse_ndjson, post, registry, TestServer};
use std::sync::Arc;

const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread")]
async fn pull_downloads_with_progress_then_serves_and_delete_removes_it() {
    let hub = MockHub::start().await;
    // A scripted "model" big enough to report progress on the way.
    let script: String = "pulled over http. ".repeat(200_000);
    let file = format!("llmlocal-scripted-model v1\n{script}");
    hub.add_repo(
        "org/tiny",
        COMMIT,
        vec![("model.gguf", Content::Bytes(file.clone().into()), true)],
    );
    let cache = tempfile::tempdir().expect("temp dir");
    let mut config = hub.manager_config(cache.path());
    config.max_retries = 1;
    let manager = Arc::new(ModelManager::new(config).expect("manager"));
    let settings = llmlocal::engine::EngineSettings {
        open_specs: false,
        default_backend: Some("scripted".into()),
        ..Default::default()
    };
    let engine = Engine::new(
        settings,
        registry(&["scripted"]),
        Some(Arc::clone(&manager)),
    );
    let server = TestServer::start(engine, ServerSettings::default()).await;
    let name = "org/tiny:model.gguf";

    let (_, body) = post(&server, "/api/pull", json!({"model": name})).await;
    let lines = parse_ndjson(&body);
    assert_eq!(lines[0]["status"], "pulling manifest");
    assert_eq!(lines.last().expect("last")["status"], "success", "{body}");
    let progress: Vec<&Value> = lines.iter().filter(|l| l["completed"].is_u64()).collect();
    assert!(!progress.is_empty(), "progress lines: {body}");
    assert!(progress.iter().all(|l| l["total"] == file.len() as u64));
    let done: Vec<u64> = progress
        .iter()
        .map(|l| l["completed"].as_u64().expect("n"))
        .collect();
    assert!(
        done.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {done:?}"
    );
    assert_eq!(done.last(), Some(&(file.len() as u64)));
    let spec = ModelSpec::parse(name).expect("spec");
    assert!(manager.is_cached(&spec));

    let (_, answer) = post(
        &server,
        "/api/generate",
        json!({"model": name, "prompt": "x", "raw": true, "stream": false,
               "options": {"temperature": 0, "num_predict": 17}}),
    )
    .await;
    let answer: Value = serde_json::from_str(&answer).expect("json");
    assert_eq!(answer["response"], "pulled over http.", "{answer}");
    // `/api/tags` of a cached file: its bytes, and the sha256 its blob is named by.
    let tags = get_json(&server, "/api/tags").await;
    assert_eq!(tags["models"][0]["size"], file.len() as u64);
    let sha256: String = {
        use sha2::{Digest, Sha256};
        let hash = Sha256::digest(file.as_bytes());
        hash.iter().map(|b| format!("{b:02x}")).collect()
    };
    assert_eq!(tags["models"][0]["digest"], sha256, "{tags}");

    // Loaded: refused until unloaded, the files left in place.
    assert_eq!(
        delete(&server, "/api/delete", json!({"model": name})).await,
        409
    );
    assert!(
        manager.is_cached(&spec),
        "a refused delete leaves the files"
    );
    let (status, _) = post(
        &server,
        "/api/generate",
        json!({"model": name, "keep_alive": 0}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        delete(&server, "/api/delete", json!({"model": name})).await,
        200
    );
    assert!(!manager.is_cached(&spec), "removed from the cache");
    let tags = get_json(&server, "/api/tags").await;
    assert_eq!(tags["models"], json!([]));

    // A repository the hub does not have: the NDJSON stream ends with an error line.
    let missing = "org/missing:model.gguf";
    let (_, body) = post(&server, "/api/pull", json!({"model": missing})).await;
    let last = parse_ndjson(&body).pop().expect("a line");
    assert!(
        last["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    let (status, _) = post(
        &server,
        "/api/pull",
        json!({"model": missing, "stream": false}),
    )
    .await;
    assert_eq!(status, 500);
}
