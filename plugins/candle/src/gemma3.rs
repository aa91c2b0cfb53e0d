//! Gemma 3 (text) on candle ops, for safetensors and GGUF alike (loaders:
//! [`crate::gemma3_load`]).
//!
//! Not candle-transformers' models: `gemma3` lets a prefill see `sliding_window + 1` tokens
//! (Hugging Face and llama.cpp: `sliding_window`) and masks all earlier positions of a prompt
//! fed in chunks; `quantized_gemma3` uses SiLU instead of GELU and drops the window when
//! decoding one token at a time. Either gives other answers than the model past the window.
//!
//! Per layer: RMSNorm -> q/k/v -> per-head RMSNorm on q and k -> NEOX rope (base of a sliding
//! layer or of a global one) -> causal attention (a sliding layer sees the last
//! `window` positions, itself included) -> RMSNorm -> residual; RMSNorm -> GELU(tanh)-gated FFN
//! -> RMSNorm -> residual. Embeddings are scaled by `sqrt(hidden)`; norms hold the effective
//! scale (the `1 + weight` of the safetensors is added at load).

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor};
use std::sync::Arc;

/// The numbers the forward pass follows.
#[derive(Debug, Clone)]
pub struct Config {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f32,
    /// Rope base and linear position scale of global layers.
    pub rope_global: (f64, f64),
    /// Rope base of sliding layers (never scaled).
    pub rope_local: f64,
    /// Sliding window in tokens; `None`: every layer is global.
    pub window: Option<usize>,
    /// Per layer: whether it slides.
    pub sliding: Vec<bool>,
    /// Multiplies q before the dot products.
    pub attn_scale: f64,
    pub final_softcap: Option<f64>,
    /// Positions the rope tables cover.
    pub context: usize,
}

/// One decoder layer; norms are effective scales.
#[derive(Clone)]
pub struct Layer {
    pub attn_norm: Tensor,
    pub q: QMatMul,
    pub k: QMatMul,
    pub v: QMatMul,
    pub o: QMatMul,
    pub q_norm: Tensor,
    pub k_norm: Tensor,
    pub post_attn_norm: Tensor,
    pub ffn_norm: Tensor,
    pub gate: QMatMul,
    pub up: QMatMul,
    pub down: QMatMul,
    pub post_ffn_norm: Tensor,
}

/// The weights of a Gemma 3 model.
#[derive(Clone)]
pub struct Weights {
    /// `[vocab, hidden]`, for the input lookup.
    pub embed: Tensor,
    /// The output layer (the token embedding when tied).
    pub output: QMatMul,
    pub norm: Tensor,
    pub layers: Vec<Layer>,
}

/// A loaded network; sessions share it.
pub struct Gemma3 {
    w: Weights,
    cfg: Config,
    /// (cos, sin) `[context, head_dim / 2]` of global and of sliding layers.
    rope_global: (Tensor, Tensor),
    rope_local: (Tensor, Tensor),
}

