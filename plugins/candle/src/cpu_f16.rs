//! `x · wᵀ` on the CPU for F32 activations `x` and F16/BF16 weights `w` kept as stored (and F32
//! weights, whose one-token products run faster here than on candle's `gemm`).
//!
//! Why: candle's CPU matmul needs both operands in one dtype, and its F16 GEMM is slow, so
//! half-precision checkpoints used to be widened to F32 at load: every generated token then
//! read twice the bytes llama.cpp reads (it keeps F16 and converts in registers). Here the
//! weights stay half precision and are widened in registers inside the dot products
//! ([`simd`]), with F32 sums: the results are those of the widened F32 weights up to the
//! order of the additions.
//!
//! Prompts of [`crate::cpu_gemm::MIN_ROWS`] rows or more run on [`crate::cpu_gemm`]'s
//! outer-product kernel (which also takes F32 weights, see [`crate::linear`]). Fewer rows are
//! cut by rows of `w` into blocks, a few per thread, each block's weights sized to stay in the
//! L2 cache while every row of `x` passes over them, on candle's spinning barrier pool (as
//! [`crate::linear`] does for F32): rayon's threads would compete with the pool's spinning
//! worker for the cores.

pub(crate) mod simd;

use crate::linear::contiguous;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};
use simd::Elem;
use std::sync::OnceLock;

/// What errors call this op.
const HALF_MATMUL: &str = "half matmul";

/// Output rows of a block are a multiple of this (whole tiles of the kernel).
const ROW_ALIGN: usize = 16;
/// Below this many rows a block's hand-off costs more than it saves.
const MIN_BLOCK_ROWS: usize = 16;
/// Blocks per thread: enough for the pool's shared cursor to even out a paused thread.
const BLOCKS_PER_THREAD: usize = 4;
/// Bytes of weights a block holds at most: half a core's L2 on current x86 CPUs (1-2 MiB),
/// so the block stays cached while every row of `x` passes over it.
const BLOCK_BYTES: usize = 512 * 1024;

/// Whether this CPU has a vector kernel for half weights (x86-64 with AVX-512F, or AVX2,
/// FMA and F16C). Without one the scalar kernel runs, slower than widening the weights to
/// F32 for candle's GEMM: loaders keep half weights on the CPU only when this holds.
pub fn fast() -> bool {
    simd::Kind::detect() != simd::Kind::Scalar
}

/// Whether [`matmul`] takes these operands: F32 `x`, F16/BF16 `w`, both 2-D on the CPU; F32
/// `w` too where the CPU has a vector kernel ([`fast`]; else candle's `gemm` is faster).
pub fn handles(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu()
        && x.dtype() == DType::F32
        && (matches!(w.dtype(), DType::F16 | DType::BF16) || w.dtype() == DType::F32 && fast())
        && x.rank() == 2
        && w.rank() == 2
}

/// `x` (`[m, k]` F32) times `w` (`[n, k]` F16 or BF16) transposed: `[m, n]` F32.
pub fn matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&w.contiguous()?, &HalfMatmul)
}

/// The candle op: its `cpu_fwd` runs the product (no other device, no gradient).
struct HalfMatmul;

impl CustomOp2 for HalfMatmul {
    fn name(&self) -> &'static str {
        "f32-times-half-matmul"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (n, wk) = wl.shape().dims2()?;
        if k != wk || k == 0 {
            candle_core::bail!("cannot multiply x [{m}, {k}] by the transpose of w [{n}, {wk}]")
        }
        let x = contiguous(xs.as_slice::<f32>()?, xl, HALF_MATMUL)?;
        let y = match ws {
            CpuStorage::F16(w) => product::<f16>(x, contiguous(w, wl, HALF_MATMUL)?, k),
            CpuStorage::BF16(w) => product::<bf16>(x, contiguous(w, wl, HALF_MATMUL)?, k),
            CpuStorage::F32(w) => product::<f32>(x, contiguous(w, wl, HALF_MATMUL)?, k),
            other => candle_core::bail!("no half matmul for {:?} weights", other.dtype()),
        };
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
}

/// `x · wᵀ` (`[m, k]` by `[n, k]`, row-major) as a new `[m, n]` buffer: prompts on
/// [`crate::cpu_gemm`], a few rows in blocks of rows of `w` on the barrier pool.
fn product<W: Elem>(x: &[f32], w: &[W], k: usize) -> Vec<f32> {
    let (m, n) = (x.len() / k, w.len() / k);
    if m == 0 || n == 0 {
        return Vec::new();
    }
    if m >= crate::cpu_gemm::MIN_ROWS {
        if let Some(y) = crate::cpu_gemm::matmul(x, w, k) {
            return y;
        }
    }
    let kind = simd::Kind::detect();
    let threads = candle_core::utils::barrier_pool().n_workers() + 1;
    let rows = block_rows(n, k * std::mem::size_of::<W>(), threads);
    let block = |start: usize| -> Vec<f32> {
        let len = rows.min(n - start);
        let mut y = vec![0f32; m * len];
        simd::matmul(kind, x, &w[start * k..(start + len) * k], k, &mut y);
        y
    };
    if rows >= n {
        return block(0);
    }
    let parts = on_barrier_pool(n.div_ceil(rows), |i| block(i * rows));
    // Blocks are `[m, len]`; the product is `[m, n]`.
    let mut y = vec![0f32; m * n];
    for (i, part) in parts.into_iter().enumerate() {
        let (start, len) = (i * rows, part.len() / m);
        for (row, values) in part.chunks_exact(len).enumerate() {
            y[row * n + start..row * n + start + len].copy_from_slice(values);
        }
    }
    y
}

