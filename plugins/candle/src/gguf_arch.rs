//! GGUF architectures other than llama, on candle-transformers' quantized models: `qwen3`
//! (`quantized_qwen3`) and `phi3` (`quantized_phi3`). Those constructors index metadata and
//! tensors without checks and hard-code some numbers, so everything they read is checked here
//! first, and what they would compute wrongly is refused with `UnsupportedArchitecture`.

use crate::error::{no_panic, Result, ResultExt};
use crate::gguf::Loaded;
use crate::gguf_meta::{self as meta, Metadata};
use crate::model::ModelInfo;
use crate::net::Net;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;
use candle_transformers::models::{quantized_phi3, quantized_qwen3};
use llmlocal_plugin_api::PluginError;
use std::path::Path;

/// The GGUF architectures this module runs.
pub const ARCHITECTURES: [&str; 2] = ["qwen3", "phi3"];

/// quantized_qwen3's CPU decode cache holds this many positions.
const QWEN3_CPU_CACHE: usize = 4096;
/// quantized_phi3 computes rope with this base whatever the file says.
const PHI3_ROPE_BASE: f64 = 10_000.0;

/// The shape numbers both models read.
struct Dims {
    heads: usize,
    kv_heads: usize,
    layers: usize,
    hidden: usize,
    head_dim: usize,
    ff: usize,
    train_context: usize,
}

fn required(md: &Metadata, key: &str) -> Result<usize> {
    match md.get(key) {
        Some(Value::U32(n)) => Ok(*n as usize),
        Some(_) => Err(PluginError::unsupported_format(format!(
            "GGUF metadata key `{key}` must be a u32"
        ))),
        None => Err(PluginError::unsupported_format(format!(
            "the GGUF is missing the metadata key `{key}`"
        ))),
    }
}

fn required_f32(md: &Metadata, key: &str) -> Result<f64> {
    match md.get(key) {
        Some(Value::F32(x)) => Ok(f64::from(*x)),
        _ => Err(PluginError::unsupported_format(format!(
            "the GGUF is missing the f32 metadata key `{key}`"
        ))),
    }
}

fn dims(md: &Metadata, arch: &str) -> Result<Dims> {
    let key = |k: &str| required(md, &format!("{arch}.{k}"));
    let (heads, kv_heads, hidden) = (
        key("attention.head_count")?,
        key("attention.head_count_kv")?,
        key("embedding_length")?,
    );
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || hidden % heads != 0 {
        return Err(PluginError::unsupported_format(format!(
            "GGUF head counts do not fit: embedding {hidden}, heads {heads}, kv heads {kv_heads}"
        )));
    }
    let head_dim = match arch {
        // qwen3 states its head size; phi3's is implied.
        "qwen3" => key("attention.key_length")?,
        _ => hidden / heads,
    };
    required_f32(md, &format!("{arch}.attention.layer_norm_rms_epsilon"))?;
    Ok(Dims {
        heads,
        kv_heads,
        layers: key("block_count")?,
        hidden,
        head_dim,
        ff: key("feed_forward_length")?,
        train_context: key("context_length")?,
    })
}

/// Checks that `name` exists with `shape` (candle order: `[out, in]`).
fn expect(content: &Content, name: &str, shape: &[usize]) -> Result<()> {
    let info = content.tensor_infos.get(name).ok_or_else(|| {
        PluginError::unsupported_format(format!("the GGUF has no tensor `{name}`"))
    })?;
    if info.shape.dims() != shape {
        return Err(PluginError::unsupported_format(format!(
            "GGUF tensor `{name}` has shape {:?}, the metadata implies {shape:?}",
            info.shape.dims()
        )));
    }
    Ok(())
}

/// Every tensor the model reads; returns the vocabulary size.
fn check_tensors(content: &Content, arch: &str, d: &Dims) -> Result<usize> {
    let vocab = content
        .tensor_infos
        .get("token_embd.weight")
        .and_then(|i| i.shape.dims().first().copied())
        .ok_or_else(|| PluginError::unsupported_format("the GGUF has no `token_embd.weight`"))?;
    expect(content, "token_embd.weight", &[vocab, d.hidden])?;
    expect(content, "output_norm.weight", &[d.hidden])?;
    if arch == "phi3" || content.tensor_infos.contains_key("output.weight") {
        expect(content, "output.weight", &[vocab, d.hidden])?;
    }
    let (q, kv) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
    for l in 0..d.layers {
        let p = format!("blk.{l}");
        let t = |s: &str| format!("{p}.{s}.weight");
        expect(content, &t("attn_norm"), &[d.hidden])?;
        expect(content, &t("ffn_norm"), &[d.hidden])?;
        expect(content, &t("attn_output"), &[d.hidden, q])?;
        expect(content, &t("ffn_down"), &[d.hidden, d.ff])?;
        if arch == "phi3" {
            expect(content, &t("attn_qkv"), &[q + 2 * kv, d.hidden])?;
            expect(content, &t("ffn_up"), &[2 * d.ff, d.hidden])?;
            continue;
        }
        expect(content, &t("attn_q"), &[q, d.hidden])?;
        expect(content, &t("attn_k"), &[kv, d.hidden])?;
        expect(content, &t("attn_v"), &[kv, d.hidden])?;
        expect(content, &t("attn_q_norm"), &[d.head_dim])?;
        expect(content, &t("attn_k_norm"), &[d.head_dim])?;
        expect(content, &t("ffn_gate"), &[d.ff, d.hidden])?;
        expect(content, &t("ffn_up"), &[d.ff, d.hidden])?;
    }
    Ok(vocab)
}

