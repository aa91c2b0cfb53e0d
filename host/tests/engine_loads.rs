//! Loads of different models run side by side; concurrent requests for one model that is not
//! loaded share one load.
//!
//! A slow load is made with a named pipe as the model file: the engine's load opens it (to
//! probe for a GGUF header) and blocks until the test opens the writing end, and stays
//! blocked until the test closes it. Before closing, the test renames a real scripted model
//! over the pipe's path, so the plugin's own read, which comes next, gets the script.
#![cfg(unix)]

mod server_support;

use llmlocal::engine::{Engine, GenerationConfig, ModelEntry, Prompt};
use server_support::{scripted_engine, scripted_settings, write_script};
use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

/// A model file that blocks its loader until released.
struct SlowModel {
    path: PathBuf,
    script: PathBuf,
}

impl SlowModel {
    fn new(dir: &Path, name: &str, script: &str) -> SlowModel {
        let path = dir.join(format!("{name}.txt"));
        let status = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("run mkfifo");
        assert!(status.success(), "mkfifo {}", path.display());
        let script = write_script(dir, &format!("{name}.script"), script);
        SlowModel { path, script }
    }

    /// Starts a thread that reports (on the returned channel) when a load has opened the
    /// model, then lets that load finish when `release` receives.
    fn hold(self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (opened_tx, opened_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            // Opens once the loader opens the pipe for reading.
            let writer = File::options()
                .write(true)
                .open(&self.path)
                .expect("open the pipe");
            let _ = opened_tx.send(());
            let _ = release_rx.recv();
            std::fs::rename(&self.script, &self.path).expect("replace the pipe");
            drop(writer); // the loader's read of the pipe ends
        });
        (opened_rx, release_tx)
    }
}

fn engine_with(dir: &Path, slow: &SlowModel) -> Engine {
    let mut settings = scripted_settings(dir, &[("fast", "F")]);
    settings
        .models
        .insert("slow".into(), ModelEntry::new(slow.path.to_string_lossy()));
    scripted_engine(settings)
}

/// A greedy answer; fails the test instead of hanging when a load never ends.
async fn ask(engine: &Engine, model: &str) -> String {
    let answer = async {
        engine
            .generate(
                model,
                Prompt::Text("x".into()),
                GenerationConfig::greedy(10),
            )
            .await
            .expect("starts")
            .collect_text()
            .await
            .expect("completes")
            .0
    };
    tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .unwrap_or_else(|_| panic!("`{model}` did not answer in 20 s"))
}

fn loads_of(engine: &Engine, model: &str) -> u64 {
    let metrics = engine.metrics().render();
    let prefix = format!("llmlocal_model_load_seconds_count{{model=\"{model}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|n| n.trim().parse().expect("a count"))
        .unwrap_or(0)
}

fn wait_opened(opened: &mpsc::Receiver<()>) {
    opened
        .recv_timeout(Duration::from_secs(20))
        .expect("the slow model's load started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_load_does_not_hold_up_other_models() {
    let dir = tempfile::tempdir().expect("temp dir");
    let slow = SlowModel::new(dir.path(), "slow", "S");
    let engine = engine_with(dir.path(), &slow);
    let (opened, release) = slow.hold();
    let slow_answer = tokio::spawn({
        let engine = engine.clone();
        async move { ask(&engine, "slow").await }
    });
    wait_opened(&opened);
    // `slow` is loading and cannot finish until released: `fast` loads and answers anyway.
    assert_eq!(
        ask(&engine, "fast").await,
        "F",
        "not held up by the slow load"
    );
    assert!(!slow_answer.is_finished(), "slow is still loading");
    assert_eq!(engine.loaded().len(), 1);
    release.send(()).expect("release");
    assert_eq!(slow_answer.await.expect("task"), "S");
    assert_eq!(
        (loads_of(&engine, "slow"), loads_of(&engine, "fast")),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_for_one_model_load_it_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let slow = SlowModel::new(dir.path(), "slow", "S");
    let engine = engine_with(dir.path(), &slow);
    let (opened, release) = slow.hold();
    let requests: Vec<_> = (0..3)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { ask(&engine, "slow").await })
        })
        .collect();
    wait_opened(&opened);
    // Give the other requests time to arrive while the first one loads.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(requests.iter().all(|r| !r.is_finished()));
    release.send(()).expect("release");
    for request in requests {
        assert_eq!(request.await.expect("task"), "S");
    }
    assert_eq!(
        loads_of(&engine, "slow"),
        1,
        "one load served every request"
    );
    assert_eq!(engine.loaded().len(), 1);
}
