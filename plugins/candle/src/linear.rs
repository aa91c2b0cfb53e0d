//! `x · wᵀ` for the dense networks on every backend's weights, with the CPU's work spread
//! over its threads.
//!
//! On the CPU, F32/F16/BF16 weights go to [`crate::cpu_f16`]'s kernels wherever the CPU has
//! AVX2 or AVX-512 (one token: one weight row at a time; prompts: [`crate::cpu_gemm`]'s
//! outer-product kernel), Q8_0 blocks to [`crate::cpu_q8`]. candle's `gemm` runs its AVX2
//! kernel only and a one-row product on the calling thread only: measured against the
//! llama-cpp plugin on the bench model, F32 prompts went 0.52x -> 0.9x and F32 decode 0.82x
//! -> ~1.0x with our kernels.
//!
//! Elsewhere (no AVX2, or a GPU) `gemm`/candle's matmul runs; on the CPU a one-row product is
//! cut by output rows into blocks of `w`, each still `gemm`'s matrix-vector product, so every
//! output element is the same dot product as before, only computed on another thread. The
//! blocks run on candle's barrier pool (`CANDLE_NUM_THREADS`), the pool its quantized matmuls
//! use: the calling thread works too and workers spin briefly between ops (a sleeping pool
//! would add a wake-up to each of the ~40 products of a token), and blocks are taken from a
//! shared cursor, so a thread the OS pauses does not hold the others up.

use candle_core::{Result, Tensor};
use std::sync::OnceLock;

/// Output rows of one block are a multiple of this (whole SIMD registers, whole cache lines).
const ROW_ALIGN: usize = 16;
/// Below this many output rows per block the hand-off costs more than it saves.
const MIN_BLOCK_ROWS: usize = 32;
/// Blocks per thread: enough for the cursor to even out a paused thread's share.
const BLOCKS_PER_THREAD: usize = 4;

/// `x` (`[m, in]`) times `w` (`[out, in]`) transposed: `[m, out]`.
pub fn forward(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    // U8 weights are Q8_0 blocks as stored in GGUF (`gguf_dense::Layout::DenseQ8`).
    if w.dtype() == candle_core::DType::U8 {
        return crate::cpu_q8::forward(x, w);
    }
    // F32 activations with F32 or half-precision weights kept as stored (the CPU dense llama).
    if crate::cpu_f16::handles(x, w) {
        return crate::cpu_f16::matmul(x, w);
    }
    let threads = candle_core::utils::barrier_pool().n_workers() + 1;
    match block_rows(x, w, threads)? {
        Some(rows) => split(x, w, rows),
        None => x.matmul(&w.t()?),
    }
}

/// The rows of `w` per block when the product is split over `threads`, `None` when it runs
/// whole.
fn block_rows(x: &Tensor, w: &Tensor, threads: usize) -> Result<Option<usize>> {
    let (m, out) = (x.dim(0)?, w.dim(0)?);
    if !x.device().is_cpu() || x.rank() != 2 || m != 1 || threads < 2 {
        return Ok(None);
    }
    let rows = out
        .div_ceil(threads * BLOCKS_PER_THREAD)
        .next_multiple_of(ROW_ALIGN)
        .max(MIN_BLOCK_ROWS);
    Ok((rows < out).then_some(rows))
}

