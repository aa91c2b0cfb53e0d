//! LoRA adapters read at run time into an already loaded model (stories260K): a generation
//! naming an adapter the model was not loaded with gets exactly the output of a model loaded
//! with it; generations with different adapters started together each get their solo
//! output; a bad adapter file fails only its own generation; past `MAX_ADAPTERS` files the
//! model is reloaded to free them (outputs unchanged, memory not growing, a failed reload
//! fails cleanly). Also prints the time of a first request with a new adapter, read at run
//! time, against loading a second instance with it (what the host did before), and the time
//! of a reload (from the plugin's log event).

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
    // Both files are new to the model when these start together.
    eight_concurrent_equal_their_solo_outputs(model.as_ref(), &path, &a, &b);
}

/// Eight generations started together on `model` (two prompts; no adapter, `a` at 1.0 and
/// 0.3, `b` at 0.8) each equal the same generation on a fresh load of `solo_path`.
fn eight_concurrent_equal_their_solo_outputs(
    model: &dyn Model,
    solo_path: &Path,
    a: &Path,
    b: &Path,
) {
    let prompts = [prompt(model, "Once upon a time"), prompt(model, "The dog")];
    let sets = [
        vec![],
        vec![adapter(a, 1.0)],
        vec![adapter(b, 0.8)],
        vec![adapter(a, 0.3)],
    ];
    let mut expected = Vec::new();
    let mut requests = Vec::new();
    for (i, set) in sets.iter().cycle().take(8).enumerate() {
        let prompt = &prompts[i % 2];
        expected.push(solo(solo_path, set.clone(), prompt));
        requests.push(with(prompt, set.clone()));
    }
    let outputs = drain_all(model, requests);
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

/// Captures the plugin's "reloaded the model" log events (a process-wide subscriber: the
/// decode thread logs from its own thread). Tests tell their events apart by the model path,
/// a copy of the model in each test's own folder.
mod reloads {
    use std::{
        fmt::Debug,
        path::Path,
        sync::{Mutex, Once},
    };
    use tracing::{
        field::{Field, Visit},
        span, Event, Metadata, Subscriber,
    };

    const MESSAGE: &str = "reloaded the model to free its LoRA adapters";

    #[derive(Debug, Default, Clone)]
    pub struct Reload {
        message: String,
        pub model: String,
        pub ms: f64,
        pub freed: u64,
    }

    static SEEN: Mutex<Vec<Reload>> = Mutex::new(Vec::new());

    impl Visit for Reload {
        fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
            match field.name() {
                "message" => self.message = format!("{value:?}"),
                "model" => self.model = format!("{value:?}"),
                _ => {}
            }
        }
        fn record_f64(&mut self, field: &Field, value: f64) {
            if field.name() == "ms" {
                self.ms = value;
            }
        }
        fn record_u64(&mut self, field: &Field, value: u64) {
            if field.name() == "freed" {
                self.freed = value;
            }
        }
    }

    struct Capture;

    impl Subscriber for Capture {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata
                .target()
                .starts_with("llmlocal_backend_llama_cpp::engine")
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut reload = Reload::default();
            event.record(&mut reload);
            if reload.message == MESSAGE {
                SEEN.lock().unwrap().push(reload);
            }
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }

    pub fn install() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            tracing::subscriber::set_global_default(Capture).expect("no other subscriber");
        });
    }

    /// The reloads of the model at `path` so far.
    pub fn of(path: &Path) -> Vec<Reload> {
        let path = path.display().to_string();
        let seen = SEEN.lock().unwrap();
        seen.iter().filter(|r| r.model == path).cloned().collect()
    }
}

/// A copy of `model` in `dir`: its own path names its reload events, and it can be deleted.
fn own_copy(model: &Path, dir: &Path) -> PathBuf {
    let copy = dir.join("model.gguf");
    std::fs::copy(model, &copy).unwrap();
    copy
}

/// What the reload tests start from: reload events recorded, a temporary folder holding the
/// model's own copy (`path`) and two different LoRAs (`a`, `b`).
struct ReloadSetup {
    dir: tempfile::TempDir,
    path: PathBuf,
    a: PathBuf,
    b: PathBuf,
}

fn reload_setup(model: &Path) -> ReloadSetup {
    reloads::install();
    let dir = tempfile::tempdir().unwrap();
    let path = own_copy(model, dir.path());
    let (a, b) = two_loras(dir.path());
    ReloadSetup { dir, path, a, b }
}

/// `count` distinct adapter files, copies of `sources` in turn, each with its source's index.
fn copies(dir: &Path, sources: &[PathBuf], count: usize, tag: &str) -> Vec<(PathBuf, usize)> {
    (0..count)
        .map(|i| {
            let file = dir.join(format!("{tag}{i}.gguf"));
            std::fs::copy(&sources[i % sources.len()], &file).unwrap();
            (file, i % sources.len())
        })
        .collect()
}

