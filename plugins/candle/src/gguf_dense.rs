//! GGUF llama files whose weight matrices are F16/BF16, loaded as a dense half-precision
//! [`DenseLlama`] instead of through `quantized_llama`.
//!
//! Why: candle's `QMatMul::from_arc` widens every F16/BF16 GGUF tensor to dense F32, so a
//! half-precision GGUF runs F32 GEMMs and reads twice the bytes per token. Here each tensor
//! is read from the file as stored, put on the device and only converted there (F32 norms
//! narrowed to the model dtype), and the q/k rows are moved back from llama.cpp's
//! interleaved RoPE layout to the half-split one [`DenseLlama`] applies.
//!
//! Q8_0 files on the CPU run on the same network with each Q8_0 matrix held as its raw
//! blocks (U8 `[rows, cols / 32 * 34]`; row permutations and concatenations stay exact on
//! whole rows of blocks), multiplied by [`crate::cpu_q8`]; activations and norms are F32.
//!
//! Anything this path cannot represent exactly (rope scaling keys, extra tensors such as
//! biases, mixed-dtype matrices, experts) stays on the quantized path. llama3 `rope_freqs`
//! factors it applies (quantized_llama does not).

use crate::dense_llama::{self, DenseLlama, LayerWeights, Weights};
use crate::error::{Result, ResultExt};
use crate::gguf::Dims;
use crate::gguf_meta::{self as meta, Metadata};
use crate::net::Net;
use candle_core::quantized::gguf_file::{Content, TensorInfo};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, DeviceLocation, Tensor};
use llmlocal_plugin_api::PluginError;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

/// How a GGUF file's weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `quantized_llama`: block-quantized tensors as stored, F32/F16/BF16 widened to F32.
    Quantized,
    /// [`DenseLlama`] with its weight matrices in this dtype (the activations' dtype is
    /// [`dense_llama::activation_dtype`]: F32 on the CPU).
    Dense(DType),
    /// [`DenseLlama`] on the CPU with Q8_0 matrices as raw blocks ([`crate::cpu_q8`]),
    /// everything else in F32.
    DenseQ8,
}

/// The layout a load uses when nothing forces one: half-precision files run dense in their
/// own dtype on a GPU. On the CPU, F32/F16/BF16 files run dense with F32 activations: F16
/// and BF16 matrices stay as stored where the CPU has the vector kernel that widens them in
/// registers ([`crate::cpu_f16::fast`]; half the bytes per token), else they are widened
/// to F32 at load (candle's CPU half matmuls are slow). That is the F32 arithmetic
/// `quantized_llama` does after widening, with a preallocated KV cache and matmuls spread
/// over the threads (see [`crate::dense_llama`]). Q8_0 files on the CPU run dense with their
/// blocks as stored when [`crate::cpu_q8`] has a SIMD kernel for this CPU. Other
/// block-quantized files, and F32 files on a GPU, keep the quantized path.
pub fn choose(matrices: Option<GgmlDType>, device: &DeviceLocation) -> Layout {
    let on_cpu = matches!(device, DeviceLocation::Cpu);
    match matrices {
        Some(GgmlDType::Q8_0) if on_cpu && crate::cpu_q8::accelerated() => Layout::DenseQ8,
        Some(GgmlDType::F16) if on_cpu && crate::cpu_f16::fast() => Layout::Dense(DType::F16),
        Some(GgmlDType::BF16) if on_cpu && crate::cpu_f16::fast() => Layout::Dense(DType::BF16),
        Some(GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) if on_cpu => {
            Layout::Dense(DType::F32)
        }
        Some(GgmlDType::F16) => Layout::Dense(DType::F16),
        Some(GgmlDType::BF16) => Layout::Dense(DType::BF16),
        _ => Layout::Quantized,
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

/// What the dense network cannot represent (experts, rope scaling, odd heads, tensors it has
/// no place for), whatever the tensors' dtypes.
pub fn structural_obstacle(content: &Content, dims: &Dims) -> Option<String> {
    if dims.experts > 1 {
        return Some(format!("{} experts per layer", dims.experts));
    }
    if let Some(reason) = rope_scaling(&content.metadata) {
        return Some(reason);
    }
    let head_dim = dims.hidden / dims.heads;
    if !head_dim.is_multiple_of(2) {
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
        if part(name).is_none() {
            return Some(format!("tensor `{name}` has no place in the dense llama"));
        }
    }
    None
}

/// Why the dense path cannot hold this file exactly, if it cannot: [`structural_obstacle`],
/// or block-quantized tensors.
pub fn obstacle(content: &Content, dims: &Dims) -> Option<String> {
    structural_obstacle(content, dims).or_else(|| {
        dequantize_needed(content).then(|| "some tensors are block-quantized".to_string())
    })
}

/// Why `layout` cannot hold this file exactly, if it cannot (the quantized layout holds
/// every file).
pub fn layout_obstacle(layout: Layout, content: &Content, dims: &Dims) -> Option<String> {
    match layout {
        Layout::Quantized => None,
        Layout::Dense(_) => obstacle(content, dims),
        Layout::DenseQ8 => structural_obstacle(content, dims).or_else(|| q8_obstacle(content)),
    }
}

/// A tensor [`Layout::DenseQ8`] cannot read: block-quantized other than Q8_0, or Q8_0 that
/// is not a matrix.
fn q8_obstacle(content: &Content) -> Option<String> {
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let info = &content.tensor_infos[name];
        let readable = match info.ggml_dtype {
            GgmlDType::Q8_0 => info.shape.rank() == 2,
            dtype => dense_dtype(dtype).is_some(),
        };
        (!readable).then(|| {
            format!(
                "tensor `{name}` is {:?} {:?}",
                info.ggml_dtype,
                info.shape.dims()
            )
        })
    })
}

