//! A hostile hub (or `HF_ENDPOINT` mirror) and hostile specs cannot make a pull touch anything
//! outside the cache: each unsafe commit, revision, file name, etag or symlink is refused with
//! a clear error (or ignored, for what is already on disk), and a sentinel file outside the
//! cache root survives untouched.

#[path = "support/hf_mock.rs"]
mod hf_mock;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hf_mock::{Content, MockHub};
use llmlocal::models::{CancellationToken, ModelError, ModelManager, ModelSpec};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const SENTINEL: &[u8] = b"precious data outside the cache";

/// A temp folder with the cache root at `hub/` and, outside it, a sentinel file at
/// `x/model.gguf`: where `snapshots/../../../x/model.gguf` lands.
struct Scene {
    tmp: tempfile::TempDir,
    before: BTreeMap<PathBuf, Vec<u8>>,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("hub")).unwrap();
        std::fs::create_dir_all(tmp.path().join("x")).unwrap();
        std::fs::write(tmp.path().join("x/model.gguf"), SENTINEL).unwrap();
        // llmlocal's state folder beside the cache (`llmlocal/hub`), made up front so that
        // only its inside is left out of the comparison.
        std::fs::create_dir_all(tmp.path().join("llmlocal/hub")).unwrap();
        let before = outside(tmp.path());
        Scene { tmp, before }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("hub")
    }

    fn manager(&self, hub: &MockHub) -> ModelManager {
        ModelManager::new(hub.manager_config(&self.root())).unwrap()
    }

    /// Nothing outside the cache root (and llmlocal's own state folder) was created, changed,
    /// replaced by a link or deleted.
    fn assert_outside_untouched(&self) {
        let sentinel = self.tmp.path().join("x/model.gguf");
        assert!(
            !sentinel
                .symlink_metadata()
                .unwrap()
                .file_type()
                .is_symlink(),
            "the sentinel was replaced by a link"
        );
        assert_eq!(std::fs::read(&sentinel).unwrap(), SENTINEL);
        assert_eq!(outside(self.tmp.path()), self.before);
    }
}

