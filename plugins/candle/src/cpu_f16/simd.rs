//! The register-tiled kernel behind [`super`]: `y[m, n] = x[m, k] · w[n, k]ᵀ` for F32 `x` and
//! F16/BF16/F32 `w`, each output the dot product of a row of `x` and a row of `w`.
//!
//! Both operands are row-major along `k`, so a tile of `MR` rows of `x` times `NR` rows of
//! `w` keeps `MR × NR` vector accumulators, loads each `x` and `w` vector once per step of
//! `LANES` elements (a half weight widened to F32 in registers: AVX-512F `vcvtph2ps`, F16C
//! on AVX2, a shift for BF16) and sums each accumulator's lanes once at the end
//! (llamafile's tinyBLAS works the same way). The same code serves one token (`m = 1`,
//! memory-bound: it reads each weight once at half the bytes of F32) and prompts (the tile
//! reuses every loaded weight `MR` times and every `x` vector `NR` times).
//!
//! One generic kernel is written once against [`Lanes`]; the entry points compile it with
//! `#[target_feature]` for AVX-512F or AVX2+FMA+F16C, chosen at run time
//! ([`Kind::detect`]); elsewhere a scalar instantiation runs. Every helper is
//! `#[inline(always)]`, so the intrinsics end up inside the target-feature function.

#[cfg(target_arch = "x86_64")]
use crate::cpu_lanes::{Avx2, Avx512};
use crate::cpu_lanes::{Lanes, Scalar};
use half::{bf16, f16};

/// The instruction set a product runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Avx512,
    Avx2,
    Scalar,
}

impl Kind {
    /// The fastest kernel this CPU runs (`is_x86_feature_detected!` caches its answer).
    pub fn detect() -> Kind {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Kind::Avx512;
            }
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Kind::Avx2;
            }
        }
        Kind::Scalar
    }

    /// Whether `self` runs on this CPU.
    pub fn available(self) -> bool {
        match self {
            Kind::Scalar => true,
            Kind::Avx2 => matches!(Kind::detect(), Kind::Avx2 | Kind::Avx512),
            Kind::Avx512 => Kind::detect() == Kind::Avx512,
        }
    }
}

/// A weight element type: widened to F32 one at a time (scalar kernel, `k` tails) or a
/// vector at a time (the `x86` loads).
pub trait Elem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// The elements themselves when they are F32 already (read in place, not widened).
    fn as_f32(values: &[Self]) -> Option<&[f32]> {
        let _ = values;
        None
    }
    /// 16 elements at `p` as F32 lanes (AVX-512F).
    ///
    /// # Safety
    /// 16 elements readable at `p`; the CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
    /// 8 elements at `p` as F32 lanes (AVX2, FMA, F16C).
    ///
    /// # Safety
    /// 8 elements readable at `p`; the CPU has AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    fn as_f32(values: &[f32]) -> Option<&[f32]> {
        Some(values)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    // A BF16 is the top half of an F32: zero-extend to 32 bits and shift up.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const bf16) -> __m512 {
        let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wide))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const bf16) -> __m256 {
        let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide))
    }
}

/// `y[i * ldy + j] = x_i · w_j` for the `MR` rows of `x` and `NR` rows of `w` at the
/// pointers (both `k` apart).
///
/// # Safety
/// `MR` rows of `k` readable at `x`, `NR` at `w`, the tile writable in `y`; `I` runs here.
#[inline(always)]
unsafe fn tile<I: Lanes, W: Elem, const MR: usize, const NR: usize>(
    x: *const f32,
    w: *const W,
    k: usize,
    y: *mut f32,
    ldy: usize,
) {
    let mut acc = [[I::zero(); NR]; MR];
    let body = k - k % I::L;
    let mut p = 0;
    while p < body {
        let mut wv = [I::zero(); NR];
        for (j, v) in wv.iter_mut().enumerate() {
            *v = I::load_w(w.add(j * k + p));
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let xv = I::load(x.add(i * k + p));
            for (a, wj) in row.iter_mut().zip(wv) {
                *a = I::fma(xv, wj, *a);
            }
        }
        p += I::L;
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, a) in row.iter().enumerate() {
            let mut s = I::sum(*a);
            for q in body..k {
                s += *x.add(i * k + q) * (*w.add(j * k + q)).to_f32();
            }
            *y.add(i * ldy + j) = s;
        }
    }
}

/// `R` rows of `x` against all `n` rows of `w`: tiles of `NR` rows, then single rows.
///
/// # Safety
/// As [`tile`], for `R` rows of `x`, `n` rows of `w` and `R × n` outputs (`ldy` apart).
#[inline(always)]
unsafe fn rows<I: Lanes, W: Elem, const R: usize, const NR: usize>(
    x: *const f32,
    w: *const W,
    k: usize,
    n: usize,
    y: *mut f32,
    ldy: usize,
) {
    let mut j = 0;
    while j + NR <= n {
        tile::<I, W, R, NR>(x, w.add(j * k), k, y.add(j), ldy);
        j += NR;
    }
    while j < n {
        tile::<I, W, R, 1>(x, w.add(j * k), k, y.add(j), ldy);
        j += 1;
    }
}

/// `x · w` for one row of each, `k` long: four accumulators over consecutive vectors, so
/// the FMAs do not wait on each other and the weights stream from one place.
///
/// # Safety
/// `k` elements readable at `x` and at `w`; `I` runs here.
#[inline(always)]
unsafe fn row_dot<I: Lanes, W: Elem>(x: *const f32, w: *const W, k: usize) -> f32 {
    let step = 4 * I::L;
    let body = k - k % step;
    let mut acc = [I::zero(); 4];
    let mut p = 0;
    while p < body {
        for (u, a) in acc.iter_mut().enumerate() {
            let q = p + u * I::L;
            *a = I::fma(I::load(x.add(q)), I::load_w(w.add(q)), *a);
        }
        p += step;
    }
    let mut s = acc.iter().map(|&a| I::sum(a)).sum::<f32>();
    for q in body..k {
        s += *x.add(q) * (*w.add(q)).to_f32();
    }
    s
}

