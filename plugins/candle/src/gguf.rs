//! GGUF llama models. Block-quantized (Q4_K, ...; Q8_0 off the CPU) files and F32 files on
//! a GPU go through `candle_transformers::models::quantized_llama`, which stores q/k in the
//! interleaved RoPE layout and applies it as such (`rope_i`). F32/F16/BF16 files on the CPU,
//! F16/BF16 files on a GPU and Q8_0 files on the CPU load as the plugin's dense llama
//! instead ([`crate::gguf_dense`], [`gguf_dense::choose`]).

use crate::error::{io_error, no_panic, Result, ResultExt};
use crate::gguf_dense::{self, Layout};
use crate::gguf_meta::{self as meta, Metadata};
use crate::model::ModelInfo;
use crate::net::Net;
use crate::tokenizer::gguf::GgufVocab;
use crate::tokenizer::{HfSpecials, Vocab};
use candle_core::quantized::gguf_file::{Content, TensorInfo};
use candle_core::Device;
use candle_transformers::models::quantized_llama::{self, ModelWeights};
use llmlocal_plugin_api::PluginError;
use std::path::Path;

pub struct Loaded {
    pub net: Net,
    pub vocab: Vocab,
    pub info: ModelInfo,
}

/// The llama hyper-parameters quantized_llama reads, checked before it reads them (it
/// divides by head counts and indexes tensors without checks).
pub struct Dims {
    pub heads: usize,
    pub kv_heads: usize,
    pub layers: usize,
    pub hidden: usize,
    pub experts: usize,
}

/// The default context of a dense load that asks for none: the trained length, capped so
/// the rotary tables of long-context models stay small (as quantized_llama's are).
const DENSE_DEFAULT_CONTEXT_CAP: usize = 4096;

/// Loads a GGUF llama file in the layout [`gguf_dense::choose`] picks for it and `device`.
pub fn load(path: &Path, device: &Device, context: u32) -> Result<Loaded> {
    load_as(path, device, context, None)
}

/// Loads a GGUF llama file; `layout` forces the in-memory layout (tests use it to run the
/// dense path on the CPU), `None` lets the file's dtype and the device decide. A dense
/// layout the file cannot be held in exactly falls back to the quantized one.
pub fn load_as(
    path: &Path,
    device: &Device,
    context: u32,
    layout: Option<Layout>,
) -> Result<Loaded> {
    let mut file = std::fs::File::open(path).map_err(|e| io_error(path, &e))?;
    let content = Content::read(&mut file)
        .format_err(|| format!("{} is not a readable GGUF file", path.display()))?;
    let arch = meta::string(&content.metadata, "general.architecture").unwrap_or("");
    if crate::gguf_arch::ARCHITECTURES.contains(&arch) {
        return crate::gguf_arch::load(content, &mut file, path, device, context);
    }
    if arch == "gemma3" {
        return crate::gemma3_load::load_gguf(content, &mut file, path, device, context);
    }
    if arch == "bert" {
        return crate::bert_gguf::load(content, &mut file, path, device, context);
    }
    if arch != "llama" {
        return Err(PluginError::unsupported_architecture(format!(
            "GGUF architecture `{arch}` is not supported by the candle backend (it runs GGUF \
             llama, qwen3, phi3, gemma3 and, for embeddings, bert)"
        )));
    }
    let dims = check_dims(&content.metadata)?;
    let scaled_rope = crate::gguf_arch::has_rope_factors(&content, &mut file)?;
    let vocab_size = check_tensors(&content, &dims)?;
    let vocab = load_vocab(path, &content.metadata)?;
    let train_context =
        meta::uint(&content.metadata, "llama.context_length").unwrap_or(2048) as usize;
    let layout = layout.unwrap_or_else(|| {
        gguf_dense::choose(gguf_dense::matrix_dtype(&content), &device.location())
    });
    let layout = match scaled_rope {
        true => rope_factor_layout(&content, &dims, layout)?,
        false => exact_layout(&content, &dims, layout, path),
    };
    let context = context_length(layout, train_context, context);
    let (params, file_bytes) = sizes(&content);
    let name = meta::string(&content.metadata, "general.name")
        .map(str::to_string)
        .unwrap_or_else(|| file_stem(path));
    let (net, size) = build(content, &mut file, path, device, layout, &dims, context)?;
    let info = ModelInfo {
        architecture: "llama".to_string(),
        name,
        context_length: context,
        train_context_length: train_context,
        vocab_size,
        embedding_length: dims.hidden,
        layer_count: dims.layers,
        parameter_count: params,
        size_bytes: size.unwrap_or(file_bytes),
    };
    Ok(Loaded { net, vocab, info })
}