/// Every entry under `dir` except the cache root `hub/` and llmlocal's state `llmlocal/hub/`:
/// path -> contents (links as `link:<target>`, folders as empty).
fn outside(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            if rel == Path::new("hub") || rel == Path::new("llmlocal/hub") {
                continue;
            }
            let meta = p.symlink_metadata().unwrap();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.insert(rel, format!("link:{}", target.display()).into_bytes());
            } else if meta.is_dir() {
                out.insert(rel, Vec::new());
                walk(base, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn one_file_repo(hub: &MockHub, repo: &str, commit: &str, file: &str) {
    hub.add_repo(
        repo,
        commit,
        vec![(file, Content::generated(4096 + 3, 7), true)],
    );
}

async fn pull(m: &ModelManager, spec: &str) -> Result<llmlocal::models::ResolvedModel, ModelError> {
    let spec = ModelSpec::parse(spec)?;
    m.pull(&spec, None, CancellationToken::new()).await
}

fn assert_unsafe(result: Result<impl std::fmt::Debug, ModelError>, what: &str, value: &str) {
    match result {
        Err(ModelError::UnsafeValue {
            what: w, value: v, ..
        }) => {
            assert!(w.contains(what), "refused {w}, expected {what}");
            assert_eq!(v, value);
        }
        other => panic!("expected an unsafe {what} `{value}` to be refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_header_with_dot_dot_is_refused() {
    let hub = MockHub::start().await;
    let scene = Scene::new();
    let hostile = "../../../x";
    // The mirror lies in the HEAD of the file only (no listing is asked for a named file).
    one_file_repo(&hub, "org/m", hostile, "model.gguf");
    let err = pull(&scene.manager(&hub), "org/m:model.gguf").await;
    let shown = format!("{}", err.as_ref().unwrap_err());
    assert!(
        shown.contains("X-Repo-Commit") && shown.contains("40"),
        "{shown}"
    );
    assert_unsafe(err, "commit", hostile);
    scene.assert_outside_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_with_a_bad_sha_or_file_name_is_refused() {
    let hub = MockHub::start().await;
    let scene = Scene::new();
    let m = scene.manager(&hub);
    one_file_repo(&hub, "org/sha", "../../../x", "model-Q4_K_M.gguf");
    assert_unsafe(pull(&m, "org/sha").await, "sha", "../../../x");
    for name in [
        "../../../x/model.gguf",
        "/abs/model.gguf",
        "a\\..\\..\\model.gguf",
        "a//model.gguf",
    ] {
        one_file_repo(&hub, "org/files", COMMIT, name);
        assert_unsafe(pull(&m, "org/files").await, "rfilename", name);
    }
    scene.assert_outside_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_etag_is_refused() {
    let hub = MockHub::start().await;
    let scene = Scene::new();
    one_file_repo(&hub, "org/etag", COMMIT, "model.gguf");
    hub.override_header("x-linked-etag", "\"../../../../x/model.gguf\"");
    let err = pull(&scene.manager(&hub), "org/etag:model.gguf").await;
    assert_unsafe(err, "etag", "../../../../x/model.gguf");
    scene.assert_outside_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_revisions_and_file_names_in_specs_are_refused() {
    let hub = MockHub::start().await;
    let scene = Scene::new();
    one_file_repo(&hub, "org/m", COMMIT, "model.gguf");
    let m = scene.manager(&hub);
    for spec in [
        "org/m@../../x",
        "org/m@/abs",
        "org/m@a//b",
        "org/m@refs/../../x",
        "org/m:../../../x/model.gguf",
        "hf://org/m/a/../../model.gguf",
    ] {
        match pull(&m, spec).await {
            Err(ModelError::InvalidSpec { .. }) => {}
            other => panic!("{spec}: expected an invalid spec, got {other:?}"),
        }
    }
    let selector = llmlocal::models::FileSelector::File("model.gguf".into());
    assert!(ModelSpec::hugging_face("org/m", Some("../../x"), selector).is_err());
    let bad_file = llmlocal::models::FileSelector::File("../x/model.gguf".into());
    assert!(ModelSpec::hugging_face("org/m", None, bad_file).is_err());
    // The cache layer refuses them too, whoever calls it.
    let cache = m.cache();
    assert_unsafe(
        cache.write_ref("org/m", "../../x", COMMIT),
        "revision",
        "../../x",
    );
    assert_unsafe(
        cache.write_ref("org/m", "main", "../../x"),
        "commit",
        "../../x",
    );
    assert_unsafe(
        cache.link_snapshot("org/m", COMMIT, "../../../x/model.gguf", "abc"),
        "file name",
        "../../../x/model.gguf",
    );
    scene.assert_outside_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_refs_and_links_on_disk_are_not_used() {
    let hub = MockHub::start().await;
    let scene = Scene::new();
    let content = Content::generated(4096 + 3, 7);
    hub.add_repo("org/m", COMMIT, vec![("model.gguf", content.clone(), true)]);
    let m = scene.manager(&hub);
    let repo_dir = scene.root().join("models--org--m");
    // A ref naming a path instead of a commit, and a snapshot link into the sentinel's folder.
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), "../../../x").unwrap();
    let snap = repo_dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    assert!(m.cache().resolve_commit("org/m", "main").is_none());
    std::fs::write(repo_dir.join("refs/main"), COMMIT).unwrap();
    std::os::unix::fs::symlink(
        scene.tmp.path().join("x/model.gguf"),
        snap.join("model.gguf"),
    )
    .unwrap();
    assert!(m
        .cache()
        .cached_file("org/m", "main", "model.gguf")
        .is_none());
    // The pull fetches the real file and replaces the link, not its target.
    let r = pull(&m, "org/m:model.gguf").await.unwrap();
    assert_eq!(std::fs::read(&r.path).unwrap(), content.to_vec());
    let target = std::fs::read_link(snap.join("model.gguf")).unwrap();
    assert!(target.starts_with("../../blobs"), "{target:?}");
    scene.assert_outside_untouched();
}
