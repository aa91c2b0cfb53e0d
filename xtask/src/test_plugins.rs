//! `cargo xtask test-plugins`: the conformance suite against every in-tree plugin with its
//! default models (and once through a worker process), the loader against the broken test
//! plugins, and a table of results.

use crate::{
    build_plugins::{self, Built},
    fixtures::{self, Fixtures},
    process::describe,
    suite_child::{build_conformance, probe, run_plan, Expect, Plan},
    table::{self, Row},
    workspace::{backend_of, find, Workspace},
};
use anyhow::{bail, Context, Result};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The broken test plugins: each must be refused by the loader, except
/// panicking-generation, which may load but must then fail its generation checks.
const BROKEN: [&str; 6] = [
    "bad_major",
    "newer_minor",
    "duplicate_name",
    "panicking_ctor",
    "panicking_generation",
    "no_root_symbol",
];
/// Test plugins that load but break one rule of contract 2.0 on purpose, and the check of the
/// suite that must catch each (name, then text its failure message contains).
const RULE_BREAKERS: [(&str, &str, &str); 6] = [
    (
        "ignores_logit_bias",
        "logit_bias",
        "was banned with -inf but came out",
    ),
    ("wrong_logprobs", "logprobs match logits", "logprob"),
    (
        "breaks_grammar",
        "grammar output parses",
        "is not in the grammar's language",
    ),
    ("hanging_next", "greedy deterministic", "hung"),
    (
        "claims_prefix_cache",
        "prefix reuse",
        "reported 0 cached prompt tokens",
    ),
    (
        "batch_dependent_embeddings",
        "embeddings batch invariant",
        "differs from alone",
    ),
];
/// The suite's time limit per check for the hanging test plugin: short, since every check
/// that generates waits it out.
const HANG_CHECK_TIMEOUT: u64 = 3;
/// Greedy continuation of "w" in the fixture model is "xyz{|}~" then EOS.
const FIXTURE_EOS_PROMPT: &str = "w";
/// The scripted model replays its script then ends, whatever the prompt.
const SCRIPTED_EOS_PROMPT: &str = "Once upon a time";

/// `--plugin PATH [--model PATH]...`: the suite on one plugin, output straight through.
pub fn third_party(
    ws: &Workspace,
    plugin: &Path,
    models: &[PathBuf],
    eos_prompt: Option<&str>,
    device: Option<&str>,
) -> Result<()> {
    let exe = build_conformance(ws)?;
    let mut command = Command::new(&exe);
    command.arg("--plugin").arg(plugin);
    for model in models {
        command.arg("--model").arg(model);
    }
    if let Some(prompt) = eos_prompt {
        command.args(["--eos-prompt", prompt]);
    }
    if let Some(device) = device {
        command.args(["--device", device]);
    }
    let status = command
        .status()
        .with_context(|| format!("starting {}", exe.display()))?;
    if !status.success() {
        bail!("{} did not pass ({})", plugin.display(), describe(status));
    }
    Ok(())
}

pub fn in_tree(ws: &Workspace) -> Result<()> {
    let built = build_plugins::build(ws)?;
    let fx = fixtures::command(ws)?;
    let exe = build_conformance(ws)?;
    let mut rows: Vec<Row> = built.failed.iter().map(|p| not_built(p)).collect();
    let mut plans: Vec<Plan> = built
        .real
        .iter()
        .flat_map(|lib| real_plans(ws, lib, &fx))
        .collect();
    plans.extend(built.real.iter().filter_map(|lib| worker_plan(lib, &fx)));
    match find(&built.test, "scripted") {
        Some(lib) => plans.push(Plan {
            plugin: lib.clone(),
            model: Some(fx.scripted_model.clone()),
            eos_prompt: Some(SCRIPTED_EOS_PROMPT.into()),
            expect: Expect::Pass,
            check_timeout: None,
            in_worker: false,
        }),
        None => rows.push(missing("scripted")),
    }
    let (probe_rows, broken_plans) = broken(ws, &exe, &built, &fx)?;
    plans.extend(broken_plans);
    for (index, plan) in plans.iter().enumerate() {
        rows.push(run_plan(ws, &exe, plan, index)?);
    }
    rows.extend(probe_rows);
    table::print(&rows);
    let bad = rows.iter().filter(|r| !r.ok).count();
    if bad > 0 {
        bail!("{bad} row(s) of the table are not as expected");
    }
    println!("all plugins conform");
    Ok(())
}

