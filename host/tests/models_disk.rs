//! Disk space and cache hygiene around pulls: a pull larger than the free space fails before
//! downloading, a full disk (ENOSPC) deletes the partial file, a failed pull leaves no repo
//! folder without `snapshots/`, and llmlocal's own records live outside the cache, so
//! huggingface_hub's `scan_cache_dir` finds nothing to warn about.

#[path = "support/hf_mock.rs"]
mod hf_mock;

use std::path::{Path, PathBuf};
use std::process::Command;

use hf_mock::{Content, Fault, MockHub};
use llmlocal::models::{CancellationToken, ModelError, ModelManager, ModelSpec};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const EIB: u64 = 1 << 60;

fn repo_dir(root: &Path, repo: &str) -> PathBuf {
    root.join(format!("models--{}", repo.replace('/', "--")))
}

async fn pull(m: &ModelManager, spec: &str) -> Result<llmlocal::models::ResolvedModel, ModelError> {
    m.pull(&ModelSpec::parse(spec)?, None, CancellationToken::new())
        .await
}

fn small_repo(hub: &MockHub, repo: &str) -> Content {
    let content = Content::generated(64 * 1024 + 5, 3);
    hub.add_repo(repo, COMMIT, vec![("model.gguf", content.clone(), true)]);
    content
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_larger_than_the_free_space_fails_before_downloading() {
    let hub = MockHub::start().await;
    small_repo(&hub, "org/huge");
    let sha = "ab".repeat(32);
    hub.add_unhashed_lfs_file("org/huge", "huge.gguf", Content::generated(EIB, 1), &sha);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("hub");
    let m = ModelManager::new(hub.manager_config(&root)).unwrap();
    hub.reset_counters();
    let err = pull(&m, "org/huge:huge.gguf").await.unwrap_err();
    let shown = err.to_string();
    assert!(matches!(err, ModelError::NoSpace { .. }), "{shown}");
    assert!(
        shown.contains("needs 1048576.0 TiB") && shown.contains("free"),
        "{shown}"
    );
    assert_eq!(hub.content_gets(), 0, "nothing was downloaded");
    assert!(!repo_dir(&root, "org/huge").exists(), "no repo folder left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_deletes_the_partial_file() {
    // /dev/full answers every write with ENOSPC: the partial file is made a link to it.
    let full = Path::new("/dev/full");
    if !full.exists() {
        eprintln!("skipped: this system has no /dev/full to simulate a full disk");
        return;
    }
    let hub = MockHub::start().await;
    small_repo(&hub, "org/full");
    let sha = hub.sha256_of("org/full", "model.gguf");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("hub");
    let blobs = repo_dir(&root, "org/full").join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let partial = blobs.join(format!("{sha}.incomplete"));
    std::os::unix::fs::symlink(full, &partial).unwrap();
    let m = ModelManager::new(hub.manager_config(&root)).unwrap();
    let err = pull(&m, "org/full:model.gguf").await.unwrap_err();
    let shown = err.to_string();
    assert!(matches!(err, ModelError::DiskFull { .. }), "{shown}");
    assert!(
        shown.contains("disk is full") && shown.contains("deleted"),
        "{shown}"
    );
    assert!(
        partial.symlink_metadata().is_err(),
        "the partial file is left behind"
    );
    // The repo folder was there before: kept, with a valid layout.
    assert!(repo_dir(&root, "org/full").join("snapshots").is_dir());
    assert_scan_clean(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pull_leaves_no_repo_folder_without_snapshots() {
    let hub = MockHub::start().await;
    small_repo(&hub, "org/gone");
    small_repo(&hub, "org/partial");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("hub");
    let m = ModelManager::new(hub.manager_config(&root)).unwrap();
    pull(&m, "org/gone:model.gguf").await.unwrap();
    // A file the hub lists but cannot serve, in a repo never pulled: nothing is left.
    hub.push_fault("model.gguf", Fault::Status(404));
    let err = pull(&m, "org/partial:model.gguf").await.unwrap_err();
    assert!(matches!(err, ModelError::FileNotFound { .. }), "{err}");
    assert!(!repo_dir(&root, "org/partial").exists());
    // Partial data left by an earlier process (as older versions left it: no `snapshots/`)
    // is kept for a resume when the pull fails again, in a valid layout.
    small_repo(&hub, "org/resume");
    let sha = hub.sha256_of("org/resume", "model.gguf");
    let blobs = repo_dir(&root, "org/resume").join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let partial = blobs.join(format!("{sha}.incomplete"));
    std::fs::write(&partial, vec![0u8; 1000]).unwrap();
    hub.push_fault("model.gguf", Fault::Status(404));
    assert!(pull(&m, "org/resume:model.gguf").await.is_err());
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), 1000);
    assert!(repo_dir(&root, "org/resume").join("snapshots").is_dir());
    assert_scan_clean(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_records_live_outside_the_cache_and_old_ones_are_moved() {
    let hub = MockHub::start().await;
    small_repo(&hub, "org/m");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("hub");
    // Records an older version kept inside the cache.
    let legacy = root.join(".llmlocal");
    std::fs::create_dir_all(&legacy).unwrap();
    std::fs::write(
        legacy.join("last_used.json"),
        r#"{"last_used":{"org/old":1}}"#,
    )
    .unwrap();
    let m = ModelManager::new(hub.manager_config(&root)).unwrap();
    pull(&m, "org/m").await.unwrap();
    let state = tmp.path().join("llmlocal").join("hub");
    assert_eq!(m.cache().state_dir(), state);
    assert!(
        !legacy.exists(),
        "the old records folder is still in the cache"
    );
    let usage = std::fs::read_to_string(state.join("last_used.json")).unwrap();
    assert!(
        usage.contains("org/m") && usage.contains("org/old"),
        "{usage}"
    );
    assert!(state.join("manifests/models--org--m").is_dir());
    assert_scan_clean(&root);
}

/// huggingface_hub's `scan_cache_dir` on `root` reports no warnings (it warns about any folder
/// in the cache root that is not a valid repo, and about repos without `snapshots/`).
fn assert_scan_clean(root: &Path) {
    let script = "from huggingface_hub import scan_cache_dir\n\
                  info = scan_cache_dir()\n\
                  print(len(info.warnings))\n\
                  for w in info.warnings: print(w)";
    let out = tokio::task::block_in_place(|| {
        Command::new("python3")
            .args(["-c", script])
            .env("HF_HUB_CACHE", root)
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_DISABLE_TELEMETRY", "1")
            .output()
    })
    .expect("python3 with huggingface_hub is needed (pip install huggingface_hub)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().next(),
        Some("0"),
        "scan_cache_dir warns: {stdout}"
    );
}