/// Makes the model read `count` new copies of `source` (one short generation each).
fn read_copies(model: &dyn Model, dir: &Path, source: &Path, count: usize, prompt: &[u32]) {
    let sources = [source.to_path_buf()];
    for (file, _) in copies(dir, &sources, count, "read") {
        let mut r = with(prompt, vec![adapter(&file, 1.0)]);
        r.max_tokens = 2;
        generate(model, r);
    }
}

/// Generates with each file in turn on one loaded model, MAX_ADAPTERS + 4 copies of two
/// different LoRAs: every output equals that of a model loaded with the file's source from
/// the start, and the model was reloaded once, freeing MAX_ADAPTERS. Returns the reload's
/// time in ms.
fn serve_past_the_cap(model_file: &Path, sources: &[PathBuf], text: &str) -> f64 {
    reloads::install();
    let dir = tempfile::tempdir().unwrap();
    let path = own_copy(model_file, dir.path());
    let model = load(request(&path));
    let prompt = prompt(model.as_ref(), text);
    let base = generate(
        model.as_ref(),
        GenerateRequest::greedy(prompt.clone(), TOKENS),
    );
    let expected: Vec<Output> = sources
        .iter()
        .map(|source| solo(&path, vec![adapter(source, 1.0)], &prompt))
        .collect();
    assert_ne!(expected[0].ids, base.ids, "the adapter changes the output");
    assert_ne!(expected[0].ids, expected[1].ids, "two LoRAs, two outputs");
    let files = copies(dir.path(), sources, MAX_ADAPTERS + 4, "lora");
    for (i, (file, source)) in files.iter().enumerate() {
        let got = generate(model.as_ref(), with(&prompt, vec![adapter(file, 1.0)]));
        assert_eq!(got, expected[*source], "adapter file {i}");
    }
    let ms = one_reload_freeing_all(&path);
    // After the reload: the base, and a file read before the reload (read again now).
    assert_eq!(plain_output(model.as_ref(), &prompt), base);
    let (first, source) = &files[0];
    assert_eq!(
        generate(model.as_ref(), with(&prompt, vec![adapter(first, 1.0)])),
        expected[*source]
    );
    ms
}

/// Asserts the model at `path` was reloaded exactly once, freeing every adapter it held;
/// returns how long the reload took (ms).
fn one_reload_freeing_all(path: &Path) -> f64 {
    let seen = reloads::of(path);
    assert_eq!(seen.len(), 1, "one reload: {seen:?}");
    assert_eq!(seen[0].freed, MAX_ADAPTERS as u64);
    seen[0].ms
}

/// A greedy generation that names no adapters (the model's load-time ones apply).
fn plain_output(model: &dyn Model, prompt: &[u32]) -> Output {
    generate(model, GenerateRequest::greedy(prompt.to_vec(), TOKENS))
}

#[test]
fn more_than_max_adapters_files_are_served_by_reloading_the_model() {
    let Some(path) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_loras(dir.path());
    let ms = serve_past_the_cap(&path, &[a, b], "Once upon a time");
    eprintln!("stories260K: reload to free {MAX_ADAPTERS} adapters took {ms:.1} ms");
}

/// A rank-4 LoRA on the fixture model's output projection (64 -> 288).
fn write_fixture_lora(path: &Path, seed: u64) {
    adapter_files::write_output_lora(path, seed, (64, 288), 16.0);
}

#[test]
fn the_fixture_model_is_reloaded_past_max_adapters_with_unchanged_outputs() {
    let paths = llmlocal_fixtures::ensure_default().expect("fixtures are written");
    let dir = tempfile::tempdir().unwrap();
    let sources = [dir.path().join("f1.gguf"), dir.path().join("f2.gguf")];
    write_fixture_lora(&sources[0], 1);
    write_fixture_lora(&sources[1], 7);
    let ms = serve_past_the_cap(&paths.gguf_f32, &sources, "Hello world ");
    eprintln!("fixture (f32): reload to free {MAX_ADAPTERS} adapters took {ms:.1} ms");
}

#[test]
fn concurrent_generations_across_a_reload_each_get_their_solo_output() {
    let Some(stories) = stories() else { return };
    let ReloadSetup { dir, path, a, b } = reload_setup(&stories);
    let mut req = request(&path);
    req.parallel = 4;
    let model = load(req);
    // The model holds MAX_ADAPTERS - 1 files: the second new file below forces a reload while
    // generations with and without adapters are queued or running.
    read_copies(model.as_ref(), dir.path(), &a, MAX_ADAPTERS - 1, &[1, 400]);
    let fresh = copies(dir.path(), &[a, b], 2, "fresh");
    let (new_a, new_b) = (&fresh[0].0, &fresh[1].0);
    eight_concurrent_equal_their_solo_outputs(model.as_ref(), &stories, new_a, new_b);
    assert_eq!(reloads::of(&path).len(), 1, "the model was reloaded once");
}

