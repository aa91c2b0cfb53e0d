//! A llama network for dense (F32/F16/BF16) weights, written for few kernel launches per
//! token.
//!
//! Why not `candle_transformers::models::llama`: at batch 1 on a GPU a 1B model spends ~1.6 ms
//! reading its weights and candle spends several microseconds of CPU on every op it
//! launches, so the number of ops per layer sets the speed. candle's llama runs its
//! attention in F32 (casts in and out), repeats the KV heads with copies, grows the KV cache
//! by concatenation (a copy of the whole cache per token) and launches separate q/k/v and
//! gate/up matmuls. Here, per layer and generated token:
//!
//! - q, k and v come from one matmul (the three matrices stacked at load), gate and up from
//!   another; the softmax scale is folded into the rotary tables of q (scaling the weights
//!   instead rounds every q weight again, which in BF16 changed greedy tokens);
//! - RMS norm, RoPE and softmax are candle-nn's fused kernels;
//! - the KV cache is preallocated per sequence (grown by doubling, so a token appends with
//!   one in-place copy per tensor) and read as strided views, never copied;
//! - grouped-query attention reshapes the query heads onto their KV head instead of
//!   repeating K and V, so at one token everything stays contiguous and no op copies;
//! - attention runs in F32 (one cast of the q/k/v projection in, one of the result out; the
//!   KV cache is F32): in BF16 the scores and softmax weights keep 8 bits of mantissa, which
//!   changed stories260K's greedy tokens after 16 steps. At 1B shapes the F32 cache adds
//!   ~2 % to the bytes read per token at 640 positions.
//!
//! On the CPU the weight matrices may stay F16/BF16 as stored while everything else computes
//! in F32 ([`activation_dtype`]): [`crate::linear`] hands those products to
//! [`crate::cpu_f16`], which widens the weights in registers, so a token reads half the bytes
//! of widened F32 weights with the same F32 arithmetic.
//!
//! The layout of q/k rows is Hugging Face's half-split RoPE one (`rope_thd`).
//!
//! On CUDA in F16/BF16 a generated token goes further (`decode_kernels`, built with the
//! `cuda` feature): the matmuls run as our own GEMV kernel (a cuBLAS call costs ~16 us of
//! CPU, our launch ~6); RoPE, the KV-cache append and the whole attention of a head are one
//! kernel; the residual add and the next RMS norm are one; so are silu and * up. That is 8
//! launches per layer instead of 20. Prompts (several tokens) always take candle's ops.

use crate::linear;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::ops::{rms_norm, softmax_last_dim};
use candle_nn::rotary_emb::rope_thd;
use std::sync::Arc;

/// The sizes of a llama network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    /// Positions the rotary tables cover: the longest sequence a session can hold.
    pub context: usize,
}

/// One transformer block's weights as stored in checkpoints (`[out, in]` matrices).
pub struct LayerWeights {
    pub attn_norm: Tensor,
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub o: Tensor,
    pub ffn_norm: Tensor,
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
}

/// A whole network's weights; `output` is `None` when tied to the embedding.
pub struct Weights {
    pub embed: Tensor,
    pub layers: Vec<LayerWeights>,
    pub norm: Tensor,
    pub output: Option<Tensor>,
    /// llama3-style rope frequency divisors (GGUF `rope_freqs.weight`), one per rotary pair.
    pub rope_freqs: Option<Vec<f32>>,
}

struct Layer {
    attn_norm: Tensor,
    /// `[(heads + 2 kv_heads) * head_dim, hidden]`.
    qkv: Tensor,
    o: Tensor,
    ffn_norm: Tensor,
    /// `[2 * ffn, hidden]`: gate rows, then up rows.
    gate_up: Tensor,
    down: Tensor,
    ffn: usize,
}

/// The loaded network, shared read-only by every session.
pub struct DenseLlama {
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// The embedding itself when tied (same storage, no copy).
    output: Tensor,
    tied: bool,
    /// `[context, head_dim / 2]` each, F32; `q_rope` also scaled by 1/sqrt(head_dim).
    k_rope: Rope,
    q_rope: Rope,
    shape: Shape,
    dtype: DType,
    /// `Some` when one-token steps run the fused CUDA kernels: `[context, head_dim]` F32,
    /// each position's cos then sin (unscaled), the row the attention kernel takes.
    fused_rope: Option<Tensor>,
}

