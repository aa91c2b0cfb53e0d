//! The model manager when the cache is incomplete, the hub cannot be asked, or two downloads
//! of one file run at once (loopback mock of the hub, no internet).

#[path = "support/hf_mock.rs"]
mod hf_mock;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hf_mock::{Content, Fault, MockHub};
use llmlocal::models::{CancellationToken, ManagerConfig, ModelError, ModelManager, ModelSpec};

const MB: u64 = 1 << 20;
const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";
const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";
const INDEX: &str = "model.safetensors.index.json";

fn manager(hub: &MockHub, cache: &Path) -> ModelManager {
    ModelManager::new(hub.manager_config(cache)).unwrap()
}

fn offline_manager(hub: &MockHub, cache: &Path) -> ModelManager {
    let mut c = hub.manager_config(cache);
    c.offline = true;
    ModelManager::new(c).unwrap()
}

/// A manager whose hub refuses connections (port 1 on loopback has no listener).
fn unreachable_manager(cache: &Path) -> ModelManager {
    let mut c = ManagerConfig::new(cache);
    c.endpoint = "http://127.0.0.1:1".into();
    c.retry_base_delay = Duration::from_millis(10);
    c.connect_timeout = Duration::from_secs(2);
    ModelManager::new(c).unwrap()
}

fn spec(s: &str) -> ModelSpec {
    ModelSpec::parse(s).unwrap()
}

fn snapshot(cache: &Path, repo: &str) -> PathBuf {
    cache
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots")
        .join(COMMIT)
}

