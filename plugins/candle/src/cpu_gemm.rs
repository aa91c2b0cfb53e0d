//! Prompt products `y = x · wᵀ` on the CPU (F32 activations `x` `[m, k]`, F32/F16/BF16
//! weights `w` `[n, k]`, both row-major) as an outer-product GEMM.
//!
//! Why: a prompt multiplies many rows of `x` by the same weights. The dot-product tiles of
//! [`crate::cpu_f16`] end every output with a horizontal sum and widen each half weight once
//! per tile, and candle's `gemm` runs its AVX2 kernel even on AVX-512 CPUs; both reached
//! ~0.6x of llama.cpp's prompt speed. Here the kernel ([`kernel`]) keeps a tile of
//! `2 × LANES` rows of `x` by `NR` rows of `w` in vector accumulators, each accumulator
//! holding one output column for `LANES` consecutive rows: per step along `k` it loads two
//! vectors of `x` (packed so those rows' values at one `k` are adjacent) and multiplies them
//! by each of `NR` weights broadcast from `w`. No horizontal sums, no shuffles; each weight
//! load feeds two FMAs and each `x` load `NR`.
//!
//! Blocking: `x` is packed once per product (`[m / MR][k][MR]`, zero rows padding the last
//! block). The rows of `w` are cut into chunks sized to stay in a core's L2 cache, a few per
//! thread on candle's barrier pool, taken from a shared cursor (so a thread the OS pauses
//! does not hold the others up). Not rayon's pool: the barrier pool's worker spins for a
//! while after each one-token op, and on a 2-core machine it took a core from rayon's
//! threads (prompts measured 880 -> 1065 tok/s with that spin cut short, 0.63x -> 0.85x of
//! llama.cpp). A chunk of half weights is widened to F32 once, into a per-thread buffer, and
//! every block of `x` passes over it. Sums run along `k` in order, so results equal the
//! F64 reference up to F32 rounding (tests).

mod kernel;

use crate::cpu_f16::simd::{Elem, Kind};
use crate::cpu_pool::{for_each_chunk, SyncPtr};
use std::cell::RefCell;

/// Rows of `x` from which a product runs here: below it the per-call packing and the tile
/// padding cost more than the row-at-a-time kernels save.
pub const MIN_ROWS: usize = 8;

/// Bytes of F32 weights one chunk holds at most: a quarter of a core's L2 on current x86 CPUs
/// (1-2 MiB), leaving room for the packed `x` block that passes over it.
const CHUNK_BYTES: usize = 256 * 1024;
/// Chunks per thread: enough for the shared cursor to even out a thread the OS pauses.
const CHUNKS_PER_THREAD: usize = 4;

/// Whether this CPU runs the vector kernel (x86-64 with AVX-512F, or AVX2 + FMA + F16C).
pub fn available() -> bool {
    matches!(Kind::detect(), Kind::Avx512 | Kind::Avx2)
}

/// `x · wᵀ` as a new `[m, n]` buffer; `None` when this CPU has no vector kernel (the caller
/// keeps its own path). `x` holds `m × k` and `w` `n × k` elements.
pub fn matmul<W: Elem>(x: &[f32], w: &[W], k: usize) -> Option<Vec<f32>> {
    matmul_on(Kind::detect(), x, w, k)
}

/// [`matmul`] on the kernel of `kind` (tests run each one this CPU has).
fn matmul_on<W: Elem>(kind: Kind, x: &[f32], w: &[W], k: usize) -> Option<Vec<f32>> {
    let shape = kernel::Shape::of(kind)?;
    if k == 0 || !x.len().is_multiple_of(k) || !w.len().is_multiple_of(k) {
        return None;
    }
    let (m, n) = (x.len() / k, w.len() / k);
    if m == 0 || n == 0 {
        return Some(vec![0f32; m * n]);
    }
    // Every element is written below (the chunks cover all columns of every row), so the
    // buffer is not zeroed first.
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let pool = candle_core::utils::barrier_pool();
    let xp = pack_x(x, m, k, shape.mr);
    let rows = chunk_rows(n, k, shape.nr, pool.n_workers() + 1);
    // The chunks write disjoint columns of `y`.
    let out = SyncPtr(y.as_mut_ptr());
    let run = |c: usize| {
        let (start, len) = (c * rows, rows.min(n - c * rows));
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let padded = len.next_multiple_of(shape.nr);
            let wide = widen(
                kind,
                &w[start * k..(start + len) * k],
                k,
                padded,
                &mut scratch,
            );
            // SAFETY: `xp` is the packed `x` for `shape`, `wide` holds `padded` rows of `k`;
            // chunks write disjoint columns `start..start + len` of `y` (`[m, n]`), which
            // outlives the parallel loop.
            unsafe {
                kernel::chunk(
                    kind,
                    &xp,
                    m,
                    k,
                    wide,
                    padded,
                    out.get().wrapping_add(start),
                    n,
                    len,
                )
            }
        });
    };
    pool.execute_chunked(n.div_ceil(rows), |range| range.for_each(run));
    // SAFETY: the chunks wrote all `m × n` elements (the pool returns after every chunk ran,
    // and resumes a chunk's panic here, before this line).
    unsafe { y.set_len(m * n) };
    Some(y)
}