/// Smallest KV capacity a session allocates; it doubles from there up to the context.
const MIN_KV_CAPACITY: usize = 256;

impl DenseLlama {
    /// Builds the network from `weights` on `device`. `dtype` is the activations' dtype: the
    /// norms are in it; the weight matrices (and the embedding) are in it too, or, on the
    /// CPU with F32 activations, in F16/BF16 as stored ([`activation_dtype`]).
    pub fn new(weights: Weights, shape: Shape, dtype: DType, device: &Device) -> Result<Self> {
        let layers = weights
            .layers
            .into_iter()
            .map(|w| {
                Ok(Layer {
                    ffn: w.gate.dim(0)?,
                    qkv: Tensor::cat(&[&w.q, &w.k, &w.v], 0)?,
                    gate_up: Tensor::cat(&[&w.gate, &w.up], 0)?,
                    attn_norm: w.attn_norm,
                    o: w.o,
                    ffn_norm: w.ffn_norm,
                    down: w.down,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let k_rope = Rope::new(&shape, weights.rope_freqs.as_deref(), device)?;
        let q_rope = k_rope.scaled(1.0 / (shape.head_dim as f64).sqrt())?;
        let fused_rope = match fused_kernels_fit(&shape, &layers, dtype, device) {
            true => Some(Tensor::cat(&[&k_rope.cos, &k_rope.sin], 1)?),
            false => None,
        };
        Ok(DenseLlama {
            fused_rope,
            tied: weights.output.is_none(),
            output: weights.output.unwrap_or_else(|| weights.embed.clone()),
            embed: weights.embed,
            layers,
            norm: weights.norm,
            k_rope,
            q_rope,
            shape,
            dtype,
        })
    }

    /// The bytes the weights take (an output tied to the embedding counted once).
    pub fn weight_bytes(&self) -> u64 {
        let bytes = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                [&l.attn_norm, &l.qkv, &l.o, &l.ffn_norm, &l.gate_up, &l.down]
                    .into_iter()
                    .map(bytes)
                    .sum::<u64>()
            })
            .sum();
        let output = match self.tied {
            true => 0,
            false => bytes(&self.output),
        };
        bytes(&self.embed) + bytes(&self.norm) + output + layers
    }

    /// The width of a hidden state (and of a pooled embedding).
    pub fn hidden_size(&self) -> usize {
        self.shape.hidden
    }

    /// An empty sequence.
    pub fn session(self: &Arc<Self>) -> Session {
        Session {
            model: self.clone(),
            caches: Vec::new(),
            len: 0,
            capacity: 0,
        }
    }

    /// Whether the CUDA kernels of [`crate::decode_kernels`] run: for one-token steps, and at
    /// prefill for the causal softmax and SwiGLU.
    fn fused_on(&self) -> bool {
        self.fused_rope.is_some()
    }

    /// The embeddings of `tokens`, `[t, hidden]` in the activations' dtype (the table may
    /// be held in the weights' half precision on the CPU).
    fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(tokens, self.embed.device())?;
        embed_rows(&self.embed, &ids)?.to_dtype(self.dtype)
    }

    fn kv_dim(&self) -> usize {
        self.shape.kv_heads * self.shape.head_dim
    }

    fn q_dim(&self) -> usize {
        self.shape.heads * self.shape.head_dim
    }
}

/// The dtype the activations (and norms, and KV cache inputs) of a network whose weight
/// matrices are `weights` compute in on `device`: F32 on the CPU, whose half-weight matmul
/// ([`crate::cpu_f16`]) widens the weights in registers; the weights' own on a GPU.
pub fn activation_dtype(weights: DType, device: &Device) -> DType {
    match device.is_cpu() {
        true => DType::F32,
        false => weights,
    }
}

/// cos/sin of every position and frequency (half-split layout, as `rope_thd` takes them).
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// `factors` divide the frequencies (llama.cpp's `rope_freqs`, llama3 rope scaling).
    fn new(shape: &Shape, factors: Option<&[f32]>, device: &Device) -> Result<Self> {
        let half = shape.head_dim / 2;
        if factors.is_some_and(|f| f.len() != half) {
            candle_core::bail!(
                "rope_freqs has {:?} values, the heads need {half}",
                factors.map(<[f32]>::len)
            );
        }
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let factor = factors.map_or(1.0, |f| f[i]);
                1.0 / (factor
                    * shape
                        .rope_theta
                        .powf(2.0 * i as f32 / shape.head_dim as f32))
            })
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let positions = Tensor::arange(0u32, shape.context.max(1) as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((shape.context.max(1), 1))?;
        let angles = positions.broadcast_mul(&inv_freq)?;
        Ok(Rope {
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }

    fn scaled(&self, by: f64) -> Result<Self> {
        Ok(Rope {
            cos: (&self.cos * by)?,
            sin: (&self.sin * by)?,
        })
    }

    /// RoPE of `x` (`[1, t, heads, head_dim]`) at positions `pos..pos + t`.
    fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let t = x.dim(1)?;
        rope_thd(
            x,
            &self.cos.narrow(0, pos, t)?,
            &self.sin.narrow(0, pos, t)?,
        )
    }
}