/// One matrix-vector product per block of `rows` rows of `w`, on the barrier pool, joined.
fn split(x: &Tensor, w: &Tensor, rows: usize) -> Result<Tensor> {
    let out = w.dim(0)?;
    let blocks: Vec<OnceLock<Result<Tensor>>> =
        (0..out.div_ceil(rows)).map(|_| OnceLock::new()).collect();
    let block = |i: usize| -> Result<Tensor> {
        let start = i * rows;
        // Only `gemm` runs in here: a candle op that used the pool itself would wait on
        // the pool's lock that this call holds.
        x.matmul(&w.narrow(0, start, rows.min(out - start))?.t()?)
    };
    candle_core::utils::barrier_pool().execute_chunked(blocks.len(), |range| {
        for i in range {
            // Each index is handed out once, so the cell is always empty here.
            let _ = blocks[i].set(block(i));
        }
    });
    let parts = blocks
        .into_iter()
        .map(|cell| {
            cell.into_inner().unwrap_or_else(|| {
                Err(candle_core::Error::Msg("a matmul block did not run".into()))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 1)
}

/// The elements `layout` views in `data` (a CPU op's operand), which must be contiguous;
/// `op` names the operation in the error.
pub(crate) fn contiguous<'a, T>(
    data: &'a [T],
    layout: &candle_core::Layout,
    op: &str,
) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) if end <= data.len() => Ok(&data[start..end]),
        _ => candle_core::bail!("the {op} needs contiguous operands"),
    }
}

/// `n` deterministic pseudo-random values in [-1, 1) (xorshift; kernel tests).
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// `x · wᵀ` (`[m, k]` by `[n, k]`) by the plain triple loop in F64: the reference the kernel
/// tests check against.
#[cfg(test)]
pub(crate) fn reference_product(x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
    let (m, n) = (x.len() / k, w.len() / k);
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                .sum();
            y[i * n + j] = dot as f32;
        }
    }
    y
}

/// Checks a kernel's `x · wᵀ` for `[m, k]` by `[n, k]` (weights made with `to_w`) against
/// [`reference_product`] of the weights as widened, within F32 sums' rounding (kernel tests);
/// `what` names the kernel in a failure.
#[cfg(test)]
pub(crate) fn check_kernel<W: crate::cpu_f16::simd::Elem>(
    what: &str,
    (m, n, k): (usize, usize, usize),
    to_w: fn(f32) -> W,
    product: impl Fn(&[f32], &[W]) -> Vec<f32>,
) {
    let x = test_values(m * k, (m * 31 + k) as u64);
    let w: Vec<W> = test_values(n * k, (n * 17 + k) as u64)
        .into_iter()
        .map(to_w)
        .collect();
    // The reference sees the weights exactly as the kernel widens them.
    let wide: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
    let want = reference_product(&x, &wide, k);
    let got = product(&x, &w);
    assert_eq!(got.len(), m * n, "{what} m {m} n {n} k {k}");
    for (idx, (g, r)) in got.iter().zip(&want).enumerate() {
        // F32 sums of k products of magnitude < 1, in another order.
        let tol = 1e-5 * k as f32;
        assert!(
            (g - r).abs() <= tol,
            "{what} m {m} n {n} k {k}: y[{idx}] = {g}, reference {r}"
        );
    }
}

/// The largest absolute difference of two F32 tensors (kernel tests).
#[cfg(test)]
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .unwrap_or(f32::INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    #[test]
    fn a_split_product_equals_the_whole_one() {
        let dev = Device::Cpu;
        // 300 output rows: slices of unequal length (the last one shorter).
        let w = Tensor::randn(0f32, 1., (300, 96), &dev).unwrap();
        let x = Tensor::randn(0f32, 1., (1, 96), &dev).unwrap();
        // 3 threads, 4 blocks each: 25 rows, rounded up to 32.
        assert_eq!(block_rows(&x, &w, 3).unwrap(), Some(32));
        let got = split(&x, &w, 32).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        assert_eq!(got.dims(), [1, 300]);
        let diff = max_diff(&got, &want);
        assert!(diff <= 1e-4, "largest difference {diff}");
        // Prompts (several rows) are not split.
        let x2 = Tensor::cat(&[&x, &x], 0).unwrap();
        assert_eq!(block_rows(&x2, &w, 3).unwrap(), None);
        let got2 = forward(&x2, &w).unwrap();
        assert_eq!(got2.i(1).unwrap().dims(), [300]);
    }
}
