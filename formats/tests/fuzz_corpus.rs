//! CI's bounded fuzzing, on stable Rust without libFuzzer: every seed goes through a
//! fixed-seed mutation loop, and each input through the same entry function
//! (`llmlocal_formats::fuzz`) its cargo-fuzz target calls. The GGUF seeds are written here by
//! our own writer (no model files in the repository; `LLMLOCAL_FUZZ_WRITE_SEEDS=DIR` also
//! writes them to DIR for libFuzzer, see fuzz/README.md); the PEFT seeds are the JSON files in
//! `fuzz/corpus/peft_config/`.
//!
//! An input fails when it panics, when the memory it holds at once exceeds
//! [`memory_budget`] (a count or length read from the file was trusted), or when it runs for
//! seconds (a loop a length drives). The failing input is written to a file whose path the
//! failure prints; `cargo +nightly fuzz run <target> <file>` replays it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use llmlocal_formats::fuzz;

/// Mutated inputs per seed.
const ITERATIONS: usize = 60_000;
/// Inputs grow through duplications and insertions up to this size.
const MAX_INPUT: usize = 128 << 10;
/// An input that takes this long is a loop driven by the input, not parsing.
const SLOW: Duration = Duration::from_secs(5);

/// The memory one input may hold at once: the parsed structures are a small multiple of the
/// bytes they come from (a 13-byte key/value becomes a key, a value and a map entry; mutants
/// stay under 8 times their size), plus the reader's fixed preallocation (256 KiB).
fn memory_budget(input_len: usize) -> usize {
    16 * input_len + (512 << 10)
}

// ---- counting allocator: the peak of live bytes, per thread (tests run in parallel) ----

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(bytes: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(bytes);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrank(bytes: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(bytes)));
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `entry` on `input`; returns whether it parsed, and the bytes it held at its peak.
fn measured(entry: fn(&[u8]) -> bool, input: &[u8]) -> (std::thread::Result<bool>, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(base));
    let result = catch_unwind(AssertUnwindSafe(|| entry(input)));
    (result, PEAK.with(Cell::get).saturating_sub(base))
}

// ---- mutations ----

/// Values that hit counts, lengths, type codes and offsets.
const U64_EXTREMES: [u64; 9] = [
    0,
    1,
    2,
    u64::MAX,
    u64::MAX / 2,
    1 << 63,
    1 << 32,
    u32::MAX as u64,
    1 << 30,
];
const U32_EXTREMES: [u32; 9] = [0, 1, 8, 9, 12, 13, 30, u32::MAX, 1 << 31];
/// JSON fragments for the PEFT config, and GGUF fragments (keys and type codes).
const TOKENS: [&[u8]; 22] = [
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"18446744073709551616",
    b"\"r\": 0",
    b"\"^q_proj\"",
    b"\"rank_pattern\": {\"q_proj\": 2}",
    b"\"alpha_pattern\": {\"\": 1}",
    b"\"target_modules\": [1]",
    b"\\u0000",
    b"\xff\xfe",
    b"general.alignment",
    b"GGUF\x03\x00\x00\x00",
];

