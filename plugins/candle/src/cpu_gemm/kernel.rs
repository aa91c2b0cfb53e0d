//! The micro-kernel behind [`super`]: a tile of `MR = 2 × LANES` rows of packed `x` by `NR`
//! rows of F32 `w`, `2 × NR` vector accumulators over the whole of `k`.
//!
//! Written once against [`Lanes`]; the entry points compile it with `#[target_feature]` for
//! AVX-512F (`MR` 32 × `NR` 12: 24 of the 32 zmm registers accumulate) or AVX2 + FMA
//! (`MR` 16 × `NR` 6: 12 of the 16 ymm registers), chosen at run time. Every helper is
//! `#[inline(always)]`, so the intrinsics end up inside the target-feature function.

use crate::cpu_f16::simd::{Elem, Kind};
use crate::cpu_lanes::Lanes;
#[cfg(target_arch = "x86_64")]
use crate::cpu_lanes::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::_mm512_storeu_ps;

/// The tile of a kernel: rows of `x` (`mr`, a block of the packed `x`) by rows of `w`.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub mr: usize,
    pub nr: usize,
}

/// The AVX-512 tile: 32 rows of `x` in two zmm registers by 12 rows of `w`.
const AVX512_NR: usize = 12;
/// The AVX2 tile: 16 rows of `x` in two ymm registers by 6 rows of `w`.
const AVX2_NR: usize = 6;

impl Shape {
    /// The tile `kind` runs; `None` where there is no vector kernel.
    pub fn of(kind: Kind) -> Option<Shape> {
        match kind {
            Kind::Avx512 if kind.available() => Some(Shape {
                mr: 32,
                nr: AVX512_NR,
            }),
            Kind::Avx2 if kind.available() => Some(Shape {
                mr: 16,
                nr: AVX2_NR,
            }),
            _ => None,
        }
    }
}

/// The largest `MR` of any kernel (the AVX-512 one).
const MAX_MR: usize = 32;

/// `y[i * ldy + j] = Σ_p x_i[p] · w_j[p]` for the first `rows` of the block at `xp`
/// (`[k][2L]`) and the first `cols` of the `NR` rows at `w` (`k` apart).
///
/// # Safety
/// `k × 2L` values readable at `xp`, `NR × k` at `w`; `rows × cols` outputs (`ldy` apart)
/// writable at `y`; `rows ≤ 2L`, `cols ≤ NR`; `I` runs on this CPU.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<I: Lanes, const NR: usize>(
    xp: *const f32,
    w: *const f32,
    k: usize,
    y: *mut f32,
    ldy: usize,
    rows: usize,
    cols: usize,
) {
    let mr = 2 * I::L;
    let mut acc = [[I::zero(); 2]; NR];
    for p in 0..k {
        let a0 = I::load(xp.add(p * mr));
        let a1 = I::load(xp.add(p * mr + I::L));
        for (j, c) in acc.iter_mut().enumerate() {
            let b = I::splat(*w.add(j * k + p));
            c[0] = I::fma(a0, b, c[0]);
            c[1] = I::fma(a1, b, c[1]);
        }
    }
    // Whole registers out with constant indices (so `acc` stays in registers above), then
    // the valid part of the tile into `y`.
    let mut out = [[0f32; MAX_MR]; NR];
    for (o, c) in out.iter_mut().zip(&acc) {
        I::store(o.as_mut_ptr(), c[0]);
        I::store(o.as_mut_ptr().add(I::L), c[1]);
    }
    for (j, column) in out.iter().enumerate().take(cols) {
        for (i, v) in column.iter().enumerate().take(rows) {
            *y.add(i * ldy + j) = *v;
        }
    }
}

/// Every block of `x` against every tile of the chunk `w` (`padded` rows, a multiple of
/// `NR`); the first `cols` rows of `w` are real, their products go to `y`'s columns.
///
/// # Safety
/// `xp` is `x` packed in blocks of `2L` rows for `m` rows; `w` holds `padded × k`; `y` has
/// `m` rows `ldy` apart with `cols` columns writable; `I` runs on this CPU.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn chunk_with<I: Lanes, const NR: usize>(
    xp: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    padded: usize,
    y: *mut f32,
    ldy: usize,
    cols: usize,
) {
    let mr = 2 * I::L;
    for b in 0..m.div_ceil(mr) {
        let rows = mr.min(m - b * mr);
        let xb = xp.as_ptr().add(b * k * mr);
        for t in 0..padded / NR {
            tile::<I, NR>(
                xb,
                w.as_ptr().add(t * NR * k),
                k,
                y.add(b * mr * ldy + t * NR),
                ldy,
                rows,
                NR.min(cols - t * NR),
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn chunk_avx512(
    xp: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    padded: usize,
    y: *mut f32,
    ldy: usize,
    cols: usize,
) {
    chunk_with::<Avx512, AVX512_NR>(xp, m, k, w, padded, y, ldy, cols)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn chunk_avx2(
    xp: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    padded: usize,
    y: *mut f32,
    ldy: usize,
    cols: usize,
) {
    chunk_with::<Avx2, AVX2_NR>(xp, m, k, w, padded, y, ldy, cols)
}

/// The products of the packed `x` (`m` rows, blocks of [`Shape::mr`]) and a chunk of `w`
/// (`padded` F32 rows of `k`, a multiple of [`Shape::nr`], the first `cols` real) into `y`'s
/// columns `0..cols` (rows `ldy` apart). Does nothing on a `kind` without a [`Shape`].
///
/// # Safety
/// The slices hold what is said above; `m` rows of `cols` outputs are writable at `y`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn chunk(
    kind: Kind,
    xp: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    padded: usize,
    y: *mut f32,
    ldy: usize,
    cols: usize,
) {
    let Some(shape) = Shape::of(kind) else {
        return;
    };
    debug_assert!(
        padded.is_multiple_of(shape.nr)
            && cols <= padded
            && w.len() >= padded * k
            && xp.len() >= m.div_ceil(shape.mr) * shape.mr * k
    );
    match kind {
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512 => chunk_avx512(xp, m, k, w, padded, y, ldy, cols),
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2 => chunk_avx2(xp, m, k, w, padded, y, ldy, cols),
        _ => {}
    }
}

/// `out[i] = w[i]` widened to F32 (`out` as long as `w`), a vector at a time where `kind` has
/// vectors.
pub fn widen<W: Elem>(kind: Kind, w: &[W], out: &mut [f32]) {
    let len = w.len().min(out.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if kind == Kind::Avx512 && kind.available() {
        // SAFETY: AVX-512F was detected; `len` elements are read from `w` and written to `out`.
        done = unsafe { widen_avx512(&w[..len], &mut out[..len]) };
    }
    for (o, v) in out[done..len].iter_mut().zip(&w[done..len]) {
        *o = v.to_f32();
    }
}

/// The 16-element runs of `w` widened into `out`; returns how many elements were done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn widen_avx512<W: Elem>(w: &[W], out: &mut [f32]) -> usize {
    let body = w.len() - w.len() % 16;
    let mut i = 0;
    while i < body {
        _mm512_storeu_ps(out.as_mut_ptr().add(i), W::load16(w.as_ptr().add(i)));
        i += 16;
    }
    body
}