thread_local! {
    /// Each thread's widened chunk of weights, reused from product to product.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `x` (`[m, k]`) as blocks of `mr` rows, each `[k][mr]` (a step along `k` reads the block's
/// rows at that `k` as one run), zero rows padding the last block; blocks packed in parallel
/// on the pool (the product waits for all of them anyway).
fn pack_x(x: &[f32], m: usize, k: usize, mr: usize) -> Vec<f32> {
    let mut xp = vec![0f32; m.div_ceil(mr) * k * mr];
    for_each_chunk(&mut xp, k * mr, 0, |b, block| {
        let rows = x[b * mr * k..].chunks_exact(k).take(mr);
        for (i, row) in rows.enumerate() {
            for (p, v) in row.iter().enumerate() {
                block[p * mr + i] = *v;
            }
        }
    });
    xp
}

/// The chunk's `rows` (`w`, `rows × k`) as F32 rows, zero rows padding them to `padded`: F32
/// weights of a whole chunk are read in place, anything else is widened into `scratch`.
fn widen<'a, W: Elem>(
    kind: Kind,
    w: &'a [W],
    k: usize,
    padded: usize,
    scratch: &'a mut Vec<f32>,
) -> &'a [f32] {
    if let Some(wide) = W::as_f32(w) {
        if wide.len() == padded * k {
            return wide;
        }
    }
    // Grown once and reused: only the rows this chunk uses are written.
    if scratch.len() < padded * k {
        scratch.resize(padded * k, 0.0);
    }
    let wide = &mut scratch[..padded * k];
    kernel::widen(kind, w, &mut wide[..w.len()]);
    wide[w.len()..].fill(0.0);
    wide
}

/// Rows of `w` per chunk for `n` rows of `k`: whole tiles of `nr`, a few chunks per thread,
/// at most [`CHUNK_BYTES`] of F32 weights.
fn chunk_rows(n: usize, k: usize, nr: usize, threads: usize) -> usize {
    let balanced = n
        .div_ceil(threads.max(1) * CHUNKS_PER_THREAD)
        .next_multiple_of(nr);
    let cached = (CHUNK_BYTES / (k * 4).max(1)) / nr * nr;
    balanced.min(cached.max(nr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn check<W: Elem>(kind: Kind, m: usize, n: usize, k: usize, to_w: fn(f32) -> W) {
        crate::linear::check_kernel(&format!("{kind:?}"), (m, n, k), to_w, |x, w| {
            matmul_on(kind, x, w, k)
                .unwrap_or_else(|| panic!("{kind:?}: not run although this CPU has it"))
        });
    }

    /// Row counts that are and are not whole blocks, `n` not a multiple of the tile, several
    /// chunks, `k` of one element, and the bench model's shapes.
    const SHAPES: [(usize, usize, usize); 8] = [
        (8, 1, 1),
        (9, 13, 7),
        (31, 25, 100),
        (32, 12, 64),
        (33, 300, 96),
        (70, 97, 257),
        (128, 200, 640),
        (17, 40, 1728),
    ];

    #[test]
    fn every_kernel_equals_the_reference_for_every_weight_type() {
        let mut ran = 0;
        for kind in [Kind::Avx2, Kind::Avx512] {
            if !kind.available() {
                eprintln!("{kind:?}: not on this CPU, skipped");
                continue;
            }
            ran += 1;
            for (m, n, k) in SHAPES {
                check(kind, m, n, k, |v| v);
                check(kind, m, n, k, f16::from_f32);
                check(kind, m, n, k, bf16::from_f32);
            }
        }
        // Without a vector kernel the product is declined (callers keep their own path).
        assert_eq!(ran > 0, available());
        assert!(matmul_on(Kind::Scalar, &[0f32; 8], &[0f32; 8], 1).is_none());
    }

    #[test]
    fn chunks_are_whole_tiles_and_fit_the_cache() {
        // 640 rows over 2 threads, 4 chunks each: 80, rounded up to tiles of 12.
        assert_eq!(chunk_rows(640, 640, 12, 2), 84);
        // Rows of 1728 F32 (6912 bytes): 37 fit 256 KiB, 36 in whole tiles.
        assert_eq!(chunk_rows(3456, 1728, 12, 2), 36);
        // Tiny products: one tile.
        assert_eq!(chunk_rows(5, 64, 12, 2), 12);
        // Rows too long for the cache still get one tile.
        assert_eq!(chunk_rows(100, 1 << 20, 12, 2), 12);
    }

    #[test]
    fn packed_x_puts_one_k_of_a_block_together() {
        // 3 rows of k = 2, blocks of 2 rows: [[r0k0, r1k0], [r0k1, r1k1]], [[r2k0, 0], ...].
        let x = [1., 2., 3., 4., 5., 6.];
        assert_eq!(pack_x(&x, 3, 2, 2), vec![1., 3., 2., 4., 5., 0., 6., 0.]);
    }
}
