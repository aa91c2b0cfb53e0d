//! The conformance suite every llmlocal backend plugin must pass.
//!
//! [`run_suite`] loads ONE plugin library through the host's loader and runs named checks
//! (pass / fail / skip, each with a message) against the plugin and each model given: the
//! manifest, errors for missing and corrupt models, metadata, tokenizer round trip,
//! determinism, max_tokens, end of generation, cancellation by drop, concurrent generations
//! and models, stats and logits. A plugin error is a failed check; a panic crossing the
//! boundary would abort the process, so a finished suite is itself the proof that none did.

pub mod checks;
mod generate;
mod outcome;
mod probe;
mod recorder;
pub mod report;

pub use probe::{probe_dir, probe_files};
pub use report::{CheckResult, Counts, ProbeEntry, ProbeReport, Status, SuiteReport};

use checks::{concurrency, errors, generation, model, plugin, prefix, sampling, ModelCtx};
use llmlocal::plugins::{IsolationPolicy, LoadedBackend, PluginRegistry};
use recorder::Recorder;
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

/// A model to run the checks on.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelUnderTest {
    /// A GGUF file, a Hugging Face folder, or any model file the backend reads.
    pub path: PathBuf,
    /// A prompt known to make the model end with EOS under greedy decoding. With it, a
    /// missing EOS is a failure rather than a skip.
    pub eos_prompt: Option<String>,
    /// The device to load it on: `cpu` (the default), `cuda`, `cuda:N`, `metal`, `auto`.
    pub device: String,
}

impl ModelUnderTest {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ModelUnderTest {
            path: path.into(),
            eos_prompt: None,
            device: "cpu".to_string(),
        }
    }
}

/// Loads the plugin at `plugin_path` and runs every check with the default time limit per
/// check. Never fails: problems are rows.
pub fn run_suite(plugin_path: &Path, models: &[ModelUnderTest]) -> SuiteReport {
    run_suite_with(plugin_path, models, recorder::DEFAULT_CHECK_LIMIT)
}

/// [`run_suite`] with `check_limit` per check: a check that takes longer fails as hung and
/// the suite goes on.
pub fn run_suite_with(
    plugin_path: &Path,
    models: &[ModelUnderTest],
    check_limit: std::time::Duration,
) -> SuiteReport {
    run_suite_isolated(
        plugin_path,
        models,
        check_limit,
        &IsolationPolicy::in_process(),
    )
}

/// [`run_suite_with`], the plugin loaded as `policy` says: in this process, or in a worker
/// process (`IsolationPolicy::process`) so the suite checks the contract through the IPC.
pub fn run_suite_isolated(
    plugin_path: &Path,
    models: &[ModelUnderTest],
    check_limit: std::time::Duration,
    policy: &IsolationPolicy,
) -> SuiteReport {
    let mut rec = Recorder::with_limit(check_limit);
    // Kept alive for the whole run (libraries are never unloaded anyway).
    let registry = PluginRegistry::load_files_with(&[plugin_path.to_path_buf()], policy);
    let mut backend = None;
    let loaded = plugin::loads(&registry, &mut backend);
    rec.check(None, "loads", move || loaded);
    let mut report = SuiteReport {
        plugin_path: plugin_path.to_path_buf(),
        backend: None,
        version: None,
        checks: Vec::new(),
    };
    if let Some(backend) = backend {
        report.backend = Some(backend.manifest.name.to_string());
        report.version = Some(backend.manifest.version.to_string());
        let manifest = backend.manifest.clone();
        rec.check(None, "manifest", move || plugin::manifest(&manifest));
        for m in models {
            model_checks(&mut rec, &backend, m);
        }
    }
    report.checks = rec.checks;
    report
}

