//! `llmlocal pull / list / rm` through the real binary, on a private cache, offline.

use std::process::{Command, Output};

fn llmlocal(cache: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmlocal"))
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HOME")
        .output()
        .expect("run llmlocal")
}

fn write_cached_file(cache: &std::path::Path, repo_dir: &str, file: &str, bytes: &[u8]) {
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
    let cache = tempfile::tempdir().expect("tempdir");
    write_cached_file(
        cache.path(),
        "models--org--tiny",
        "tiny.Q8_0.gguf",
        &[7u8; 4096],
    );

    let listed = llmlocal(cache.path(), &["list"]);
    let out = String::from_utf8_lossy(&listed.stdout);
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
    let err = String::from_utf8_lossy(&again.stderr);
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
    let err = String::from_utf8_lossy(&pulled.stderr);
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
    assert!(!String::from_utf8_lossy(&pulled.stderr).is_empty());
}
