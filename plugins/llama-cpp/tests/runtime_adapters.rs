//! LoRA adapters read at run time into an already loaded model (stories260K): a generation
//! naming an adapter the model was not loaded with gets exactly the output of a model loaded
//! with it; generations with different adapters started together each get their solo
//! output; a bad adapter file fails only its own generation; the cache of read adapters is
//! bounded. Also prints the time of a first request with a new adapter, read at run time,
//! against loading a second instance with it (what the host did before).

mod adapter_files;
mod common;

use adapter_files::{write_gguf, write_lora_seeded, Value};
use common::*;
use llmlocal_backend_llama_cpp::adapters::MAX_ADAPTERS;
use llmlocal_plugin_api::{
    abi_stable::std_types::{ROption, RString, RVec},
    AdapterRequest, ErrorKind, GenerateRequest, Model, Step,
};
use std::{
    path::{Path, PathBuf},
    time::Instant,
};

const TOKENS: u32 = 24;

fn adapter(path: &Path, scale: f32) -> AdapterRequest {
    AdapterRequest {
        path: RString::from(path.to_string_lossy().as_ref()),
        scale,
    }
}

fn with(prompt: &[u32], adapters: Vec<AdapterRequest>) -> GenerateRequest {
    let mut r = GenerateRequest::greedy(prompt.to_vec(), TOKENS);
    r.adapters = ROption::RSome(RVec::from(adapters));
    r
}

/// Two different LoRAs on stories260K in a temporary folder.
fn two_loras(dir: &Path) -> (PathBuf, PathBuf) {
    let (a, b) = (dir.join("a.gguf"), dir.join("b.gguf"));
    write_lora_seeded(&a, 1, 64);
    write_lora_seeded(&b, 7, 64);
    (a, b)
}

