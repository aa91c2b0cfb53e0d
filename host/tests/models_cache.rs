//! The hub-layout cache: list, size, is-cached, delete, clear, LRU eviction, offline mode.

#[path = "support/hf_mock.rs"]
mod hf_mock;

use std::path::Path;
use std::time::{Duration, SystemTime};

use hf_mock::{Content, MockHub};
use llmlocal::models::cli::format_table;
use llmlocal::models::{CancellationToken, ModelError, ModelManager, ModelSpec};

const MB: u64 = 1 << 20;

/// Three repos of 1, 2 and 3 MiB (+ a small README each), pulled.
async fn three_repos(hub: &MockHub, cache: &Path) -> ModelManager {
    for (i, name) in ["org/a", "org/b", "org/c"].iter().enumerate() {
        let commit = format!("{:040x}", i + 1);
        hub.add_repo(
            name,
            &commit,
            vec![
                (
                    "README.md",
                    Content::Bytes(format!("# {name}\n").into_bytes().into()),
                    false,
                ),
                (
                    "m-Q4_0.gguf",
                    Content::generated((i as u64 + 1) * MB, i as u64),
                    true,
                ),
            ],
        );
    }
    let m = ModelManager::new(hub.manager_config(cache)).unwrap();
    for name in ["org/a", "org/b", "org/c"] {
        let s = ModelSpec::parse(&format!("{name}:Q4_0")).unwrap();
        m.pull(&s, None, CancellationToken::new()).await.unwrap();
        let readme = ModelSpec::parse(&format!("hf://{name}/README.md")).unwrap();
        m.pull(&readme, None, CancellationToken::new())
            .await
            .unwrap();
    }
    m
}

fn readme_len(name: &str) -> u64 {
    format!("# {name}\n").len() as u64
}

#[tokio::test]
async fn lists_cached_repos_with_files_sizes_and_refs() {
    let hub = MockHub::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let m = three_repos(&hub, tmp.path()).await;
    let list = m.list().unwrap();
    assert_eq!(
        list.iter().map(|r| r.repo.as_str()).collect::<Vec<_>>(),
        ["org/a", "org/b", "org/c"]
    );
    let b = &list[1];
    assert_eq!(b.size_bytes, 2 * MB + readme_len("org/b"));
    assert_eq!(b.partial_bytes, 0);
    assert_eq!(b.revisions.len(), 1);
    assert_eq!(b.revisions[0].commit, format!("{:040x}", 2));
    assert_eq!(b.revisions[0].refs, vec!["main".to_string()]);
    let names: Vec<_> = b.revisions[0]
        .files
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(names, ["README.md", "m-Q4_0.gguf"]);
    assert!(b.last_used.is_some());
    let total: u64 = 6 * MB
        + ["org/a", "org/b", "org/c"]
            .iter()
            .map(|n| readme_len(n))
            .sum::<u64>();
    assert_eq!(m.cache().total_size().unwrap(), total);
    assert!(m.cache().is_cached("org/a", "main", Some("m-Q4_0.gguf")));
    assert!(!m.cache().is_cached("org/a", "main", Some("other.gguf")));
    assert!(!m.cache().is_cached("org/zzz", "main", None));

    let table = format_table(&list, SystemTime::now());
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("REPO") && lines[0].contains("LAST USED"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("org/b")
            && lines[2].contains("2.0 MiB")
            && lines[2].contains("main ("),
        "{table}"
    );
}

#[tokio::test]
async fn delete_and_clear() {
    let hub = MockHub::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let m = three_repos(&hub, tmp.path()).await;
    let freed = m.remove("org/b").unwrap();
    assert_eq!(freed, 2 * MB + readme_len("org/b"));
    assert!(!tmp.path().join("models--org--b").exists());
    assert_eq!(m.list().unwrap().len(), 2);
    let e = m.remove("org/b").unwrap_err();
    assert!(matches!(e, ModelError::NotInCache { .. }), "{e}");
    // Folders that are not model repos are left alone by clear().
    std::fs::create_dir_all(tmp.path().join("datasets--x--y")).unwrap();
    m.clear().unwrap();
    assert!(m.list().unwrap().is_empty());
    assert!(tmp.path().join("datasets--x--y").exists());
    assert_eq!(m.cache().total_size().unwrap(), 0);
}

#[tokio::test]
async fn evicts_least_recently_used_to_a_budget() {
    let hub = MockHub::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let m = three_repos(&hub, tmp.path()).await;
    let now = SystemTime::now();
    // Use order: c oldest, then a, then b most recent.
    m.cache().touch_at("org/c", now - Duration::from_secs(300));
    m.cache().touch_at("org/a", now - Duration::from_secs(200));
    m.cache().touch_at("org/b", now - Duration::from_secs(100));
    // A budget of 3.5 MiB: dropping c (3 MiB) leaves a + b = 3 MiB + readmes.
    let evicted = m.evict_to(3 * MB + MB / 2).unwrap();
    assert_eq!(evicted, ["org/c"]);
    // Resolving `a` makes it the most recent; a budget of 2.5 MiB then drops b, not a.
    m.resolve(&ModelSpec::parse("org/a:Q4_0").unwrap())
        .await
        .unwrap();
    let evicted = m.evict_to(2 * MB + MB / 2).unwrap();
    assert_eq!(evicted, ["org/b"]);
    assert_eq!(
        m.list()
            .unwrap()
            .iter()
            .map(|r| r.repo.clone())
            .collect::<Vec<_>>(),
        ["org/a"]
    );
    assert!(
        m.evict_to(u64::MAX).unwrap().is_empty(),
        "under budget: nothing to do"
    );
    assert_eq!(m.evict_to(0).unwrap(), ["org/a"]);
}

#[tokio::test]
async fn offline_mode_resolves_from_cache_and_names_missing_files() {
    let hub = MockHub::start().await;
    let tmp = tempfile::tempdir().unwrap();
    three_repos(&hub, tmp.path()).await;
    hub.reset_counters();
    let mut cfg = hub.manager_config(tmp.path());
    cfg.offline = true;
    let m = ModelManager::new(cfg).unwrap();
    let r = m
        .resolve(&ModelSpec::parse("org/a").unwrap())
        .await
        .unwrap();
    assert_eq!(
        r.picked.as_ref().and_then(|p| p.quant.as_deref()),
        Some("Q4_0"),
        "auto-pick among cached files"
    );
    let r2 = m
        .pull(
            &ModelSpec::parse("org/b:Q4_0").unwrap(),
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(r2.downloaded_bytes, 0);
    let e = m
        .resolve(&ModelSpec::parse("hf://org/a/weights.gguf").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ModelError::NotCachedOffline { ref file, .. } if file == "weights.gguf"),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("HF_HUB_OFFLINE") && msg.contains("weights.gguf") && msg.contains("org/a"),
        "{msg}"
    );
    let e = m
        .resolve(&ModelSpec::parse("org/zzz:Q8_0").unwrap())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Q8_0"), "{e}");
    assert!(
        hub.requests().is_empty(),
        "offline makes no request: {:?}",
        hub.requests()
    );
}

#[test]
fn truthy_values_match_huggingface_hub() {
    use llmlocal::models::is_truthy;
    for v in ["1", "true", "TRUE", "yes", "on"] {
        assert!(is_truthy(v), "{v}");
    }
    for v in ["0", "false", "", "no"] {
        assert!(!is_truthy(v), "{v}");
    }
}