/// Whether some tensor is block-quantized (only [`load_dequantized`] can read the file).
pub fn dequantize_needed(content: &Content) -> bool {
    content
        .tensor_infos
        .values()
        .any(|info| dense_dtype(info.ggml_dtype).is_none())
}

/// Rope scaling of any kind: [`DenseLlama`] computes plain rope.
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

/// Where a GGUF tensor goes in the dense network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Embed,
    Norm,
    Output,
    /// llama3 rope frequency divisors, kept in F32.
    RopeFreqs,
    Layer(usize, LayerPart),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerPart {
    AttnNorm,
    Q,
    K,
    V,
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
}

/// The place of a GGUF tensor in the dense llama; `None` for tensors it has no place for.
pub fn part(gguf: &str) -> Option<Part> {
    match gguf {
        "token_embd.weight" => return Some(Part::Embed),
        "output_norm.weight" => return Some(Part::Norm),
        "output.weight" => return Some(Part::Output),
        "rope_freqs.weight" => return Some(Part::RopeFreqs),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tensor) = rest.split_once('.')?;
    let layer = layer.parse::<usize>().ok()?;
    let part = match tensor {
        "attn_norm.weight" => LayerPart::AttnNorm,
        "attn_q.weight" => LayerPart::Q,
        "attn_k.weight" => LayerPart::K,
        "attn_v.weight" => LayerPart::V,
        "attn_output.weight" => LayerPart::O,
        "ffn_norm.weight" => LayerPart::FfnNorm,
        "ffn_gate.weight" => LayerPart::Gate,
        "ffn_up.weight" => LayerPart::Up,
        "ffn_down.weight" => LayerPart::Down,
        _ => return None,
    };
    Some(Part::Layer(layer, part))
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

/// Reads every weight matrix into `dtype` on `device` (norms into the activations' dtype)
/// and builds the llama network. `context` is the
/// number of positions the rotary tables cover.
pub fn load<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    device: &Device,
    dtype: DType,
    dims: &Dims,
    context: usize,
) -> Result<Dense> {
    let read = |r: &mut R, name: &str| read_tensor(content, r, name, device);
    let (model, weight_bytes) = build(content, reader, device, dtype, dims, context, read)?;
    Ok(Dense {
        net: Net::Dense(Arc::new(model)),
        weight_bytes,
    })
}

