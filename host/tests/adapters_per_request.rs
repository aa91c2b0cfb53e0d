//! Per-request LoRA adapters through the engine, the HTTP server (OpenAI and Ollama routes, real
//! clients on loopback) and `llmlocal run --adapter`, on the fixture model with llama.cpp (the
//! GGUF file; the engine converts the PEFT adapter and the model's one instance reads it at run
//! time) and candle (the HF folder; merged variant).
//!
//! The promise tested: requests with and without an adapter, running at the same time, each
//! get exactly what they get alone; an adapter that does not fit is a 400 naming what differs.

mod adapters_common;
mod server_support;

use adapters_common::{
    engine_settings, fixtures, generate, try_generate, CANDLE, LLAMA, MAX_TOKENS, PROMPT,
};
use futures_util::future::join_all;
use llmlocal::{
    adapters::{convert, AdapterConfig, AdapterManager},
    engine::{Engine, ErrorClass},
    server::ServerSettings,
};
use serde_json::{json, Value};
use server_support::{post, registry, TestServer};
use std::{path::Path, sync::Arc};

/// An engine over both plugins whose adapter cache (conversions) lives in `cache`.
fn engine(cache: &Path, open_specs: bool) -> Engine {
    let manager = AdapterManager::new(AdapterConfig::new(cache)).expect("adapter manager");
    Engine::new(
        engine_settings(open_specs),
        registry(&["llama_cpp", "candle"]),
        None,
    )
    .with_adapter_manager(Arc::new(manager))
}

/// The fixture LoRA as a PEFT folder: one spec for both backends (llama.cpp gets it converted).
fn lora_spec(scale: Option<f32>) -> String {
    let dir = fixtures().lora_dir.display().to_string();
    match scale {
        Some(scale) => format!("{dir}:{scale}"),
        None => dir,
    }
}

/// Alone: base then adapter; then both at once, three of each interleaved.
async fn check_concurrent(engine: &Engine, model: &str) -> (String, String) {
    let base = generate(engine, model, None).await;
    let adapted = generate(engine, model, Some(vec![lora_spec(None)])).await;
    eprintln!("{model}: base {base:?}\n{model}: with the adapter {adapted:?}");
    assert_ne!(base, adapted, "{model}: the adapter must change the output");
    let runs = (0..6).map(|i| {
        let adapters = (i % 2 == 1).then(|| vec![lora_spec(None)]);
        async move { (i, generate(engine, model, adapters).await) }
    });
    for (i, text) in join_all(runs).await {
        let alone = if i % 2 == 1 { &adapted } else { &base };
        assert_eq!(&text, alone, "{model}: concurrent request {i}");
    }
    (base, adapted)
}

