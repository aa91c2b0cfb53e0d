//! `llmlocal pull / list / rm` through the real binary, on a private cache: offline, with the
//! hub unreachable, and against a loopback mock of the hub.

#[path = "support/hf_mock.rs"]
mod hf_mock;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tempfile::TempDir;

/// `llmlocal ARGS` on the private `cache`.
fn command(cache: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_llmlocal"));
    command
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_HOME");
    command
}

/// `llmlocal` offline.
fn llmlocal(cache: &Path, args: &[&str]) -> Output {
    command(cache, args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run llmlocal")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A cache holding `org/tiny` with one file, `tiny.Q8_0.gguf`.
fn cache_with_tiny() -> TempDir {
    let cache = tempfile::tempdir().expect("tempdir");
    write_cached_file(
        cache.path(),
        "models--org--tiny",
        "tiny.Q8_0.gguf",
        &[7u8; 4096],
    );
    cache
}

fn write_cached_file(cache: &Path, repo_dir: &str, file: &str, bytes: &[u8]) {
    let repo = cache.join(repo_dir);
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("blobs")).expect("blobs");
    std::fs::create_dir_all(repo.join("refs")).expect("refs");
    std::fs::create_dir_all(repo.join("snapshots").join(commit)).expect("snapshots");
    std::fs::write(repo.join("refs/main"), commit).expect("ref");
    std::fs::write(repo.join("blobs/abc123"), bytes).expect("blob");
    std::os::unix::fs::symlink(
        "../../blobs/abc123",
        repo.join("snapshots").join(commit).join(file),
    )
    .expect("symlink");
}

#[test]
fn list_shows_cached_models_and_rm_deletes_them() {
    let cache = cache_with_tiny();

    let listed = llmlocal(cache.path(), &["list"]);
    let out = stdout(&listed);
    assert!(listed.status.success(), "list failed: {listed:?}");
    assert!(
        out.contains("org/tiny"),
        "list output lacks the repo:\n{out}"
    );

    let removed = llmlocal(cache.path(), &["rm", "org/tiny"]);
    assert!(removed.status.success(), "rm failed: {removed:?}");
    assert!(!cache.path().join("models--org--tiny").exists());

    let again = llmlocal(cache.path(), &["rm", "org/tiny"]);
    assert!(!again.status.success(), "removing a missing repo must fail");
    let err = stderr(&again);
    assert!(
        err.contains("org/tiny"),
        "the error should name the repo: {err}"
    );
}

#[test]
fn offline_pull_of_an_uncached_model_fails_clearly() {
    let cache = tempfile::tempdir().expect("tempdir");
    let pulled = llmlocal(cache.path(), &["pull", "org/missing:Q8_0"]);
    assert!(!pulled.status.success());
    let err = stderr(&pulled);
    assert!(
        err.to_lowercase().contains("offline"),
        "the error should say offline: {err}"
    );
}

#[test]
fn pull_rejects_a_malformed_spec() {
    let cache = tempfile::tempdir().expect("tempdir");
    let pulled = llmlocal(cache.path(), &["pull", "not a repo!"]);
    assert!(!pulled.status.success());
    assert!(!stderr(&pulled).is_empty());
}

/// `llmlocal` with the hub at `endpoint` (not offline).
fn llmlocal_online(cache: &Path, endpoint: &str, args: &[&str]) -> Output {
    command(cache, args)
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .output()
        .expect("run llmlocal")
}

#[test]
fn offline_pull_of_a_cached_model_succeeds_from_the_cache() {
    let cache = cache_with_tiny();
    let pulled = llmlocal(cache.path(), &["pull", "org/tiny:Q8_0"]);
    let out = stdout(&pulled);
    assert!(pulled.status.success(), "pull failed: {pulled:?}");
    assert!(
        out.contains("in the cache") && out.contains("HF_HUB_OFFLINE"),
        "says it used the cache and why:\n{out}"
    );
    assert!(out.contains("tiny.Q8_0.gguf"), "prints the path:\n{out}");
}

#[test]
fn pull_with_the_hub_unreachable_uses_the_cache_or_names_the_missing_file() {
    let cache = cache_with_tiny();
    // Nothing listens on port 1: the connection is refused at once.
    let hub = "http://127.0.0.1:1";
    let pulled = llmlocal_online(cache.path(), hub, &["pull", "org/tiny:Q8_0"]);
    let out = stdout(&pulled);
    assert!(pulled.status.success(), "pull failed: {pulled:?}");
    assert!(
        out.contains("in the cache") && out.contains("could not be reached"),
        "says the hub was unreachable and the cache was used:\n{out}"
    );

    let missing = llmlocal_online(
        cache.path(),
        hub,
        &["pull", "org/tiny", "--file", "tiny.Q4_K_M.gguf"],
    );
    assert!(!missing.status.success(), "a missing file cannot be pulled");
    let err = stderr(&missing);
    assert!(
        err.contains("tiny.Q4_K_M.gguf") && err.contains("llmlocal pull org/tiny"),
        "names the file and what to do: {err}"
    );
}

/// Two `llmlocal pull` processes fetching the same file at once from a slow hub: one
/// downloads, the other waits for the lock, and the cache ends with one verified blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_pull_processes_share_one_download() {
    use hf_mock::{Content, Fault, MockHub};
    const MB: u64 = 1 << 20;
    let hub = MockHub::start().await;
    let big = Content::generated(8 * MB + 9, 61);
    hub.add_repo(
        "org/race",
        "0123456789abcdef0123456789abcdef01234567",
        vec![("race-Q8_0.gguf", big.clone(), true)],
    );
    hub.push_fault(
        "race-Q8_0.gguf",
        Fault::Trickle {
            chunk: 256 * 1024,
            delay: Duration::from_millis(30),
        },
    );
    let cache = tempfile::tempdir().expect("tempdir");
    let sha = hub.sha256_of("org/race", "race-Q8_0.gguf");
    let partial = cache
        .path()
        .join("models--org--race/blobs")
        .join(format!("{sha}.incomplete"));
    let spawn = |cache: PathBuf, url: String| {
        std::thread::spawn(move || llmlocal_online(&cache, &url, &["pull", "org/race:Q8_0"]))
    };
    let first = spawn(cache.path().to_path_buf(), hub.url.clone());
    // Start the second once the first is writing.
    let started = std::time::Instant::now();
    while !partial.exists() && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(partial.exists(), "the first pull started downloading");
    let second = spawn(cache.path().to_path_buf(), hub.url.clone());
    let (first, second) = tokio::task::spawn_blocking(move || {
        (first.join().expect("first"), second.join().expect("second"))
    })
    .await
    .expect("join");
    for out in [&first, &second] {
        assert!(out.status.success(), "pull failed: {out:?}");
    }
    let waited = stderr(&second);
    assert!(
        waited.contains("another process is downloading"),
        "the second says it waits: {waited}"
    );
    assert_eq!(hub.bytes_served(), big.len(), "one download, not two");
    let blobs = cache.path().join("models--org--race/blobs");
    let names: Vec<String> = std::fs::read_dir(&blobs)
        .expect("blobs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![sha.clone()], "one blob, no partial file left");
    assert_eq!(std::fs::read(blobs.join(&sha)).expect("blob"), big.to_vec());
}
