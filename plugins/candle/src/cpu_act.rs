//! The dense llama's activations on the CPU: SwiGLU and the causal softmax, one pass each,
//! with a vector `exp`, rows spread over candle's barrier pool.
//!
//! Why: candle computes `silu(gate) * up` as two ops over strided views of the fused
//! gate/up product and its softmax after adding a separate mask tensor, each element's `exp`
//! a libm call, on rayon's pool, whose threads competed with the barrier pool's spinning
//! worker (see [`crate::cpu_gemm`]). Here each activation is one op writing a fresh tensor.
//!
//! `exp` ([`vexp`]): `e^x = 2^n · e^r` with `n = round(x · log2 e)` and `r = x - n · ln 2`
//! (ln 2 in two parts, Cody and Waite, so `r` is exact to F32), `e^r` by its Taylor series to
//! the 7th power (|r| <= ln2 / 2: truncation < 6e-9 relative), `2^n` built in the exponent
//! bits. Inputs are clamped to [-87.3, 88.3] so `2^n` stays a normal F32: below, the true
//! value is under 1.2e-38, which no softmax or SiLU here can tell from it. Tests check it
//! against F64 `exp` within 4 ulp.

use crate::cpu_f16::simd::Kind;
use crate::cpu_lanes::Lanes;
#[cfg(target_arch = "x86_64")]
use crate::cpu_lanes::{Avx2, Avx512};
use crate::cpu_pool::for_each_chunk;
use crate::linear::contiguous;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// Whether these activations run here: F32 on the CPU.
pub fn handles(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// `silu(gate) * up` for `gate_up` `[t, 2 · ffn]` (gate first): `[t, ffn]`.
pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    gate_up.contiguous()?.apply_op1_no_bwd(&SwiGlu)
}

/// Softmax of each row of `scores` (`[heads, rows, len]`, rows running (group, query) with `t`
/// queries at positions `pos..pos + t`) over the keys its query may see (`0..=pos + i`), zero
/// over the later ones.
pub fn causal_softmax(scores: &Tensor, t: usize, pos: usize) -> Result<Tensor> {
    scores
        .contiguous()?
        .apply_op1_no_bwd(&CausalSoftmax { t, pos })
}

struct SwiGlu;

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "cpu-swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (t, two_ffn) = l.shape().dims2()?;
        if two_ffn % 2 != 0 {
            candle_core::bail!("swiglu needs [t, 2 * ffn], got [{t}, {two_ffn}]")
        }
        let ffn = two_ffn / 2;
        let x = contiguous(s.as_slice::<f32>()?, l, "swiglu")?;
        let mut y = vec![0f32; t * ffn];
        for_each_chunk(&mut y, ffn, INLINE_ELEMENTS, |i, out| {
            let row = &x[i * two_ffn..(i + 1) * two_ffn];
            silu_mul(Kind::detect(), &row[..ffn], &row[ffn..], out)
        });
        Ok((CpuStorage::F32(y), Shape::from((t, ffn))))
    }
}

