//! Model presets through the real binary: `llmlocal presets`, `pull NAME` against a loopback
//! Hugging Face hub, a near-miss name, and the built-in `stories` model through both backends.

#[path = "support/hf_mock.rs"]
mod hf_mock;
mod server_support;

use hf_mock::{Content, MockHub};
use llmlocal::models::{PresetSource, PRESETS, PRESETS_VERSION};
use llmlocal::plugins::library_file_name;
use std::path::Path;
use std::process::{Command, Output};

/// Karpathy's greedy continuation of "Once upon a time" (llama2.c doc/stories260K.md).
const STORY: &str = ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.";

/// `llmlocal ARGS` on a private cache (and a private folder for the embedded model).
fn command(home: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_llmlocal"));
    command
        .args(args)
        .env("HF_HUB_CACHE", home.join("hub"))
        .env("LLMLOCAL_EMBEDDED_DIR", home.join("embedded"))
        .env_remove("HF_HOME")
        .env_remove("HF_TOKEN")
        .env_remove("LLMLOCAL_PLUGIN_PATH")
        .env_remove("LLMLOCAL_CONFIG");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run llmlocal")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn presets_json_lists_the_versioned_table() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = run(&mut command(home.path(), &["presets", "--json"]));
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["version"], PRESETS_VERSION);
    let names: Vec<&str> = doc["presets"]
        .as_array()
        .expect("presets")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    for wanted in [
        "qwen3:0.6b",
        "llama3.2:1b",
        "gemma3:1b",
        "smollm2:135m",
        "nomic-embed-text",
        "stories",
    ] {
        assert!(names.contains(&wanted), "{wanted} in {names:?}");
    }
    let table = run(&mut command(home.path(), &["presets"]));
    assert!(text(&table.stdout).contains("qwen3:0.6b"), "{table:?}");
}

#[test]
fn a_near_miss_is_an_error_naming_the_close_presets() {
    let home = tempfile::tempdir().expect("tempdir");
    // Offline: the name must be refused before any hub request.
    let out = run(command(home.path(), &["pull", "qwen3:0.5b"]).env("HF_HUB_OFFLINE", "1"));
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("no model preset is named `qwen3:0.5b`") && err.contains("`qwen3:0.6b`"),
        "names the close preset: {err}"
    );
}

/// Every hub preset pulls its default file (and `NAME-QUANT` another one) from a loopback hub
/// that holds the repository with decoy quantizations beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hub_preset_pulls_its_file_from_the_loopback_hub() {
    let hub = MockHub::start().await;
    let mut cases = Vec::new();
    for (i, preset) in PRESETS.iter().enumerate() {
        let PresetSource::Hub {
            repo,
            default_quant,
            quants,
        } = &preset.source
        else {
            continue;
        };
        let mut files: Vec<(&str, Content, bool)> = quants
            .iter()
            .enumerate()
            .map(|(j, (_, file))| (*file, Content::generated(4096 + j as u64, i as u64), true))
            .collect();
        files.push(("decoy-IQ2_XS.gguf", Content::generated(100, 99), true));
        hub.add_repo(repo, &format!("{:040x}", i + 1), files);
        for (quant, file) in *quants {
            let name = if quant == default_quant {
                preset.name.to_string()
            } else {
                format!("{}-{}", preset.name, quant.to_ascii_lowercase())
            };
            cases.push((name, file.to_string()));
        }
    }
    assert!(cases.len() >= 7, "hub presets with their quants: {cases:?}");
    let url = hub.url.clone();
    tokio::task::spawn_blocking(move || {
        let home = tempfile::tempdir().expect("tempdir");
        for (name, file) in cases {
            let out = run(command(home.path(), &["pull", &name])
                .env("HF_ENDPOINT", &url)
                .env_remove("HF_HUB_OFFLINE"));
            assert!(out.status.success(), "pull {name}: {out:?}");
            let path = text(&out.stdout);
            assert!(
                path.trim_end().ends_with(&file),
                "`pull {name}` fetched {file}: {path}"
            );
        }
    })
    .await
    .expect("pulls");
}

/// `llmlocal run stories` prints Karpathy's greedy story through each real backend, from the
/// model built into the binary (no file beside it, no network).
#[test]
fn built_in_stories_tells_the_same_story_through_both_backends() {
    let home = tempfile::tempdir().expect("tempdir");
    let plugins = tempfile::tempdir().expect("tempdir");
    for name in ["llama_cpp", "candle"] {
        let library = server_support::plugin_library(name);
        std::fs::copy(&library, plugins.path().join(library_file_name(name))).expect("copy");
    }
    for backend in ["llama-cpp", "candle"] {
        let out = run(
            command(home.path(), &["run", "stories", "Once upon a time"])
                .arg("--plugin-dir")
                .arg(plugins.path())
                .args([
                    "--backend",
                    backend,
                    "--temperature",
                    "0",
                    "--max-tokens",
                    "40",
                ])
                .env("HF_HUB_OFFLINE", "1"),
        );
        assert!(out.status.success(), "{backend}: {out:?}");
        let story = text(&out.stdout);
        assert!(story.starts_with(STORY), "{backend} told: {story:?}");
    }
    assert!(
        home.path().join("embedded").read_dir().is_ok(),
        "the embedded model was written under LLMLOCAL_EMBEDDED_DIR"
    );
}

/// `llmlocal serve --model stories` answers an OpenAI completion with the built-in model.
#[test]
fn serve_with_the_stories_preset_answers() {
    use std::io::BufRead as _;
    let home = tempfile::tempdir().expect("tempdir");
    let plugins = tempfile::tempdir().expect("tempdir");
    let library = server_support::plugin_library("llama_cpp");
    std::fs::copy(
        &library,
        plugins.path().join(library_file_name("llama_cpp")),
    )
    .expect("copy");
    let mut child = command(
        home.path(),
        &["serve", "--bind", "127.0.0.1:0", "--model", "stories"],
    )
    .arg("--plugin-dir")
    .arg(plugins.path())
    .env("HF_HUB_OFFLINE", "1")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("start serve");
    // Our own child, killed by its handle whatever happens below.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("stdout");
    let _guard = Kill(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the listening line");
    let url = line
        .trim()
        .strip_prefix("llmlocal listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let body: serde_json::Value = runtime.block_on(async {
        server_support::client()
            .post(format!("{url}/v1/completions"))
            .json(
                &serde_json::json!({"model": "stories", "prompt": "Once upon a time",
                                      "max_tokens": 24, "temperature": 0}),
            )
            .send()
            .await
            .expect("POST")
            .json()
            .await
            .expect("JSON")
    });
    let text = body["choices"][0]["text"].as_str().unwrap_or_default();
    assert!(STORY.starts_with(text) && text.len() > 20, "{body}");
}
