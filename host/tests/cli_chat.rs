//! `llmlocal run MODEL` without a prompt: a chat over piped stdin, against the same
//! conversation run through the engine directly (llama.cpp plugin, greedy). The model is the
//! real tiny stories260K GGUF: the generated fixture model answers the same whatever the
//! prompt, which could not show that the second answer sees the first turn.

mod server_support;

use llmlocal::{
    engine::{ChatMessage, Engine, EngineSettings, GenerationConfig, ModelEntry, Prompt},
    plugins::{library_file_name, PluginRegistry},
};
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
};

const MAX_TOKENS: u32 = 24;

struct Setup {
    model: PathBuf,
    plugins: tempfile::TempDir,
    home: tempfile::TempDir,
}

/// A temp plugin folder holding only the built llama.cpp plugin.
fn llama_plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let library = server_support::plugin_library("llama_cpp");
    std::fs::copy(&library, dir.path().join(library_file_name("llama_cpp")))
        .expect("copy the llama.cpp plugin");
    dir
}

/// The real tiny model: the copy shipped in models/stories260K (so nothing skips on a fresh
/// clone).
fn setup() -> Option<Setup> {
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/stories260K/stories260K.gguf");
    assert!(
        model.is_file(),
        "{} is part of the repository",
        model.display()
    );
    Some(Setup {
        model,
        plugins: llama_plugin_dir(),
        home: tempfile::tempdir().expect("temp dir"),
    })
}

/// Runs `llmlocal run MODEL` (no prompt) with `input` piped to stdin; returns (stdout, stderr).
fn chat_cli(setup: &Setup, input: &str) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmlocal"));
    for var in [
        "LLMLOCAL_PLUGIN_PATH",
        "LLMLOCAL_CONFIG",
        "LLMLOCAL_DEFAULT_BACKEND",
    ] {
        cmd.env_remove(var);
    }
    let home = setup.home.path();
    let mut child = cmd
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .args(["run", "--backend", "llama-cpp", "--temperature", "0"])
        .args(["--max-tokens", &MAX_TOKENS.to_string(), "--plugin-dir"])
        .arg(setup.plugins.path())
        .arg(&setup.model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start llmlocal");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin); // EOF ends the chat
    let output = child.wait_with_output().expect("llmlocal ends");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// The same model through the engine API.
fn engine(setup: &Setup) -> Engine {
    let library = setup.plugins.path().join(library_file_name("llama_cpp"));
    let registry = Arc::new(PluginRegistry::load_files(&[library]));
    let mut settings = EngineSettings {
        open_specs: false,
        ..EngineSettings::default()
    };
    settings.models.insert(
        "m".into(),
        ModelEntry {
            backend: Some("llama-cpp".into()),
            ..ModelEntry::new(setup.model.to_string_lossy())
        },
    );
    Engine::new(settings, registry, None)
}

async fn reply(engine: &Engine, turns: &[(&str, &str)]) -> String {
    let messages = turns
        .iter()
        .map(|(role, text)| ChatMessage::new(*role, *text))
        .collect();
    let config = GenerationConfig {
        seed: Some(0),
        ..GenerationConfig::greedy(MAX_TOKENS)
    };
    let stream = engine
        .generate("m", Prompt::Chat(messages), config)
        .await
        .expect("generation starts");
    stream.collect_text().await.expect("generation ends").0
}

fn answers(stdout: &str, expected: &[&str]) -> String {
    let want: String = expected.iter().map(|a| format!("{a}\n")).collect();
    assert_eq!(stdout, want, "stdout holds exactly the streamed answers");
    want
}

fn stats_lines(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.contains(" generated, "))
        .count()
}

const FIRST: &str = "Once upon a time, there was a little girl";
const SECOND: &str = "The dog ran to the park";

#[tokio::test(flavor = "multi_thread")]
async fn piped_chat_answers_each_line_with_the_history() {
    let Some(setup) = setup() else { return };
    let engine = engine(&setup);
    let a1 = reply(&engine, &[("user", FIRST)]).await;
    let a2 = reply(
        &engine,
        &[("user", FIRST), ("assistant", &a1), ("user", SECOND)],
    )
    .await;
    let a2_alone = reply(&engine, &[("user", SECOND)]).await;
    assert!(!a1.is_empty() && !a2.is_empty());
    assert_ne!(
        a2, a2_alone,
        "the fixture model answers differently with history, so the check below means something"
    );
    let (stdout, stderr) = chat_cli(&setup, &format!("{FIRST}\n{SECOND}\n"));
    answers(&stdout, &[&a1, &a2]);
    assert_eq!(stats_lines(&stderr), 2, "{stderr}");
    // No prompt or banner when stdin is not a terminal.
    assert!(!stdout.contains(">>>"));
}

#[tokio::test(flavor = "multi_thread")]
async fn clear_resets_the_history_and_bye_ends_the_chat() {
    let Some(setup) = setup() else { return };
    let engine = engine(&setup);
    let a1 = reply(&engine, &[("user", FIRST)]).await;
    let a2_alone = reply(&engine, &[("user", SECOND)]).await;
    let input = format!("{FIRST}\n/clear\n\n{SECOND}\n/bye\n{FIRST}\n");
    let (stdout, stderr) = chat_cli(&setup, &input);
    answers(&stdout, &[&a1, &a2_alone]);
    assert!(stderr.contains("conversation cleared"), "{stderr}");
}

#[test]
fn a_model_that_cannot_load_fails_before_reading_input() {
    let setup = Setup {
        model: Path::new("/nonexistent/model.gguf").to_path_buf(),
        plugins: llama_plugin_dir(),
        home: tempfile::tempdir().expect("temp dir"),
    };
    let output = Command::new(env!("CARGO_BIN_EXE_llmlocal"))
        .env_remove("LLMLOCAL_PLUGIN_PATH")
        .env("HOME", setup.home.path())
        .args(["run", "--plugin-dir"])
        .arg(setup.plugins.path())
        .arg(&setup.model)
        .stdin(Stdio::null())
        .output()
        .expect("run llmlocal");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("/nonexistent/model.gguf"), "{stderr}");
}
