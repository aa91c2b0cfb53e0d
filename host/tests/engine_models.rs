//! Several models at once: LRU eviction under a memory limit, pinning, keep-alive, the
//! bounded queue per model.

mod server_support;

use futures_util::StreamExt;
use llmlocal::engine::{ErrorClass, Event, GenerationConfig, Prompt};
use server_support::{eventually, scripted_engine, scripted_settings};
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn names(engine: &llmlocal::engine::Engine) -> Vec<String> {
    let mut names: Vec<String> = engine.loaded().into_iter().map(|l| l.name).collect();
    names.sort();
    names
}

async fn ask(engine: &llmlocal::engine::Engine, model: &str) -> String {
    let stream = engine
        .generate(
            model,
            Prompt::Text("x".into()),
            GenerationConfig::greedy(10),
        )
        .await
        .expect("starts");
    stream.collect_text().await.expect("completes").0
}

#[tokio::test(flavor = "multi_thread")]
async fn least_recently_used_models_make_room_and_pins_stay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = scripted_settings(dir.path(), &[("a", "A"), ("b", "B"), ("c", "C")]);
    // Each scripted load is estimated at ~256 MiB (the KV allowance): two fit, three do not.
    settings.memory_limit = Some(600 * MIB);
    let engine = scripted_engine(settings);
    assert_eq!(ask(&engine, "a").await, "A");
    assert_eq!(ask(&engine, "b").await, "B");
    assert_eq!(names(&engine), ["a", "b"]);
    assert_eq!(ask(&engine, "c").await, "C");
    assert_eq!(names(&engine), ["b", "c"], "a was least recently used");
    assert_eq!(ask(&engine, "b").await, "B");
    assert!(engine.pin("b", true));
    assert_eq!(ask(&engine, "a").await, "A");
    assert_eq!(names(&engine), ["a", "b"], "c was least recently used");
    assert_eq!(ask(&engine, "c").await, "C");
    assert_eq!(names(&engine), ["b", "c"], "b is pinned, a goes");
    assert!(
        engine
            .loaded()
            .iter()
            .find(|l| l.name == "b")
            .expect("b")
            .pinned
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_that_cannot_fit_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = scripted_settings(dir.path(), &[("a", "A")]);
    settings.memory_limit = Some(100 * MIB);
    let engine = scripted_engine(settings);
    let err = engine
        .generate("a", Prompt::Text("x".into()), GenerationConfig::greedy(1))
        .await
        .expect_err("does not fit");
    assert_eq!(err.class(), ErrorClass::Unavailable);
    let message = err.to_string();
    assert!(
        message.contains("not enough memory") && message.contains("MiB"),
        "{message}"
    );
    assert!(engine.loaded().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn busy_models_are_not_evicted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = scripted_settings(dir.path(), &[("a", "A"), ("b", "B")]);
    settings.memory_limit = Some(400 * MIB);
    settings.context_length = Some(1 << 30);
    let engine = scripted_engine(settings);
    let config = GenerationConfig {
        ignore_eos: true,
        ..GenerationConfig::greedy(1 << 29)
    };
    let mut running = engine
        .generate("a", Prompt::Text("x".into()), config)
        .await
        .expect("starts");
    assert!(matches!(running.next().await, Some(Ok(Event::Text(_)))));
    let err = engine.load("b", None).await.expect_err("a is busy");
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
    drop(running);
    let freed = eventually(Duration::from_secs(10), || {
        engine.metrics().active_generations.get() == 0
    })
    .await;
    assert!(freed);
    engine
        .load("b", None)
        .await
        .expect("a is idle now and makes room");
    assert_eq!(names(&engine), ["b"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_models_unload_after_keep_alive_unless_pinned() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = scripted_settings(dir.path(), &[("a", "A"), ("p", "P")]);
    settings.keep_alive = Some(Duration::from_millis(200));
    settings.models.get_mut("p").expect("p").pinned = true;
    let engine = scripted_engine(settings);
    let _maintenance = engine.spawn_maintenance();
    assert_eq!(ask(&engine, "a").await, "A");
    assert_eq!(ask(&engine, "p").await, "P");
    assert_eq!(names(&engine), ["a", "p"]);
    let unloaded = eventually(Duration::from_secs(5), || names(&engine) == ["p"]).await;
    assert!(
        unloaded,
        "a unloads after its keep-alive, p is pinned: {:?}",
        names(&engine)
    );
    assert_eq!(ask(&engine, "a").await, "A", "it loads again on demand");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_refuses_and_frees_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = scripted_settings(dir.path(), &[("a", "0123456789")]);
    settings.parallel = Some(1);
    settings.queue_depth = 1;
    settings.context_length = Some(1 << 30);
    let engine = scripted_engine(settings);
    let long = GenerationConfig {
        ignore_eos: true,
        ..GenerationConfig::greedy(1 << 29)
    };
    let mut first = engine
        .generate("a", Prompt::Text("x".into()), long)
        .await
        .expect("runs");
    assert!(matches!(first.next().await, Some(Ok(Event::Text(_)))));
    // The second waits in the queue (depth 1)...
    let waiting = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let s = engine
                .generate("a", Prompt::Text("x".into()), GenerationConfig::greedy(3))
                .await?;
            s.collect_text().await
        })
    };
    let queued = eventually(Duration::from_secs(5), || engine.loaded()[0].queued == 1).await;
    assert!(queued, "the second request waits");
    // ...and the third is refused.
    let err = engine
        .generate("a", Prompt::Text("x".into()), GenerationConfig::greedy(3))
        .await
        .expect_err("queue full");
    assert_eq!(err.class(), ErrorClass::Busy, "{err}");
    drop(first);
    let (text, _) = waiting
        .await
        .expect("task")
        .expect("the queued request runs");
    assert_eq!(text, "012");
}