fn median(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// Greedy output of a fresh instance loaded with `adapters`.
fn solo(path: &Path, adapters: Vec<AdapterRequest>, prompt: &[u32]) -> Output {
    let mut req = request(path);
    req.adapters = RVec::from(adapters);
    let model = load(req);
    generate(
        model.as_ref(),
        GenerateRequest::greedy(prompt.to_vec(), TOKENS),
    )
}

#[test]
fn an_adapter_named_at_run_time_is_read_into_the_loaded_model() {
    let Some(path) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_loras(dir.path());
    let model = load(request(&path));
    let prompt = prompt(model.as_ref(), "Once upon a time");
    let base = generate(
        model.as_ref(),
        GenerateRequest::greedy(prompt.clone(), TOKENS),
    );

    // Before: a second instance loaded with the adapter, then its first generation. Now: the
    // loaded model reads the adapter for this generation. Each timed on fresh files.
    let (mut before, mut now) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let fresh = dir.path().join(format!("fresh{i}.gguf"));
        write_lora_seeded(&fresh, 100 + i, 64);
        let started = Instant::now();
        solo(&path, vec![adapter(&fresh, 1.0)], &prompt);
        before.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        generate(model.as_ref(), with(&prompt, vec![adapter(&fresh, 1.0)]));
        now.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    eprintln!(
        "first request with a new adapter ({TOKENS} tokens), median of 5: read at run time \
         {:.1} ms; second instance loaded with it {:.1} ms",
        median(now),
        median(before)
    );
    let expected_a = solo(&path, vec![adapter(&a, 1.0)], &prompt);
    let got_a = generate(model.as_ref(), with(&prompt, vec![adapter(&a, 1.0)]));
    assert_eq!(got_a, expected_a);
    assert_ne!(got_a.ids, base.ids, "the adapter had no effect");

    // Cached now: other scales and the base switch on the same context.
    let expected_half = solo(&path, vec![adapter(&a, 0.5)], &prompt);
    assert_eq!(
        generate(model.as_ref(), with(&prompt, vec![adapter(&a, 0.5)])),
        expected_half
    );
    assert_eq!(generate(model.as_ref(), with(&prompt, vec![])), base);
    // A second file at run time.
    let expected_b = solo(&path, vec![adapter(&b, 1.0)], &prompt);
    assert_ne!(expected_b.ids, expected_a.ids, "two different adapters");
    assert_eq!(
        generate(model.as_ref(), with(&prompt, vec![adapter(&b, 1.0)])),
        expected_b
    );
    assert_eq!(
        generate(model.as_ref(), GenerateRequest::greedy(prompt, TOKENS)),
        base
    );
}

/// Drains every generation on its own thread (a queued generation waits for the running
/// ones to be read).
fn drain_all(model: &dyn Model, requests: Vec<GenerateRequest>) -> Vec<Output> {
    let mut gens: Vec<_> = requests
        .into_iter()
        .map(|r| model.generate(r).expect("generation starts"))
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = gens
            .iter_mut()
            .map(|g| s.spawn(move || drain(g.as_mut())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn concurrent_generations_with_new_and_no_adapters_each_get_their_solo_output() {
    let Some(path) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_loras(dir.path());
    let mut req = request(&path);
    req.parallel = 4;
    let model = load(req);
    let prompts = [
        prompt(model.as_ref(), "Once upon a time"),
        prompt(model.as_ref(), "The dog"),
    ];
    let sets = [
        vec![],
        vec![adapter(&a, 1.0)],
        vec![adapter(&b, 0.8)],
        vec![adapter(&a, 0.3)],
    ];
    let mut expected = Vec::new();
    let mut requests = Vec::new();
    for (i, set) in sets.iter().cycle().take(8).enumerate() {
        let prompt = &prompts[i % 2];
        expected.push(solo(&path, set.clone(), prompt));
        requests.push(with(prompt, set.clone()));
    }
    // Both files are new to the model when these start together.
    let outputs = drain_all(model.as_ref(), requests);
    for (i, (got, want)) in outputs.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "generation {i}");
    }
}

fn first_step_error(
    model: &dyn Model,
    request: GenerateRequest,
) -> llmlocal_plugin_api::PluginError {
    match model.generate(request) {
        Err(err) => err,
        Ok(mut generation) => match generation.next() {
            Err(err) => err,
            Ok(Step::Token(_) | Step::Finished(_)) => panic!("the generation should fail"),
        },
    }
}

#[test]
fn a_bad_adapter_file_fails_only_its_own_generation() {
    let Some(path) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (good, _) = two_loras(dir.path());
    let model = load(request(&path));
    let prompt = prompt(model.as_ref(), "Once upon a time");
    let base = generate(
        model.as_ref(),
        GenerateRequest::greedy(prompt.clone(), TOKENS),
    );
    let expected = solo(&path, vec![adapter(&good, 1.0)], &prompt);

    // Truncated: the GGUF header ends early.
    let truncated = dir.path().join("truncated.gguf");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..40]).unwrap();
    // Tensors that do not fit the model (lora_a is 32 wide, the output projection takes 64).
    let misfit = dir.path().join("misfit.gguf");
    write_lora_seeded(&misfit, 3, 32);
    // A complete header whose tensor data is cut off.
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 256]).unwrap();
    let cases = [
        (dir.path().join("missing.gguf"), ErrorKind::NotFound),
        (truncated, ErrorKind::UnsupportedFormat),
        (misfit, ErrorKind::AdapterIncompatible),
        (cut, ErrorKind::UnsupportedFormat),
    ];
    for (file, kind) in cases {
        let err = first_step_error(model.as_ref(), with(&prompt, vec![adapter(&file, 1.0)]));
        assert_kind(&err, kind);
        assert!(
            err.message.contains(&*file.to_string_lossy()),
            "the error names the file: {err}"
        );
        // The model keeps serving, with and without adapters.
        assert_eq!(
            generate(
                model.as_ref(),
                GenerateRequest::greedy(prompt.clone(), TOKENS)
            ),
            base
        );
        assert_eq!(
            generate(model.as_ref(), with(&prompt, vec![adapter(&good, 1.0)])),
            expected
        );
    }
    // Not a LoRA at all: a GGUF file without tensors.
    let empty = dir.path().join("empty.gguf");
    write_gguf(&empty, &[("general.type", Value::Str("adapter"))], &[]);
    let err = first_step_error(model.as_ref(), with(&prompt, vec![adapter(&empty, 1.0)]));
    assert_kind(&err, ErrorKind::UnsupportedFormat);
}

#[test]
fn a_model_reads_at_most_max_adapters_files_and_keeps_serving_those() {
    let Some(path) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = load(request(&path));
    let prompt = vec![1, 400];
    let files: Vec<PathBuf> = (0..=MAX_ADAPTERS)
        .map(|i| {
            let file = dir.path().join(format!("lora{i}.gguf"));
            write_lora_seeded(&file, 10 + 2 * i as u64, 64);
            file
        })
        .collect();
    let short = |file: &Path| {
        let mut r = with(&prompt, vec![adapter(file, 1.0)]);
        r.max_tokens = 2;
        r
    };
    for file in &files[..MAX_ADAPTERS] {
        generate(model.as_ref(), short(file));
    }
    let err = first_step_error(model.as_ref(), short(&files[MAX_ADAPTERS]));
    assert_kind(&err, ErrorKind::OutOfMemory);
    assert!(err.message.contains("unload the model"), "{err}");
    // The ones read still serve.
    assert_eq!(generate(model.as_ref(), short(&files[0])).ids.len(), 2);
}
