//! Model breadth: llama.cpp (llama-cpp plugin) and candle on the same weights, per
//! architecture family of the fixtures (`llmlocal_fixtures::family`): the same greedy tokens
//! for [`NEW_TOKENS`] tokens and logits within a per-format tolerance. candle may refuse an
//! input it cannot run, but only with `UnsupportedArchitecture`, never with a wrong answer.
//!
//! The test writes the agreement table (architecture x format x backend) to
//! `target/tmp/agreement-table.md` and checks that docs/models.md holds the same rows, so the
//! documented table is the one this test produced.

mod server_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use llmlocal::api::{ErrorKind, GenerateRequest, LoadRequest, Step};
use llmlocal::plugins::{LoadedModel, PluginRegistry};
use llmlocal_fixtures::{ensure_families, Family, FamilyPaths, GgufFormat};
use server_support::plugin_library;

/// Greedy tokens compared per model (the issue asks for 32 or more).
const NEW_TOKENS: usize = 40;
/// Logits are compared after the prompt and after every this many generated tokens.
const LOGIT_STRIDE: usize = 4;

/// The prompt: ends in `!`, so untied families run the designed `!`..`~` chain (93 tokens
/// before EOS) and tied ones repeat `!`.
fn prompt() -> Vec<u32> {
    b"Hi!".iter().map(|b| u32::from(*b)).collect()
}

/// What one engine produced on one file.
struct Run {
    tokens: Vec<u32>,
    /// Next-token logits after the prompt plus `k` generated tokens, for the compared `k`s.
    logits: Vec<Vec<f32>>,
}

/// What candle is given, and what llama.cpp runs beside it.
#[derive(Clone, Copy)]
enum Input {
    Hf(&'static str),
    Gguf(GgufFormat),
}

impl Input {
    fn label(self) -> String {
        match self {
            Input::Hf(dtype) => format!("HF safetensors {dtype}"),
            Input::Gguf(f) => format!("GGUF {}", f.name().to_uppercase()),
        }
    }

    /// llama.cpp reads GGUF only: the HF folders are compared with the GGUF of the same dtype.
    fn llama_format(self) -> GgufFormat {
        match self {
            Input::Hf("F16") => GgufFormat::F16,
            Input::Hf(_) => GgufFormat::F32,
            Input::Gguf(f) => f,
        }
    }

    fn path(self, paths: &FamilyPaths) -> PathBuf {
        match self {
            Input::Hf("F16") => paths.hf_f16.clone(),
            Input::Hf(_) => paths.hf_f32.clone(),
            Input::Gguf(f) => paths.gguf(f),
        }
    }
}

const INPUTS: [Input; 5] = [
    Input::Hf("F32"),
    Input::Hf("F16"),
    Input::Gguf(GgufFormat::F32),
    Input::Gguf(GgufFormat::F16),
    Input::Gguf(GgufFormat::Q8_0),
];

/// Largest |logit difference| allowed between the engines. F32: summation order only. F16:
/// llama.cpp rounds activations to F16 for its F16 matmuls while candle widens the weights to
/// F32 on the CPU. Q8_0: both quantize activations to 8 bits, with different block orders.
/// On a GPU, F32 gets 1e-2: there llama.cpp's CUDA kernels and cuBLAS (candle) each split
/// the sums their own way (an H200 measured 5.1e-3 on llama3, over the CPU's 5e-3).
fn tolerance(format: GgufFormat) -> f32 {
    match format {
        GgufFormat::F32 if device() != "cpu" => 1e-2,
        GgufFormat::F32 => 5e-3,
        GgufFormat::F16 => 0.1,
        GgufFormat::Q8_0 => 0.5,
    }
}

/// The device both engines run on: `$LLMLOCAL_AGREEMENT_DEVICE` (e.g. `cuda` on the GPU
/// machine), else the CPU.
fn device() -> String {
    std::env::var("LLMLOCAL_AGREEMENT_DEVICE")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "cpu".to_string())
}

fn load(plugin: &Path, model: &Path) -> Result<LoadedModel, llmlocal::plugins::BackendError> {
    let registry = PluginRegistry::load_files(&[plugin.to_path_buf()]);
    let backend = registry
        .backends()
        .next()
        .cloned()
        .unwrap_or_else(|| panic!("{} loads as a plugin", plugin.display()));
    let mut request = LoadRequest::new(model.display().to_string());
    request.device = device().into();
    request.context_length = 256;
    backend.load_model(request)
}