/// A GGUF llama file's network as a dense F32 [`crate::dense_llama::DenseLlama`] on
/// `device` (embeddings of files generation runs through `quantized_llama`; block-quantized
/// tensors are dequantized). Files the dense network cannot hold exactly (rope scaling,
/// extra tensors) are `Unsupported`.
pub fn dense_f32(
    path: &Path,
    device: &Device,
    context: usize,
) -> Result<std::sync::Arc<crate::dense_llama::DenseLlama>> {
    let mut file = std::fs::File::open(path).map_err(|e| io_error(path, &e))?;
    let content = Content::read(&mut file)
        .format_err(|| format!("{} is not a readable GGUF file", path.display()))?;
    let arch = meta::string(&content.metadata, "general.architecture").unwrap_or("");
    if arch != "llama" {
        return Err(PluginError::unsupported(format!(
            "the candle backend computes embeddings for llama models only, not {arch}; use \
             the llama-cpp backend"
        )));
    }
    let dims = check_dims(&content.metadata)?;
    if let Some(reason) = gguf_dense::structural_obstacle(&content, &dims) {
        return Err(PluginError::unsupported(format!(
            "the candle backend cannot compute embeddings of this GGUF: {reason}; use the \
             llama-cpp backend"
        )));
    }
    no_panic("reading the GGUF tensors", || {
        gguf_dense::load_dequantized(&content, &mut file, device, &dims, context)
    })
}

/// The positions a load covers: the asked number, else the trained length, capped as each
/// layout needs.
fn context_length(layout: Layout, train_context: usize, asked: u32) -> usize {
    match (layout, asked) {
        (Layout::Dense(_) | Layout::DenseQ8, 0) => train_context.min(DENSE_DEFAULT_CONTEXT_CAP),
        (Layout::Dense(_) | Layout::DenseQ8, n) => n as usize,
        // quantized_llama's rotary tables are fixed at MAX_SEQ_LEN positions.
        (Layout::Quantized, 0) => train_context.min(quantized_llama::MAX_SEQ_LEN),
        (Layout::Quantized, n) => (n as usize).min(quantized_llama::MAX_SEQ_LEN),
    }
}

/// Reads the tensors into the network `layout` asks for; with the bytes its weights take
/// when they differ from the file's (dense loads).
fn build(
    content: Content,
    file: &mut std::fs::File,
    path: &Path,
    device: &Device,
    layout: Layout,
    dims: &Dims,
    context: usize,
) -> Result<(Net, Option<u64>)> {
    match layout {
        Layout::Quantized => {
            let model = no_panic("reading the GGUF tensors", || {
                ModelWeights::from_gguf(content, file, device)
                    .format_err(|| format!("cannot read the tensors of {}", path.display()))
            })?;
            Ok((Net::Gguf(model), None))
        }
        Layout::Dense(_) if gguf_dense::dequantize_needed(&content) => {
            // Only files with rope factors come here (see `rope_factor_layout`): their
            // block-quantized tensors are widened to F32, 4 bytes per weight.
            tracing::info!(
                "candle: {} has llama3 rope factors: running it dense in F32 (dequantized)",
                path.display()
            );
            let dense = no_panic("reading the GGUF tensors", || {
                gguf_dense::load_dequantized(&content, file, device, dims, context)
            })?;
            Ok((Net::Dense(dense), None))
        }
        Layout::Dense(_) | Layout::DenseQ8 => {
            // DenseQ8: Q8_0 matrices stay blocks, the rest is F32.
            let dtype = match layout {
                Layout::Dense(dtype) => dtype,
                _ => candle_core::DType::F32,
            };
            let dense = no_panic("reading the GGUF tensors", || {
                gguf_dense::load(&content, file, device, dtype, dims, context)
            })?;
            tracing::debug!(
                "candle: {} held dense in {dtype:?}: {} bytes of weights",
                path.display(),
                dense.weight_bytes
            );
            Ok((dense.net, Some(dense.weight_bytes)))
        }
    }
}

