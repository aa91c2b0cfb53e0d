//! One measured path per process (issue #23). Two paths measured in one process disturb each
//! other: after llama.cpp direct has run, its OpenMP threads (and the process's allocator
//! and page state) stay behind while the plugin runs, and the bench read the plugin at 0.58x
//! of direct while `serve` matched llama-server. So the `bench` binary re-invokes itself with
//! the hidden `--child SPEC` for each path and round: the child loads the model, measures,
//! prints one JSON [`Outcome`] line on stdout and exits, and only one child runs at a time.

use crate::{median, Setup};
use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// What a child measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Job {
    /// llama.cpp driven directly through llama-cpp-2.
    Direct,
    /// The backend plugin through the host, in the child's process.
    Plugin,
    /// The backend plugin through the host, in a worker process of the child (isolation).
    Worker,
    /// Aggregate generation through the plugin: 1 vs `setup.parallel` generations.
    Aggregate,
    /// The backend plugin named by [`Spec::backend`] through the host, in the child's process,
    /// tokens counted from the backend's stats ([`crate::compare`]).
    Backend,
}

impl Job {
    pub fn label(self) -> &'static str {
        match self {
            Job::Direct => "direct",
            Job::Plugin => "plugin",
            Job::Worker => "worker",
            Job::Aggregate => "aggregate",
            Job::Backend => "backend",
        }
    }
}

/// A child's instructions (written as JSON to the file named by `--child`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub job: Job,
    pub setup: Setup,
    /// Folder of the plugin libraries, and the backend to load from it.
    pub plugin_dir: PathBuf,
    pub backend: String,
    /// Recorded runs of each kind in this child (after its warm-up); the child reports each.
    pub runs: usize,
    /// The prompt tokens to run ([`Job::Backend`]); `None`: the child makes its prompt with
    /// the model's tokenizer. Passed so that two backends process the very same tokens.
    #[serde(default)]
    pub prompt: Option<Vec<u32>>,
}

impl Spec {
    /// What progress and errors call this child: the backend's name for [`Job::Backend`]
    /// (two of them are compared), else the job's label.
    pub fn label(&self) -> &str {
        match self.job {
            Job::Backend => &self.backend,
            job => job.label(),
        }
    }
}

/// What one child measured. Empty series for what its job does not measure.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// The prompt it ran (the parent checks every path ran the same tokens).
    pub prompt: Vec<u32>,
    /// Prompt tokens/s of each prompt-only run.
    pub pp_runs: Vec<f64>,
    /// Generated tokens/s of each generation run (tokens counted, after the first token).
    pub tg_runs: Vec<f64>,
    /// Tokens each generation run produced after its first one (counted, not assumed).
    pub tg_tokens: Vec<usize>,
    /// Prompt tokens each prompt-only run processed, as the backend reported them
    /// ([`Job::Backend`]; empty for the jobs that do not count them).
    #[serde(default)]
    pub pp_tokens: Vec<usize>,
    /// Ms from asking for a generation to its first token, per generation run.
    pub ttft_runs: Vec<f64>,
    /// Aggregate tokens/s with 1 and `setup.parallel` generations ([`Job::Aggregate`]).
    pub aggregate: Option<(f64, f64)>,
    /// VmRSS of the worker before any model is loaded, KiB ([`Job::Worker`]).
    pub worker_idle_rss_kib: Option<u64>,
    /// The child's process id: the report shows every path ran in a process of its own.
    #[serde(default)]
    pub pid: Option<u32>,
}

impl Outcome {
    /// This child's value of a series: the median of its runs (0 when empty).
    pub fn value(runs: &[f64]) -> f64 {
        median(runs).unwrap_or(0.0)
    }
}

/// The line a child prints before its JSON, so that anything else a native library writes
/// to stdout cannot be mistaken for the result.
const MARK: &str = "BENCH-CHILD-OUTCOME ";

/// The child's side: runs `spec` and prints the outcome.
pub fn serve(spec_path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(spec_path)
        .with_context(|| format!("read the child spec {}", spec_path.display()))?;
    let spec: Spec = serde_json::from_str(&text).context("parse the child spec")?;
    let outcome = match spec.job {
        Job::Direct => crate::direct::measure(&spec.setup, spec.runs)?,
        Job::Plugin | Job::Worker => crate::isolation::measure(&spec)?,
        Job::Aggregate => crate::plugin::measure_aggregate(&spec)?,
        Job::Backend => crate::compare::measure(&spec)?,
    };
    let outcome = Outcome {
        pid: Some(std::process::id()),
        ..outcome
    };
    println!("{MARK}{}", serde_json::to_string(&outcome)?);
    Ok(())
}