fn rope_table(
    cfg: &Config,
    base: f64,
    scale: f64,
    dtype: DType,
    dev: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let d = cfg.head_dim;
    let inv: Vec<f32> = (0..d)
        .step_by(2)
        .map(|i| (scale / base.powf(i as f64 / d as f64)) as f32)
        .collect();
    let inv = Tensor::from_vec(inv, (1, d / 2), dev)?;
    let pos = Tensor::arange(0u32, cfg.context as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((cfg.context, 1))?;
    let angles = pos.matmul(&inv)?;
    Ok((
        angles.cos()?.to_dtype(dtype)?,
        angles.sin()?.to_dtype(dtype)?,
    ))
}

impl Gemma3 {
    pub fn new(w: Weights, cfg: Config) -> candle_core::Result<Self> {
        if w.layers.len() != cfg.sliding.len() {
            candle_core::bail!(
                "{} layers but {} sliding flags",
                w.layers.len(),
                cfg.sliding.len()
            );
        }
        let (dtype, dev) = (w.embed.dtype(), w.embed.device().clone());
        let (base, scale) = cfg.rope_global;
        let rope_global = rope_table(&cfg, base, scale, dtype, &dev)?;
        let rope_local = rope_table(&cfg, cfg.rope_local, 1.0, dtype, &dev)?;
        Ok(Self {
            w,
            cfg,
            rope_global,
            rope_local,
        })
    }

    /// A fresh, empty sequence.
    pub fn session(self: &Arc<Self>) -> Session {
        Session {
            net: self.clone(),
            cache: vec![None; self.w.layers.len()],
            len: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn weights(&self) -> &Weights {
        &self.w
    }
}

/// One sequence: its keys and values per layer (`[1, kv_heads, len, head_dim]`). Cloned
/// for the prompt cache: the caches grow by concatenation, so a clone's tensors are never
/// written again.
#[derive(Clone)]
pub struct Session {
    net: Arc<Gemma3>,
    cache: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

/// The additive mask of `n` queries at positions `pos..` over keys `0..pos + n`; `None` when
/// nothing is hidden.
fn mask(
    pos: usize,
    n: usize,
    window: Option<usize>,
    dtype: DType,
    dev: &Device,
) -> candle_core::Result<Option<Tensor>> {
    let total = pos + n;
    let hidden = |p: usize, j: usize| j > p || window.is_some_and(|w| p - j >= w);
    let any = (0..n).any(|i| (0..total).any(|j| hidden(pos + i, j)));
    if !any {
        return Ok(None);
    }
    let values: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if hidden(pos + i, j) {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Some(
        Tensor::from_vec(values, (n, total), dev)?.to_dtype(dtype)?,
    ))
}

impl Session {
    /// Feeds `tokens` at positions `pos..` (which must follow what was fed before) and returns
    /// the next-token logits after the last one.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> candle_core::Result<Tensor> {
        let net = self.net.clone();
        let cfg = &net.cfg;
        let n = tokens.len();
        if pos != self.len || n == 0 || pos + n > cfg.context {
            candle_core::bail!(
                "{n} tokens at position {pos} do not follow the {} cached ones within the context of {}",
                self.len,
                cfg.context
            );
        }
        let dev = net.w.embed.device();
        let dtype = net.w.embed.dtype();
        let ids = Tensor::new(tokens, dev)?;
        let mut x =
            (net.w.embed.index_select(&ids, 0)? * (cfg.hidden as f64).sqrt())?.unsqueeze(0)?;
        let full = mask(pos, n, None, dtype, dev)?;
        let sliding = mask(pos, n, cfg.window, dtype, dev)?;
        for (il, layer) in net.w.layers.iter().enumerate() {
            let slides = cfg.sliding[il] && cfg.window.is_some();
            let (m, rope) = match slides {
                true => (sliding.as_ref(), &net.rope_local),
                false => (full.as_ref(), &net.rope_global),
            };
            x = self.layer(il, layer, &x, pos, m, rope)?;
        }
        self.len += n;
        let last = x.narrow(1, n - 1, 1)?.contiguous()?;
        let h = candle_nn::ops::rms_norm(&last, &net.w.norm, cfg.eps)?;
        let logits = net.w.output.forward(&h)?;
        match cfg.final_softcap {
            Some(c) => (logits / c)?.tanh()? * c,
            None => Ok(logits),
        }
    }

    fn layer(
        &mut self,
        il: usize,
        l: &Layer,
        x: &Tensor,
        pos: usize,
        mask: Option<&Tensor>,
        rope: &(Tensor, Tensor),
    ) -> candle_core::Result<Tensor> {
        let eps = self.net.cfg.eps;
        let h = candle_nn::ops::rms_norm(x, &l.attn_norm, eps)?;
        let attn = self.attention(il, l, &h, pos, mask, rope)?;
        let x = (x + candle_nn::ops::rms_norm(&attn, &l.post_attn_norm, eps)?)?;
        let h = candle_nn::ops::rms_norm(&x, &l.ffn_norm, eps)?;
        let ffn = l
            .down
            .forward(&(l.gate.forward(&h)?.gelu()? * l.up.forward(&h)?)?)?;
        x + candle_nn::ops::rms_norm(&ffn, &l.post_ffn_norm, eps)?
    }

    fn attention(
        &mut self,
        il: usize,
        l: &Layer,
        h: &Tensor,
        pos: usize,
        mask: Option<&Tensor>,
        (cos, sin): &(Tensor, Tensor),
    ) -> candle_core::Result<Tensor> {
        let cfg = &self.net.cfg;
        let (_, n, _) = h.dims3()?;
        let d = cfg.head_dim;
        let heads = |t: Tensor, count: usize| -> candle_core::Result<Tensor> {
            t.reshape((1, n, count, d))?.transpose(1, 2)?.contiguous()
        };
        let q = heads(l.q.forward(h)?, cfg.heads)?;
        let k = heads(l.k.forward(h)?, cfg.kv_heads)?;
        let v = heads(l.v.forward(h)?, cfg.kv_heads)?;
        let q = candle_nn::ops::rms_norm(&q, &l.q_norm, cfg.eps)?;
        let k = candle_nn::ops::rms_norm(&k, &l.k_norm, cfg.eps)?;
        let (cos, sin) = (cos.narrow(0, pos, n)?, sin.narrow(0, pos, n)?);
        let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
        let (k, v) = match self.cache[il].take() {
            Some((ck, cv)) => (Tensor::cat(&[&ck, &k], 2)?, Tensor::cat(&[&cv, &v], 2)?),
            None => (k, v),
        };
        self.cache[il] = Some((k.clone(), v.clone()));
        let groups = cfg.heads / cfg.kv_heads;
        let k = candle_transformers::utils::repeat_kv(k, groups)?.contiguous()?;
        let v = candle_transformers::utils::repeat_kv(v, groups)?.contiguous()?;
        let scores = (q * cfg.attn_scale)?.matmul(&k.t()?)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((1, n, cfg.heads * d))?;
        l.o.forward(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hidden_positions(pos: usize, n: usize, window: Option<usize>) -> Vec<Vec<bool>> {
        let m = mask(pos, n, window, DType::F32, &Device::Cpu)
            .ok()
            .flatten()
            .map(|t| t.to_vec2::<f32>().unwrap_or_default())
            .unwrap_or_default();
        m.into_iter()
            .map(|row| row.into_iter().map(|x| x.is_infinite()).collect())
            .collect()
    }

    #[test]
    fn a_sliding_query_sees_exactly_the_last_window_positions() {
        // Query at position 5 with a window of 3 sees 3, 4, 5 (llama.cpp: hidden when
        // p - j >= window; Hugging Face the same), in a prefill and in a later chunk.
        let rows = hidden_positions(0, 6, Some(3));
        assert_eq!(rows[5], [true, true, true, false, false, false]);
        let rows = hidden_positions(4, 2, Some(3));
        assert_eq!(rows[1], [true, true, true, false, false, false]);
        assert_eq!(rows[0], [true, true, false, false, false, true]);
    }

    #[test]
    fn a_single_token_within_the_window_needs_no_mask() {
        assert!(hidden_positions(2, 1, Some(3)).is_empty());
        assert!(hidden_positions(7, 1, None).is_empty());
        assert_eq!(
            hidden_positions(3, 1, Some(3)),
            [[true, false, false, false]]
        );
    }
}