struct CausalSoftmax {
    t: usize,
    pos: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "cpu-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (heads, rows, len) = l.shape().dims3()?;
        let (t, pos) = (self.t, self.pos);
        if t == 0 || rows % t != 0 || pos + t > len {
            candle_core::bail!(
                "causal softmax: {rows} rows of {len} keys do not hold {t} queries at {pos}"
            )
        }
        let x = contiguous(s.as_slice::<f32>()?, l, "causal softmax")?;
        let mut y = vec![0f32; heads * rows * len];
        for_each_chunk(&mut y, len, INLINE_ELEMENTS, |r, out| {
            let visible = pos + r % t + 1;
            softmax(Kind::detect(), &x[r * len..r * len + visible], out);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
}

/// Outputs below which an op runs on the calling thread: a generated token's activations
/// (one SwiGLU row, a softmax row per head) take less time than handing them to the pool.
const INLINE_ELEMENTS: usize = 1 << 14;

/// `out[j] = silu(gate[j]) * up[j]`, `silu(g) = g / (1 + e^-g)` (candle's formula).
fn silu_mul(kind: Kind, gate: &[f32], up: &[f32], out: &mut [f32]) {
    let done = match kind {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the kind was detected on this CPU; the slices are read within their lengths.
        Kind::Avx512 if kind.available() => unsafe { silu_mul_avx512(gate, up, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Kind::Avx2 if kind.available() => unsafe { silu_mul_avx2(gate, up, out) },
        _ => 0,
    };
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up).skip(done) {
        *o = *g / (1.0 + (-*g).exp()) * *u;
    }
}

/// The softmax of `x` into `out[..x.len()]`, zeros after it.
fn softmax(kind: Kind, x: &[f32], out: &mut [f32]) {
    let n = x.len().min(out.len());
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (head, tail) = out.split_at_mut(n);
    tail.fill(0.0);
    let done = match kind {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the kind was detected on this CPU; the slices are read within their lengths.
        Kind::Avx512 if kind.available() => unsafe { exp_shifted_avx512(&x[..n], max, head) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Kind::Avx2 if kind.available() => unsafe { exp_shifted_avx2(&x[..n], max, head) },
        _ => 0,
    };
    for (o, v) in head.iter_mut().zip(x).skip(done) {
        *o = (*v - max).exp();
    }
    let sum: f32 = head.iter().sum();
    let inv = 1.0 / sum;
    head.iter_mut().for_each(|v| *v *= inv);
}

/// `e^x` per lane (see the module docs).
#[inline(always)]
unsafe fn vexp<I: Lanes>(x: I::V) -> I::V {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO; LN2_HI has 9 significant bits, so n · LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = I::clamp(x, -87.3, 88.3);
    let n = I::round(I::mul(x, I::splat(LOG2E)));
    let r = I::fma(n, I::splat(-LN2_HI), x);
    let r = I::fma(n, I::splat(-LN2_LO), r);
    // Σ r^i / i! for i <= 7, Horner.
    let mut p = I::splat(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = I::fma(p, r, I::splat(c));
    }
    I::mul(p, I::pow2(n))
}

/// The whole vectors of `silu_mul`; returns how many elements were done.
#[inline(always)]
unsafe fn silu_mul_with<I: Lanes>(gate: &[f32], up: &[f32], out: &mut [f32]) -> usize {
    let n = gate.len().min(up.len()).min(out.len());
    let body = n - n % I::L;
    let one = I::splat(1.0);
    let mut i = 0;
    while i < body {
        let g = I::load(gate.as_ptr().add(i));
        let e = vexp::<I>(I::mul(g, I::splat(-1.0)));
        let silu = I::div(g, I::add(one, e));
        I::store(
            out.as_mut_ptr().add(i),
            I::mul(silu, I::load(up.as_ptr().add(i))),
        );
        i += I::L;
    }
    body
}

/// `out[i] = e^(x[i] - max)` for the whole vectors; returns how many elements were done.
#[inline(always)]
unsafe fn exp_shifted_with<I: Lanes>(x: &[f32], max: f32, out: &mut [f32]) -> usize {
    let n = x.len().min(out.len());
    let body = n - n % I::L;
    let shift = I::splat(-max);
    let mut i = 0;
    while i < body {
        let v = I::add(I::load(x.as_ptr().add(i)), shift);
        I::store(out.as_mut_ptr().add(i), vexp::<I>(v));
        i += I::L;
    }
    body
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) -> usize {
    silu_mul_with::<Avx512>(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) -> usize {
    silu_mul_with::<Avx2>(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shifted_avx512(x: &[f32], max: f32, out: &mut [f32]) -> usize {
    exp_shifted_with::<Avx512>(x, max, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx2(x: &[f32], max: f32, out: &mut [f32]) -> usize {
    exp_shifted_with::<Avx2>(x, max, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear::max_diff;
    use candle_core::Device;

    const KINDS: [Kind; 3] = [Kind::Scalar, Kind::Avx2, Kind::Avx512];

    /// The vector `exp` against F64's over its whole useful range, including both clamps.
    #[test]
    fn vector_exp_is_within_4_ulp_of_f64() {
        let xs: Vec<f32> = (-8730..=8829).map(|i| i as f32 * 0.01 + 0.003).collect();
        for kind in KINDS {
            if !kind.available() {
                eprintln!("{kind:?}: not on this CPU, skipped");
                continue;
            }
            let mut got = vec![0f32; xs.len()];
            // exp(x - 0): the softmax kernel with a zero maximum.
            let done = match kind {
                #[cfg(target_arch = "x86_64")]
                Kind::Avx512 => unsafe { exp_shifted_avx512(&xs, 0.0, &mut got) },
                #[cfg(target_arch = "x86_64")]
                Kind::Avx2 => unsafe { exp_shifted_avx2(&xs, 0.0, &mut got) },
                _ => 0,
            };
            for (g, x) in got.iter_mut().zip(&xs).skip(done) {
                *g = x.exp();
            }
            for (g, x) in got.iter().zip(&xs) {
                let want = (*x as f64).exp();
                let ulp = (want as f32).abs() * f32::EPSILON;
                assert!(
                    ((*g as f64) - want).abs() <= 4.0 * ulp as f64,
                    "{kind:?}: exp({x}) = {g}, F64 says {want}"
                );
            }
        }
    }

    /// The op against candle's `silu(gate) * up` on narrowed views.
    #[test]
    fn swiglu_equals_candles_silu_times_up() {
        let dev = Device::Cpu;
        // 37: whole vectors and a scalar tail; large gates reach both exp clamps.
        let gate_up = (Tensor::randn(0f32, 1., (5, 2 * 37), &dev).unwrap() * 40.0).unwrap();
        let got = swiglu(&gate_up).unwrap();
        let gate = gate_up.narrow(1, 0, 37).unwrap();
        let up = gate_up.narrow(1, 37, 37).unwrap();
        let want = (gate.silu().unwrap() * up).unwrap();
        assert_eq!(got.dims(), [5, 37]);
        let diff = max_diff(&got, &want);
        assert!(diff <= 1e-4, "largest difference {diff}");
        for kind in KINDS.into_iter().filter(|k| k.available()) {
            let (g, u) = ([-3.0f32; 20], [2.0f32; 20]);
            let mut out = [0f32; 20];
            silu_mul(kind, &g, &u, &mut out);
            let want = -3.0 / (1.0 + 3f32.exp()) * 2.0;
            assert!(out.iter().all(|v| (v - want).abs() < 1e-6), "{kind:?}");
        }
    }

    /// The op against candle's softmax of the scores plus the causal mask, for a prompt at
    /// position 0 and a chunk after 5 cached positions, with two query heads per row group.
    #[test]
    fn causal_softmax_equals_candles_masked_softmax() {
        let dev = Device::Cpu;
        for (t, pos) in [(7, 0), (4, 5), (1, 9)] {
            let len = pos + t;
            let (heads, group) = (3, 2);
            let scores = Tensor::randn(0f32, 3., (heads, group * t, len), &dev).unwrap();
            let got = causal_softmax(&scores, t, pos).unwrap();
            let mask: Vec<f32> = (0..t)
                .flat_map(|i| {
                    (0..len).map(move |j| if j <= pos + i { 0.0 } else { f32::NEG_INFINITY })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (t, len), &dev).unwrap();
            let want = candle_nn::ops::softmax_last_dim(
                &scores
                    .reshape((heads, group, t, len))
                    .unwrap()
                    .broadcast_add(&mask)
                    .unwrap(),
            )
            .unwrap()
            .reshape((heads, group * t, len))
            .unwrap();
            let diff = max_diff(&got, &want);
            assert!(diff <= 1e-6, "t {t} pos {pos}: largest difference {diff}");
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() {
        let dev = Device::Cpu;
        let odd = Tensor::zeros((2, 7), DType::F32, &dev).unwrap();
        assert!(swiglu(&odd).is_err());
        let scores = Tensor::zeros((1, 6, 4), DType::F32, &dev).unwrap();
        // 6 rows are not whole groups of 4 queries; 3 queries at 2 need 5 keys.
        assert!(causal_softmax(&scores, 4, 0).is_err());
        assert!(causal_softmax(&scores, 3, 2).is_err());
    }
}
