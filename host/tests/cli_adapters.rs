//! `llmlocal adapter pull / list / rm` through the real binary, on private folders, offline.

use std::process::{Command, Output};

fn llmlocal(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmlocal"))
        .args(args)
        .env("LLMLOCAL_ADAPTERS_DIR", dir.join("adapters"))
        .env("HF_HUB_CACHE", dir.join("hub"))
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HOME")
        .output()
        .expect("run llmlocal")
}

#[test]
fn local_fixture_adapter_is_checked_against_its_base() {
    let fixtures = llmlocal_fixtures::ensure_default().expect("fixtures");
    let dir = tempfile::tempdir().expect("tempdir");
    let lora = fixtures.lora_dir.to_string_lossy().into_owned();
    let base = fixtures.hf_dir.to_string_lossy().into_owned();
    let pulled = llmlocal(dir.path(), &["adapter", "pull", &lora, "--base", &base]);
    let out = String::from_utf8_lossy(&pulled.stdout);
    assert!(pulled.status.success(), "adapter pull failed: {pulled:?}");
    assert!(out.contains("compatible"), "no compatibility line:\n{out}");

    // The same adapter against a model of other shapes is refused with the reason.
    let Some(stories) = stories_hf() else {
        return;
    };
    let stories = stories.to_string_lossy().into_owned();
    let refused = llmlocal(dir.path(), &["adapter", "pull", &lora, "--base", &stories]);
    assert!(
        !refused.status.success(),
        "a mismatched base must be refused"
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("does not fit") && err.contains("hidden size"),
        "the refusal should say why: {err}"
    );
}

#[test]
fn list_on_an_empty_cache_and_rm_of_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listed = llmlocal(dir.path(), &["adapter", "list"]);
    assert!(listed.status.success(), "adapter list failed: {listed:?}");
    let missing = llmlocal(dir.path(), &["adapter", "pull", "./no/such/adapter"]);
    assert!(!missing.status.success());
    assert!(!String::from_utf8_lossy(&missing.stderr).is_empty());
}

fn stories_hf() -> Option<std::path::PathBuf> {
    llmlocal_fixtures::shared::model("stories260K/hf")
}
