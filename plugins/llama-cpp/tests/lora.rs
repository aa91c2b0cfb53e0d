//! LoRA adapters on stories260K: a small GGUF LoRA written here (random A/B on the output
//! projection) changes the greedy output; scale 0 and "no adapters" give the base output;
//! generations may switch adapter sets among those loaded.

mod common;

use common::*;
use llmlocal_plugin_api::{
    abi_stable::std_types::{ROption, RString, RVec},
    AdapterRequest, ErrorKind, GenerateRequest, Step,
};
use std::{io::Write, path::Path};

enum Value<'a> {
    Str(&'a str),
    F32(f32),
}

/// A minimal GGUF v3 writer: string/f32 keys and F32 tensors.
fn write_gguf(path: &Path, kvs: &[(&str, Value)], tensors: &[(&str, Vec<u64>, Vec<f32>)]) {
    let mut out = Vec::new();
    let u64b = |v: u64| v.to_le_bytes();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&u64b(tensors.len() as u64));
    out.extend_from_slice(&u64b(kvs.len() as u64));
    for (key, value) in kvs {
        out.extend_from_slice(&u64b(key.len() as u64));
        out.extend_from_slice(key.as_bytes());
        match value {
            Value::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&u64b(s.len() as u64));
                out.extend_from_slice(s.as_bytes());
            }
            Value::F32(f) => {
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&f.to_le_bytes());
            }
        }
    }
    let mut offset = 0u64;
    for (name, dims, data) in tensors {
        out.extend_from_slice(&u64b(name.len() as u64));
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend_from_slice(&u64b(*d));
        }
        out.extend_from_slice(&0u32.to_le_bytes()); // F32
        out.extend_from_slice(&u64b(offset));
        offset += (data.len() as u64 * 4).div_ceil(32) * 32;
    }
    while out.len() % 32 != 0 {
        out.push(0);
    }
    for (_, _, data) in tensors {
        for v in data {
            out.extend_from_slice(&v.to_le_bytes());
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
    }
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(&out))
        .expect("write the LoRA file");
}

/// Deterministic noise in [-1, 1].
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A rank-4 LoRA on stories260K's output projection (64 -> 512).
fn write_lora(path: &Path) {
    let rank = 4u64;
    write_gguf(
        path,
        &[
            ("general.type", Value::Str("adapter")),
            ("general.architecture", Value::Str("llama")),
            ("adapter.type", Value::Str("lora")),
            ("adapter.lora.alpha", Value::F32(rank as f32)),
        ],
        &[
            (
                "output.weight.lora_a",
                vec![64, rank],
                noise(64 * rank as usize, 1),
            ),
            (
                "output.weight.lora_b",
                vec![rank, 512],
                noise(rank as usize * 512, 2)
                    .into_iter()
                    .map(|v| v * 4.0)
                    .collect(),
            ),
        ],
    );
}

fn adapter(path: &Path, scale: f32) -> AdapterRequest {
    AdapterRequest {
        path: RString::from(path.to_string_lossy().as_ref()),
        scale,
    }
}

fn with_adapters(path: &Path, adapters: Vec<AdapterRequest>) -> llmlocal_plugin_api::LoadRequest {
    let mut req = request(path);
    req.adapters = RVec::from(adapters);
    req
}

#[test]
fn a_lora_changes_the_output_and_scale_zero_does_not() {
    let Some(path) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lora = dir.path().join("lora.gguf");
    write_lora(&lora);

    let base = load(request(&path));
    let prompt = prompt(base.as_ref(), "Once upon a time");
    let base_out = generate(base.as_ref(), GenerateRequest::greedy(prompt.clone(), 24));

    let tuned = load(with_adapters(&path, vec![adapter(&lora, 1.0)]));
    let tuned_out = generate(tuned.as_ref(), GenerateRequest::greedy(prompt.clone(), 24));
    assert_ne!(tuned_out.ids, base_out.ids, "the adapter had no effect");

    let zero = load(with_adapters(&path, vec![adapter(&lora, 0.0)]));
    let zero_out = generate(zero.as_ref(), GenerateRequest::greedy(prompt, 24));
    assert_eq!(zero_out, base_out);
}

#[test]
fn generations_switch_among_the_loaded_adapters() {
    let Some(path) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lora = dir.path().join("lora.gguf");
    write_lora(&lora);
    let base = load(request(&path));
    let prompt = prompt(base.as_ref(), "Once upon a time");
    let base_out = generate(base.as_ref(), GenerateRequest::greedy(prompt.clone(), 24));
    drop(base);

    let mut req = with_adapters(&path, vec![adapter(&lora, 1.0)]);
    req.parallel = 4;
    let model = load(req);
    let tuned_out = generate(model.as_ref(), GenerateRequest::greedy(prompt.clone(), 24));
    let with = |adapters: Vec<AdapterRequest>| {
        let mut r = GenerateRequest::greedy(prompt.clone(), 24);
        r.adapters = ROption::RSome(RVec::from(adapters));
        r
    };
    // No adapters for this generation: the base model's output.
    assert_eq!(generate(model.as_ref(), with(vec![])), base_out);
    // The load set named explicitly, and the default again.
    assert_eq!(
        generate(model.as_ref(), with(vec![adapter(&lora, 1.0)])),
        tuned_out
    );
    // Interleaved groups: started together, each gets its own adapters (the decode thread
    // runs the groups one after the other).
    let mut gens = [
        model.generate(with(vec![])).unwrap(),
        model
            .generate(GenerateRequest::greedy(prompt.clone(), 24))
            .unwrap(),
        model.generate(with(vec![])).unwrap(),
        model.generate(with(vec![adapter(&lora, 0.0)])).unwrap(),
    ];
    let outs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = gens
            .iter_mut()
            .map(|g| s.spawn(move || drain(g.as_mut())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(outs[0], base_out);
    assert_eq!(outs[1], tuned_out);
    assert_eq!(outs[2], base_out);
    assert_eq!(outs[3], base_out);
    assert!(matches!(gens[0].next().unwrap(), Step::Finished(_)));
}

#[test]
fn an_adapter_not_loaded_with_the_model_is_refused() {
    let Some(path) = stories() else { return };
    let model = load(request(&path));
    let mut r = GenerateRequest::greedy(vec![1, 400], 4);
    r.adapters = ROption::RSome(RVec::from(vec![adapter(Path::new("/tmp/other.gguf"), 1.0)]));
    match model.generate(r) {
        Ok(_) => panic!("should be refused"),
        Err(err) => assert_kind(&err, ErrorKind::InvalidRequest),
    }
}