fn loaded_names(engine: &Engine) -> Vec<String> {
    let mut names: Vec<String> = engine.loaded().into_iter().map(|l| l.name).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_engine_requests_with_and_without_an_adapter_get_their_own_output() {
    let cache = tempfile::tempdir().expect("tmp");
    let engine = engine(cache.path(), true);
    let llama = check_concurrent(&engine, LLAMA).await;
    let candle = check_concurrent(&engine, CANDLE).await;
    assert_eq!(llama, candle, "the backends agree on the f32 fixture");
    // The engine converted the PEFT adapter for llama.cpp into its cache.
    let converted = std::fs::read_dir(cache.path().join("converted"))
        .expect("conversion cache")
        .count();
    assert_eq!(converted, 1);

    // llama.cpp reads the adapter into its one loaded instance and switches scales per
    // generation; candle merges, so another scale is another instance.
    let before = loaded_names(&engine);
    assert_eq!(before.len(), 3, "{before:?}");
    assert_eq!(before.iter().filter(|n| n.starts_with(LLAMA)).count(), 1);
    let half = Some(vec![lora_spec(Some(0.5))]);
    let llama_half = generate(&engine, LLAMA, half.clone()).await;
    assert_eq!(loaded_names(&engine), before, "no new llama.cpp instance");
    let candle_half = generate(&engine, CANDLE, half).await;
    assert_eq!(loaded_names(&engine).len(), 4);
    assert_eq!(llama_half, candle_half, "the backends agree at scale 0.5");

    // Unloading a model unloads its adapter variants too.
    assert!(engine.unload(LLAMA));
    assert!(loaded_names(&engine).iter().all(|n| !n.starts_with(LLAMA)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_entry_can_configure_default_adapters_and_a_request_can_drop_them() {
    let cache = tempfile::tempdir().expect("tmp");
    let mut settings = engine_settings(false);
    settings.models.get_mut(LLAMA).expect("entry").adapters = vec![lora_spec(None)];
    let manager = AdapterManager::new(AdapterConfig::new(cache.path())).expect("manager");
    let engine = Engine::new(settings, registry(&["llama_cpp"]), None)
        .with_adapter_manager(Arc::new(manager));
    // Without open specs a request may not name a local adapter path...
    let err = try_generate(&engine, LLAMA, Some(vec![lora_spec(None)]))
        .await
        .expect_err("a local path from a request");
    assert_eq!(err.class(), ErrorClass::BadRequest);
    assert!(err.to_string().contains("local path"), "{err}");
    // ...but the configured one applies, and an empty list turns it off.
    let configured = generate(&engine, LLAMA, None).await;
    let none = generate(&engine, LLAMA, Some(Vec::new())).await;
    let open = self::engine(cache.path(), true);
    assert_eq!(
        configured,
        generate(&open, LLAMA, Some(vec![lora_spec(None)])).await
    );
    assert_eq!(none, generate(&open, LLAMA, None).await);
    assert_ne!(configured, none);
}

async fn openai_text(server: &TestServer, model: &str, adapters: Option<Vec<String>>) -> String {
    let mut body = json!({
        "model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0,
    });
    if let Some(adapters) = adapters {
        body["adapters"] = json!(adapters);
    }
    let (status, text) = post(server, "/v1/completions", body).await;
    assert_eq!(status, 200, "{text}");
    let value: Value = serde_json::from_str(&text).expect("JSON");
    value["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string()
}

async fn ollama_text(server: &TestServer, model: &str, adapters: Option<Vec<String>>) -> String {
    let mut body = json!({
        "model": model, "prompt": PROMPT, "raw": true, "stream": false,
        "options": {"num_predict": MAX_TOKENS, "temperature": 0},
    });
    if let Some(adapters) = adapters {
        body["adapters"] = json!(adapters);
    }
    let (status, text) = post(server, "/api/generate", body).await;
    assert_eq!(status, 200, "{text}");
    let value: Value = serde_json::from_str(&text).expect("JSON");
    value["response"].as_str().expect("response").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_http_requests_with_and_without_an_adapter_get_their_own_output() {
    let cache = tempfile::tempdir().expect("tmp");
    let engine = engine(cache.path(), true);
    let server = TestServer::start(engine.clone(), ServerSettings::default()).await;
    let with = || Some(vec![lora_spec(None)]);
    for model in [LLAMA, CANDLE] {
        let direct = (
            generate(&engine, model, None).await,
            generate(&engine, model, with()).await,
        );
        let alone = (
            openai_text(&server, model, None).await,
            openai_text(&server, model, with()).await,
        );
        assert_eq!(alone, direct, "{model}: HTTP equals the engine");
        assert_ne!(alone.0, alone.1, "{model}: the adapter changes the output");
        for round in 0..3 {
            let both = tokio::join!(
                openai_text(&server, model, None),
                openai_text(&server, model, with()),
                ollama_text(&server, model, None),
                ollama_text(&server, model, with()),
            );
            let expected = (
                alone.0.clone(),
                alone.1.clone(),
                alone.0.clone(),
                alone.1.clone(),
            );
            assert_eq!(both, expected, "{model}: concurrent round {round}");
        }
    }
}

/// The error message of a JSON error body in either protocol's shape.
fn error_message(body: &str) -> String {
    let value: Value = serde_json::from_str(body).expect("JSON error");
    match &value["error"] {
        Value::String(message) => message.clone(),
        other => other["message"].as_str().expect("message").to_string(),
    }
}

async fn refused(server: &TestServer, path: &str, model: &str, adapter: &str) -> String {
    let body = if path == "/api/generate" {
        json!({"model": model, "prompt": PROMPT, "stream": false, "adapters": [adapter]})
    } else {
        json!({"model": model, "prompt": PROMPT, "max_tokens": 4, "adapters": [adapter]})
    };
    let (status, text) = post(server, path, body).await;
    assert_eq!(status, 400, "{model} with {adapter} on {path}: {text}");
    error_message(&text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_adapter_that_does_not_fit_is_a_400_naming_what_differs() {
    let p = fixtures();
    let cache = tempfile::tempdir().expect("tmp");
    // A GGUF LoRA made for a qwen2 model of the same sizes...
    let mut qwen = adapters_common::base_hf();
    qwen.architecture = "qwen2".into();
    let qwen_lora = cache.path().join("qwen.gguf");
    convert::convert_to(&p.lora_dir, &qwen, &qwen_lora).expect("convert");
    // ...and a PEFT folder whose config claims another rank.
    let rank8 = cache.path().join("rank8");
    std::fs::create_dir(&rank8).expect("mkdir");
    for entry in std::fs::read_dir(&p.lora_dir).expect("lora dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), rank8.join(entry.file_name())).expect("copy");
    }
    let config = rank8.join("adapter_config.json");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("\"r\": 4", "\"r\": 8")).expect("write");

    let engine = engine(cache.path(), true);
    let server = TestServer::start(engine.clone(), ServerSettings::default()).await;
    for path in ["/v1/completions", "/api/generate"] {
        let qwen = qwen_lora.display().to_string();
        let message = refused(&server, path, LLAMA, &qwen).await;
        assert!(
            message.contains("architecture: the adapter is for `qwen2`, the base model is `llama`"),
            "{message}"
        );
        let message = refused(&server, path, CANDLE, &rank8.display().to_string()).await;
        assert!(
            message.contains("rank: adapter_config.json says r = 8"),
            "{message}"
        );
        let message = refused(&server, path, LLAMA, "gh:only-owner").await;
        assert!(message.contains("invalid adapter spec"), "{message}");
        let missing = cache.path().join("missing.gguf").display().to_string();
        let message = refused(&server, path, CANDLE, &missing).await;
        assert!(message.contains("missing.gguf"), "{message}");
    }
    // Nothing was loaded for the refused adapters.
    assert!(engine.loaded().iter().all(|l| !l.name.contains("+lora")));
    // A wrong type for the field is a 400 too.
    let (status, text) = post(
        &server,
        "/v1/completions",
        json!({"model": LLAMA, "prompt": PROMPT, "adapters": "not-a-list"}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_open_specs_refuses_local_adapter_paths_in_requests() {
    let cache = tempfile::tempdir().expect("tmp");
    let server = TestServer::start(engine(cache.path(), false), ServerSettings::default()).await;
    let message = refused(&server, "/v1/completions", LLAMA, &lora_spec(None)).await;
    assert!(message.contains("local path"), "{message}");
    assert!(message.contains("--allow-any-model"), "{message}");
}

/// `llmlocal run MODEL PROMPT --adapter SPEC` with only `plugin` in its plugin folder.
fn cli_run(home: &Path, plugin: &str, model: &Path, adapter: Option<&str>) -> String {
    let plugins = home.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    let library = server_support::plugin_library(plugin);
    let link = plugins.join(library.file_name().expect("file name"));
    if !link.exists() {
        std::os::unix::fs::symlink(&library, &link).expect("link plugin");
    }
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_llmlocal"));
    for var in [
        "LLMLOCAL_PLUGIN_PATH",
        "LLMLOCAL_CONFIG",
        "LLMLOCAL_DEFAULT_BACKEND",
    ] {
        command.env_remove(var);
    }
    command
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("LLMLOCAL_ADAPTERS_DIR", home.join("adapters"))
        .args(["run", "--temperature", "0", "--max-tokens"])
        .arg(MAX_TOKENS.to_string())
        .arg("--plugin-dir")
        .arg(&plugins)
        .arg(model)
        .arg(PROMPT);
    if let Some(adapter) = adapter {
        command.args(["--adapter", adapter]);
    }
    let output = command.output().expect("run llmlocal");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "llmlocal run failed: {stderr}");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    stdout
        .strip_suffix('\n')
        .expect("ends with a newline")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_run_with_an_adapter_differs_from_the_base_and_equals_the_engine() {
    let p = fixtures();
    let cache = tempfile::tempdir().expect("tmp");
    let engine = engine(cache.path(), true);
    for (model, plugin, path) in [
        (LLAMA, "llama_cpp", &p.gguf_f32),
        (CANDLE, "candle", &p.hf_dir),
    ] {
        let home = tempfile::tempdir().expect("home");
        let base = cli_run(home.path(), plugin, path, None);
        let adapted = cli_run(home.path(), plugin, path, Some(&lora_spec(None)));
        assert_ne!(base, adapted, "{model}: --adapter changes the output");
        assert_eq!(base, generate(&engine, model, None).await, "{model}: base");
        let with = Some(vec![lora_spec(None)]);
        assert_eq!(adapted, generate(&engine, model, with).await, "{model}");
    }
}
