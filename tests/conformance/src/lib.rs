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

use checks::{concurrency, errors, generation, model, plugin, ModelCtx};
use llmlocal::plugins::{LoadedBackend, PluginRegistry};
use recorder::Recorder;
use std::path::{Path, PathBuf};

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

/// Loads the plugin at `plugin_path` and runs every check. Never fails: problems are rows.
pub fn run_suite(plugin_path: &Path, models: &[ModelUnderTest]) -> SuiteReport {
    let mut rec = Recorder::default();
    // Kept alive for the whole run (libraries are never unloaded anyway).
    let registry = PluginRegistry::load_files(&[plugin_path.to_path_buf()]);
    let mut backend = None;
    rec.check(None, "loads", || plugin::loads(&registry, &mut backend));
    let mut report = SuiteReport {
        plugin_path: plugin_path.to_path_buf(),
        backend: None,
        version: None,
        checks: Vec::new(),
    };
    if let Some(backend) = backend {
        report.backend = Some(backend.manifest.name.to_string());
        report.version = Some(backend.manifest.version.to_string());
        rec.check(None, "manifest", || plugin::manifest(&backend.manifest));
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

fn model_checks(rec: &mut Recorder, backend: &LoadedBackend, m: &ModelUnderTest) {
    let label = match m.device.as_str() {
        "cpu" => m.path.display().to_string(),
        device => format!("{} on {device}", m.path.display()),
    };
    let l = Some(label.as_str());
    rec.check(l, "missing model path", || {
        errors::missing_path(backend, &m.path, &m.device)
    });
    rec.check(l, "corrupt model file", || {
        errors::corrupt_model(backend, &m.path, &m.device)
    });
    let slots = checks::slots(&backend.manifest);
    let mut loaded: Option<ModelCtx> = None;
    rec.check(l, "model loads", || {
        let ctx = model::load(backend, &m.path, slots, &m.device)?;
        let message = format!(
            "{} prompt tokens for {:?}",
            ctx.prompt.len(),
            checks::PROMPT
        );
        loaded = Some(ctx);
        Ok(message)
    });
    let Some(ctx) = loaded else {
        for name in MODEL_CHECKS {
            rec.skip(l, name, "the model did not load");
        }
        return;
    };
    rec.check(l, "metadata", || model::metadata(&ctx.meta));
    rec.check(l, "tokenize round trip", || model::round_trip(&ctx));
    let mut solo = None;
    rec.check(l, "greedy deterministic", || {
        let (message, run) = generation::deterministic(&ctx)?;
        solo = Some(run);
        Ok(message)
    });
    rec.check(l, "max_tokens", || generation::max_tokens(&ctx));
    rec.check(l, "end of generation", || {
        generation::end_of_generation(&ctx, m.eos_prompt.as_deref())
    });
    rec.check(l, "drop cancels", || concurrency::drop_cancels(&ctx));
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
    rec.check(l, "text pieces", || generation::pieces(&ctx, &solo));
    rec.check(l, "stats", || generation::stats(&ctx, &solo));
    rec.check(l, "logits", || generation::logits(&ctx, &solo));
    rec.check(l, "parallel generations", || {
        concurrency::parallel_generations(&ctx, &solo)
    });
    rec.check(l, "two loaded models", || {
        concurrency::two_models(&ctx, backend, &m.path, &solo)
    });
}