#[test]
fn the_load_time_adapter_is_read_again_after_a_reload() {
    let Some(stories) = stories() else { return };
    let ReloadSetup { dir, path, a, b } = reload_setup(&stories);
    let mut req = request(&path);
    req.adapters = RVec::from(vec![adapter(&a, 1.0)]);
    let model = load(req);
    let prompt = prompt(model.as_ref(), "Once upon a time");
    let loaded_with_a = generate(
        model.as_ref(),
        GenerateRequest::greedy(prompt.clone(), TOKENS),
    );
    assert_eq!(loaded_with_a, solo(&path, vec![adapter(&a, 1.0)], &prompt));
    // The load-time file counts: MAX_ADAPTERS more files make one reload.
    read_copies(model.as_ref(), dir.path(), &b, MAX_ADAPTERS, &prompt);
    one_reload_freeing_all(&path);
    assert_eq!(plain_output(model.as_ref(), &prompt), loaded_with_a);
    assert_eq!(
        generate(model.as_ref(), with(&prompt, vec![])),
        solo(&path, vec![], &prompt)
    );
}

/// Resident set size of this process in bytes (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn reload_cycles_do_not_grow_memory_by_a_model_each() {
    let Some(stories) = stories() else { return };
    if rss_bytes().is_none() {
        eprintln!("SKIP: /proc/self/statm is not readable here");
        return;
    }
    let ReloadSetup { dir, path, a, b } = reload_setup(&stories);
    let model_size = std::fs::metadata(&path).unwrap().len();
    // A small context: every adapter read re-creates the context, and the allocator need not
    // give a freed KV cache back at once; with the default (4 x 2048 cells, 5 MiB) that noise
    // alone is several model sizes.
    let mut req = request(&path);
    req.context_length = 64;
    req.parallel = 1;
    req.batch_size = 16;
    let model = load(req);
    let cycle = |n: usize| {
        let files = copies(
            dir.path(),
            &[a.clone(), b.clone()],
            MAX_ADAPTERS,
            &format!("c{n}_"),
        );
        for (file, _) in files {
            let mut r = with(&[1, 400], vec![adapter(&file, 1.0)]);
            r.max_tokens = 8;
            assert_eq!(generate(model.as_ref(), r).ids.len(), 8);
        }
    };
    // Two warm-up cycles (the allocator's pools, llama.cpp's first-use buffers), then three.
    cycle(0);
    cycle(1);
    let before = rss_bytes().unwrap();
    for n in 2..5 {
        cycle(n);
    }
    let after = rss_bytes().unwrap();
    let reloads = reloads::of(&path).len();
    assert!(reloads >= 4, "{reloads} reloads");
    let growth = after.saturating_sub(before);
    eprintln!(
        "RSS over 3 reload cycles: {before} -> {after} bytes (growth {growth}; model file \
         {model_size} bytes)"
    );
    assert!(
        growth < model_size,
        "RSS grew by {growth} bytes over 3 reload cycles (model file: {model_size} bytes)"
    );
}

#[test]
fn a_failed_reload_fails_the_queued_jobs_and_later_calls_cleanly() {
    let Some(stories) = stories() else { return };
    let ReloadSetup { dir, path, a, .. } = reload_setup(&stories);
    let model = load(request(&path));
    let prompt = vec![1, 400];
    let files = copies(dir.path(), &[a], MAX_ADAPTERS + 1, "lora");
    for (file, _) in &files[..MAX_ADAPTERS] {
        generate(model.as_ref(), with(&prompt, vec![adapter(file, 1.0)]));
    }
    std::fs::remove_file(&path).unwrap();
    let err = first_step_error(
        model.as_ref(),
        with(&prompt, vec![adapter(&files[MAX_ADAPTERS].0, 1.0)]),
    );
    assert_kind(&err, ErrorKind::NotFound);
    assert!(
        err.message.contains("cannot reload model") && err.message.contains("unload the model"),
        "{err}"
    );
    // The model is gone: later calls fail with a clear error, nothing panics.
    let err = first_step_error(model.as_ref(), GenerateRequest::greedy(prompt, TOKENS));
    assert!(err.message.contains("load it again"), "{err}");
    let err = model.tokenize("Once", true, false).unwrap_err();
    assert!(err.message.contains("no longer loaded"), "{err}");
    assert!(reloads::of(&path).is_empty(), "no reload succeeded");
}