/// A sharded safetensors repo: config, index naming two shards, the shards, a tokenizer.
fn sharded_repo(hub: &MockHub, repo: &str) -> (Content, Content) {
    let s1 = Content::generated(2 * MB + 11, 21);
    let s2 = Content::generated(MB + 5, 22);
    let index = format!(
        r#"{{"metadata":{{"total_size":1}},"weight_map":{{"a.weight":"{SHARD1}","b.weight":"{SHARD2}","c.weight":"{SHARD1}"}}}}"#
    );
    hub.add_repo(
        repo,
        COMMIT,
        vec![
            (
                "config.json",
                Content::Bytes(br#"{"model_type":"llama"}"#.to_vec().into()),
                false,
            ),
            (INDEX, Content::Bytes(index.into_bytes().into()), false),
            (SHARD1, s1.clone(), true),
            (SHARD2, s2.clone(), true),
            (
                "tokenizer.json",
                Content::Bytes(b"{\"tok\":1}".to_vec().into()),
                false,
            ),
        ],
    );
    (s1, s2)
}

#[tokio::test]
async fn resolve_completes_a_snapshot_whose_index_names_a_missing_shard() {
    let hub = MockHub::start().await;
    let (_, s2) = sharded_repo(&hub, "org/sharded");
    let tmp = tempfile::tempdir().unwrap();
    let first = manager(&hub, tmp.path())
        .resolve(&spec("org/sharded"))
        .await
        .unwrap();
    assert_eq!(first.files.len(), 5);
    // A cache laid out by someone else (no file list recorded) that lacks the second shard.
    std::fs::remove_dir_all(llmlocal::models::HubCache::new(tmp.path()).state_dir()).unwrap();
    std::fs::remove_file(snapshot(tmp.path(), "org/sharded").join(SHARD2)).unwrap();
    let blob = std::fs::read_link(first.path.join(SHARD1)).unwrap();
    assert!(blob.to_string_lossy().contains("blobs"));
    let shard2_blob = tmp
        .path()
        .join("models--org--sharded/blobs")
        .join(hub.sha256_of("org/sharded", SHARD2));
    std::fs::remove_file(shard2_blob).unwrap();
    assert!(!manager(&hub, tmp.path()).is_cached(&spec("org/sharded")));

    let e = offline_manager(&hub, tmp.path())
        .resolve(&spec("org/sharded"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ModelError::NotCachedOffline { ref file, .. } if file == SHARD2),
        "{e}"
    );
    assert!(e.to_string().contains("llmlocal pull org/sharded"), "{e}");

    hub.reset_counters();
    let again = manager(&hub, tmp.path())
        .resolve(&spec("org/sharded"))
        .await
        .unwrap();
    assert_eq!(again.downloaded_bytes, s2.len(), "only the missing shard");
    assert_eq!(hub.bytes_served(), s2.len());
    assert_eq!(std::fs::read(again.path.join(SHARD2)).unwrap(), s2.to_vec());
    assert!(manager(&hub, tmp.path()).is_cached(&spec("org/sharded")));
}

#[tokio::test]
async fn resolve_notices_a_repo_file_that_was_never_downloaded() {
    let hub = MockHub::start().await;
    sharded_repo(&hub, "org/partial");
    let tmp = tempfile::tempdir().unwrap();
    let first = manager(&hub, tmp.path())
        .resolve(&spec("org/partial"))
        .await
        .unwrap();
    // The pull stopped before the tokenizer (its link and blob never written). Nothing inside
    // the snapshot mentions it: only the recorded file list does.
    let link = first.path.join("tokenizer.json");
    let blob = link
        .parent()
        .unwrap()
        .join(std::fs::read_link(&link).unwrap());
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_file(&blob).unwrap();

    let e = offline_manager(&hub, tmp.path())
        .resolve(&spec("org/partial"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ModelError::NotCachedOffline { ref file, .. } if file == "tokenizer.json"),
        "{e}"
    );
    hub.reset_counters();
    let again = manager(&hub, tmp.path())
        .resolve(&spec("org/partial"))
        .await
        .unwrap();
    assert_eq!(again.downloaded_bytes, b"{\"tok\":1}".len() as u64);
    assert_eq!(
        std::fs::read(again.path.join("tokenizer.json")).unwrap(),
        b"{\"tok\":1}"
    );
}

#[tokio::test]
async fn a_split_gguf_missing_a_part_is_not_taken_as_cached() {
    let hub = MockHub::start().await;
    let p1 = Content::generated(MB + 1, 31);
    let p2 = Content::generated(MB + 2, 32);
    let part1 = "m-Q4_K_M-00001-of-00002.gguf";
    let part2 = "m-Q4_K_M-00002-of-00002.gguf";
    hub.add_repo(
        "org/split",
        COMMIT,
        vec![(part1, p1.clone(), true), (part2, p2.clone(), true)],
    );
    let tmp = tempfile::tempdir().unwrap();
    let first = manager(&hub, tmp.path())
        .resolve(&spec("org/split:Q4_K_M"))
        .await
        .unwrap();
    assert_eq!(first.files.len(), 2);
    std::fs::remove_file(snapshot(tmp.path(), "org/split").join(part2)).unwrap();
    std::fs::remove_dir_all(llmlocal::models::HubCache::new(tmp.path()).state_dir()).unwrap();

    let e = offline_manager(&hub, tmp.path())
        .resolve(&spec("org/split:Q4_K_M"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ModelError::NotCachedOffline { ref file, .. } if file == part2),
        "{e}"
    );
    // The blob is still there: resolving again links it without transferring anything.
    hub.reset_counters();
    let again = manager(&hub, tmp.path())
        .resolve(&spec("org/split:Q4_K_M"))
        .await
        .unwrap();
    assert_eq!(again.files.len(), 2);
    assert_eq!(hub.content_gets(), 0);
    assert_eq!(std::fs::read(&again.files[1]).unwrap(), p2.to_vec());
}

#[tokio::test]
async fn pull_answers_from_a_complete_cache_when_offline_or_unreachable() {
    let hub = MockHub::start().await;
    let q8 = Content::generated(MB + 3, 41);
    hub.add_repo(
        "org/cached",
        COMMIT,
        vec![("m-Q8_0.gguf", q8.clone(), true)],
    );
    let tmp = tempfile::tempdir().unwrap();
    let pulled = manager(&hub, tmp.path())
        .pull(&spec("org/cached:Q8_0"), None, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(pulled.cache_only, None, "the hub was asked");

    hub.reset_counters();
    let offline = offline_manager(&hub, tmp.path())
        .pull(&spec("org/cached:Q8_0"), None, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(offline.path, pulled.path);
    assert!(
        offline
            .cache_only
            .as_deref()
            .is_some_and(|w| w.contains("HF_HUB_OFFLINE")),
        "{:?}",
        offline.cache_only
    );
    assert!(hub.requests().is_empty(), "offline asks nothing");

    let started = Instant::now();
    let away = unreachable_manager(tmp.path())
        .pull(&spec("org/cached:Q8_0"), None, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&away.path).unwrap(), q8.to_vec());
    assert!(
        away.cache_only
            .as_deref()
            .is_some_and(|w| w.contains("could not be reached")),
        "{:?}",
        away.cache_only
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no long backoff when the cache can answer: {:?}",
        started.elapsed()
    );

    let e = unreachable_manager(tmp.path())
        .pull(
            &spec("hf://org/cached/other.gguf"),
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, ModelError::HubUnreachable { ref file, .. } if file == "other.gguf"),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("llmlocal pull org/cached") && msg.contains("HF_ENDPOINT"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_downloading_one_file_make_one_verified_blob() {
    let hub = MockHub::start().await;
    let big = Content::generated(6 * MB + 17, 51);
    hub.add_repo("org/race", COMMIT, vec![("m-Q8_0.gguf", big.clone(), true)]);
    // Slow enough that the two downloads overlap.
    hub.push_fault(
        "m-Q8_0.gguf",
        Fault::Trickle {
            chunk: 128 * 1024,
            delay: Duration::from_millis(20),
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (manager(&hub, tmp.path()), manager(&hub, tmp.path()));
    let s = spec("org/race:Q8_0");
    let (ra, rb) = tokio::join!(a.pull(&s, None, CancellationToken::new()), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.pull(&s, None, CancellationToken::new()).await
    });
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.path, rb.path);
    assert_eq!(std::fs::read(&ra.path).unwrap(), big.to_vec());
    assert_eq!(hub.bytes_served(), big.len(), "one download, not two");
    assert_eq!(ra.downloaded_bytes + rb.downloaded_bytes, big.len());
    let blobs = tmp.path().join("models--org--race/blobs");
    let names: Vec<String> = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![hub.sha256_of("org/race", "m-Q8_0.gguf")]);
}