/// The variables that size a child's compute thread pools, all set to `threads`: rayon's
/// global pool (candle's CPU ops), candle's quantized-matmul pool, and the OpenMP default
/// (llama.cpp passes its thread count explicitly, but a pool sized to all cores must not
/// be left to chance). Set per child, so every measured process sees the same.
pub fn thread_env(threads: u32) -> [(&'static str, String); 3] {
    let n = threads.to_string();
    [
        ("RAYON_NUM_THREADS", n.clone()),
        ("CANDLE_NUM_THREADS", n.clone()),
        ("OMP_NUM_THREADS", n),
    ]
}

/// The parent's side: runs `spec` in a child (`exe --child FILE`, its thread pools sized by
/// [`thread_env`]) and reads its outcome. The child's stderr passes through (progress and
/// errors).
pub fn run(exe: &Path, scratch: &Path, spec: &Spec) -> anyhow::Result<Outcome> {
    let label = spec.label();
    // Named by the job, not by the backend name a user typed: children run one at a time.
    let file = scratch.join(format!("child-{}.json", spec.job.label()));
    std::fs::write(&file, serde_json::to_string(spec)?)
        .with_context(|| format!("write {}", file.display()))?;
    let output = Command::new(exe)
        .arg("--child")
        .arg(&file)
        .envs(thread_env(spec.setup.threads))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("start {} --child", exe.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "the {label} child failed ({}); its stdout:\n{stdout}",
            output.status
        );
    }
    let Some(json) = stdout.lines().rev().find_map(|l| l.strip_prefix(MARK)) else {
        bail!("the {label} child printed no outcome; its stdout:\n{stdout}");
    };
    serde_json::from_str(json).context("parse a child's outcome")
}

/// `spec` in one child, on its own.
pub fn once(exe: &Path, spec: &Spec) -> anyhow::Result<Outcome> {
    let scratch = tempfile::tempdir().context("create a scratch folder")?;
    eprintln!("{} ...", spec.label());
    run(exe, scratch.path(), spec)
}

/// Rounds of `jobs`, each job in a fresh child, interleaved (see [`rotate`]).
pub fn interleaved(
    exe: &Path,
    jobs: &[Job],
    rounds: usize,
    spec: impl Fn(Job) -> Spec,
) -> anyhow::Result<Vec<Vec<Outcome>>> {
    rotate(exe, jobs.len(), rounds, |index, _| spec(jobs[index]))
}

/// Rounds of `paths` paths, each path in a fresh child, interleaved (the order rotates every
/// round so no path always runs right after another). `spec(index, done)` makes path
/// `index`'s spec, seeing the outcomes so far (per path, in round order), so that a later
/// child can be given what an earlier one found (e.g. its prompt tokens). Returns the outcomes
/// per path, in round order, and fails when two children ran different prompts.
pub fn rotate(
    exe: &Path,
    paths: usize,
    rounds: usize,
    mut spec: impl FnMut(usize, &[Vec<Outcome>]) -> Spec,
) -> anyhow::Result<Vec<Vec<Outcome>>> {
    let scratch = tempfile::tempdir().context("create a scratch folder")?;
    let mut outcomes: Vec<Vec<Outcome>> = vec![Vec::new(); paths];
    let mut labels = vec![String::new(); paths];
    for round in 0..rounds {
        for offset in 0..paths {
            let index = (round + offset) % paths;
            let spec = spec(index, &outcomes);
            eprintln!("round {}/{rounds}: {} ...", round + 1, spec.label());
            let outcome = run(exe, scratch.path(), &spec)?;
            outcomes[index].push(outcome);
            labels[index] = spec.label().to_string();
        }
    }
    check_same_prompt(&labels, &outcomes)?;
    Ok(outcomes)
}

fn check_same_prompt(labels: &[String], outcomes: &[Vec<Outcome>]) -> anyhow::Result<()> {
    let mut all = labels
        .iter()
        .zip(outcomes)
        .flat_map(|(label, runs)| runs.iter().map(move |o| (label, &o.prompt)));
    let Some((first_label, first)) = all.next() else {
        return Ok(());
    };
    if let Some((label, _)) = all.find(|(_, prompt)| prompt != &first) {
        bail!(
            "the {first_label} and {label} children ran different prompts: their tokenizers \
             disagree"
        );
    }
    Ok(())
}

/// One path over its rounds: each round's value is the median of that child's runs; the
/// spread is over rounds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measured {
    pub pp: Spread,
    pub tg: Spread,
    pub ttft_ms: Spread,
    /// The fewest and most tokens any generation run produced after its first (counted).
    pub tg_tokens: (usize, usize),
    /// The fewest and most prompt tokens any prompt-only run processed, as reported by the
    /// backend; (0, 0) for the jobs that do not count them.
    pub pp_tokens: (usize, usize),
    pub rounds: Vec<Outcome>,
}

impl Measured {
    pub fn of(rounds: Vec<Outcome>) -> Measured {
        let per_round = |f: fn(&Outcome) -> &Vec<f64>| -> Vec<f64> {
            rounds.iter().map(|o| Outcome::value(f(o))).collect()
        };
        let range = |f: fn(&Outcome) -> &Vec<usize>| {
            let counts = rounds.iter().flat_map(|o| f(o).iter().copied());
            (counts.clone().min().unwrap_or(0), counts.max().unwrap_or(0))
        };
        Measured {
            pp: Spread::of(&per_round(|o| &o.pp_runs)),
            tg: Spread::of(&per_round(|o| &o.tg_runs)),
            ttft_ms: Spread::of(&per_round(|o| &o.ttft_runs)),
            tg_tokens: range(|o| &o.tg_tokens),
            pp_tokens: range(|o| &o.pp_tokens),
            rounds,
        }
    }