/// One sequence: its KV cache, `[2, kv_heads, capacity, head_dim]` F32 per layer (K, then V),
/// of which the first `len` positions hold data.
pub struct Session {
    model: Arc<DenseLlama>,
    caches: Vec<Tensor>,
    len: usize,
    capacity: usize,
}

impl Session {
    /// Feeds `tokens` at positions `pos..` (`pos` must be the cache's length) and returns
    /// the logits after the last one, shape `[vocab]`, in the activations' dtype.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor> {
        if pos != self.len {
            candle_core::bail!(
                "position {pos} does not follow the {} cached positions",
                self.len
            )
        }
        let model = self.model.clone();
        let t = tokens.len();
        if t == 0 {
            candle_core::bail!("no tokens to run")
        }
        if pos + t > model.shape.context {
            candle_core::bail!(
                "{} positions do not fit in the context of {}",
                pos + t,
                model.shape.context
            )
        }
        self.reserve(pos + t)?;
        let x = model.embed(tokens)?;
        if let (1, Some(rope)) = (t, &model.fused_rope) {
            let logits = fused::forward(&model, rope, &self.caches, &x, pos)?;
            self.len = pos + 1;
            return logits.squeeze(0);
        }
        let x = self.layers(&model, x, pos)?;
        let last = x.narrow(0, t - 1, 1)?;
        let last = rms_norm(&last, &model.norm, model.shape.rms_eps)?;
        linear::forward(&last, &model.output)?.squeeze(0)
    }

    /// The hidden states of `tokens` at positions `pos..` after the final norm, `[t, hidden]`
    /// F32 (embeddings). Every token takes candle's ops, never the one-token fused kernels,
    /// which return logits only.
    pub fn hidden(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor> {
        let model = self.model.clone();
        let t = tokens.len();
        if pos != self.len || t == 0 || pos + t > model.shape.context {
            candle_core::bail!(
                "{t} tokens at position {pos} do not follow the {} cached positions within \
                 the context of {}",
                self.len,
                model.shape.context
            )
        }
        self.reserve(pos + t)?;
        let x = model.embed(tokens)?;
        let x = self.layers(&model, x, pos)?;
        rms_norm(&x, &model.norm, model.shape.rms_eps)?.to_dtype(DType::F32)
    }

    /// The residual stream of `x` (`[t, hidden]`, the embedded tokens at positions `pos..`)
    /// after every layer; the KV cache takes the new positions.
    fn layers(&mut self, model: &DenseLlama, mut x: Tensor, pos: usize) -> Result<Tensor> {
        let t = x.dim(0)?;
        // The CUDA kernels and the CPU's (`cpu_act`) mask inside the softmax.
        let mask = match model.fused_on() || crate::cpu_act::handles(&x) {
            true => None,
            false => causal_mask(t, pos, x.device())?,
        };
        for (i, layer) in model.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, model.shape.rms_eps)?;
            let attn = self.attention(model, i, layer, &h, pos, mask.as_ref())?;
            x = (x + linear::forward(&attn, &layer.o)?)?;
            let h = rms_norm(&x, &layer.ffn_norm, model.shape.rms_eps)?;
            x = (&x + mlp(layer, &h, model.fused_on())?)?;
        }
        self.len = pos + t;
        Ok(x)
    }

    /// Forgets every position from `len` on (prompt-prefix reuse, [`crate::prefix`]): the
    /// cache is written in place at each position, so what lies beyond `len` is simply
    /// overwritten by the next forward pass.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Whether [`Session::forward_argmax`] runs: one-token steps take the fused CUDA
    /// kernels.
    pub fn argmax_on_device(&self) -> bool {
        self.model.fused_rope.is_some()
    }

    /// [`Session::forward`], then the greedy choice picked on the device (only 4 bytes come
    /// back to the CPU). Needs [`Session::argmax_on_device`].
    pub fn forward_argmax(&mut self, tokens: &[u32], pos: usize) -> Result<u32> {
        let logits = self.forward(tokens, pos)?;
        fused::argmax(&logits)
    }

    /// Attention of the `t` new positions (`h`: `[t, hidden]`) over the cache plus
    /// themselves; `[t, heads * head_dim]`.
    fn attention(
        &mut self,
        model: &DenseLlama,
        index: usize,
        layer: &Layer,
        h: &Tensor,
        pos: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let s = &model.shape;
        let t = h.dim(0)?;
        let qkv = linear::forward(h, &layer.qkv)?.to_dtype(DType::F32)?;
        let (q_dim, kv_dim) = (model.q_dim(), model.kv_dim());
        let heads = |start: usize, n: usize| -> Result<Tensor> {
            qkv.narrow(1, start, n * s.head_dim)?
                .contiguous()?
                .reshape((1, t, n, s.head_dim))
        };
        let q = model.q_rope.apply(&heads(0, s.heads)?, pos)?;
        let k = model.k_rope.apply(&heads(q_dim, s.kv_heads)?, pos)?;
        let v = heads(q_dim + kv_dim, s.kv_heads)?;
        // [1, t, n, d] -> [n, t, d]: free when t == 1.
        let by_head = |x: Tensor, n: usize| -> Result<Tensor> {
            x.reshape((t, n, s.head_dim))?.transpose(0, 1)?.contiguous()
        };
        let cache = &self.caches[index];
        let new = Tensor::stack(&[by_head(k, s.kv_heads)?, by_head(v, s.kv_heads)?], 0)?;
        cache.slice_set(&new, 2, pos)?;
        attend(model, &by_head(q, s.heads)?, cache, pos + t, mask)
    }

    /// Makes room for `needed` positions, doubling the capacity (at least
    /// [`MIN_KV_CAPACITY`], at most the context) and keeping what is cached.
    fn reserve(&mut self, needed: usize) -> Result<()> {
        if needed <= self.capacity {
            return Ok(());
        }
        let model = &self.model;
        let s = &model.shape;
        let capacity = needed
            .next_power_of_two()
            .max(MIN_KV_CAPACITY)
            .min(s.context);
        let device = model.embed.device();
        let caches = (0..model.layers.len())
            .map(|i| {
                let fresh =
                    Tensor::zeros((2, s.kv_heads, capacity, s.head_dim), DType::F32, device)?;
                if let Some(old) = self.caches.get(i).filter(|_| self.len > 0) {
                    fresh.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
                Ok(fresh)
            })
            .collect::<Result<Vec<_>>>()?;
        self.caches = caches;
        self.capacity = capacity;
        Ok(())
    }
}

