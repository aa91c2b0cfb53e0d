//! GGUF llama files whose weight matrices are F16/BF16, loaded as a dense half-precision
//! `candle_transformers::models::llama::Llama` instead of through `quantized_llama`.
//!
//! Why: candle's `QMatMul::from_arc` widens every F16/BF16 GGUF tensor to dense F32, so a
//! half-precision GGUF runs F32 GEMMs and reads twice the bytes per token. Here each tensor
//! is read from the file as stored, put on the device and only converted there (F32 norms
//! narrowed to the model dtype), renamed to the Hugging Face llama names, and the q/k rows
//! are moved back from llama.cpp's interleaved RoPE layout to HF's half-split one (the
//! layout `llama::Llama`'s `rope` expects).
//!
//! Anything this path cannot represent exactly (rope scaling, extra tensors such as
//! `rope_freqs.weight` or biases, mixed-dtype matrices, experts) stays on the quantized path.

use crate::error::{Result, ResultExt};
use crate::gguf::Dims;
use crate::gguf_meta::{self as meta, Metadata};
use crate::net::Net;
use candle_core::quantized::gguf_file::{Content, TensorInfo};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, DeviceLocation, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama;
use llmlocal_plugin_api::PluginError;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

/// How a GGUF file's weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `quantized_llama`: block-quantized tensors as stored, F32/F16/BF16 widened to F32.
    Quantized,
    /// `llama::Llama` with every weight in this dtype.
    Dense(DType),
}

/// The layout a load uses when nothing forces one: half-precision files run dense in their
/// own dtype on a GPU. The CPU keeps the quantized path (candle's CPU half matmuls are slow),
/// and so do quantized and F32 files everywhere.
pub fn choose(matrices: Option<GgmlDType>, device: &DeviceLocation) -> Layout {
    let half = match matrices {
        Some(GgmlDType::F16) => DType::F16,
        Some(GgmlDType::BF16) => DType::BF16,
        _ => return Layout::Quantized,
    };
    match device {
        DeviceLocation::Cpu => Layout::Quantized,
        DeviceLocation::Cuda { .. } | DeviceLocation::Metal { .. } => Layout::Dense(half),
    }
}

/// The one dtype every 2-D tensor (the weight matrices) is stored in; `None` when they differ
/// or there are none.
pub fn matrix_dtype(content: &Content) -> Option<GgmlDType> {
    let mut dtypes = content
        .tensor_infos
        .values()
        .filter(|info| info.shape.rank() == 2)
        .map(|info| info.ggml_dtype);
    let first = dtypes.next()?;
    dtypes.all(|d| d == first).then_some(first)
}

/// Why the dense path cannot hold this file exactly, if it cannot.
pub fn obstacle(content: &Content, dims: &Dims) -> Option<String> {
    if dims.experts > 1 {
        return Some(format!("{} experts per layer", dims.experts));
    }
    if let Some(reason) = rope_scaling(&content.metadata) {
        return Some(reason);
    }
    let head_dim = dims.hidden / dims.heads;
    if head_dim % 2 != 0 {
        return Some(format!("odd head size {head_dim}"));
    }
    for key in ["llama.attention.key_length", "llama.attention.value_length"] {
        match meta::uint(&content.metadata, key) {
            Some(n) if n as usize != head_dim => {
                return Some(format!("`{key}` {n} differs from the head size {head_dim}"))
            }
            _ => {}
        }
    }
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        if hf_name(name).is_none() {
            return Some(format!("tensor `{name}` has no place in candle's llama"));
        }
        let info = &content.tensor_infos[name];
        if dense_dtype(info.ggml_dtype).is_none() {
            return Some(format!(
                "tensor `{name}` is block-quantized ({:?})",
                info.ggml_dtype
            ));
        }
    }
    None
}

/// Rope scaling of any kind: `llama::Llama` would compute plain rope.
fn rope_scaling(md: &Metadata) -> Option<String> {
    if let Some(kind) = meta::string(md, "llama.rope.scaling.type").filter(|k| *k != "none") {
        return Some(format!("rope scaling `{kind}`"));
    }
    for key in ["llama.rope.scaling.factor", "llama.rope.scale_linear"] {
        match meta::float(md, key) {
            Some(f) if f != 0.0 && f != 1.0 => return Some(format!("`{key}` {f}")),
            _ => {}
        }
    }
    None
}

