//! `bench --compare candle` end to end on stories260K: each backend in a child process of its
//! own per round, both on the same prompt tokens, tokens counted from what the backends
//! report. No timing is asserted (only that speeds were measured).

use serde_json::Value;
use std::{
    path::{Path, PathBuf},
    process::Command,
};

const PROMPT: u64 = 16;
const GENERATE: u64 = 8;
const ROUNDS: usize = 2;

/// The real plugins: $LLMLOCAL_PLUGIN_DIR_BUILT, else target/plugins (where xtask puts them).
fn plugin_dir() -> PathBuf {
    std::env::var_os("LLMLOCAL_PLUGIN_DIR_BUILT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // The bench binary is target/<profile>/bench.
            Path::new(env!("CARGO_BIN_EXE_bench"))
                .ancestors()
                .nth(2)
                .unwrap_or(Path::new("."))
                .join("plugins")
        })
}

/// Runs the comparison and returns its JSON and the table it printed.
fn compare_candle(json: &Path) -> (Value, String) {
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/stories260K/stories260K.gguf");
    let dir = plugin_dir();
    for name in ["llama_cpp", "candle"] {
        let library = dir.join(format!("libllmlocal_backend_{name}.so"));
        assert!(
            library.is_file(),
            "{} missing: set LLMLOCAL_PLUGIN_DIR_BUILT",
            library.display()
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "--compare",
            "candle",
            "--threads",
            "1",
            "--batch-size",
            "64",
        ])
        .args(["--prompt-tokens", &PROMPT.to_string()])
        .args(["--gen-tokens", &GENERATE.to_string()])
        .args(["--repeat", &ROUNDS.to_string(), "--runs-per-child", "1"])
        .arg("--model")
        .arg(&model)
        .arg("--plugin-dir")
        .arg(&dir)
        .arg("--json")
        .arg(json)
        .output()
        .expect("start the bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(json).expect("the JSON report");
    (serde_json::from_str(&text).expect("JSON"), stdout)
}

/// (fewest, most) as the report writes it: a two-element array.
fn range(value: &Value) -> (u64, u64) {
    let pair = value.as_array().expect("a (fewest, most) pair");
    (
        pair[0].as_u64().expect("count"),
        pair[1].as_u64().expect("count"),
    )
}

#[test]
fn compare_runs_each_backend_in_its_own_process_on_the_same_tokens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (report, table) = compare_candle(&dir.path().join("compare.json"));
    assert_eq!(report["baseline"], "llama-cpp");
    assert_eq!(report["backend"], "candle");
    for var in ["rayon_num_threads", "candle_num_threads", "omp_num_threads"] {
        assert_eq!(report[var], "1", "{var}");
    }
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    let mut pids = Vec::new();
    let mut prompts = Vec::new();
    for side in ["baseline_rounds", "backend_rounds"] {
        let measured = &row[side];
        // Every run counted the tokens asked for, as the backend reported them.
        assert_eq!(range(&measured["pp_tokens"]), (PROMPT, PROMPT), "{side}");
        assert_eq!(
            range(&measured["tg_tokens"]),
            (GENERATE, GENERATE),
            "{side}"
        );
        for series in ["pp", "tg"] {
            assert!(
                measured[series]["min"].as_f64().expect("speed") > 0.0,
                "{side} {series}"
            );
        }
        let rounds = measured["rounds"].as_array().expect("rounds");
        assert_eq!(rounds.len(), ROUNDS, "{side}");
        for round in rounds {
            pids.push(round["pid"].as_u64().expect("the child's pid"));
            prompts.push(round["prompt"].clone());
        }
    }
    // A fresh process per backend and round.
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 2 * ROUNDS, "{pids:?}");
    // Both backends ran the baseline's tokens.
    assert_eq!(prompts[0].as_array().map(Vec::len), Some(PROMPT as usize));
    assert!(prompts.iter().all(|p| p == &prompts[0]), "{prompts:?}");
    for key in ["prompt_ratio", "gen_ratio"] {
        assert!(row[key].as_f64().expect("ratio") > 0.0, "{key}");
    }
    assert!(row["gen_ratio_spread"]["max"].as_f64().expect("spread") > 0.0);
    assert!(
        table.contains("llama-cpp") && table.contains("candle / llama-cpp"),
        "{table}"
    );
}
