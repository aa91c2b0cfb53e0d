//! GGUF LoRA files for stories260K written by the tests (through `llmlocal_formats::gguf`).
#![allow(dead_code)]

use std::path::Path;

use llmlocal_formats::gguf::{write_to_vec, GgmlType, MetaValue, TensorSpec};

pub enum Value<'a> {
    Str(&'a str),
    F32(f32),
}

/// A GGUF v3 file with string/f32 keys and F32 tensors (`dims` in GGUF order).
pub fn write_gguf(path: &Path, kvs: &[(&str, Value)], tensors: &[(&str, Vec<u64>, Vec<f32>)]) {
    let meta: Vec<_> = kvs
        .iter()
        .map(|(key, value)| {
            let value = match value {
                Value::Str(s) => MetaValue::Str(s.to_string()),
                Value::F32(f) => MetaValue::F32(*f),
            };
            (*key, value)
        })
        .collect();
    let tensors: Vec<_> = tensors
        .iter()
        .map(|(name, dims, data)| {
            let spec = TensorSpec::new(*name, dims.clone(), GgmlType::F32);
            (spec, data.as_slice())
        })
        .collect();
    let bytes = write_to_vec(&meta, &tensors).expect("encode the LoRA file");
    std::fs::write(path, bytes).expect("write the LoRA file");
}

/// Deterministic noise in [-1, 1].
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
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
pub fn write_lora(path: &Path) {
    write_lora_seeded(path, 1, 64);
}

/// A rank-4 LoRA on stories260K's output projection with noise from `seed`; `input` is
/// lora_a's input width (stories260K's is 64: anything else does not fit the model).
pub fn write_lora_seeded(path: &Path, seed: u64, input: u64) {
    write_output_lora(path, seed, (input, 512), 4.0);
}

/// A rank-4 LoRA on the output projection, `(input, output)` wide, with noise from `seed`
/// and lora_b scaled by `b_scale` (large enough to change greedy outputs).
pub fn write_output_lora(path: &Path, seed: u64, (input, output): (u64, u64), b_scale: f32) {
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
                vec![input, rank],
                noise((input * rank) as usize, seed),
            ),
            (
                "output.weight.lora_b",
                vec![rank, output],
                noise((rank * output) as usize, seed + 1)
                    .into_iter()
                    .map(|v| v * b_scale)
                    .collect(),
            ),
        ],
    );
}