    /// Per round, `f(other) / f(self)`: the spread of a ratio between two interleaved paths,
    /// round by round (each pair ran back to back, under the same load).
    pub fn ratio_to(&self, other: &Measured, f: fn(&Outcome) -> &Vec<f64>) -> Spread {
        let ratios: Vec<f64> = self
            .rounds
            .iter()
            .zip(&other.rounds)
            .filter_map(|(a, b)| {
                let (a, b) = (Outcome::value(f(a)), Outcome::value(f(b)));
                (a > 0.0).then(|| b / a)
            })
            .collect();
        Spread::of(&ratios)
    }

    /// Per round, `f(other) - f(self)`.
    pub fn delta_to(&self, other: &Measured, f: fn(&Outcome) -> &Vec<f64>) -> Spread {
        let deltas: Vec<f64> = self
            .rounds
            .iter()
            .zip(&other.rounds)
            .map(|(a, b)| Outcome::value(f(b)) - Outcome::value(f(a)))
            .collect();
        Spread::of(&deltas)
    }
}

/// Median, min and max of one value over rounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        Spread {
            median: median(values).unwrap_or(0.0),
            min: values.iter().copied().reduce(f64::min).unwrap_or(0.0),
            max: values.iter().copied().reduce(f64::max).unwrap_or(0.0),
        }
    }

    /// `123.4 [120.1–125.0]`
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} [{:.d$}–{:.d$}]",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_min_and_max() {
        let s = Spread::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert_eq!(Spread::of(&[]), Spread::default());
        assert_eq!(Spread::of(&[1.25]).show(1), "1.2 [1.2–1.2]");
    }

    #[test]
    fn measured_takes_each_child_median_and_pairs_rounds() {
        let round = |tg: Vec<f64>, ttft: f64| Outcome {
            tg_runs: tg,
            tg_tokens: vec![128, 127],
            ttft_runs: vec![ttft],
            ..Outcome::default()
        };
        let a = Measured::of(vec![
            round(vec![100.0, 90.0, 80.0], 10.0),
            round(vec![50.0], 20.0),
        ]);
        let b = Measured::of(vec![round(vec![45.0], 11.0), round(vec![50.0], 23.0)]);
        assert_eq!((a.tg.median, a.tg.min, a.tg.max), (70.0, 50.0, 90.0));
        assert_eq!(a.tg_tokens, (127, 128));
        let ratio = a.ratio_to(&b, |o| &o.tg_runs);
        assert_eq!((ratio.min, ratio.max), (0.5, 1.0));
        let delta = a.delta_to(&b, |o| &o.ttft_runs);
        assert_eq!((delta.min, delta.max), (1.0, 3.0));
    }

    #[test]
    fn children_that_ran_different_prompts_are_refused() {
        let with = |prompt: Vec<u32>| Outcome {
            prompt,
            ..Outcome::default()
        };
        let labels = ["direct".to_string(), "plugin".to_string()];
        let same = [vec![with(vec![1, 2])], vec![with(vec![1, 2])]];
        assert!(check_same_prompt(&labels, &same).is_ok());
        let differ = [vec![with(vec![1, 2])], vec![with(vec![1, 3])]];
        let err = check_same_prompt(&labels, &differ).expect_err("different prompts");
        assert!(err.to_string().contains("different prompts"), "{err}");
    }

    #[test]
    fn a_child_outcome_is_read_from_its_marked_line() {
        // A stand-in child: any executable printing noise, then the marked outcome.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let exe = dir.path().join("child");
        let outcome = Outcome {
            prompt: vec![1],
            tg_runs: vec![42.0],
            ..Outcome::default()
        };
        let line = format!("{MARK}{}", serde_json::to_string(&outcome).expect("json"));
        std::fs::write(&exe, format!("#!/bin/sh\necho noise\necho '{line}'\n")).expect("write");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let spec = Spec {
            job: Job::Plugin,
            setup: Setup {
                model: "m.gguf".into(),
                threads: 1,
                batch_size: 1,
                prompt_tokens: 1,
                gen_tokens: 1,
                parallel: 1,
                repeat: 1,
                context_length: 8,
            },
            plugin_dir: dir.path().into(),
            backend: "llama-cpp".into(),
            runs: 1,
            prompt: None,
        };
        let read = run(&exe, dir.path(), &spec).expect("outcome");
        assert_eq!(read.tg_runs, [42.0]);
        std::fs::write(&exe, "#!/bin/sh\necho noise\n").expect("write");
        let err = run(&exe, dir.path(), &spec).expect_err("no outcome");
        assert!(err.to_string().contains("no outcome"), "{err}");
    }
}