/// Attention of the `t` newest positions' query heads `q` (`[heads, t, d]` F32, already
/// rotated and scaled) over the first `len` positions of `cache`: `[t, heads * d]` in the
/// activations' dtype. Query heads are grouped on their KV head (`[kv_heads, group * t, d]`), so K
/// and V are read as strided views of the cache, never repeated or copied.
fn attend(
    model: &DenseLlama,
    q: &Tensor,
    cache: &Tensor,
    len: usize,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let s = &model.shape;
    let t = q.dim(1)?;
    let group = s.heads / s.kv_heads;
    let keys = cache.get(0)?.narrow(1, 0, len)?;
    let values = cache.get(1)?.narrow(1, 0, len)?;
    let q = q.reshape((s.kv_heads, group * t, s.head_dim))?;
    let scores = q.matmul(&keys.t()?)?;
    let weights = match mask {
        // The scores' rows run (KV head, group, query), as the kernels need.
        _ if t > 1 && model.fused_on() => fused::causal_softmax(&scores, t, len - t)?,
        _ if crate::cpu_act::handles(&scores) => {
            crate::cpu_act::causal_softmax(&scores, t, len - t)?
        }
        Some(mask) => softmax_last_dim(
            &scores
                .reshape((s.kv_heads, group, t, len))?
                .broadcast_add(mask)?,
        )?
        .reshape((s.kv_heads, group * t, len))?,
        None => softmax_last_dim(&scores)?,
    };
    let out = weights.matmul(&values)?;
    // [heads, t, d] -> [t, heads * d]: free when t == 1.
    out.reshape((s.heads, t, s.head_dim))?
        .transpose(0, 1)?
        .to_dtype(model.dtype)?
        .contiguous()?
        .reshape((t, s.heads * s.head_dim))
}