fn unsupported(arch: &str, what: String) -> PluginError {
    PluginError::unsupported_architecture(format!(
        "GGUF {arch} with {what} is not supported by the candle backend; use the llama-cpp backend"
    ))
}

/// What candle's model would compute differently from the file's intent.
fn check_supported(md: &Metadata, arch: &str, d: &Dims) -> Result<()> {
    let rope_dim = meta::uint(md, &format!("{arch}.rope.dimension_count"));
    if rope_dim.is_some_and(|r| r as usize != d.head_dim) {
        return Err(unsupported(
            arch,
            format!("partial rotary embeddings ({rope_dim:?})"),
        ));
    }
    let scaling = meta::string(md, &format!("{arch}.rope.scaling.type"));
    if let Some(kind) = scaling.filter(|k| *k != "none") {
        return Err(unsupported(arch, format!("rope scaling `{kind}`")));
    }
    if arch == "phi3" {
        let base = meta::float(md, "phi3.rope.freq_base").unwrap_or(PHI3_ROPE_BASE);
        if base != PHI3_ROPE_BASE {
            return Err(unsupported(arch, format!("rope base {base}")));
        }
    } else if !d.head_dim.is_multiple_of(2) {
        return Err(unsupported(arch, format!("odd head size {}", d.head_dim)));
    }
    Ok(())
}

/// Tensors candle's model would silently ignore (rope factors, biases, experts).
fn check_no_extra_tensors(content: &Content, arch: &str) -> Result<()> {
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let known = |n: &str| {
        let base = n.split('.').rev().nth(1).unwrap_or("");
        let tail_ok = n.ends_with(".weight");
        let global = matches!(
            n,
            "token_embd.weight" | "output_norm.weight" | "output.weight"
        );
        tail_ok
            && (global
                || [
                    "attn_norm",
                    "ffn_norm",
                    "attn_output",
                    "ffn_down",
                    "ffn_up",
                    "attn_qkv",
                    "attn_q",
                    "attn_k",
                    "attn_v",
                    "attn_q_norm",
                    "attn_k_norm",
                    "ffn_gate",
                ]
                .contains(&base))
    };
    match names.into_iter().find(|n| !known(n)) {
        Some(name) => Err(unsupported(arch, format!("the tensor `{name}`"))),
        None => Ok(()),
    }
}

/// The positions a load covers: at most what the model's caches and rotary tables hold
/// (and, for phi3, its sliding window, which candle does not apply).
fn context_length(md: &Metadata, arch: &str, d: &Dims, asked: u32) -> usize {
    let mut cap = d.train_context;
    if arch == "qwen3" {
        cap = cap.min(QWEN3_CPU_CACHE);
    }
    if let Some(w) = meta::uint(md, &format!("{arch}.attention.sliding_window")) {
        if w > 0 {
            cap = cap.min(w as usize);
        }
    }
    match asked {
        0 => cap,
        n => (n as usize).min(cap),
    }
}

/// Loads a GGUF `qwen3` or `phi3` file.
pub fn load(
    mut content: Content,
    file: &mut std::fs::File,
    path: &Path,
    device: &Device,
    context: u32,
) -> Result<Loaded> {
    let arch = meta::string(&content.metadata, "general.architecture")
        .unwrap_or("")
        .to_string();
    let d = dims(&content.metadata, &arch)?;
    let vocab_size = check_tensors(&content, &arch, &d)?;
    check_supported(&content.metadata, &arch, &d)?;
    check_no_extra_tensors(&content, &arch)?;
    let vocab = crate::gguf::load_vocab(path, &content.metadata)?;
    let context = context_length(&content.metadata, &arch, &d, context);
    let (params, size) = crate::gguf::sizes(&content);
    let name = meta::string(&content.metadata, "general.name")
        .map(str::to_string)
        .unwrap_or_else(|| crate::gguf::file_stem(path));
    // quantized_qwen3 computes its rope tables (and mask) in `general.dtype`, F16 when the key
    // is missing, as it is in llama.cpp's files: F16 angles are wrong by far more than
    // rounding at long positions, so ask for F32.
    content
        .metadata
        .insert("general.dtype".to_string(), Value::U32(0));
    let net = no_panic("reading the GGUF tensors", || {
        let read = |e: candle_core::Error| {
            PluginError::unsupported_format(format!(
                "cannot read the tensors of {}: {e}",
                path.display()
            ))
        };
        Ok(match arch.as_str() {
            "qwen3" => Net::GgufQwen3(
                quantized_qwen3::ModelWeights::from_gguf(content, file, device).map_err(read)?,
            ),
            _ => Net::GgufPhi3(
                quantized_phi3::ModelWeights::from_gguf(false, content, file, device)
                    .map_err(read)?,
            ),
        })
    })?;
    let info = ModelInfo {
        architecture: arch,
        name,
        context_length: context,
        train_context_length: d.train_context,
        vocab_size,
        embedding_length: d.hidden,
        layer_count: d.layers,
        parameter_count: params,
        size_bytes: size,
    };
    Ok(Loaded { net, vocab, info })
}

/// Whether a llama GGUF has llama3-style `rope_freqs.weight` factors other than 1 (which
/// quantized_llama would ignore, so only the dense llama may run the file).
pub fn has_rope_factors(content: &Content, file: &mut std::fs::File) -> Result<bool> {
    if !content.tensor_infos.contains_key("rope_freqs.weight") {
        return Ok(false);
    }
    let factors = content
        .tensor(file, "rope_freqs.weight", &Device::Cpu)
        .and_then(|t| t.dequantize(&Device::Cpu))
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .format_err(|| "cannot read `rope_freqs.weight`".to_string())?;
    Ok(factors.iter().any(|&f| f != 1.0))
}
