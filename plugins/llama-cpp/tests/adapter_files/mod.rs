//! GGUF LoRA files for stories260K written by the tests (a minimal GGUF v3 writer).
#![allow(dead_code)]

use std::{io::Write, path::Path};

pub enum Value<'a> {
    Str(&'a str),
    F32(f32),
}

/// A minimal GGUF v3 writer: string/f32 keys and F32 tensors.
pub fn write_gguf(path: &Path, kvs: &[(&str, Value)], tensors: &[(&str, Vec<u64>, Vec<f32>)]) {
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

/// A rank-4 LoRA on the output projection with noise from `seed`; `input` is lora_a's input
/// width (stories260K's is 64: anything else does not fit the model).
pub fn write_lora_seeded(path: &Path, seed: u64, input: u64) {
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
                vec![rank, 512],
                noise(rank as usize * 512, seed + 1)
                    .into_iter()
                    .map(|v| v * 4.0)
                    .collect(),
            ),
        ],
    );
}
