//! Downloads from a loopback mock of the Hugging Face hub: verification, faults, progress,
//! cancel and resume.

#[path = "support/hf_mock.rs"]
mod hf_mock;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_mock::{Content, Fault, MockHub};
use llmlocal::api::ModelFormat;
use llmlocal::models::{
    CancellationToken, ManagerConfig, ModelError, ModelManager, ModelSpec, Progress, ResolvedModel,
};

const MB: u64 = 1 << 20;
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn manager(hub: &MockHub, cache: &Path) -> ModelManager {
    manager_with(hub, cache, |_| ())
}

fn gguf_repo(hub: &MockHub, repo: &str) -> (Content, Content) {
    let q4 = Content::generated(3 * MB + 123, 4);
    let q8 = Content::generated(5 * MB + 7, 8);
    hub.add_repo(
        repo,
        COMMIT,
        vec![
            (
                "README.md",
                Content::Bytes(b"# a model\n".to_vec().into()),
                false,
            ),
            ("model-Q4_K_M.gguf", q4.clone(), true),
            ("model-Q8_0.gguf", q8.clone(), true),
        ],
    );
    (q4, q8)
}

fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// Nothing corrupt left: no snapshot link to a missing or bad blob, no blob whose name is not
/// its sha256 (for LFS blobs, which are named by their 64-hex sha256).
fn assert_cache_sound(cache: &Path, repo: &str) {
    let dir = repo_dir(cache, repo);
    for entry in walk(&dir.join("snapshots")) {
        let target = std::fs::read_link(&entry).expect("snapshot entries are symlinks");
        assert!(
            target.starts_with("../../blobs") || target.starts_with("../../../blobs"),
            "{target:?}"
        );
        let blob = entry.parent().unwrap().join(&target);
        assert!(
            blob.is_file(),
            "snapshot link {entry:?} points at a missing blob"
        );
    }
    for blob in walk(&dir.join("blobs")) {
        let name = blob.file_name().unwrap().to_string_lossy().into_owned();
        if name.len() == 64 {
            assert_eq!(
                sha256_file(&blob),
                name,
                "blob {name} does not match its hash"
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.symlink_metadata().unwrap().is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    let data = std::fs::read(p).unwrap();
    sha2::Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn spec(s: &str) -> ModelSpec {
    ModelSpec::parse(s).unwrap()
}

/// A manager for `cache` whose config `edit` changes.
fn manager_with(
    hub: &MockHub,
    cache: &Path,
    edit: impl FnOnce(&mut ManagerConfig),
) -> ModelManager {
    let mut cfg = hub.manager_config(cache);
    edit(&mut cfg);
    ModelManager::new(cfg).unwrap()
}

/// Pulls `s` with no progress channel and no cancellation.
async fn pull(m: &ModelManager, s: &str) -> Result<ResolvedModel, ModelError> {
    pull_spec(m, &spec(s)).await
}

async fn pull_spec(m: &ModelManager, s: &ModelSpec) -> Result<ResolvedModel, ModelError> {
    m.pull(s, None, CancellationToken::new()).await
}

/// The progress events sent so far.
fn received(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Progress>) -> Vec<Progress> {
    let mut events = Vec::new();
    while let Ok(p) = rx.try_recv() {
        events.push(p);
    }
    events
}

/// The mock sends `chunk` bytes, then waits `delay`, and so on.
fn trickle(chunk: usize, delay: Duration) -> Fault {
    Fault::Trickle { chunk, delay }
}

/// A repo of one generated LFS `file` of `(size, seed)`, sent in 128 KiB chunks `delay_ms`
/// apart; returns the file's content.
fn slow_one_file_repo(
    hub: &MockHub,
    repo: &str,
    file: &str,
    (size, seed): (u64, u64),
    delay_ms: u64,
) -> Content {
    let content = Content::generated(size, seed);
    hub.add_repo(repo, COMMIT, vec![(file, content.clone(), true)]);
    hub.push_fault(file, trickle(128 * 1024, Duration::from_millis(delay_ms)));
    content
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Where the download of `file` of `repo` keeps its partial data.
fn partial_blob(hub: &MockHub, cache: &Path, repo: &str, file: &str) -> PathBuf {
    let sha = hub.sha256_of(repo, file);
    repo_dir(cache, repo)
        .join("blobs")
        .join(format!("{sha}.incomplete"))
}

/// Leaves `bytes` as the partial data at `partial`, as an earlier process would.
fn write_partial(partial: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::write(partial, bytes).unwrap();
}

#[tokio::test]
async fn pull_quant_is_byte_identical_in_hub_layout() {
    let hub = MockHub::start().await;
    let (q4, _) = gguf_repo(&hub, "org/model-GGUF");
    let tmp = tempfile::tempdir().unwrap();
    let m = manager(&hub, tmp.path());
    let r = pull(&m, "org/model-GGUF:Q4_K_M").await.unwrap();
    assert_eq!(r.format, ModelFormat::Gguf);
    assert_eq!(r.commit.as_deref(), Some(COMMIT));
    assert_eq!(read(&r.path), q4.to_vec());
    assert_eq!(r.downloaded_bytes, q4.len());
    let dir = repo_dir(tmp.path(), "org/model-GGUF");
    let sha = hub.sha256_of("org/model-GGUF", "model-Q4_K_M.gguf");
    assert_eq!(
        r.path,
        dir.join("snapshots").join(COMMIT).join("model-Q4_K_M.gguf")
    );
    assert_eq!(
        std::fs::read_link(&r.path).unwrap(),
        PathBuf::from(format!("../../blobs/{sha}"))
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("refs/main")).unwrap(),
        COMMIT
    );
    assert!(!dir.join("blobs").join(format!("{sha}.incomplete")).exists());
    assert_cache_sound(tmp.path(), "org/model-GGUF");
}

#[tokio::test]
async fn auto_picks_the_best_quant_that_fits_memory() {
    let hub = MockHub::start().await;
    let (q4, q8) = gguf_repo(&hub, "org/auto");
    let tmp = tempfile::tempdir().unwrap();
    let ctx = 512;
    let need = |c: &Content| c.len() + llmlocal::models::quant::kv_allowance(c.len(), ctx);
    // Q8_0 just does not fit.
    let m = manager_with(&hub, tmp.path(), |c| c.memory_limit = Some(need(&q8) - 1));
    let s = spec("org/auto").with_context_length(ctx);
    let r = pull_spec(&m, &s).await.unwrap();
    let picked = r.picked.clone().expect("a quant was picked");
    assert_eq!(picked.quant.as_deref(), Some("Q4_K_M"));
    assert_eq!(picked.budget, Some(need(&q8) - 1));
    assert_eq!(read(&r.path), q4.to_vec());

    let m = manager_with(&hub, tmp.path(), |c| c.memory_limit = Some(need(&q8)));
    let r = pull_spec(&m, &s).await.unwrap();
    assert_eq!(r.picked.unwrap().quant.as_deref(), Some("Q8_0"));
    assert_eq!(read(&r.path), q8.to_vec());

    let m = manager_with(&hub, tmp.path(), |c| c.memory_limit = Some(q4.len()));
    let e = pull_spec(&m, &s).await.unwrap_err();
    assert!(matches!(e, ModelError::NothingFits { .. }), "{e}");
    assert!(e.to_string().contains("model-Q4_K_M.gguf"), "{e}");
}

#[tokio::test]
async fn snapshot_of_a_safetensors_repo() {
    let hub = MockHub::start().await;
    let weights = Content::generated(2 * MB, 1);
    let config_json = Content::Bytes(br#"{"model_type":"llama"}"#.to_vec().into());
    hub.add_repo(
        "org/st",
        COMMIT,
        vec![
            ("config.json", config_json.clone(), false),
            ("model.safetensors", weights.clone(), true),
            (
                "tokenizer/tokenizer.json",
                Content::Bytes(b"{}".to_vec().into()),
                false,
            ),
            ("pytorch_model.bin", Content::generated(MB, 2), true),
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let r = pull(&manager(&hub, tmp.path()), "org/st").await.unwrap();
    assert_eq!(r.format, ModelFormat::Safetensors);
    assert_eq!(
        r.path,
        repo_dir(tmp.path(), "org/st")
            .join("snapshots")
            .join(COMMIT)
    );
    assert_eq!(
        std::fs::read(r.path.join("model.safetensors")).unwrap(),
        weights.to_vec()
    );
    assert_eq!(
        std::fs::read(r.path.join("config.json")).unwrap(),
        config_json.to_vec()
    );
    assert!(
        r.path.join("tokenizer/tokenizer.json").is_file(),
        "nested files are linked"
    );
    assert!(
        !r.path.join("pytorch_model.bin").exists(),
        "other weight formats are skipped"
    );
    assert_eq!(r.files.len(), 3);
    assert_cache_sound(tmp.path(), "org/st");
}

#[tokio::test]
async fn dropped_connection_resumes_with_range() {
    let hub = MockHub::start().await;
    let (q4, _) = gguf_repo(&hub, "org/drop");
    hub.push_fault("model-Q4_K_M.gguf", Fault::DropAfter(MB));
    hub.push_fault("model-Q4_K_M.gguf", Fault::DropAfter(MB / 2));
    let tmp = tempfile::tempdir().unwrap();
    let r = pull(&manager(&hub, tmp.path()), "org/drop:Q4_K_M")
        .await
        .unwrap();
    assert_eq!(read(&r.path), q4.to_vec());
    assert_eq!(hub.content_gets(), 3, "two drops, then the rest");
    assert!(
        hub.bytes_served() <= q4.len() + MB + MB / 2,
        "resumed, not restarted: {}",
        hub.bytes_served()
    );
    assert_cache_sound(tmp.path(), "org/drop");
}

#[tokio::test]
async fn corrupted_bytes_fail_clearly_and_leave_nothing() {
    let hub = MockHub::start().await;
    let (q4, _) = gguf_repo(&hub, "org/corrupt");
    hub.push_fault("model-Q4_K_M.gguf", Fault::Corrupt);
    let tmp = tempfile::tempdir().unwrap();
    let m = manager(&hub, tmp.path());
    let e = pull(&m, "org/corrupt:Q4_K_M").await.unwrap_err();
    assert!(
        matches!(e, ModelError::ChecksumMismatch { ref file, .. } if file == "model-Q4_K_M.gguf"),
        "{e}"
    );
    assert!(e.to_string().contains("model-Q4_K_M.gguf"));
    let dir = repo_dir(tmp.path(), "org/corrupt");
    assert!(
        walk(&dir.join("blobs")).is_empty(),
        "bad data deleted: {:?}",
        walk(&dir.join("blobs"))
    );
    assert!(
        walk(&dir.join("snapshots")).is_empty(),
        "no snapshot link to bad data"
    );
    assert!(!m.is_cached(&spec("org/corrupt:Q4_K_M")));
    // The next pull (the fault is gone) succeeds.
    let r = pull(&m, "org/corrupt:Q4_K_M").await.unwrap();
    assert_eq!(read(&r.path), q4.to_vec());
    assert_cache_sound(tmp.path(), "org/corrupt");
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let hub = MockHub::start().await;
    let (q4, _) = gguf_repo(&hub, "org/flaky");
    for code in [500, 503, 502] {
        hub.push_fault("model-Q4_K_M.gguf", Fault::Status(code));
    }
    let tmp = tempfile::tempdir().unwrap();
    let r = pull(&manager(&hub, tmp.path()), "org/flaky:Q4_K_M")
        .await
        .unwrap();
    assert_eq!(read(&r.path), q4.to_vec());
    assert_eq!(hub.content_gets(), 4);
}

#[tokio::test]
async fn persistent_server_errors_give_up_with_nothing_cached() {
    let hub = MockHub::start().await;
    gguf_repo(&hub, "org/down");
    for _ in 0..10 {
        hub.push_fault("model-Q4_K_M.gguf", Fault::Status(500));
    }
    let tmp = tempfile::tempdir().unwrap();
    let m = manager(&hub, tmp.path());
    let e = pull(&m, "org/down:Q4_K_M").await.unwrap_err();
    assert!(matches!(e, ModelError::Network { attempts: 5, .. }), "{e}");
    assert!(e.to_string().contains("500"), "{e}");
    assert!(!m.is_cached(&spec("org/down:Q4_K_M")));
    assert_cache_sound(tmp.path(), "org/down");
}

#[tokio::test]
async fn slow_trickle_completes_with_progress() {
    let hub = MockHub::start().await;
    let (q4, _) = gguf_repo(&hub, "org/slow");
    hub.push_fault(
        "model-Q4_K_M.gguf",
        trickle(256 * 1024, Duration::from_millis(30)),
    );
    let tmp = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let r = manager(&hub, tmp.path())
        .pull(&spec("org/slow:Q4_K_M"), Some(tx), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(read(&r.path), q4.to_vec());
    let events = received(&mut rx);
    assert!(
        events.len() >= 4,
        "several progress events over a slow transfer: {}",
        events.len()
    );
    assert_progress_sound(&events, q4.len());
}

#[tokio::test]
async fn a_stalled_transfer_times_out_and_resumes() {
    let hub = MockHub::start().await;
    let (q4, _) = gguf_repo(&hub, "org/stall");
    hub.push_fault(
        "model-Q4_K_M.gguf",
        trickle(512 * 1024, Duration::from_secs(3)),
    );
    let tmp = tempfile::tempdir().unwrap();
    let m = manager_with(&hub, tmp.path(), |c| {
        c.read_timeout = Duration::from_millis(400)
    });
    let r = pull(&m, "org/stall:Q4_K_M").await.unwrap();
    assert_eq!(read(&r.path), q4.to_vec());
    assert_eq!(
        hub.content_gets(),
        2,
        "the stalled GET was abandoned and resumed"
    );
    assert!(hub.bytes_served() <= q4.len() + 512 * 1024);
}

#[tokio::test]
async fn a_server_ignoring_range_restarts_the_file() {
    let hub = MockHub::start().await;
    let (q4, _) = gguf_repo(&hub, "org/norange");
    hub.push_fault("model-Q4_K_M.gguf", Fault::DropAfter(MB));
    hub.push_fault("model-Q4_K_M.gguf", Fault::IgnoreRange);
    let tmp = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let r = manager(&hub, tmp.path())
        .pull(
            &spec("org/norange:Q4_K_M"),
            Some(tx),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(read(&r.path), q4.to_vec());
    let events = received(&mut rx);
    assert_progress_sound(&events, q4.len());
}

fn assert_progress_sound(events: &[Progress], total: u64) {
    assert!(!events.is_empty());
    for w in events.windows(2) {
        assert!(
            w[1].fraction >= w[0].fraction,
            "fraction went back: {} -> {}",
            w[0].fraction,
            w[1].fraction
        );
    }
    assert!(events.iter().all(|p| (0.0..=1.0).contains(&p.fraction)));
    let last = events.last().unwrap();
    assert_eq!(last.fraction, 1.0);
    assert_eq!(last.bytes_done, total);
    assert_eq!(last.bytes_total, total);
    assert_eq!(last.files_done, last.files_total);
    assert_eq!(
        events.iter().filter(|p| p.fraction == 1.0).count(),
        1,
        "1.0 only at the very end"
    );
}

#[tokio::test]
async fn progress_is_monotonic_and_reaches_one_over_several_files() {
    let hub = MockHub::start().await;
    hub.add_repo(
        "org/multi",
        COMMIT,
        vec![
            ("config.json", Content::Bytes(b"{}".to_vec().into()), false),
            (
                "model-00001-of-00002.safetensors",
                Content::generated(2 * MB, 5),
                true,
            ),
            (
                "model-00002-of-00002.safetensors",
                Content::generated(MB + 5, 6),
                true,
            ),
        ],
    );
    hub.push_fault(
        "model-00002-of-00002.safetensors",
        Fault::DropAfter(100_000),
    );
    let tmp = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    manager(&hub, tmp.path())
        .pull(&spec("org/multi"), Some(tx), CancellationToken::new())
        .await
        .unwrap();
    let mut events = Vec::new();
    while let Some(p) = rx.recv().await {
        events.push(p);
    }
    assert_progress_sound(&events, 2 + 3 * MB + 5);
    let files: std::collections::BTreeSet<_> = events.iter().map(|p| p.file.clone()).collect();
    assert!(files.contains("model-00001-of-00002.safetensors") && files.contains("config.json"));
    assert!(events
        .iter()
        .all(|p| p.file_bytes_done <= p.file_bytes_total));
}

#[tokio::test]
async fn cancel_then_resume_transfers_only_the_rest() {
    let hub = MockHub::start().await;
    let big = slow_one_file_repo(&hub, "org/cancel", "big-Q4_0.gguf", (8 * MB, 9), 15);
    let tmp = tempfile::tempdir().unwrap();
    let m = manager(&hub, tmp.path());
    let cancel = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let watcher = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                if p.fraction > 0.2 {
                    cancel.cancel();
                }
            }
        })
    };
    let e = m
        .pull(&spec("org/cancel:Q4_0"), Some(tx), cancel)
        .await
        .unwrap_err();
    watcher.await.unwrap();
    assert!(matches!(e, ModelError::Cancelled { .. }), "{e}");
    let sha = hub.sha256_of("org/cancel", "big-Q4_0.gguf");
    let dir = repo_dir(tmp.path(), "org/cancel");
    let partial = partial_blob(&hub, tmp.path(), "org/cancel", "big-Q4_0.gguf");
    let kept = std::fs::metadata(&partial)
        .expect("partial data kept")
        .len();
    assert!(kept > 0 && kept < big.len(), "kept {kept}");
    assert!(
        !dir.join("blobs").join(&sha).exists(),
        "nothing half-written appears as a blob"
    );
    assert!(
        walk(&dir.join("snapshots")).is_empty(),
        "nothing half-written appears in a snapshot"
    );
    assert_eq!(
        &std::fs::read(&partial).unwrap()[..],
        &big.to_vec()[..kept as usize],
        "the partial data is a true prefix"
    );

    // Let the mock notice the closed connection before counting the resumed transfer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    hub.reset_counters();
    let r = pull(&m, "org/cancel:Q4_0").await.unwrap();
    assert_eq!(
        hub.bytes_served(),
        big.len() - kept,
        "only the rest was transferred"
    );
    assert_eq!(r.downloaded_bytes, big.len() - kept);
    assert_eq!(read(&r.path), big.to_vec());
    assert_cache_sound(tmp.path(), "org/cancel");
}

#[tokio::test]
async fn dropping_the_pull_future_keeps_partial_data_for_a_new_process() {
    let hub = MockHub::start().await;
    let big = slow_one_file_repo(&hub, "org/dropfut", "m-Q8_0.gguf", (6 * MB, 10), 10);
    let tmp = tempfile::tempdir().unwrap();
    let partial = partial_blob(&hub, tmp.path(), "org/dropfut", "m-Q8_0.gguf");
    {
        let m = manager(&hub, tmp.path());
        let s = spec("org/dropfut:Q8_0");
        let fut = m.pull(&s, None, CancellationToken::new());
        let timed = tokio::time::timeout(Duration::from_millis(300), fut).await;
        assert!(timed.is_err(), "still downloading when dropped");
    }
    // The writer thread flushes after the future is dropped.
    let mut kept = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if now > 0 && now == kept {
            break;
        }
        kept = now;
    }
    assert!(kept > 0, "partial data kept");
    // A fresh manager (a new process) resumes from the partial file.
    hub.reset_counters();
    let r = pull(&manager(&hub, tmp.path()), "org/dropfut:Q8_0")
        .await
        .unwrap();
    assert_eq!(hub.bytes_served(), big.len() - kept);
    assert_eq!(read(&r.path), big.to_vec());
}

#[tokio::test]
async fn resume_from_a_partial_file_left_by_an_earlier_process() {
    let hub = MockHub::start().await;
    let (q4, _) = gguf_repo(&hub, "org/restart");
    let tmp = tempfile::tempdir().unwrap();
    let half = q4.len() / 2;
    let partial = partial_blob(&hub, tmp.path(), "org/restart", "model-Q4_K_M.gguf");
    write_partial(&partial, &q4.to_vec()[..half as usize]);
    let r = pull(&manager(&hub, tmp.path()), "org/restart:Q4_K_M")
        .await
        .unwrap();
    assert_eq!(hub.bytes_served(), q4.len() - half);
    assert_eq!(read(&r.path), q4.to_vec());
}

#[tokio::test]
async fn a_bad_partial_file_is_caught_by_the_hash() {
    let hub = MockHub::start().await;
    let (q4, _) = gguf_repo(&hub, "org/badpartial");
    let tmp = tempfile::tempdir().unwrap();
    let partial = partial_blob(&hub, tmp.path(), "org/badpartial", "model-Q4_K_M.gguf");
    write_partial(&partial, &vec![0u8; MB as usize]);
    let blobs = partial.parent().unwrap();
    let m = manager(&hub, tmp.path());
    let e = pull(&m, "org/badpartial:Q4_K_M").await.unwrap_err();
    assert!(matches!(e, ModelError::ChecksumMismatch { .. }), "{e}");
    assert!(walk(blobs).is_empty());
    let r = pull(&m, "org/badpartial:Q4_K_M").await.unwrap();
    assert_eq!(read(&r.path), q4.to_vec());
}

#[tokio::test]
async fn missing_repo_file_and_auth_fail_at_once() {
    let hub = MockHub::start().await;
    gguf_repo(&hub, "org/private");
    let tmp = tempfile::tempdir().unwrap();
    let m = manager(&hub, tmp.path());

    let e = pull(&m, "org/nope").await.unwrap_err();
    assert!(
        matches!(e, ModelError::RepoNotFound { ref repo, .. } if repo == "org/nope"),
        "{e}"
    );
    assert!(e.to_string().contains("HF_TOKEN"), "says what to do: {e}");

    let e = pull(&m, "hf://org/private/missing.gguf").await.unwrap_err();
    assert!(
        matches!(e, ModelError::FileNotFound { ref file, .. } if file == "missing.gguf"),
        "{e}"
    );

    let e = pull(&m, "org/private:Q2_K").await.unwrap_err();
    assert!(
        e.to_string().contains("Q4_K_M, Q8_0"),
        "lists the quants there are: {e}"
    );

    let e = pull(&m, "org/private@v9").await.unwrap_err();
    assert!(matches!(e, ModelError::RevisionNotFound { .. }), "{e}");

    hub.require_token(Some("secret"));
    let e = pull(&m, "org/private:Q4_K_M").await.unwrap_err();
    assert!(
        matches!(e, ModelError::Unauthorized { status: 401, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("HF_TOKEN"), "{e}");
    let e = pull(&m, "hf://org/private/model-Q4_K_M.gguf")
        .await
        .unwrap_err();
    assert!(matches!(e, ModelError::Unauthorized { .. }), "{e}");
    // Failing at once: one request each, no retries.
    let heads = hub
        .requests()
        .iter()
        .filter(|r| r.starts_with("HEAD"))
        .count();
    assert_eq!(heads, 2, "{:?}", hub.requests());
    assert!(
        m.list().unwrap().iter().all(|r| r.revisions.is_empty()),
        "nothing cached"
    );

    let m = manager_with(&hub, tmp.path(), |c| c.token = Some("secret".into()));
    let r = pull(&m, "org/private:Q4_K_M").await;
    assert!(r.is_ok(), "{r:?}");
    // The token goes to the hub, never to the CDN (both are this mock here, but the CDN path
    // does not check it; the token test above shows the hub does).
}

#[tokio::test]
async fn resolve_is_cache_first() {
    let hub = MockHub::start().await;
    let (q4, _) = gguf_repo(&hub, "org/cachefirst");
    let tmp = tempfile::tempdir().unwrap();
    let first = manager(&hub, tmp.path())
        .resolve(&spec("org/cachefirst:Q4_K_M"))
        .await
        .unwrap();
    assert_eq!(first.downloaded_bytes, q4.len());
    hub.reset_counters();
    let again = manager(&hub, tmp.path())
        .resolve(&spec("org/cachefirst:Q4_K_M"))
        .await
        .unwrap();
    assert_eq!(again.path, first.path);
    assert_eq!(again.downloaded_bytes, 0);
    assert!(
        hub.requests().is_empty(),
        "no request for a cached model: {:?}",
        hub.requests()
    );
    // A pull checks the hub (HEAD) but transfers nothing.
    let pulled = pull(&manager(&hub, tmp.path()), "org/cachefirst:Q4_K_M")
        .await
        .unwrap();
    assert_eq!(pulled.downloaded_bytes, 0);
    assert_eq!(hub.content_gets(), 0);
}

#[tokio::test]
async fn local_paths_resolve_without_the_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("m.gguf");
    std::fs::write(&file, b"GGUF").unwrap();
    let m = ModelManager::new(ManagerConfig::new(tmp.path().join("cache"))).unwrap();
    let r = m.resolve(&spec(file.to_str().unwrap())).await.unwrap();
    assert_eq!((r.format, r.path.clone()), (ModelFormat::Gguf, file));
    let e = m.resolve(&spec("/no/such/model.gguf")).await.unwrap_err();
    assert!(matches!(e, ModelError::LocalPath { .. }), "{e}");
    let e = m
        .resolve(&spec(tmp.path().to_str().unwrap()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("without .safetensors"), "{e}");
}