/// Whether one-token steps can run the fused CUDA kernels: a CUDA device, half-precision
/// weights, sizes the kernels take, and not turned off with `LLMLOCAL_CANDLE_FUSED_DECODE=0`
/// (for comparing with candle's own ops).
fn fused_kernels_fit(shape: &Shape, layers: &[Layer], dtype: DType, device: &Device) -> bool {
    let off = std::env::var("LLMLOCAL_CANDLE_FUSED_DECODE").is_ok_and(|v| v == "0");
    !off && device.is_cuda()
        && matches!(dtype, DType::F16 | DType::BF16)
        && fused::fits(shape, layers)
}

#[cfg(feature = "cuda")]
mod fused {
    //! One token through the network with the fused kernels (see [`crate::decode_kernels`]).

    use super::{DenseLlama, Layer, Shape};
    use crate::decode_kernels as k;
    use candle_core::{Result, Tensor};
    use candle_nn::ops::rms_norm;

    /// Sizes the kernels take: 16-byte rows for the GEMV, heads the attention kernel takes.
    pub fn fits(shape: &Shape, layers: &[Layer]) -> bool {
        k::attention_fits(shape.head_dim)
            && shape.kv_heads > 0
            && shape.heads % shape.kv_heads == 0
            && shape.hidden % 8 == 0
            && (shape.heads * shape.head_dim) % 8 == 0
            && layers.iter().all(|l| l.ffn % 8 == 0)
    }

    /// One token (`x`: its embedding, `[1, hidden]`) at position `pos` through every layer
    /// (whose KV caches are `caches`), the final norm and the output: `[1, vocab]` logits.
    /// `rope`: the model's `fused_rope` table.
    pub fn forward(
        model: &DenseLlama,
        rope: &Tensor,
        caches: &[Tensor],
        x: &Tensor,
        pos: usize,
    ) -> Result<Tensor> {
        let s = &model.shape;
        let rope = rope.narrow(0, pos, 1)?;
        let q_scale = 1.0 / (s.head_dim as f32).sqrt();
        let first_norm = model.layers.first().map_or(&model.norm, |l| &l.attn_norm);
        let mut h = rms_norm(x, first_norm, s.rms_eps)?;
        let mut x = x.clone();
        for (i, (layer, cache)) in model.layers.iter().zip(caches).enumerate() {
            let attn = k::attention(
                &linear(&h, &layer.qkv)?,
                &rope,
                cache,
                s.heads,
                pos,
                q_scale,
            )?;
            (x, h) = residual(&x, &linear(&attn, &layer.o)?, &layer.ffn_norm, s.rms_eps)?;
            let act = k::swiglu(&linear(&h, &layer.gate_up)?)?;
            // The next layer's input norm, or after the last layer the final one.
            let norm = model
                .layers
                .get(i + 1)
                .map_or(&model.norm, |l| &l.attn_norm);
            (x, h) = residual(&x, &linear(&act, &layer.down)?, norm, s.rms_eps)?;
        }
        linear(&h, &model.output)
    }

    /// See [`k::causal_softmax`].
    pub fn causal_softmax(scores: &Tensor, t: usize, pos: usize) -> Result<Tensor> {
        k::causal_softmax(scores, t, pos)
    }

