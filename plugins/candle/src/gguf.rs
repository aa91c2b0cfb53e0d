//! GGUF llama models through `candle_transformers::models::quantized_llama` (F32, F16,
//! Q8_0, Q4_K, ... tensors). GGUF stores q/k in the interleaved RoPE layout, which
//! quantized_llama applies as such (`rope_i`), so no permutation is needed here.

use crate::error::{io_error, no_panic, Result, ResultExt};
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
struct Dims {
    heads: usize,
    kv_heads: usize,
    layers: usize,
    hidden: usize,
    experts: usize,
}

pub fn load(path: &Path, device: &Device, context: u32) -> Result<Loaded> {
    let mut file = std::fs::File::open(path).map_err(|e| io_error(path, &e))?;
    let content = Content::read(&mut file)
        .format_err(|| format!("{} is not a readable GGUF file", path.display()))?;
    let arch = meta::string(&content.metadata, "general.architecture").unwrap_or("");
    if arch != "llama" {
        return Err(PluginError::unsupported_architecture(format!(
            "GGUF architecture `{arch}` is not supported by the candle backend (it runs GGUF llama)"
        )));
    }
    let dims = check_dims(&content.metadata)?;
    let vocab_size = check_tensors(&content, &dims)?;
    let vocab = load_vocab(path, &content.metadata)?;
    let train_context =
        meta::uint(&content.metadata, "llama.context_length").unwrap_or(2048) as usize;
    // quantized_llama's rotary tables are fixed at MAX_SEQ_LEN positions.
    let context = match context {
        0 => train_context,
        n => n as usize,
    }
    .min(quantized_llama::MAX_SEQ_LEN);
    let (params, size) = sizes(&content);
    let name = meta::string(&content.metadata, "general.name")
        .map(str::to_string)
        .unwrap_or_else(|| file_stem(path));
    let model = no_panic("reading the GGUF tensors", || {
        ModelWeights::from_gguf(content, &mut file, device)
            .format_err(|| format!("cannot read the tensors of {}", path.display()))
    })?;
    let info = ModelInfo {
        architecture: "llama".to_string(),
        name,
        context_length: context,
        train_context_length: train_context,
        vocab_size,
        embedding_length: dims.hidden,
        layer_count: dims.layers,
        parameter_count: params,
        size_bytes: size,
    };
    Ok(Loaded {
        net: Net::Gguf(model),
        vocab,
        info,
    })
}

fn file_stem(path: &Path) -> String {
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
fn sizes(content: &Content) -> (u64, u64) {
    content.tensor_infos.values().fold((0, 0), |(p, b), info| {
        let n = info.shape.elem_count();
        let bytes = n / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        (p + n as u64, b + bytes as u64)
    })
}

/// tokenizer.json beside the GGUF if there is one, else the GGUF's own vocabulary.
fn load_vocab(path: &Path, md: &Metadata) -> Result<Vocab> {
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
