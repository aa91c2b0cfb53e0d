//! The `llmlocal` binary: `plugins` (table and JSON), `run`, and config errors.

mod common;

use std::{
    path::Path,
    process::{Command, Output},
};

/// The binary with a clean environment: no plugin path, config or log settings from the
/// developer's machine, and home/config/data dirs inside `home`.
fn llmlocal(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmlocal"));
    for var in [
        "LLMLOCAL_PLUGIN_PATH",
        "LLMLOCAL_CONFIG",
        "LLMLOCAL_DEFAULT_BACKEND",
        "LLMLOCAL_LOG",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"));
    cmd
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let output = cmd.output().expect("run llmlocal");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

fn plugins_with_one_refused() -> tempfile::TempDir {
    let dir = common::plugin_dir(&["scripted", "bad-major", "no-root-symbol"]);
    std::fs::write(dir.path().join(common::library_of("text")), "not a library").expect("write");
    dir
}

#[test]
fn plugins_lists_loaded_and_refused_with_reasons() {
    let home = tempfile::tempdir().expect("temp dir");
    let dir = plugins_with_one_refused();
    let (output, stdout, stderr) = run(llmlocal(home.path())
        .arg("plugins")
        .arg("--plugin-dir")
        .arg(dir.path()));
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let scripted_row = stdout
        .lines()
        .find(|l| l.contains(&common::library_of("scripted")))
        .unwrap_or_else(|| panic!("no scripted row in:\n{stdout}"));
    for cell in [
        "loaded",
        "scripted",
        "0.1.0",
        llmlocal::api::PLUGIN_API_VERSION,
        "cpu",
        "parallel=4",
    ] {
        assert!(
            scripted_row.contains(cell),
            "{cell:?} missing from {scripted_row:?}"
        );
    }
    for reason in [
        "built for plugin API 3.0.0",
        "exports no llmlocal root module",
        "not a loadable library",
    ] {
        assert!(
            stdout.contains(reason),
            "{reason:?} missing from:\n{stdout}"
        );
    }
    for crate_dir in ["bad-major", "no-root-symbol", "text"] {
        let file = common::library_of(crate_dir);
        let row = stdout.lines().find(|l| l.ends_with(&file));
        assert!(
            row.is_some_and(|r| r.starts_with("refused")),
            "{file} row:\n{stdout}"
        );
    }
    // Refusals are logged as warnings on stderr too.
    assert!(stderr.contains("WARN"), "{stderr}");
}

#[test]
fn plugins_json_has_every_library() {
    let home = tempfile::tempdir().expect("temp dir");
    let dir = plugins_with_one_refused();
    let (output, stdout, stderr) = run(llmlocal(home.path())
        .args(["plugins", "--json", "--plugin-dir"])
        .arg(dir.path()));
    assert!(output.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    // Only ours: <exe dir>/plugins may hold others on a developer's machine.
    let plugins: Vec<&serde_json::Value> = json["plugins"]
        .as_array()
        .expect("plugins array")
        .iter()
        .filter(|p| {
            p["path"]
                .as_str()
                .is_some_and(|path| Path::new(path).starts_with(dir.path()))
        })
        .collect();
    assert_eq!(plugins.len(), 4, "{stdout}");
    let by_file = |crate_dir: &str| {
        let file = common::library_of(crate_dir);
        plugins
            .iter()
            .find(|p| p["path"].as_str().is_some_and(|path| path.ends_with(&file)))
            .unwrap_or_else(|| panic!("{file} missing from {stdout}"))
    };
    let scripted = by_file("scripted");
    assert_eq!(scripted["status"], "loaded");
    assert_eq!(scripted["name"], "scripted");
    assert_eq!(scripted["api_version"], llmlocal::api::PLUGIN_API_VERSION);
    assert_eq!(scripted["devices"], serde_json::json!(["cpu"]));
    assert_eq!(scripted["capabilities"]["parallel_generations"], 4);
    assert!(scripted["reason"].is_null());
    let bad = by_file("bad-major");
    assert_eq!(bad["status"], "refused");
    assert!(
        bad["reason"].as_str().is_some_and(|r| r.contains("3.0.0")),
        "{bad}"
    );
    assert_eq!(by_file("text")["status"], "refused");
    let dirs = json["search_dirs"].as_array().expect("search_dirs");
    assert!(
        dirs.iter().any(|d| d.as_str() == dir.path().to_str()),
        "{stdout}"
    );
}

#[test]
fn run_streams_the_scripted_completion() {
    let home = tempfile::tempdir().expect("temp dir");
    let dir = common::plugin_dir(&["scripted"]);
    let model = common::write_script(dir.path(), "story.txt", "Once upon a time.");
    let (output, stdout, stderr) = run(llmlocal(home.path())
        .args([
            "run",
            "--backend",
            "scripted",
            "--temperature",
            "0",
            "--plugin-dir",
        ])
        .arg(dir.path())
        .arg(&model)
        .arg("Tell me a story"));
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout, "Once upon a time.\n");
    assert!(
        stderr.contains("17 generated") && stderr.contains("tok/s"),
        "{stderr}"
    );
    assert!(stderr.contains("finished: stop"), "{stderr}");

    let (output, stdout, _) = run(llmlocal(home.path())
        .args([
            "run",
            "--max-tokens",
            "4",
            "--temperature",
            "0",
            "--plugin-dir",
        ])
        .arg(dir.path())
        .arg(&model)
        .arg("x"));
    assert!(output.status.success());
    assert_eq!(stdout, "Once\n");
}

#[test]
fn run_with_an_unknown_backend_fails_with_advice() {
    let home = tempfile::tempdir().expect("temp dir");
    let dir = common::plugin_dir(&["scripted"]);
    let model = common::write_script(dir.path(), "story.txt", "x");
    let (output, _, stderr) = run(llmlocal(home.path())
        .args(["run", "--backend", "nonesuch", "--plugin-dir"])
        .arg(dir.path())
        .arg(&model)
        .arg("x"));
    assert!(!output.status.success());
    assert!(
        stderr.contains("no backend named `nonesuch`") && stderr.contains("scripted"),
        "{stderr}"
    );
}

#[test]
fn malformed_config_fails_naming_the_file_and_line() {
    let home = tempfile::tempdir().expect("temp dir");
    let config = home.path().join("bad.toml");
    std::fs::write(&config, "[plugins]\ndirs = \"not a list\n").expect("write");
    let (output, stdout, stderr) = run(llmlocal(home.path())
        .arg("--config")
        .arg(&config)
        .arg("plugins"));
    assert!(!output.status.success(), "{stdout}");
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");

    // The same file found through $LLMLOCAL_CONFIG.
    let (output, _, stderr) = run(llmlocal(home.path())
        .env("LLMLOCAL_CONFIG", &config)
        .arg("plugins"));
    assert!(!output.status.success());
    assert!(stderr.contains("bad.toml"), "{stderr}");
}

#[test]
fn config_plugin_dirs_and_default_backend_are_used() {
    let home = tempfile::tempdir().expect("temp dir");
    let dir = common::plugin_dir(&["scripted"]);
    let model = common::write_script(dir.path(), "story.txt", "Hi!");
    let config_dir = home.path().join("config").join("llmlocal");
    std::fs::create_dir_all(&config_dir).expect("mkdir");
    std::fs::write(
        config_dir.join("config.toml"),
        format!(
            "default_backend = \"scripted\"\n[plugins]\ndirs = [{:?}]\n",
            dir.path().display().to_string()
        ),
    )
    .expect("write");
    let (output, stdout, stderr) = run(llmlocal(home.path())
        .args(["run", "--temperature", "0"])
        .arg(&model)
        .arg("x"));
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout, "Hi!\n");

    let (output, _, stderr) = run(llmlocal(home.path())
        .env("LLMLOCAL_DEFAULT_BACKEND", "other")
        .arg("run")
        .arg(&model)
        .arg("x"));
    assert!(!output.status.success());
    assert!(stderr.contains("`other`"), "{stderr}");
}

#[test]
fn plugin_logs_reach_the_host_log_when_verbose() {
    let home = tempfile::tempdir().expect("temp dir");
    let dir = common::plugin_dir(&["scripted"]);
    let model = common::write_script(dir.path(), "story.txt", "Hi!");
    let run_with = |verbose: bool| {
        let mut cmd = llmlocal(home.path());
        if verbose {
            cmd.arg("-v");
        }
        let (output, _, stderr) = run(cmd
            .args(["run", "--plugin-dir"])
            .arg(dir.path())
            .arg(&model)
            .arg("x"));
        assert!(output.status.success(), "{stderr}");
        stderr
    };
    // The scripted plugin logs its load at info level, inside the plugin's own `tracing`.
    let verbose = run_with(true);
    assert!(
        verbose.contains("llmlocal::plugin") && verbose.contains("script bytes"),
        "{verbose}"
    );
    let quiet = run_with(false);
    assert!(!quiet.contains("script bytes"), "{quiet}");
}

#[test]
fn plugin_path_env_and_user_data_dir_are_searched_in_order() {
    let home = tempfile::tempdir().expect("temp dir");
    let from_env = common::plugin_dir(&["scripted"]);
    let data_dir = home.path().join("data").join("llmlocal").join("plugins");
    std::fs::create_dir_all(&data_dir).expect("mkdir");
    common::copy_plugins(&data_dir, &["panicking-generation"]);
    let (output, stdout, stderr) = run(llmlocal(home.path())
        .env("LLMLOCAL_PLUGIN_PATH", from_env.path())
        .args(["plugins", "--json"]));
    assert!(output.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    let dirs: Vec<&str> = json["search_dirs"]
        .as_array()
        .expect("search_dirs")
        .iter()
        .filter_map(|d| d.as_str())
        .collect();
    let position = |dir: &Path| dirs.iter().position(|d| Path::new(d) == dir);
    let (env_at, data_at) = (position(from_env.path()), position(&data_dir));
    assert!(env_at.is_some() && data_at.is_some(), "{dirs:?}");
    assert!(env_at < data_at, "{dirs:?}");
    let loaded: Vec<&str> = json["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter(|p| p["status"] == "loaded")
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        loaded.contains(&"scripted") && loaded.contains(&"panicking-generation"),
        "{stdout}"
    );
}

/// `serve` that must exit by itself: its status and stderr (killed after 30 s, which fails).
fn serve_exits(home: &Path, global: &[&str], args: &[&str]) -> (bool, String) {
    let mut child = llmlocal(home)
        .args(global)
        .args(["serve", "--bind", "127.0.0.1:0", "--no-chat-page"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn llmlocal serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve {args:?} started instead of refusing its settings");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stderr)
}

#[test]
fn serve_refuses_bad_sampling_defaults_and_chat_templates_naming_them() {
    let home = tempfile::tempdir().expect("temp dir");
    let config = home.path().join("c.toml");
    std::fs::write(&config, "[models.x]\npath = \"x.gguf\"\ntop_p = 3.0\n").expect("write");
    let config = config.to_string_lossy().to_string();
    for (global, args, named) in [
        (&[][..], &["--temp", "5"][..], "--temp 5"),
        (&[], &["--seed", "1", "--min-p", "2"], "--min-p 2"),
        (&[], &["--chat-template", "nope"], "--chat-template: `nope`"),
        (
            &[],
            &["--chat-template-file", "/nonexistent/t.jinja"],
            "--chat-template-file",
        ),
        (&["--config", config.as_str()], &[], "[models.x] top_p = 3"),
    ] {
        let (ok, stderr) = serve_exits(home.path(), global, args);
        assert!(!ok, "{args:?}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}