    /// See [`k::swiglu`].
    pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
        k::swiglu(gate_up)
    }

    /// The index of the largest logit, picked on the device.
    pub fn argmax(logits: &Tensor) -> Result<u32> {
        let index = k::argmax(logits)?.to_vec1::<u32>()?;
        index
            .first()
            .copied()
            .ok_or_else(|| candle_core::Error::Msg("argmax returned nothing".into()))
    }

    /// `x + delta` and its RMS norm times `norm`, from one kernel: views of its two rows.
    fn residual(x: &Tensor, delta: &Tensor, norm: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
        let both = k::add_rms_norm(x, delta, norm, eps)?;
        Ok((both.narrow(0, 0, 1)?, both.narrow(0, 1, 1)?))
    }

    /// `x` times `w` transposed, by the GEMV kernel when the operands fit it.
    fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
        match k::gemv_fits(x, w) {
            true => k::gemv(x, w),
            false => x.matmul(&w.t()?),
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod fused {
    //! Built without CUDA: [`super::fused_kernels_fit`] is always false, so nothing here runs.

    use super::{DenseLlama, Layer, Shape};
    use candle_core::{bail, Result, Tensor};

    pub fn fits(_: &Shape, _: &[Layer]) -> bool {
        false
    }

    pub fn forward(
        _: &DenseLlama,
        _: &Tensor,
        _: &[Tensor],
        _: &Tensor,
        _: usize,
    ) -> Result<Tensor> {
        bail!("this build has no CUDA kernels")
    }

    pub fn argmax(_: &Tensor) -> Result<u32> {
        bail!("this build has no CUDA kernels")
    }

    pub fn causal_softmax(_: &Tensor, _: usize, _: usize) -> Result<Tensor> {
        bail!("this build has no CUDA kernels")
    }

    pub fn swiglu(_: &Tensor) -> Result<Tensor> {
        bail!("this build has no CUDA kernels")
    }
}

/// SwiGLU feed-forward of `h` (`[t, hidden]`); `fused`: by the CUDA kernel (one pass, where
/// candle's narrow views make silu and the product two slow strided passes), on the CPU by
/// [`crate::cpu_act`]'s one-pass kernel.
fn mlp(layer: &Layer, h: &Tensor, fused: bool) -> Result<Tensor> {
    let gate_up = linear::forward(h, &layer.gate_up)?;
    if fused {
        return fused::swiglu(&gate_up)?.matmul(&layer.down.t()?);
    }
    if crate::cpu_act::handles(&gate_up) {
        return linear::forward(&crate::cpu_act::swiglu(&gate_up)?, &layer.down);
    }
    let gate = gate_up.narrow(1, 0, layer.ffn)?;
    let up = gate_up.narrow(1, layer.ffn, layer.ffn)?;
    linear::forward(&(gate.silu()? * up)?, &layer.down)
}

/// The embedding rows of `ids`; a Q8_0 table (U8 blocks, see [`crate::cpu_q8`]) is widened
/// to F32 only for the rows looked up.
fn embed_rows(embed: &Tensor, ids: &Tensor) -> Result<Tensor> {
    match embed.dtype() {
        DType::U8 => crate::cpu_q8::dequantize_rows(embed, ids),
        _ => embed.index_select(ids, 0),
    }
}

/// `[t, pos + t]` F32: 0 where new position i may see key j (j <= pos + i), -inf
/// elsewhere; `None` for one token, which sees everything.
fn causal_mask(t: usize, pos: usize, device: &Device) -> Result<Option<Tensor>> {
    if t == 1 {
        return Ok(None);
    }
    let len = pos + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..len).map(move |j| if j <= pos + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(mask, (t, len), device).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_hides_only_later_positions() {
        let mask = causal_mask(2, 3, &Device::Cpu).unwrap().unwrap();
        assert_eq!(mask.dims(), [2, 5]);
        let rows: Vec<Vec<f32>> = mask.to_vec2().unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(rows, [[0., 0., 0., 0., inf], [0., 0., 0., 0., 0.]]);
        assert!(causal_mask(1, 7, &Device::Cpu).unwrap().is_none());
    }
}