/// The HF llama name of a GGUF tensor; `None` for tensors candle's llama does not have.
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tensor) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let hf = match tensor {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

fn dense_dtype(dtype: GgmlDType) -> Option<DType> {
    match dtype {
        GgmlDType::F32 => Some(DType::F32),
        GgmlDType::F16 => Some(DType::F16),
        GgmlDType::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// GGUF -> HF row order of a q or k matrix `[heads * head_dim, cols]`: within each head,
/// GGUF row `2i + a` (a in {0, 1}) is HF row `a * head_dim/2 + i`, the inverse of
/// llama.cpp's converter `permute`.
pub fn unpermute(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let head_dim = rows / heads;
    w.reshape((heads, head_dim / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

/// A loaded dense network and the bytes its weights take on the device.
pub struct Dense {
    pub net: Net,
    pub weight_bytes: u64,
}

/// Reads every tensor into `dtype` on `device` and builds the llama network. `context` is the
/// number of positions the rotary tables cover.
pub fn load<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    device: &Device,
    dtype: DType,
    dims: &Dims,
    context: usize,
) -> Result<Dense> {
    let mut weights = HashMap::new();
    let mut weight_bytes = 0u64;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let hf = hf_name(name).ok_or_else(|| {
            PluginError::unsupported_format(format!("GGUF tensor `{name}` is not a llama tensor"))
        })?;
        let tensor = read_tensor(content, reader, name, device)?;
        let tensor = rope_layout(name, tensor, dims)
            .and_then(|t| t.to_dtype(dtype))
            .internal_err(|| format!("converting GGUF tensor `{name}` on the device"))?;
        weight_bytes += (tensor.elem_count() * dtype.size_in_bytes()) as u64;
        weights.insert(hf, tensor);
    }
    let config = config(content, dims, context)?;
    let vb = VarBuilder::from_tensors(weights, dtype, device);
    let model = llama::Llama::load(vb, &config)
        .format_err(|| "building the dense llama from the GGUF tensors".to_string())?;
    // Fail at load, not per generation, if the rotary tables cannot be built.
    llama::Cache::new(true, dtype, &config, device)
        .internal_err(|| "creating the KV cache".to_string())?;
    Ok(Dense {
        net: Net::Llama {
            model: Arc::new(model),
            config: Arc::new(config),
            dtype,
        },
        weight_bytes,
    })
}

/// q/k rows back to the half-split layout; other tensors as they are.
fn rope_layout(name: &str, tensor: Tensor, dims: &Dims) -> candle_core::Result<Tensor> {
    if name.ends_with(".attn_q.weight") {
        unpermute(&tensor, dims.heads)
    } else if name.ends_with(".attn_k.weight") {
        unpermute(&tensor, dims.kv_heads)
    } else {
        Ok(tensor)
    }
}

/// One tensor's bytes straight from the file onto the device, in its stored dtype (no
/// whole-model copy on the host: one tensor's bytes at a time).
fn read_tensor<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    name: &str,
    device: &Device,
) -> Result<Tensor> {
    let info: &TensorInfo = &content.tensor_infos[name];
    let dtype = dense_dtype(info.ggml_dtype).ok_or_else(|| {
        PluginError::unsupported_format(format!(
            "GGUF tensor `{name}` is {:?}; the dense path reads F32, F16 and BF16",
            info.ggml_dtype
        ))
    })?;
    let len = info.shape.elem_count() * dtype.size_in_bytes();
    let start = content.tensor_data_offset + info.offset;
    // A corrupt header must not make us allocate more than the file holds.
    let file_len = reader
        .seek(SeekFrom::End(0))
        .format_err(|| "finding the GGUF file's length".to_string())?;
    if start.saturating_add(len as u64) > file_len {
        return Err(PluginError::unsupported_format(format!(
            "GGUF tensor `{name}` ({len} bytes at offset {start}) runs past the end of the file ({file_len} bytes)"
        )));
    }
    let mut bytes = vec![0u8; len];
    reader
        .seek(SeekFrom::Start(start))
        .and_then(|_| reader.read_exact(&mut bytes))
        .format_err(|| format!("reading GGUF tensor `{name}` ({len} bytes)"))?;
    Tensor::from_raw_buffer(&bytes, dtype, info.shape.dims(), device)
        .internal_err(|| format!("putting GGUF tensor `{name}` on the device"))
}

/// candle's llama config from the GGUF metadata (the same keys and defaults
/// `quantized_llama` reads).
fn config(content: &Content, dims: &Dims, context: usize) -> Result<llama::Config> {
    let md = &content.metadata;
    let rows = |name: &str| -> Result<usize> {
        content
            .tensor_infos
            .get(name)
            .and_then(|info| info.shape.dims().first().copied())
            .ok_or_else(|| {
                PluginError::unsupported_format(format!("the GGUF has no tensor `{name}`"))
            })
    };
    let rms_norm_eps =
        meta::float(md, "llama.attention.layer_norm_rms_epsilon").ok_or_else(|| {
            PluginError::unsupported_format(
                "the GGUF is missing `llama.attention.layer_norm_rms_epsilon`",
            )
        })?;
    Ok(llama::Config {
        hidden_size: dims.hidden,
        intermediate_size: match dims.layers {
            0 => 0,
            _ => rows("blk.0.ffn_gate.weight")?,
        },
        vocab_size: rows("token_embd.weight")?,
        num_hidden_layers: dims.layers,
        num_attention_heads: dims.heads,
        num_key_value_heads: dims.kv_heads,
        use_flash_attn: false,
        rms_norm_eps,
        rope_theta: meta::float(md, "llama.rope.freq_base").unwrap_or(10_000.0) as f32,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling: None,
        max_position_embeddings: context,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_undoes_the_interleaved_rows() {
        // Two heads of head_dim 4, one column: GGUF rows per head [0 2 1 3] (HF order
        // [0 1 2 3] after llama.cpp's permute).
        let gguf = Tensor::new(
            &[[0f32], [2.], [1.], [3.], [4.], [6.], [5.], [7.]],
            &Device::Cpu,
        )
        .unwrap();
        let hf = unpermute(&gguf, 2).unwrap();
        let rows: Vec<f32> = hf.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(rows, [0., 1., 2., 3., 4., 5., 6., 7.]);
    }

    #[test]
    fn names_map_to_hf_llama() {
        assert_eq!(
            hf_name("blk.12.attn_k.weight").as_deref(),
            Some("model.layers.12.self_attn.k_proj.weight")
        );
        assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_name("blk.0.attn_q.bias"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
    }
}
