//! A plugin that segfaults in-process (`--isolation in-process`) takes the process down, but
//! the log names the plugin and the process dies of the signal, so a supervisor sees a failure
//! and restarts it (issue 24, case 10). Process isolation: see isolation.rs.

mod common;

use std::process::Command;

#[cfg(target_os = "linux")]
#[test]
fn a_segfault_in_a_plugin_names_it_and_the_process_dies_of_the_signal() {
    use std::os::unix::process::ExitStatusExt;
    let home = tempfile::tempdir().expect("temp dir");
    let dir = common::plugin_dir(&["segfaulting-generation"]);
    let model = common::write_script(dir.path(), "story.txt", "Once upon a time.");
    let output = Command::new(env!("CARGO_BIN_EXE_llmlocal"))
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("XDG_DATA_HOME", home.path().join("data"))
        .env("XDG_CACHE_HOME", home.path().join("cache"))
        .args([
            "run",
            "--backend",
            "segfaulting-generation",
            "--temperature",
            "0",
            // A plugin outside the install's plugin dir runs in a worker by default.
            "--isolation",
            "in-process",
        ])
        .arg("--plugin-dir")
        .arg(dir.path())
        .arg(&model)
        .arg("Tell me a story")
        .output()
        .expect("run llmlocal");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.signal(),
        Some(11),
        "{:?}\n{stderr}",
        output.status
    );
    let library = dir
        .path()
        .join(common::library_of("segfaulting-generation"));
    for part in [
        "llmlocal: fatal signal SIGSEGV",
        "in the code of plugin `segfaulting-generation`",
        &std::fs::canonicalize(&library)
            .expect("library path")
            .display()
            .to_string(),
        "supervisor",
    ] {
        assert!(stderr.contains(part), "expected {part:?} in:\n{stderr}");
    }
}