/// The layout of a file with llama3 rope factors (`rope_freqs.weight`): only the dense llama
/// applies them (quantized_llama ignores them), in F32 where the file's matrices are
/// block-quantized (other than Q8_0 held as blocks) or on the CPU. Refused when the dense
/// llama cannot hold the file.
fn rope_factor_layout(content: &Content, dims: &Dims, layout: Layout) -> Result<Layout> {
    if let Some(reason) = gguf_dense::structural_obstacle(content, dims) {
        return Err(PluginError::unsupported_architecture(format!(
            "GGUF llama with llama3 rope scaling (`rope_freqs.weight`) and {reason} is not \
             supported by the candle backend; use the llama-cpp backend"
        )));
    }
    Ok(match layout {
        Layout::Dense(dtype) if !gguf_dense::dequantize_needed(content) => Layout::Dense(dtype),
        Layout::DenseQ8 if gguf_dense::layout_obstacle(layout, content, dims).is_none() => layout,
        _ => Layout::Dense(candle_core::DType::F32),
    })
}

/// `layout`, or the quantized one (with a debug line saying why) when the dense path cannot
/// hold this file exactly.
fn exact_layout(content: &Content, dims: &Dims, layout: Layout, path: &Path) -> Layout {
    if layout == Layout::Quantized {
        return layout;
    }
    match gguf_dense::layout_obstacle(layout, content, dims) {
        None => layout,
        Some(reason) => {
            tracing::debug!(
                "candle: {} stays on quantized_llama instead of a dense {layout:?} load: {reason}",
                path.display()
            );
            Layout::Quantized
        }
    }
}

pub(crate) fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn required(md: &Metadata, key: &str) -> Result<usize> {
    let value = meta::uint(md, key).ok_or_else(|| {
        PluginError::unsupported_format(format!("the GGUF is missing the metadata key `{key}`"))
    })?;
    // quantized_llama reads these as u32.
    if !matches!(
        md.get(key),
        Some(candle_core::quantized::gguf_file::Value::U32(_))
    ) {
        return Err(PluginError::unsupported_format(format!(
            "GGUF metadata key `{key}` must be a u32"
        )));
    }
    Ok(value as usize)
}

fn check_dims(md: &Metadata) -> Result<Dims> {
    let heads = required(md, "llama.attention.head_count")?;
    let kv_heads = required(md, "llama.attention.head_count_kv")?;
    let layers = required(md, "llama.block_count")?;
    let hidden = required(md, "llama.embedding_length")?;
    let rope_dim = required(md, "llama.rope.dimension_count")?;
    if meta::float(md, "llama.attention.layer_norm_rms_epsilon").is_none()
        || !matches!(
            md.get("llama.attention.layer_norm_rms_epsilon"),
            Some(candle_core::quantized::gguf_file::Value::F32(_))
        )
    {
        return Err(PluginError::unsupported_format(
            "the GGUF is missing the f32 metadata key `llama.attention.layer_norm_rms_epsilon`",
        ));
    }
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || hidden % heads != 0 {
        return Err(PluginError::unsupported_format(format!(
            "GGUF head counts do not fit: embedding {hidden}, heads {heads}, kv heads {kv_heads}"
        )));
    }
    if rope_dim != hidden / heads {
        return Err(PluginError::unsupported_architecture(format!(
            "partial rotary embeddings (rope dimension {rope_dim}, head size {}) are not supported",
            hidden / heads
        )));
    }
    let experts = meta::uint(md, "llama.expert_count").unwrap_or(0) as usize;
    Ok(Dims {
        heads,
        kv_heads,
        layers,
        hidden,
        experts,
    })
}