fn run(model: &LoadedModel) -> Run {
    let prompt = prompt();
    let mut request = GenerateRequest::greedy(prompt.clone(), NEW_TOKENS as u32);
    request.ignore_eos = true;
    let mut generation = model.generate(request).expect("generate");
    let mut tokens = Vec::new();
    while let Step::Token(t) = generation.next().expect("step") {
        tokens.push(t.id);
    }
    let mut seq = prompt.clone();
    seq.extend(&tokens);
    let logits = (0..tokens.len())
        .step_by(LOGIT_STRIDE)
        .map(|k| model.logits(&seq[..prompt.len() + k]).expect("logits"))
        .collect();
    Run { tokens, logits }
}

fn max_diff(a: &Run, b: &Run) -> f32 {
    a.logits
        .iter()
        .zip(&b.logits)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(u, v)| (u - v).abs()))
        .fold(0.0, f32::max)
}

/// One row of the table: the stable part (checked against docs/models.md) and the measured
/// logit difference (printed only: its last digits depend on the CPU).
struct Row {
    stable: String,
    measured: String,
    failure: Option<String>,
}

fn compare(family: Family, input: Input, candle: &Run, llama: &Run) -> Row {
    let format = input.llama_format();
    let tol = tolerance(format);
    let first_diff = candle
        .tokens
        .iter()
        .zip(&llama.tokens)
        .position(|(a, b)| a != b)
        .or((candle.tokens.len() != llama.tokens.len()).then_some(0));
    let diff = max_diff(candle, llama);
    let mut failure = None;
    if let Some(pos) = first_diff {
        failure = Some(format!(
            "{} {}: greedy tokens differ first at generated position {pos}: candle {:?}, \
             llama.cpp {:?}",
            family.name(),
            input.label(),
            candle.tokens.get(pos),
            llama.tokens.get(pos)
        ));
    } else if diff.is_nan() || diff > tol {
        failure = Some(format!(
            "{} {}: logits differ by {diff} (tolerance {tol})",
            family.name(),
            input.label()
        ));
    }
    let result = if failure.is_some() {
        "DIFFERS"
    } else {
        "agree"
    };
    Row {
        stable: format!(
            "| {} | {} | candle | llama.cpp GGUF {} | {NEW_TOKENS} | {tol} | {result} |",
            family.name(),
            input.label(),
            format.name().to_uppercase()
        ),
        measured: format!("{diff:.2e}"),
        failure,
    }
}

fn unsupported_row(family: Family, input: Input, message: &str) -> Row {
    eprintln!(
        "{} {}: candle refuses: {message}",
        family.name(),
        input.label()
    );
    Row {
        stable: format!(
            "| {} | {} | candle | llama.cpp GGUF {} | - | - | UnsupportedArchitecture |",
            family.name(),
            input.label(),
            input.llama_format().name().to_uppercase()
        ),
        measured: "-".into(),
        failure: None,
    }
}

/// llama.cpp on the family's three GGUF files; checks the designed greedy output on each,
/// which shows the weights make the argmax decisive.
fn llama_runs(llama: &Path, paths: &FamilyPaths) -> HashMap<GgufFormat, Run> {
    let family = paths.family;
    GgufFormat::ALL
        .into_iter()
        .map(|format| {
            let model = load(llama, &paths.gguf(format))
                .unwrap_or_else(|e| panic!("llama.cpp loads {}: {e}", family.name()));
            let run = run(&model);
            assert_eq!(
                run.tokens,
                family.expected_greedy(&prompt(), NEW_TOKENS),
                "llama.cpp on {} {}: not the designed greedy output",
                family.name(),
                format.name()
            );
            (format, run)
        })
        .collect()
}

fn header() -> String {
    "| architecture | candle input | backend | compared with | greedy tokens | max abs logit diff allowed | result |\n\
     |---|---|---|---|---|---|---|"
        .to_string()
}