/// Like [`load`] in F32, for embeddings: block-quantized tensors are dequantized
/// (candle's `QTensor::dequantize`), so the network holds 4 bytes per weight. The caller
/// checks [`structural_obstacle`] first.
pub fn load_dequantized<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    device: &Device,
    dims: &Dims,
    context: usize,
) -> Result<Arc<DenseLlama>> {
    let read = |r: &mut R, name: &str| {
        content
            .tensor(r, name, device)
            .and_then(|q| q.dequantize(device))
            .format_err(|| format!("reading GGUF tensor `{name}`"))
    };
    let (model, _) = build(content, reader, device, DType::F32, dims, context, read)?;
    Ok(Arc::new(model))
}

/// Reads every tensor with `read`, puts it in its place as `dtype` and builds the network;
/// also returns the bytes its weights take.
fn build<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    device: &Device,
    dtype: DType,
    dims: &Dims,
    context: usize,
    mut read: impl FnMut(&mut R, &str) -> Result<Tensor>,
) -> Result<(DenseLlama, u64)> {
    let activations = dense_llama::activation_dtype(dtype, device);
    let mut parts = Parts::new(dims.layers);
    let mut weight_bytes = 0u64;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let place = part(name).ok_or_else(|| {
            PluginError::unsupported_format(format!("GGUF tensor `{name}` is not a llama tensor"))
        })?;
        let tensor = read(reader, name)?;
        // Q8_0 blocks stay blocks ([`crate::cpu_q8`]).
        let target = match tensor.dtype() {
            DType::U8 => DType::U8,
            _ => held_dtype(place, tensor.rank(), dtype, activations),
        };
        let tensor = rope_layout(name, tensor, dims)
            .and_then(|t| t.to_dtype(target))
            .internal_err(|| format!("converting GGUF tensor `{name}` on the device"))?;
        weight_bytes += (tensor.elem_count() * target.size_in_bytes()) as u64;
        parts.put(name, place, tensor)?;
    }
    let shape = shape(&content.metadata, dims, context)?;
    let model = DenseLlama::new(parts.into_weights()?, shape, activations, device)
        .internal_err(|| "building the dense llama on the device".to_string())?;
    Ok((model, weight_bytes))
}

/// The dtype a tensor at `place` of `rank` is held in: matrices (and the embedding) in the
/// weights' dtype, norms in the activations' (candle's RMS norm takes one dtype), rope
/// frequency divisors in F32 (F16 would round them).
fn held_dtype(place: Part, rank: usize, weights: DType, activations: DType) -> DType {
    match place {
        Part::RopeFreqs => DType::F32,
        _ if rank >= 2 => weights,
        _ => activations,
    }
}

/// The tensors read so far, by place.
struct Parts {
    embed: Option<Tensor>,
    norm: Option<Tensor>,
    output: Option<Tensor>,
    rope_freqs: Option<Tensor>,
    layers: Vec<HashMap<LayerPart, Tensor>>,
}

impl Parts {
    fn new(layers: usize) -> Self {
        Parts {
            embed: None,
            norm: None,
            output: None,
            rope_freqs: None,
            layers: (0..layers).map(|_| HashMap::new()).collect(),
        }
    }

    fn put(&mut self, name: &str, place: Part, tensor: Tensor) -> Result<()> {
        match place {
            Part::Embed => self.embed = Some(tensor),
            Part::Norm => self.norm = Some(tensor),
            Part::Output => self.output = Some(tensor),
            Part::RopeFreqs => self.rope_freqs = Some(tensor),
            Part::Layer(i, part) => {
                let layers = self.layers.len();
                let layer = self.layers.get_mut(i).ok_or_else(|| {
                    PluginError::unsupported_format(format!(
                        "GGUF tensor `{name}` is for layer {i}, but the model has {layers} layers"
                    ))
                })?;
                layer.insert(part, tensor);
            }
        }
        Ok(())
    }