/// The default models of each real backend; shared models are skipped with a note when
/// absent.
fn real_plans(ws: &Workspace, lib: &Path, fx: &Fixtures) -> Vec<Plan> {
    let stories = ws.shared_models().join("stories260K");
    let f = &fx.paths;
    // qwen3 (same designed greedy chain as the llama fixture): a second architecture.
    let qwen3_gguf = fx.qwen3.gguf(llmlocal_fixtures::GgufFormat::Q8_0);
    let (fixture_models, shared) = match backend_of(lib).as_str() {
        "llama_cpp" => (
            vec![f.gguf_f32.clone(), f.gguf_q8_0.clone(), qwen3_gguf],
            vec![stories.join("stories260K.gguf")],
        ),
        "candle" => (
            vec![
                f.hf_dir.clone(),
                f.gguf_f32.clone(),
                f.gguf_q8_0.clone(),
                fx.qwen3.hf_f32.clone(),
                qwen3_gguf,
            ],
            vec![stories.join("hf"), stories.join("stories260K.gguf")],
        ),
        other => {
            println!("note: no default models for plugin `{other}`: plugin-level checks only");
            return vec![plan(lib, None, None)];
        }
    };
    let mut plans: Vec<Plan> = fixture_models
        .into_iter()
        .map(|m| plan(lib, Some(m), Some(FIXTURE_EOS_PROMPT)))
        .collect();
    for model in shared {
        if model.exists() {
            plans.push(plan(lib, Some(model), None));
        } else {
            println!(
                "SKIP: {} not found (set LLMLOCAL_SHARED_MODELS to the shared models folder)",
                model.display()
            );
        }
    }
    plans
}

/// The suite once more through a worker process (`--process-isolation`), on one small
/// fixture model per in-tree plugin: proves the worker path (issue #25) for a few seconds of
/// CI, while the other models stay in-process.
fn worker_plan(lib: &Path, fx: &Fixtures) -> Option<Plan> {
    let model = match backend_of(lib).as_str() {
        "llama_cpp" => fx.paths.gguf_q8_0.clone(),
        "candle" => fx.paths.hf_dir.clone(),
        _ => return None,
    };
    Some(Plan {
        in_worker: true,
        ..plan(lib, Some(model), Some(FIXTURE_EOS_PROMPT))
    })
}

fn plan(lib: &Path, model: Option<PathBuf>, eos_prompt: Option<&str>) -> Plan {
    Plan {
        plugin: lib.to_path_buf(),
        model,
        eos_prompt: eos_prompt.map(str::to_string),
        expect: Expect::Pass,
        check_timeout: None,
        in_worker: false,
    }
}

/// Loads every test plugin into one registry (scripted first, so it keeps its name and
/// duplicate-name is the second claimant) and judges each broken variant. Returns the
/// rows, and the suite run for panicking-generation if it loaded.
fn broken(
    ws: &Workspace,
    exe: &Path,
    built: &Built,
    fx: &Fixtures,
) -> Result<(Vec<Row>, Vec<Plan>)> {
    let mut ordered = built.test.clone();
    ordered.sort_by_key(|lib| (backend_of(lib) != "scripted", lib.clone()));
    let report = probe(ws, exe, &ordered)?;
    println!("loader on {}:", ws.test_plugins_dir().display());
    let mut rows = Vec::new();
    let mut plans = Vec::new();
    for entry in &report.entries {
        let variant = backend_of(&entry.path);
        let reason = entry.reason.as_deref();
        println!(
            "  {variant}: {}",
            reason.map_or("loaded".into(), |r| format!("refused: {r}"))
        );
        let expected = match variant.as_str() {
            "scripted" => entry.loaded,
            "panicking_generation" if entry.loaded => {
                plans.push(Plan {
                    plugin: entry.path.clone(),
                    model: Some(fx.scripted_model.clone()),
                    eos_prompt: None,
                    expect: Expect::PanickingGenerations,
                    check_timeout: None,
                    in_worker: false,
                });
                continue;
            }
            v if RULE_BREAKERS.iter().any(|r| r.0 == v) && entry.loaded => {
                if let Some(&(_, check, message)) = RULE_BREAKERS.iter().find(|r| r.0 == v) {
                    plans.push(Plan {
                        plugin: entry.path.clone(),
                        model: Some(fx.scripted_model.clone()),
                        eos_prompt: None,
                        expect: Expect::Catches { check, message },
                        check_timeout: (v == "hanging_next").then_some(HANG_CHECK_TIMEOUT),
                        in_worker: false,
                    });
                }
                continue;
            }
            // A rule breaker must load (so that the suite can catch it).
            v if RULE_BREAKERS.iter().any(|r| r.0 == v) => false,
            v if BROKEN.contains(&v) => !entry.loaded,
            _ => continue,
        };
        rows.push(Row {
            plugin: variant,
            version: entry.version.clone().unwrap_or_else(|| "-".into()),
            model: "(loader)".into(),
            counts: None,
            seconds: None,
            result: match reason {
                Some(r) => format!("refused: {}", short(r, 70)),
                None => "loaded".into(),
            },
            ok: expected,
        });
    }
    for variant in BROKEN
        .iter()
        .copied()
        .chain(RULE_BREAKERS.iter().map(|r| r.0))
    {
        if !report
            .entries
            .iter()
            .any(|e| backend_of(&e.path) == variant)
        {
            rows.push(missing(variant));
        }
    }
    Ok((rows, plans))
}

fn short(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

fn not_built(package: &str) -> Row {
    Row {
        plugin: package.to_string(),
        version: "-".into(),
        model: "-".into(),
        counts: None,
        seconds: None,
        result: "NOT BUILT (see the cargo output above)".into(),
        ok: false,
    }
}

fn missing(variant: &str) -> Row {
    Row {
        plugin: variant.to_string(),
        version: "-".into(),
        model: "-".into(),
        counts: None,
        seconds: None,
        result: "MISSING: the test plugin library was not found".into(),
        ok: false,
    }
}