fn mutate(rng: &mut fastrand::Rng, data: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let at = |rng: &mut fastrand::Rng, data: &Vec<u8>| rng.usize(..=data.len());
    match rng.u8(..11) {
        0 if !data.is_empty() => {
            let i = rng.usize(..data.len());
            data[i] ^= 1 << rng.u8(..8);
        }
        1 if !data.is_empty() => {
            let i = rng.usize(..data.len());
            data[i] = [0, 0xff, 0x7f, 0x80, rng.u8(..)][rng.usize(..5)];
        }
        2 if data.len() >= 8 => {
            // 8-byte aligned offsets hold the header's counts; any offset may hold a length.
            let mut i = rng.usize(..=data.len() - 8);
            if rng.bool() {
                i &= !7;
            }
            let v = U64_EXTREMES[rng.usize(..U64_EXTREMES.len())];
            let v = if rng.bool() {
                v
            } else {
                data.len() as u64 + v % 3
            };
            data[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        3 if data.len() >= 4 => {
            let i = rng.usize(..=data.len() - 4);
            let v = U32_EXTREMES[rng.usize(..U32_EXTREMES.len())];
            data[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
        4 => data.truncate(at(rng, data)),
        5 if !data.is_empty() => {
            let start = rng.usize(..data.len());
            let end = rng.usize(start..=data.len().min(start + 256));
            let chunk = data[start..end].to_vec();
            let i = at(rng, data);
            data.splice(i..i, chunk);
        }
        6 => {
            let n = rng.usize(1..16);
            let i = at(rng, data);
            data.splice(i..i, std::iter::repeat_with(|| rng.u8(..)).take(n));
        }
        7 if !data.is_empty() => {
            let start = rng.usize(..data.len());
            let end = rng.usize(start..=data.len().min(start + 64));
            data.drain(start..end);
        }
        8 => {
            let token = TOKENS[rng.usize(..TOKENS.len())];
            let i = at(rng, data);
            data.splice(i..i, token.iter().copied());
        }
        9 => {
            let token = TOKENS[rng.usize(..TOKENS.len())];
            let i = at(rng, data);
            let end = (i + token.len()).min(data.len());
            data.splice(i..end, token.iter().copied());
        }
        _ => {
            // Crossover: this input's start, another seed's end.
            let other = &seeds[rng.usize(..seeds.len())];
            let cut = at(rng, data);
            let from = rng.usize(..=other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
    }
    data.truncate(MAX_INPUT);
}

// ---- the loop ----

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    if target == "gguf_reader" {
        return gguf_seeds();
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    seeds.sort();
    let seeds: Vec<_> = seeds
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read seed");
            (path, bytes)
        })
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// Small GGUF files from our writer that reach every part of the reader: every metadata and
/// array type with a non-default alignment and F32/F16/Q8_0 tensors; a llama model's
/// metadata and tokenizer arrays with Q8_0 weights; a LoRA adapter's F32 pairs.
fn gguf_seeds() -> Vec<(PathBuf, Vec<u8>)> {
    use llmlocal_formats::gguf::{
        write_to_vec, GgmlType, MetaArray, MetaValue as V, TensorSpec, ALIGNMENT_KEY,
    };
    let ramp = |n: usize| -> Vec<f32> { (0..n).map(|i| (i as f32 * 0.37).sin()).collect() };
    let write = |meta: Vec<(&str, V)>, tensors: Vec<(TensorSpec, Vec<f32>)>| {
        let borrowed: Vec<_> = tensors
            .iter()
            .map(|(t, v)| (t.clone(), v.as_slice()))
            .collect();
        write_to_vec(&meta, &borrowed).expect("write a seed")
    };
    let all_types = write(
        vec![
            (ALIGNMENT_KEY, V::U32(64)),
            ("u8", V::U8(7)),
            ("i8", V::I8(-7)),
            ("u16", V::U16(700)),
            ("i16", V::I16(-700)),
            ("i32", V::I32(-70_000)),
            ("f32", V::F32(0.5)),
            ("bool", V::Bool(true)),
            ("str", V::Str("text ✓".into())),
            ("u64", V::U64(1 << 40)),
            ("i64", V::I64(-(1 << 40))),
            ("f64", V::F64(-0.25)),
            ("a.u8", V::Array(MetaArray::U8(vec![1, 2]))),
            ("a.i8", V::Array(MetaArray::I8(vec![-1, 2]))),
            ("a.u16", V::Array(MetaArray::U16(vec![1, 2]))),
            ("a.i16", V::Array(MetaArray::I16(vec![-1, 2]))),
            ("a.u32", V::Array(MetaArray::U32(vec![1, 2]))),
            ("a.i32", V::Array(MetaArray::I32(vec![-1, 2]))),
            ("a.f32", V::Array(MetaArray::F32(vec![0.5, -1.0]))),
            ("a.bool", V::Array(MetaArray::Bool(vec![true, false]))),
            (
                "a.str",
                V::Array(MetaArray::Str(vec!["a".into(), "".into()])),
            ),
            ("a.u64", V::Array(MetaArray::U64(vec![1, 2]))),
            ("a.i64", V::Array(MetaArray::I64(vec![-1, 2]))),
            ("a.f64", V::Array(MetaArray::F64(vec![0.5, 2.0]))),
        ],
        vec![
            (TensorSpec::new("f32", vec![3, 2], GgmlType::F32), ramp(6)),
            (TensorSpec::new("f16", vec![4], GgmlType::F16), ramp(4)),
            (
                TensorSpec::new("q8_0", vec![32, 2], GgmlType::Q8_0),
                ramp(64),
            ),
        ],
    );
    let vocab: Vec<String> = (0..48).map(|i| format!("tok{i}")).collect();
    let llama = write(
        vec![
            ("general.architecture", V::Str("llama".into())),
            ("general.name", V::Str("fuzz seed".into())),
            ("llama.context_length", V::U32(128)),
            ("llama.embedding_length", V::U32(32)),
            ("llama.block_count", V::U32(1)),
            ("llama.feed_forward_length", V::U32(64)),
            ("llama.attention.head_count", V::U32(4)),
            ("llama.attention.head_count_kv", V::U32(2)),
            ("llama.rope.freq_base", V::F32(10_000.0)),
            ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
            ("tokenizer.ggml.model", V::Str("llama".into())),
            ("tokenizer.ggml.tokens", V::Array(MetaArray::Str(vocab))),
            (
                "tokenizer.ggml.scores",
                V::Array(MetaArray::F32(vec![0.0; 48])),
            ),
            (
                "tokenizer.ggml.token_type",
                V::Array(MetaArray::I32(vec![1; 48])),
            ),
            ("tokenizer.ggml.bos_token_id", V::U32(1)),
            ("tokenizer.ggml.eos_token_id", V::U32(2)),
        ],
        vec![
            (
                TensorSpec::new("token_embd.weight", vec![32, 48], GgmlType::Q8_0),
                ramp(32 * 48),
            ),
            (
                TensorSpec::new("blk.0.attn_q.weight", vec![32, 32], GgmlType::Q8_0),
                ramp(1024),
            ),
            (
                TensorSpec::new("output_norm.weight", vec![32], GgmlType::F32),
                ramp(32),
            ),
        ],
    );
    let lora = write(
        vec![
            ("general.architecture", V::Str("llama".into())),
            ("general.type", V::Str("adapter".into())),
            ("adapter.type", V::Str("lora".into())),
            ("adapter.lora.alpha", V::F32(16.0)),
        ],
        vec![
            (
                TensorSpec::new("blk.0.attn_q.weight.lora_a", vec![32, 4], GgmlType::F32),
                ramp(128),
            ),
            (
                TensorSpec::new("blk.0.attn_q.weight.lora_b", vec![4, 32], GgmlType::F32),
                ramp(128),
            ),
        ],
    );
    let seeds = [
        ("all-types.gguf", all_types),
        ("llama-q8_0.gguf", llama),
        ("lora.gguf", lora),
    ];
    let out = std::env::var_os("LLMLOCAL_FUZZ_WRITE_SEEDS").map(PathBuf::from);
    seeds
        .into_iter()
        .map(|(name, bytes)| {
            if let Some(dir) = &out {
                std::fs::create_dir_all(dir).expect("create the seed folder");
                std::fs::write(dir.join(name), &bytes).expect("write a seed file");
            }
            (PathBuf::from(name), bytes)
        })
        .collect()
}

/// Writes a failing input where a person can replay it, and says what failed.
fn report(target: &str, index: usize, input: &[u8], what: &str) -> String {
    let path = std::env::temp_dir().join(format!("llmlocal-fuzz-{target}-{index}.bin"));
    let saved = match std::fs::write(&path, input) {
        Ok(()) => format!("saved to {}", path.display()),
        Err(e) => format!("could not be saved ({e})"),
    };
    let head: String = input.iter().take(64).map(|b| format!("{b:02x}")).collect();
    format!(
        "{target}: input {index} ({} bytes, {saved}; starts {head}) {what}",
        input.len()
    )
}

/// Runs one input; `Err` names the failure.
fn check(
    target: &str,
    entry: fn(&[u8]) -> bool,
    index: usize,
    input: &[u8],
) -> Result<bool, String> {
    let started = Instant::now();
    let (result, peak) = measured(entry, input);
    let elapsed = started.elapsed();

    let fail = |what: String| Err(report(target, index, input, &what));
    match result {
        Err(_) => fail("panicked (its message is printed above)".into()),
        Ok(_) if peak > memory_budget(input.len()) => fail(format!(
            "held {peak} bytes at once, more than the {} its size allows",
            memory_budget(input.len())
        )),
        Ok(_) if elapsed > SLOW => fail(format!("took {elapsed:?}")),
        Ok(parsed) => Ok(parsed),
    }
}

/// Every seed as it is (each must parse), then `ITERATIONS` mutants of each. Returns the
/// share of mutants that still parsed.
fn run(target: &str, entry: fn(&[u8]) -> bool, rng_seed: u64) -> f64 {
    let seeds = corpus(target);
    let bytes: Vec<Vec<u8>> = seeds.iter().map(|(_, b)| b.clone()).collect();
    for (path, seed) in &seeds {
        // `refused-*` seeds are well-formed files the parser must refuse with an error.
        let refused = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("refused-"));
        assert_eq!(
            check(target, entry, 0, seed),
            Ok(!refused),
            "seed {} must {}",
            path.display(),
            if refused { "be refused" } else { "parse" }
        );
    }
    let mut rng = fastrand::Rng::with_seed(rng_seed);
    let mut parsed = 0usize;
    let total = ITERATIONS * bytes.len();
    for index in 0..total {
        let mut input = bytes[index % bytes.len()].clone();
        for _ in 0..rng.usize(1..=4) {
            mutate(&mut rng, &mut input, &bytes);
        }
        match check(target, entry, index, &input) {
            Ok(ok) => parsed += usize::from(ok),
            Err(failure) => panic!("{failure}"),
        }
    }
    let share = parsed as f64 / total as f64;
    eprintln!(
        "{target}: {total} mutated inputs, {:.1}% parsed",
        share * 100.0
    );
    share
}

#[test]
fn gguf_reader_survives_mutations_of_its_corpus() {
    let parsed = run("gguf_reader", fuzz::gguf_reader, 0x6767_7566);
    // Most mutants must still reach the metadata and tensors, not stop at the magic bytes.
    assert!(
        parsed > 0.05,
        "only {:.1}% of mutants parsed",
        parsed * 100.0
    );
}

#[test]
fn peft_config_survives_mutations_of_its_corpus() {
    let parsed = run("peft_config", fuzz::peft_config, 0x7065_6674);
    assert!(
        parsed > 0.02,
        "only {:.1}% of mutants parsed",
        parsed * 100.0
    );
}

/// A 32-byte header that claims 2^32 - 1 tensors and nothing else.
fn header_claiming_tensors() -> Vec<u8> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(u64::from(u32::MAX).to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(4u64.to_le_bytes());
    bytes
}

#[test]
fn a_huge_count_costs_little_memory_when_the_file_length_is_unknown() {
    // The streaming reader cannot check a count against the file; it preallocated 65,536
    // tensor infos (4 MiB) for these 32 bytes before the fix, 4,096 (256 KiB) after.
    let bytes = header_claiming_tensors();
    let read = |data: &[u8]| llmlocal_formats::gguf::read_header(data).is_ok();
    let (result, peak) = measured(read, &bytes);
    assert!(matches!(result, Ok(false)), "the header is cut short");
    assert!(peak < 512 << 10, "held {peak} bytes");
}