#[test]
fn candle_and_llama_cpp_agree_on_every_family_and_format() {
    // llama.cpp's own errors (why a load failed) reach the test output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("llmlocal::plugin=error"))
        .with_test_writer()
        .try_init();
    let fixtures_dir = llmlocal_fixtures::default_dir();
    let families = ensure_families(&fixtures_dir).expect("family fixtures are written");
    let candle = plugin_library("candle");
    let llama = plugin_library("llama_cpp");
    let mut rows = Vec::new();
    for family in Family::ALL {
        let paths = &families[&family];
        let llama_runs = llama_runs(&llama, paths);
        for input in INPUTS {
            let row = match load(&candle, &input.path(paths)) {
                Ok(model) => compare(
                    family,
                    input,
                    &run(&model),
                    &llama_runs[&input.llama_format()],
                ),
                Err(e) if e.kind() == ErrorKind::UnsupportedArchitecture => {
                    unsupported_row(family, input, &e.to_string())
                }
                Err(e) => Row {
                    stable: String::new(),
                    measured: String::new(),
                    failure: Some(format!(
                        "candle fails to load {} {} with {:?} (only UnsupportedArchitecture \
                         may refuse a valid model): {e}",
                        family.name(),
                        input.label(),
                        e.kind()
                    )),
                },
            };
            rows.push(row);
        }
    }
    let table = format!(
        "{}\n{}\n",
        header(),
        rows.iter()
            .map(|r| r.stable.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let measured: Vec<String> = rows
        .iter()
        .map(|r| format!("{} measured {}", r.stable, r.measured))
        .collect();
    eprintln!("device {}\n{}\n{}", device(), header(), measured.join("\n"));
    let failures: Vec<&String> = rows.iter().filter_map(|r| r.failure.as_ref()).collect();
    assert!(failures.is_empty(), "engines disagree:\n{failures:#?}");

    if device() != "cpu" {
        // The documented table is the CPU one; another device (the GPU machine runs this
        // binary outside the build tree) only has to agree, and its table is printed above.
        return;
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agreement-table.md");
    std::fs::write(&out, &table).expect("write the agreement table");
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/models.md");
    let documented = std::fs::read_to_string(&docs).unwrap_or_default();
    assert!(
        documented.contains(&table),
        "docs/models.md does not hold the agreement table this test produced; copy {} into it",
        out.display()
    );
}

// ------------------------------------------------------------------ BERT embeddings

/// Embedding inputs (ids of the BERT fixture's WordPiece vocabulary, `[CLS] ... [SEP]` as its
/// tokenizer adds them): different words, the same words in another order, one word.
fn bert_inputs() -> Vec<Vec<u32>> {
    use llmlocal_fixtures::family_bert::{id, CLS_ID, SEP_ID};
    let sentence = |words: &[&str]| {
        std::iter::once(CLS_ID)
            .chain(words.iter().map(|w| id(w)))
            .chain(std::iter::once(SEP_ID))
            .collect::<Vec<u32>>()
    };
    vec![
        sentence(&["the", "cat", "sat", "on", "the", "mat"]),
        sentence(&["the", "mat", "sat", "on", "the", "cat"]),
        sentence(&["hello", "world"]),
        sentence(&[
            "rust", "model", "##s", "embed", "local", "##ing", "sky", "is", "blue",
        ]),
    ]
}

/// Smallest cosine allowed with the f32 reference: F32 and F16 differ by summation order,
/// llama.cpp's F16 activations and its tanh-approximated (F16-table) GELU against BERT's erf
/// GELU; Q8_0 also quantizes weights (and, in llama.cpp, activations) to 8 bits.
fn bert_min_cosine(format: GgufFormat) -> f32 {
    match format {
        GgufFormat::Q8_0 => 0.99,
        _ => 0.999,
    }
}

/// Smallest cosine allowed between candle and llama.cpp on the same GGUF, every dtype. F32
/// and F16: the differences above. Q8_0: candle dequantizes the weights and computes in F32
/// while llama.cpp also rounds the activations to 8 bits; measured minimum 0.99994 on this
/// fixture (CPU), so 0.999 leaves room for other kernels without hiding a wrong network.
const BERT_MIN_COSINE_ENGINES: f32 = 0.999;

/// The normalised vectors of [`bert_inputs`], with the model's own pooling.
fn bert_vectors(model: &LoadedModel) -> Vec<Vec<f32>> {
    let mut request = llmlocal::api::EmbedRequest::new(bert_inputs());
    request.normalize = true;
    model.embed(request).expect("embed")
}

/// The f32 reference forward's vectors of [`bert_inputs`].
fn bert_reference() -> Vec<Vec<f32>> {
    let weights = llmlocal_fixtures::family_bert::weights();
    bert_inputs()
        .iter()
        .map(|ids| llmlocal_fixtures::family_bert::embed(&weights, ids))
        .collect()
}

/// One embedding row: an engine's vectors against `expected`'s, input by input.
fn bert_row(
    label: &str,
    backend: &str,
    compared: &str,
    allowed: f32,
    vectors: &[Vec<f32>],
    expected: &[Vec<f32>],
) -> Row {
    assert_eq!(vectors.len(), expected.len(), "one vector per input");
    let min = vectors
        .iter()
        .zip(expected)
        .map(|(v, e)| llmlocal_fixtures::family_bert::cosine(e, v))
        .fold(f32::INFINITY, f32::min);
    let failure = (min.is_nan() || min < allowed).then(|| {
        format!("bert {label} on {backend}: cosine {min} with {compared} (allowed {allowed})")
    });
    let result = if failure.is_some() {
        "DIFFERS"
    } else {
        "agree"
    };
    Row {
        stable: format!(
            "| bert | {label} | {backend} | {compared} | {} | {allowed} | {result} |",
            vectors.len()
        ),
        measured: format!("{min:.6}"),
        failure,
    }
}

/// Loads `path` with `plugin`, failing the test with the error when it cannot.
fn load_bert(plugin: &Path, path: &Path, backend: &str) -> LoadedModel {
    load(plugin, path).unwrap_or_else(|e| {
        panic!(
            "{backend} fails to load bert {} with {:?}: {e}",
            path.display(),
            e.kind()
        )
    })
}

#[test]
fn bert_embeddings_agree_with_the_reference_forward() {
    let fixtures_dir = llmlocal_fixtures::default_dir();
    let paths = llmlocal_fixtures::family_bert::ensure_bert(&fixtures_dir).expect("bert fixtures");
    let candle = plugin_library("candle");
    let llama = plugin_library("llama_cpp");
    let reference = bert_reference();
    let mut rows = Vec::new();
    let mut llama_vectors = HashMap::new();
    for format in GgufFormat::ALL {
        let label = format!("GGUF {}", format.name().to_uppercase());
        let vectors = bert_vectors(&load_bert(&llama, &paths.gguf(format), "llama.cpp"));
        let allowed = bert_min_cosine(format);
        let compared = "f32 reference forward";
        rows.push(bert_row(
            &label,
            "llama.cpp",
            compared,
            allowed,
            &vectors,
            &reference,
        ));
        llama_vectors.insert(format.name(), vectors);
    }
    let mut candle_inputs = vec![(
        "HF safetensors F32".to_string(),
        paths.hf.clone(),
        GgufFormat::F32,
    )];
    candle_inputs.extend(GgufFormat::ALL.into_iter().map(|format| {
        let label = format!("GGUF {}", format.name().to_uppercase());
        (label, paths.gguf(format), format)
    }));
    for (label, path, format) in candle_inputs {
        let vectors = bert_vectors(&load_bert(&candle, &path, "candle"));
        let (allowed, compared) = (bert_min_cosine(format), "f32 reference forward");
        rows.push(bert_row(
            &label, "candle", compared, allowed, &vectors, &reference,
        ));
        // llama.cpp on the GGUF of the same dtype (the HF folder is F32).
        let compared = format!("llama.cpp GGUF {}", format.name().to_uppercase());
        let llama = &llama_vectors[format.name()];
        let allowed = BERT_MIN_COSINE_ENGINES;
        rows.push(bert_row(
            &label, "candle", &compared, allowed, &vectors, llama,
        ));
    }
    let header = "| architecture | input | backend | compared with | inputs | min cosine allowed | result |\n\
                  |---|---|---|---|---|---|---|";
    let table = format!(
        "{header}\n{}\n",
        rows.iter()
            .map(|r| r.stable.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let measured: Vec<String> = rows
        .iter()
        .map(|r| format!("{} min cosine {}", r.stable, r.measured))
        .collect();
    eprintln!("{header}\n{}", measured.join("\n"));
    let failures: Vec<&String> = rows.iter().filter_map(|r| r.failure.as_ref()).collect();
    assert!(failures.is_empty(), "embeddings disagree:\n{failures:#?}");
    if device() != "cpu" {
        // As for the generation table: the GPU machine runs this binary outside the build
        // tree, where the target folder does not exist; its table is printed above.
        return;
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agreement-embed-table.md");
    std::fs::write(&out, &table).expect("write the embedding table");
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/models.md");
    let documented = std::fs::read_to_string(&docs).unwrap_or_default();
    assert!(
        documented.contains(&table),
        "docs/models.md does not hold the embedding table this test produced; copy {} into it",
        out.display()
    );
}