/// Checks that need a loaded model, in the order they run after "model loads".
const MODEL_CHECKS: [&str; 11] = [
    "metadata",
    "tokenize round trip",
    "greedy deterministic",
    "max_tokens",
    "end of generation",
    "drop cancels",
    "text pieces",
    "stats",
    "logits",
    "parallel generations",
    "two loaded models",
];
/// Checks that compare against the solo greedy run.
const SOLO_CHECKS: [&str; 5] = [
    "text pieces",
    "stats",
    "logits",
    "parallel generations",
    "two loaded models",
];

fn model_checks(rec: &mut Recorder, backend: &Arc<LoadedBackend>, m: &ModelUnderTest) {
    let label = match m.device.as_str() {
        "cpu" => m.path.display().to_string(),
        device => format!("{} on {device}", m.path.display()),
    };
    let l = Some(label.as_str());
    let (path, device) = (m.path.clone(), m.device.clone());
    {
        let (b, p, d) = (Arc::clone(backend), path.clone(), device.clone());
        rec.check(l, "missing model path", move || {
            errors::missing_path(&b, &p, &d)
        });
    }
    {
        let (b, p, d) = (Arc::clone(backend), path.clone(), device.clone());
        rec.check(l, "corrupt model file", move || {
            errors::corrupt_model(&b, &p, &d)
        });
    }
    let slots = checks::slots(&backend.manifest);
    let (_, loaded) = {
        let (b, p, d) = (Arc::clone(backend), path.clone(), device.clone());
        rec.check_value(l, "model loads", move || {
            let ctx = model::load(&b, &p, slots, &d)?;
            let message = format!(
                "{} prompt tokens for {:?}",
                ctx.prompt.len(),
                checks::PROMPT
            );
            Ok((message, Arc::new(ctx)))
        })
    };
    let Some(ctx) = loaded else {
        for name in MODEL_CHECKS
            .iter()
            .chain(sampling::CHECKS)
            .chain(checks::embeddings::CHECKS)
            .chain(prefix::CHECKS)
        {
            rec.skip(l, name, "the model did not load");
        }
        return;
    };
    let c = || Arc::clone(&ctx);
    rec.check(l, "metadata", {
        let ctx = c();
        move || model::metadata(&ctx.meta)
    });
    rec.check(l, "tokenize round trip", {
        let ctx = c();
        move || model::round_trip(&ctx)
    });
    let (_, solo) = rec.check_value(l, "greedy deterministic", {
        let ctx = c();
        move || {
            let (message, run) = generation::deterministic(&ctx)?;
            Ok((message, Arc::new(run)))
        }
    });
    rec.check(l, "max_tokens", {
        let ctx = c();
        move || generation::max_tokens(&ctx)
    });
    rec.check(l, "end of generation", {
        let (ctx, eos) = (c(), m.eos_prompt.clone());
        move || generation::end_of_generation(&ctx, eos.as_deref())
    });
    rec.check(l, "drop cancels", {
        let ctx = c();
        move || concurrency::drop_cancels(&ctx)
    });
    sampling::run(rec, l, backend, &ctx, &path, &device, solo.as_deref());
    checks::embeddings::run(rec, l, &ctx);
    prefix::run(rec, l, &ctx);
    let Some(solo) = solo else {
        for name in SOLO_CHECKS {
            rec.skip(
                l,
                name,
                "needs the solo greedy run (`greedy deterministic` failed)",
            );
        }
        return;
    };
    let with_solo = |f: fn(&ModelCtx, &generate::Run) -> outcome::Outcome| {
        let (ctx, solo) = (c(), Arc::clone(&solo));
        move || f(&ctx, &solo)
    };
    rec.check(l, "text pieces", with_solo(generation::pieces));
    rec.check(l, "stats", with_solo(generation::stats));
    rec.check(l, "logits", with_solo(generation::logits));
    rec.check(
        l,
        "parallel generations",
        with_solo(concurrency::parallel_generations),
    );
    rec.check(l, "two loaded models", {
        let (ctx, solo, b, p) = (c(), Arc::clone(&solo), Arc::clone(backend), path.clone());
        move || concurrency::two_models(&ctx, &b, &p, &solo)
    });
}