/// `f(0)..f(blocks)` on candle's barrier pool: where an op takes microseconds, the pool's
/// spinning workers start at once (a sleeping pool would add a
/// wake-up to each of the ~40 products of a token).
fn on_barrier_pool(blocks: usize, f: impl Fn(usize) -> Vec<f32> + Sync) -> Vec<Vec<f32>> {
    let cells: Vec<OnceLock<Vec<f32>>> = (0..blocks).map(|_| OnceLock::new()).collect();
    candle_core::utils::barrier_pool().execute_chunked(blocks, |range| {
        for i in range {
            // Each index is handed out once, so the cell is always empty here.
            let _ = cells[i].set(f(i));
        }
    });
    cells
        .into_iter()
        .enumerate()
        // The pool runs every index before it returns (a worker's panic resumes there).
        .map(|(i, cell)| cell.into_inner().unwrap_or_else(|| f(i)))
        .collect()
}

/// Rows of `w` per block for `n` rows of `row_bytes` each over `threads`: a few blocks per
/// thread, whole tiles, at most [`BLOCK_BYTES`] of weights.
fn block_rows(n: usize, row_bytes: usize, threads: usize) -> usize {
    let balanced = n
        .div_ceil(threads * BLOCKS_PER_THREAD)
        .next_multiple_of(ROW_ALIGN)
        .max(MIN_BLOCK_ROWS);
    let cached = (BLOCK_BYTES / row_bytes.max(1)) / ROW_ALIGN * ROW_ALIGN;
    balanced.min(cached.max(ROW_ALIGN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    use crate::linear::max_diff;

    /// The op against candle's own F32 matmul of the widened weights, for one token and
    /// for a prompt, with `n` cut into several blocks (uneven last block).
    #[test]
    fn the_op_equals_candles_f32_matmul_of_the_widened_weights() {
        let dev = Device::Cpu;
        for dtype in [DType::F16, DType::BF16] {
            for (m, n, k) in [(1, 300, 96), (5, 300, 96), (13, 77, 130)] {
                let w = Tensor::randn(0f32, 1., (n, k), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let x = Tensor::randn(0f32, 1., (m, k), &dev).unwrap();
                assert!(handles(&x, &w));
                let got = matmul(&x, &w).unwrap();
                let wide = w.to_dtype(DType::F32).unwrap();
                let want = x.matmul(&wide.t().unwrap()).unwrap();
                assert_eq!(got.dims(), [m, n]);
                let diff = max_diff(&got, &want);
                assert!(
                    diff <= 1e-3,
                    "{dtype:?} {m}x{n}x{k}: largest difference {diff}"
                );
            }
        }
    }

    /// A view (narrowed rows of `x`, a transposed-back `w`) is made contiguous first.
    #[test]
    fn views_are_read_as_they_look() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (6, 40), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (40, 24), &dev)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap()
            .t()
            .unwrap();
        let x = x.narrow(0, 2, 3).unwrap();
        let got = matmul(&x, &w).unwrap();
        let want = x
            .matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap())
            .unwrap();
        assert!(max_diff(&got, &want) <= 1e-4);
    }

    #[test]
    fn blocks_are_whole_tiles_and_fit_the_cache() {
        // 4 blocks per thread over 2 threads, 16-row aligned.
        assert_eq!(block_rows(1920, 1280, 2), 240);
        // Rows of 8192 F16 (16 KiB): 32 rows fill 512 KiB.
        assert_eq!(block_rows(4096, 16384, 2), 32);
        // Tiny products stay one block.
        assert_eq!(block_rows(10, 64, 2), 16);
    }

    #[test]
    fn empty_operands_give_an_empty_product() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((0, 8), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((300, 8), DType::F16, &dev).unwrap();
        assert_eq!(matmul(&x, &w).unwrap().dims(), [0, 300]);
        let x = Tensor::zeros((3, 8), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((0, 8), DType::BF16, &dev).unwrap();
        assert_eq!(matmul(&x, &w).unwrap().dims(), [3, 0]);
    }

    #[test]
    fn mismatched_inner_sizes_are_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 8), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 9), DType::F16, &dev).unwrap();
        let err = matmul(&x, &w).unwrap_err().to_string();
        assert!(err.contains("[2, 8]") && err.contains("[3, 9]"), "{err}");
    }
}