/// The whole product: `MR` rows of `x` at a time (while `w`'s block stays in cache), the
/// remaining rows one by one. A single row of `x` (a generated token) reads `w` one row at a
/// time instead ([`row_dot`]): one sequential stream of weights is what the hardware
/// prefetcher follows best (`NR` interleaved rows decoded ~30 % slower, as cpu_q8 saw too).
///
/// # Safety
/// `x` holds `m × k`, `w` holds `n × k` and `y` holds `m × n` elements; `I` runs here.
#[inline(always)]
unsafe fn product<I: Lanes, W: Elem, const MR: usize, const NR: usize>(
    x: &[f32],
    w: &[W],
    k: usize,
    y: &mut [f32],
) {
    let (m, n) = (x.len() / k, w.len() / k);
    let (x, w, y) = (x.as_ptr(), w.as_ptr(), y.as_mut_ptr());
    if m == 1 {
        for j in 0..n {
            *y.add(j) = row_dot::<I, W>(x, w.add(j * k), k);
        }
        return;
    }
    let mut i = 0;
    while i + MR <= m {
        rows::<I, W, MR, NR>(x.add(i * k), w, k, n, y.add(i * n), n);
        i += MR;
    }
    while i < m {
        rows::<I, W, 1, NR>(x.add(i * k), w, k, n, y.add(i * n), n);
        i += 1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn product_avx512<W: Elem, const MR: usize, const NR: usize>(
    x: &[f32],
    w: &[W],
    k: usize,
    y: &mut [f32],
) {
    product::<Avx512, W, MR, NR>(x, w, k, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn product_avx2<W: Elem>(x: &[f32], w: &[W], k: usize, y: &mut [f32]) {
    // 2 × 4 accumulators + 4 weight vectors + 1 x vector of the 16 ymm registers.
    product::<Avx2, W, 2, 4>(x, w, k, y)
}

/// `y = x · wᵀ` with `x` `[m, k]`, `w` `[n, k]` and `y` `[m, n]`, all row-major, on `kind`
/// (which must be [`Kind::available`]; else the scalar kernel runs).
pub fn matmul<W: Elem>(kind: Kind, x: &[f32], w: &[W], k: usize, y: &mut [f32]) {
    let (m, n) = (x.len() / k.max(1), w.len() / k.max(1));
    assert!(
        k > 0 && x.len() == m * k && w.len() == n * k && y.len() == m * n,
        "matmul operands: x {} w {} y {} for k {k}",
        x.len(),
        w.len(),
        y.len()
    );
    // SAFETY: the lengths are checked above; the kind's instructions were detected.
    unsafe {
        match kind {
            #[cfg(target_arch = "x86_64")]
            // 4 × 4 accumulators + 4 weight vectors + 1 x vector of the 32 zmm registers.
            Kind::Avx512 if kind.available() => product_avx512::<W, 4, 4>(x, w, k, y),
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 if kind.available() => product_avx2(x, w, k, y),
            _ => product::<Scalar, W, 2, 2>(x, w, k, y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<W: Elem>(kind: Kind, m: usize, n: usize, k: usize, to_w: fn(f32) -> W) {
        crate::linear::check_kernel(&format!("{kind:?}"), (m, n, k), to_w, |x, w| {
            let mut y = vec![f32::NAN; m * n];
            matmul(kind, x, w, k, &mut y);
            y
        });
    }

    /// Odd row counts (tails of `MR`), `n` not a multiple of `NR`, `k` not a multiple of
    /// the lanes, and `k` shorter than one vector.
    const SHAPES: [(usize, usize, usize); 7] = [
        (1, 1, 1),
        (1, 37, 53),
        (3, 5, 16),
        (5, 9, 100),
        (7, 13, 257),
        (9, 6, 7),
        (16, 20, 640),
    ];

    #[test]
    fn every_kernel_equals_the_reference() {
        for kind in [Kind::Scalar, Kind::Avx2, Kind::Avx512] {
            if !kind.available() {
                eprintln!("{kind:?}: not on this CPU, skipped");
                continue;
            }
            for (m, n, k) in SHAPES {
                check(kind, m, n, k, f16::from_f32);
                check(kind, m, n, k, bf16::from_f32);
                check(kind, m, n, k, |v| v);
            }
        }
    }

    #[test]
    fn bf16_and_f16_loads_widen_exactly() {
        // Values every format holds exactly: any error would be the load, not rounding.
        let k = 48;
        let x: Vec<f32> = (0..k).map(|i| if i == 5 { 1.0 } else { 0.0 }).collect();
        let w: Vec<f32> = (0..k).map(|i| i as f32 * 0.25 - 3.0).collect();
        for kind in [Kind::Scalar, Kind::Avx2, Kind::Avx512] {
            if !kind.available() {
                continue;
            }
            let mut y = [0f32];
            let halves: Vec<f16> = w.iter().map(|v| f16::from_f32(*v)).collect();
            matmul(kind, &x, &halves, k, &mut y);
            assert_eq!(y[0], w[5], "{kind:?} f16");
            let brains: Vec<bf16> = w.iter().map(|v| bf16::from_f32(*v)).collect();
            matmul(kind, &x, &brains, k, &mut y);
            assert_eq!(y[0], w[5], "{kind:?} bf16");
        }
    }
}
