//! `host/examples/app.rs` (the library quick start) runs on the built-in stories260K: the test
//! compiles the example's own code and calls its `run`, so CI checks what the docs show.

#[path = "../examples/app.rs"]
#[allow(dead_code)] // the example's `main` is not called here
mod app;
mod server_support;

use llmlocal::{config::Config, engine::Engine, plugins::library_file_name};

#[test]
fn the_app_example_streams_cancels_reads_stats_and_unloads() {
    let home = tempfile::tempdir().expect("tempdir");
    // The only test in this binary: no other thread reads the environment yet.
    std::env::set_var("LLMLOCAL_EMBEDDED_DIR", home.path().join("embedded"));
    std::env::set_var("HF_HUB_CACHE", home.path().join("hub"));
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let plugins = home.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    let library = server_support::plugin_library("llama_cpp");
    std::fs::copy(&library, plugins.join(library_file_name("llama_cpp"))).expect("copy");

    let engine = Engine::from_config(&Config::default(), &[plugins]).expect("engine");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut out = Vec::new();
    let summary = runtime
        .block_on(app::run(&engine, "stories", &mut out))
        .expect("the example runs");
    let printed = String::from_utf8_lossy(&out);
    assert!(
        summary
            .text
            .starts_with(", there was a little girl named Lily. She loved to play outside"),
        "Karpathy's greedy story: {summary:?}"
    );
    assert!(
        printed.contains(&summary.text),
        "streamed to the writer: {printed}"
    );
    assert_eq!(summary.completion_tokens, 64, "{summary:?}");
    assert!(summary.tokens_per_second > 0.0, "{summary:?}");
    assert_eq!(summary.pieces_before_cancel, 3);
    assert_eq!(summary.unloaded, ["stories"], "{summary:?}");
    assert!(engine.loaded().is_empty(), "nothing stays loaded");
    assert!(engine.is_cached("stories"), "the built-in model is on disk");
}
