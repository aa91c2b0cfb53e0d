//! The cache is shared both ways with Python's huggingface_hub (pip-installed if missing; a
//! failed install fails the test with pip's output).

#[path = "support/hf_mock.rs"]
mod hf_mock;

use std::path::Path;
use std::process::Command;

use hf_mock::{Content, MockHub};
use llmlocal::models::{CancellationToken, ModelManager, ModelSpec};

const COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";

fn ensure_huggingface_hub() {
    let have = Command::new("python3")
        .args(["-c", "import huggingface_hub"])
        .output();
    match have {
        Ok(o) if o.status.success() => return,
        Ok(_) => {}
        Err(e) => panic!("python3 is needed for the interop tests and could not be run: {e}"),
    }
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "huggingface_hub"])
        .output()
        .expect("run pip");
    assert!(
        out.status.success(),
        "pip install huggingface_hub failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs Python with the hub pointed at the mock and the cache at `cache`; returns stdout.
fn python(hub: &MockHub, cache: &Path, script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .env("HF_ENDPOINT", &hub.url)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn mock_repo(hub: &MockHub) -> (Content, Content) {
    let weights = Content::generated(3 * 1024 * 1024 + 17, 42);
    let config = Content::Bytes(br#"{"architectures":["LlamaForCausalLM"]}"#.to_vec().into());
    hub.add_repo(
        "org/shared",
        COMMIT,
        vec![
            ("config.json", config.clone(), false),
            ("model-Q4_K_M.gguf", weights.clone(), true),
        ],
    );
    (weights, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reads_a_cache_written_by_llmlocal() {
    ensure_huggingface_hub();
    let hub = MockHub::start().await;
    let (weights, config_json) = mock_repo(&hub);
    let tmp = tempfile::tempdir().unwrap();
    let m = ModelManager::new(hub.manager_config(tmp.path())).unwrap();
    for s in ["org/shared:Q4_K_M", "hf://org/shared/config.json"] {
        m.pull(
            &ModelSpec::parse(s).unwrap(),
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap();
    }
    hub.reset_counters();
    let cache = tmp.path().to_path_buf();
    let script = r#"
import hashlib
from huggingface_hub import try_to_load_from_cache
for f in ["model-Q4_K_M.gguf", "config.json"]:
    p = try_to_load_from_cache("org/shared", f)
    assert isinstance(p, str), f"not cached for Python: {f} -> {p!r}"
    print(f, p, hashlib.sha256(open(p, "rb").read()).hexdigest())
"#;
    let out = tokio::task::block_in_place(|| python(&hub, &cache, script));
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0][2], weights.sha256());
    assert_eq!(lines[1][2], config_json.sha256());
    assert!(
        lines[0][1].contains(&format!("snapshots/{COMMIT}/model-Q4_K_M.gguf")),
        "{out}"
    );
    assert!(
        hub.requests().is_empty(),
        "Python read the cache without the network"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llmlocal_uses_a_cache_written_by_python() {
    ensure_huggingface_hub();
    let hub = MockHub::start().await;
    let (weights, _) = mock_repo(&hub);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().to_path_buf();
    let script = r#"
from huggingface_hub import hf_hub_download
for f in ["model-Q4_K_M.gguf", "config.json"]:
    print(hf_hub_download("org/shared", f))
"#;
    let out = tokio::task::block_in_place(|| python(&hub, &cache, script));
    assert!(
        hub.content_gets() >= 2,
        "Python downloaded from the mock: {:?}",
        hub.requests()
    );
    hub.reset_counters();

    let m = ModelManager::new(hub.manager_config(tmp.path())).unwrap();
    let r = m
        .resolve(&ModelSpec::parse("org/shared:Q4_K_M").unwrap())
        .await
        .unwrap();
    assert_eq!(r.downloaded_bytes, 0);
    assert!(
        hub.requests().is_empty(),
        "resolved from Python's cache with no request: {:?}",
        hub.requests()
    );
    assert_eq!(std::fs::read(&r.path).unwrap(), weights.to_vec());
    assert_eq!(
        r.path.to_string_lossy(),
        out.lines().next().unwrap(),
        "same snapshot path as Python's"
    );
    assert_eq!(r.commit.as_deref(), Some(COMMIT));

    // A pull checks the hub but downloads nothing: the blobs Python wrote are reused.
    let r = m
        .pull(
            &ModelSpec::parse("org/shared:Q4_K_M").unwrap(),
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.downloaded_bytes, 0);
    assert_eq!(hub.content_gets(), 0, "{:?}", hub.requests());
    let listed = m.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].revisions[0].files.len(), 2);
}

// Partial downloads are not shared: huggingface_hub 2.x writes each download to a
// process-unique `<etag>.<random>.incomplete` file and never resumes across processes
// (huggingface_hub PR 4228), so llmlocal's `<etag>.incomplete` is resumed by llmlocal only.