    fn into_weights(self) -> Result<Weights> {
        let missing = |what: &str| {
            PluginError::unsupported_format(format!("the GGUF has no tensor `{what}`"))
        };
        let layers = self
            .layers
            .into_iter()
            .enumerate()
            .map(|(i, mut layer)| {
                let mut take = |part: LayerPart, name: &str| {
                    layer
                        .remove(&part)
                        .ok_or_else(|| missing(&format!("blk.{i}.{name}")))
                };
                Ok(LayerWeights {
                    attn_norm: take(LayerPart::AttnNorm, "attn_norm.weight")?,
                    q: take(LayerPart::Q, "attn_q.weight")?,
                    k: take(LayerPart::K, "attn_k.weight")?,
                    v: take(LayerPart::V, "attn_v.weight")?,
                    o: take(LayerPart::O, "attn_output.weight")?,
                    ffn_norm: take(LayerPart::FfnNorm, "ffn_norm.weight")?,
                    gate: take(LayerPart::Gate, "ffn_gate.weight")?,
                    up: take(LayerPart::Up, "ffn_up.weight")?,
                    down: take(LayerPart::Down, "ffn_down.weight")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rope_freqs = self
            .rope_freqs
            .map(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
            .transpose()
            .internal_err(|| "reading `rope_freqs.weight`".to_string())?;
        Ok(Weights {
            rope_freqs,
            embed: self.embed.ok_or_else(|| missing("token_embd.weight"))?,
            norm: self.norm.ok_or_else(|| missing("output_norm.weight"))?,
            output: self.output,
            layers,
        })
    }
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
/// whole-model copy on the host: one tensor's bytes at a time). A Q8_0 matrix comes as its
/// raw blocks, U8 `[rows, cols / 32 * 34]`.
fn read_tensor<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    name: &str,
    device: &Device,
) -> Result<Tensor> {
    let info: &TensorInfo = &content.tensor_infos[name];
    let (dtype, dims) = stored_as(name, info)?;
    let len = dims.iter().product::<usize>() * dtype.size_in_bytes();
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
    Tensor::from_raw_buffer(&bytes, dtype, &dims, device)
        .internal_err(|| format!("putting GGUF tensor `{name}` on the device"))
}

/// The dtype and dims a tensor is read as: F32/F16/BF16 as they are, Q8_0 matrices as rows
/// of blocks.
fn stored_as(name: &str, info: &TensorInfo) -> Result<(DType, Vec<usize>)> {
    let dims = info.shape.dims();
    match (info.ggml_dtype, dims) {
        (GgmlDType::Q8_0, &[rows, cols]) if cols % crate::cpu_q8::BLOCK == 0 => Ok((
            DType::U8,
            vec![
                rows,
                cols / crate::cpu_q8::BLOCK * crate::cpu_q8::BLOCK_BYTES,
            ],
        )),
        (dtype, _) => match dense_dtype(dtype) {
            Some(dtype) => Ok((dtype, dims.to_vec())),
            None => Err(PluginError::unsupported_format(format!(
                "GGUF tensor `{name}` is {dtype:?} {dims:?}; the dense path reads F32, F16, \
                 BF16 and Q8_0 matrices"
            ))),
        },
    }
}

/// The network's sizes from the GGUF metadata (the same keys and defaults `quantized_llama`
/// reads).
fn shape(md: &Metadata, dims: &Dims, context: usize) -> Result<dense_llama::Shape> {
    let rms_eps = meta::float(md, "llama.attention.layer_norm_rms_epsilon").ok_or_else(|| {
        PluginError::unsupported_format(
            "the GGUF is missing `llama.attention.layer_norm_rms_epsilon`",
        )
    })?;
    Ok(dense_llama::Shape {
        hidden: dims.hidden,
        heads: dims.heads,
        kv_heads: dims.kv_heads,
        head_dim: dims.hidden / dims.heads,
        rms_eps: rms_eps as f32,
        rope_theta: meta::float(md, "llama.rope.freq_base").unwrap_or(10_000.0) as f32,
        context,
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
    fn names_map_to_their_place() {
        assert_eq!(
            part("blk.12.attn_k.weight"),
            Some(Part::Layer(12, LayerPart::K))
        );
        assert_eq!(part("output.weight"), Some(Part::Output));
        assert_eq!(part("rope_freqs.weight"), Some(Part::RopeFreqs));
        assert_eq!(part("blk.0.attn_q.bias"), None);
        assert_eq!(part("blk.x.attn_q.weight"), None);
    }
}