/// Checks every tensor quantized_llama reads (shapes as candle orders them: [out, in]);
/// returns the vocabulary size.
fn check_tensors(content: &Content, dims: &Dims) -> Result<usize> {
    let get = |name: &str| -> Result<&TensorInfo> {
        content.tensor_infos.get(name).ok_or_else(|| {
            PluginError::unsupported_format(format!("the GGUF has no tensor `{name}`"))
        })
    };
    let embed = get("token_embd.weight")?;
    let [vocab, hidden] = embed.shape.dims() else {
        return Err(shape_error(
            "token_embd.weight",
            embed.shape.dims(),
            "[vocab, embedding]",
        ));
    };
    let (vocab, hidden) = (*vocab, *hidden);
    let expect = |name: &str, shape: &[usize]| -> Result<()> {
        let info = get(name)?;
        if info.shape.dims() != shape {
            return Err(shape_error(name, info.shape.dims(), &format!("{shape:?}")));
        }
        Ok(())
    };
    if hidden != dims.hidden {
        return Err(shape_error(
            "token_embd.weight",
            embed.shape.dims(),
            &format!("[vocab, {}]", dims.hidden),
        ));
    }
    expect("output_norm.weight", &[hidden])?;
    if content.tensor_infos.contains_key("output.weight") {
        expect("output.weight", &[vocab, hidden])?;
    }
    let kv = dims.kv_heads * (hidden / dims.heads);
    for layer in 0..dims.layers {
        let p = format!("blk.{layer}");
        expect(&format!("{p}.attn_q.weight"), &[hidden, hidden])?;
        expect(&format!("{p}.attn_k.weight"), &[kv, hidden])?;
        expect(&format!("{p}.attn_v.weight"), &[kv, hidden])?;
        expect(&format!("{p}.attn_output.weight"), &[hidden, hidden])?;
        expect(&format!("{p}.attn_norm.weight"), &[hidden])?;
        expect(&format!("{p}.ffn_norm.weight"), &[hidden])?;
        if dims.experts <= 1 {
            let gate = get(&format!("{p}.ffn_gate.weight"))?;
            let ff = gate.shape.dims().first().copied().unwrap_or(0);
            expect(&format!("{p}.ffn_gate.weight"), &[ff, hidden])?;
            expect(&format!("{p}.ffn_up.weight"), &[ff, hidden])?;
            expect(&format!("{p}.ffn_down.weight"), &[hidden, ff])?;
        }
    }
    Ok(vocab)
}

fn shape_error(name: &str, got: &[usize], want: &str) -> PluginError {
    PluginError::unsupported_format(format!(
        "GGUF tensor `{name}` has shape {got:?}, the metadata implies {want}"
    ))
}

/// (parameters, bytes) over all tensors in the file.
pub(crate) fn sizes(content: &Content) -> (u64, u64) {
    content.tensor_infos.values().fold((0, 0), |(p, b), info| {
        let n = info.shape.elem_count();
        let bytes = n / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        (p + n as u64, b + bytes as u64)
    })
}

/// tokenizer.json beside the GGUF if there is one, else the GGUF's own vocabulary.
pub(crate) fn load_vocab(path: &Path, md: &Metadata) -> Result<Vocab> {
    let gguf_vocab = GgufVocab::from_metadata(md);
    let beside = path
        .parent()
        .map(|d| d.join("tokenizer.json"))
        .filter(|p| p.is_file());
    match beside {
        Some(json) => {
            let specials = match &gguf_vocab {
                Ok(v) => HfSpecials {
                    bos: v.bos,
                    eos: v
                        .eos
                        .into_iter()
                        .chain(v.extra_eog.iter().copied())
                        .collect(),
                    add_bos: Some(v.add_bos),
                    chat_template: v.chat_template.clone(),
                    bos_text: None,
                    eos_text: None,
                },
                Err(_) => HfSpecials::default(),
            };
            Vocab::from_tokenizer_json(&json, specials)
        }
        None => Vocab::from_gguf(&gguf_vocab?),
    }
}
