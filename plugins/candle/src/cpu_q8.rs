//! Q8_0 matrix products on the CPU: `x` (`[m, k]` F32) times the transpose of `w`, a Q8_0
//! matrix held as its raw GGUF blocks (`[out, k / 32 * 34]` U8: per 32 weights an f16 scale
//! and 32 signed bytes), giving `[m, out]` F32.
//!
//! Why not candle's `QMatMul`: for rows that are not a multiple of 256 values it takes one
//! dot product per output element (no reuse of a loaded weight block across the tokens of a
//! prompt), and it sits in `quantized_llama`, which allocates its KV cache by concatenation.
//! Here the dense llama ([`crate::dense_llama`]) keeps its preallocated cache and fused
//! q/k/v and gate/up rows, and this op does the products.
//!
//! The arithmetic is ggml's (and candle's) Q8_0 one: each row of `x` is quantized once to
//! Q8_0 blocks (`quantize_row_q8_0`: d = amax / 127 stored as f16, q = round(x / d)), and
//! each output is Σ over blocks of (the blocks' int8 dot product) × d_x × d_w. Only the order
//! of the float additions differs between the kernels.
//!
//! Kernels, picked once at run time ([`Kernel::detect`]):
//! - AVX512-VNNI (256-bit `vpdpbusd`): the activations are stored offset by +128 (unsigned
//!   bytes), so one `vpdpbusd` multiplies them with the signed weights; 128 × Σ w, computed
//!   once per weight block, is taken back off (exact integer arithmetic). ggml flips signs
//!   per product instead (`sign_epi8`); the offset costs nothing per token of a tile.
//! - AVX2 (`maddubs`/`madd` with ggml's sign trick: the +128 offset would overflow
//!   `maddubs`' 16-bit sums);
//! - scalar, the reference the tests hold the others to.
//!
//! Work is cut into micro-tiles of up to 4 rows of `x` × 4 rows of `w`, each loaded weight
//! block used for 4 tokens and each activation block for 4 weight rows (llamafile's tinyBLAS
//! does the same); tiles are grouped into panels that threads take from candle's barrier
//! pool (the pool its quantized matmuls and [`crate::linear`] use). A one-token product
//! splits the output rows over the threads.

use crate::cpu_pool::SyncPtr;
use crate::linear::contiguous;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::f16;
use std::ops::Range;
use std::sync::OnceLock;

/// Values per Q8_0 block.
pub const BLOCK: usize = 32;
/// Bytes per Q8_0 block: an f16 scale, then 32 signed bytes.
pub const BLOCK_BYTES: usize = 34;

/// Rows of `x` / of `w` in one micro-tile.
const TILE_ROWS: usize = 4;
const TILE_COLS: usize = 4;
/// Rows of `x` and of `w` in one unit of work of a prompt product: a panel of `w` (64 rows of
/// a 2048-wide layer: 136 KiB) stays in L2 while the panel's x rows go past it.
const PROMPT_ROWS: usize = 64;
const PROMPT_COLS: usize = 64;
/// Output rows in one unit of work of a one-token product (the pool hands several to each
/// thread, from a shared cursor).
const DECODE_COLS: usize = 16;

/// The inner loops in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Vnni,
    Avx2,
    Scalar,
}

impl Kernel {
    /// The fastest kernel this CPU runs (detected once).
    pub fn detect() -> Kernel {
        static KERNEL: OnceLock<Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            let kernel = Kernel::available()
                .into_iter()
                .next()
                .unwrap_or(Kernel::Scalar);
            tracing::debug!("candle: Q8_0 matmuls use the {kernel:?} kernel");
            kernel
        })
    }

    /// Every kernel this CPU can run, fastest first (the scalar one always).
    pub fn available() -> Vec<Kernel> {
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
            {
                kernels.push(Kernel::Vnni);
            }
            if avx2 {
                kernels.push(Kernel::Avx2);
            }
        }
        kernels.push(Kernel::Scalar);
        kernels
    }

    /// Whether the activations are stored offset by +128 (see the module docs).
    fn offset(self) -> bool {
        self == Kernel::Vnni
    }
}

/// Whether Q8_0 products here beat candle's own: only with a SIMD kernel (on other CPUs,
/// e.g. ARM, candle's quantized path has NEON kernels and this one would run scalar).
pub fn accelerated() -> bool {
    Kernel::detect() != Kernel::Scalar
}

/// `x` (`[m, k]` F32, any layout) times the transpose of `w` (`[out, k / 32 * 34]` U8 Q8_0
/// blocks): `[m, out]` F32. CPU only.
pub fn forward(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(w, &Q8Matmul)
}

struct Q8Matmul;

impl CustomOp2 for Q8Matmul {
    fn name(&self) -> &'static str {
        "q8_0-matmul"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        x_layout: &Layout,
        ws: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = x_layout.shape().dims2()?;
        let (n, row_bytes) = w_layout.shape().dims2()?;
        let (CpuStorage::F32(x), CpuStorage::U8(w)) = (xs, ws) else {
            bail!(
                "a Q8_0 matmul takes F32 activations and U8 blocks, not {:?} and {:?}",
                xs.dtype(),
                ws.dtype()
            )
        };
        if k % BLOCK != 0 || row_bytes != k / BLOCK * BLOCK_BYTES {
            bail!(
                "Q8_0 rows of {row_bytes} bytes do not hold {k} values ({} bytes)",
                k.div_ceil(BLOCK) * BLOCK_BYTES
            )
        }
        let x = contiguous(x, x_layout, "Q8_0 matmul")?;
        let w = contiguous(w, w_layout, "Q8_0 matmul")?;
        let out = matmul(x, m, k, w, n, Kernel::detect())?;
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// `x` (`m` rows of `k`) times the transpose of the Q8_0 matrix `w` (`n` rows), by `kernel`.
pub fn matmul(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[u8],
    n: usize,
    kernel: Kernel,
) -> Result<Vec<f32>> {
    let nb = k / BLOCK;
    if !k.is_multiple_of(BLOCK) || x.len() != m * k || w.len() != n * nb * BLOCK_BYTES {
        bail!(
            "Q8_0 matmul operands do not fit: x {} values for [{m}, {k}], w {} bytes for {n} \
             rows of {k}",
            x.len(),
            w.len()
        )
    }
    // (The detected kernel always runs; others only in tests.)
    if kernel != Kernel::detect() && !Kernel::available().contains(&kernel) {
        bail!("this CPU cannot run the {kernel:?} Q8_0 kernel")
    }
    let q = quantize(x, m, k, kernel.offset());
    let mut out = vec![0f32; m * n];
    let operands = Operands {
        xq: q.qs.as_ptr(),
        xd: q.d.as_ptr(),
        w: w.as_ptr(),
        out: out.as_mut_ptr(),
        k,
        nb,
        n,
    };
    let (rows, cols) = match m {
        1 => (1, DECODE_COLS),
        _ => (PROMPT_ROWS, PROMPT_COLS),
    };
    let col_panels = n.div_ceil(cols);
    let items = m.div_ceil(rows) * col_panels;
    let run = |range: Range<usize>| {
        for item in range {
            let r = (item / col_panels) * rows;
            let c = (item % col_panels) * cols;
            // SAFETY: the ranges lie inside [0, m) x [0, n), the operands' sizes were
            // checked above, `kernel` runs on this CPU, and every item writes its own
            // block of `out`.
            unsafe { operands.region(kernel, r..m.min(r + rows), c..n.min(c + cols)) }
        }
    };
    let pool = candle_core::utils::barrier_pool();
    match pool.n_workers() {
        0 => run(0..items),
        _ => pool.execute_chunked(items, run),
    }
    Ok(out)
}

/// Rows of activations quantized to Q8_0: `qs` `[m, k]` bytes (signed, or +128 when
/// offset), `d` `[m, k / 32]` scales (f16 values widened).
struct QuantizedRows {
    qs: Vec<u8>,
    d: Vec<f32>,
}

/// Quantizes the `m` rows of `x` (ggml's `quantize_row_q8_0`); long inputs on the pool.
fn quantize(x: &[f32], m: usize, k: usize, offset: bool) -> QuantizedRows {
    let nb = k / BLOCK;
    let mut q = QuantizedRows {
        qs: vec![0; m * k],
        d: vec![0.0; m * nb],
    };
    if m * k < 1 << 16 {
        for (row, (qs, d)) in q.qs.chunks_mut(k).zip(q.d.chunks_mut(nb)).enumerate() {
            quantize_row(&x[row * k..(row + 1) * k], qs, d, offset);
        }
        return q;
    }
    let (qs, d) = (SyncPtr(q.qs.as_mut_ptr()), SyncPtr(q.d.as_mut_ptr()));
    candle_core::utils::barrier_pool().execute_chunked(m, |range| {
        for row in range {
            // SAFETY: each row is handed out once; the buffers hold m rows.
            let (qs, d) = unsafe {
                (
                    std::slice::from_raw_parts_mut(qs.get().add(row * k), k),
                    std::slice::from_raw_parts_mut(d.get().add(row * nb), nb),
                )
            };
            quantize_row(&x[row * k..(row + 1) * k], qs, d, offset);
        }
    });
    q
}

/// One row: per 32 values d = amax / 127 (the stored scale is d rounded to f16), values
/// x / d (x times the f32 1/d) rounded half away from zero, as ggml's reference does.
fn quantize_row(x: &[f32], qs: &mut [u8], d: &mut [f32], offset: bool) {
    let flip = if offset { 0x80 } else { 0 };
    for ((x, qs), d) in x.chunks_exact(BLOCK).zip(qs.chunks_exact_mut(BLOCK)).zip(d) {
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        *d = f16::from_f32(scale).to_f32();
        for (q, v) in qs.iter_mut().zip(x) {
            *q = ((v * inv).round() as i8 as u8) ^ flip;
        }
    }
}

/// Dequantizes Q8_0 blocks into `out` (`out.len() / 32` blocks).
pub fn dequantize(blocks: &[u8], out: &mut [f32]) {
    for (block, out) in blocks
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        for (o, q) in out.iter_mut().zip(&block[2..]) {
            *o = *q as i8 as f32 * d;
        }
    }
}

/// The rows `ids` (U32) of the Q8_0 matrix `w`, dequantized: `[ids, k]` F32 (token
/// embeddings: only the rows looked up are widened).
pub fn dequantize_rows(w: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (_, row_bytes) = w.dims2()?;
    if w.dtype() != DType::U8 || row_bytes % BLOCK_BYTES != 0 {
        bail!(
            "{:?} [_, {row_bytes}] is not a matrix of Q8_0 blocks",
            w.dtype()
        )
    }
    let k = row_bytes / BLOCK_BYTES * BLOCK;
    let rows = w.index_select(ids, 0)?;
    let t = rows.dim(0)?;
    let bytes = rows.flatten_all()?.to_vec1::<u8>()?;
    let mut out = vec![0f32; t * k];
    dequantize(&bytes, &mut out);
    Tensor::from_vec(out, (t, k), w.device())
}

/// The operands of one product as raw pointers, so the kernels index without bounds checks.
struct Operands {
    /// Quantized activations: `[m, k]` bytes.
    xq: *const u8,
    /// Their scales: `[m, nb]`.
    xd: *const f32,
    /// Q8_0 blocks: `[n, nb * 34]` bytes.
    w: *const u8,
    /// `[m, n]`.
    out: *mut f32,
    k: usize,
    /// Blocks per row.
    nb: usize,
    n: usize,
}

// SAFETY: the pointers outlive the product; threads read the inputs and write disjoint
// blocks of `out` (one region each).
unsafe impl Sync for Operands {}

impl Operands {
    /// `out[rows, cols]`.
    ///
    /// # Safety
    /// `rows` and `cols` lie inside the operands, `kernel` runs on this CPU, and no other
    /// thread writes the same outputs.
    unsafe fn region(&self, kernel: Kernel, rows: Range<usize>, cols: Range<usize>) {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni => x86::region_vnni(self, rows, cols),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => x86::region_avx2(self, rows, cols),
            _ => self.region_scalar(rows, cols),
        }
    }

    /// The reference: per block an i32 dot product, then × d_x × d_w added in order.
    unsafe fn region_scalar(&self, rows: Range<usize>, cols: Range<usize>) {
        let (k, nb, row_bytes) = (self.k, self.nb, self.nb * BLOCK_BYTES);
        for r in rows {
            let xq = std::slice::from_raw_parts(self.xq.add(r * k), k);
            let xd = std::slice::from_raw_parts(self.xd.add(r * nb), nb);
            for c in cols.clone() {
                let w = std::slice::from_raw_parts(self.w.add(c * row_bytes), row_bytes);
                *self.out.add(r * self.n + c) = dot_scalar(xq, xd, w);
            }
        }
    }
}

/// One output of the scalar kernel: signed activations `xq` with scales `xd` against one
/// row of Q8_0 blocks.
fn dot_scalar(xq: &[u8], xd: &[f32], w: &[u8]) -> f32 {
    let mut sum = 0f32;
    for ((xq, xd), block) in xq
        .chunks_exact(BLOCK)
        .zip(xd)
        .zip(w.chunks_exact(BLOCK_BYTES))
    {
        let dw = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let dot: i32 = xq
            .iter()
            .zip(&block[2..])
            .map(|(&a, &b)| a as i8 as i32 * b as i8 as i32)
            .sum();
        sum += dot as f32 * (xd * dw);
    }
    sum
}

// The AVX512-VNNI intrinsics are stable from Rust 1.89 (the workspace says 1.85; candle and
// tokenizers already need 1.87 to build this plugin).
#[cfg(target_arch = "x86_64")]
#[clippy::msrv = "1.89"]
mod x86 {
    //! The SIMD micro-kernels: `R` x rows × `C` w rows, 8 float lanes per pair accumulated
    //! over the blocks, summed across lanes at the end.

    use super::{Operands, BLOCK, BLOCK_BYTES, TILE_COLS, TILE_ROWS};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// `R` is the number of x rows a tile takes, `C` of w rows; the macro picks the tile
    /// for the rows left at the edges.
    macro_rules! region {
        ($name:ident, $tile:ident, $features:literal) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $name(p: &Operands, rows: Range<usize>, cols: Range<usize>) {
                // One row of x (a decode step): one w row at a time, so each thread reads
                // its rows as a single sequential stream. Measured on a 50M Q8_0 llama (one
                // thread, weights from DRAM): 4 interleaved rows decoded 107 tokens per
                // CPU-second, 1 row 270 (llama.cpp 270-280); software prefetch did not
                // close the gap.
                let tile_cols = if rows.len() == 1 { 1 } else { TILE_COLS };
                let mut r = rows.start;
                while r < rows.end {
                    let rr = (rows.end - r).min(TILE_ROWS);
                    let mut c = cols.start;
                    while c < cols.end {
                        let cc = (cols.end - c).min(tile_cols);
                        match (rr, cc) {
                            (4, 4) => $tile::<4, 4>(p, r, c),
                            (4, 3) => $tile::<4, 3>(p, r, c),
                            (4, 2) => $tile::<4, 2>(p, r, c),
                            (4, _) => $tile::<4, 1>(p, r, c),
                            (3, 4) => $tile::<3, 4>(p, r, c),
                            (3, 3) => $tile::<3, 3>(p, r, c),
                            (3, 2) => $tile::<3, 2>(p, r, c),
                            (3, _) => $tile::<3, 1>(p, r, c),
                            (2, 4) => $tile::<2, 4>(p, r, c),
                            (2, 3) => $tile::<2, 3>(p, r, c),
                            (2, 2) => $tile::<2, 2>(p, r, c),
                            (2, _) => $tile::<2, 1>(p, r, c),
                            (_, 4) => $tile::<1, 4>(p, r, c),
                            (_, 3) => $tile::<1, 3>(p, r, c),
                            (_, 2) => $tile::<1, 2>(p, r, c),
                            (_, _) => $tile::<1, 1>(p, r, c),
                        }
                        c += cc;
                    }
                    r += rr;
                }
            }
        };
    }

    region!(
        region_vnni,
        tile_vnni,
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni"
    );
    region!(region_avx2, tile_avx2, "avx2,fma,f16c");

    /// The scale of block `b` of w row `c`, in every lane.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn w_scale(p: &Operands, c: usize, b: usize) -> (__m256, *const u8) {
        let block = p.w.add(c * p.nb * BLOCK_BYTES + b * BLOCK_BYTES);
        let bits = block.cast::<i16>().read_unaligned();
        (_mm256_cvtph_ps(_mm_set1_epi16(bits)), block.add(2))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn tile_vnni<const R: usize, const C: usize>(p: &Operands, r0: usize, c0: usize) {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let zero = _mm256_setzero_si256();
        let bias = _mm256_set1_epi8(-128);
        for b in 0..p.nb {
            let mut wq = [zero; C];
            let mut base = [zero; C];
            let mut wd = [_mm256_setzero_ps(); C];
            for c in 0..C {
                let (d, qs) = w_scale(p, c0 + c, b);
                wd[c] = d;
                wq[c] = _mm256_loadu_si256(qs.cast());
                // -128 × Σ w per lane: the offset activations' extra products.
                base[c] = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, bias, wq[c]));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let row = r0 + r;
                let xq = _mm256_loadu_si256(p.xq.add(row * p.k + b * BLOCK).cast());
                let xd = _mm256_set1_ps(*p.xd.add(row * p.nb + b));
                for c in 0..C {
                    let dot = _mm256_dpbusd_epi32(base[c], xq, wq[c]);
                    let scale = _mm256_mul_ps(xd, wd[c]);
                    acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[c]);
                }
            }
        }
        store(p, &acc, r0, c0);
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_avx2<const R: usize, const C: usize>(p: &Operands, r0: usize, c0: usize) {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let zero = _mm256_setzero_si256();
        let ones = _mm256_set1_epi16(1);
        for b in 0..p.nb {
            let mut wq = [zero; C];
            let mut wabs = [zero; C];
            let mut wd = [_mm256_setzero_ps(); C];
            for c in 0..C {
                let (d, qs) = w_scale(p, c0 + c, b);
                wd[c] = d;
                wq[c] = _mm256_loadu_si256(qs.cast());
                // |w| as unsigned bytes (-128 gives 128).
                wabs[c] = _mm256_sign_epi8(wq[c], wq[c]);
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let row = r0 + r;
                let xq = _mm256_loadu_si256(p.xq.add(row * p.k + b * BLOCK).cast());
                let xd = _mm256_set1_ps(*p.xd.add(row * p.nb + b));
                for c in 0..C {
                    // |w| × (x with w's sign): pairs stay within i16 as |x| <= 127.
                    let signed = _mm256_sign_epi8(xq, wq[c]);
                    let pairs = _mm256_maddubs_epi16(wabs[c], signed);
                    let dot = _mm256_madd_epi16(pairs, ones);
                    let scale = _mm256_mul_ps(xd, wd[c]);
                    acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[c]);
                }
            }
        }
        store(p, &acc, r0, c0);
    }

    /// Sums each accumulator's lanes into its output.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store<const R: usize, const C: usize>(
        p: &Operands,
        acc: &[[__m256; C]; R],
        r0: usize,
        c0: usize,
    ) {
        for (r, row) in acc.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                let s = _mm_add_ps(_mm256_castps256_ps128(*v), _mm256_extractf128_ps(*v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                *p.out.add((r0 + r) * p.n + c0 + c) = _mm_cvtss_f32(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module};
    use rand::{Rng, SeedableRng};

    /// Random Q8_0 rows, some bytes -128 (GGUF files may hold it; our own quantizer never
    /// writes it), scales of varied size.
    fn random_blocks(rng: &mut impl Rng, n: usize, k: usize) -> Vec<u8> {
        let mut w = Vec::with_capacity(n * k / BLOCK * BLOCK_BYTES);
        for _ in 0..n * k / BLOCK {
            let d = f16::from_f32(rng.random_range(0.001f32..0.05));
            w.extend(d.to_le_bytes());
            for _ in 0..BLOCK {
                let q: i8 = match rng.random_range(0..20) {
                    0 => -128,
                    _ => rng.random_range(-127..=127),
                };
                w.push(q as u8);
            }
        }
        w
    }

    fn random_x(rng: &mut impl Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-3f32..3.0)).collect()
    }

    /// `x` quantized and both operands dequantized, multiplied in f64: the exact value the
    /// kernels round.
    fn exact(x: &[f32], m: usize, k: usize, w: &[u8], n: usize) -> Vec<f32> {
        let q = quantize(x, m, k, false);
        let mut xs = vec![0f32; m * k];
        for (i, v) in xs.iter_mut().enumerate() {
            *v = q.qs[i] as i8 as f32 * q.d[i / BLOCK];
        }
        let mut ws = vec![0f32; n * k];
        dequantize(w, &mut ws);
        (0..m * n)
            .map(|i| {
                let (r, c) = (i / n, i % n);
                (0..k)
                    .map(|j| xs[r * k + j] as f64 * ws[c * k + j] as f64)
                    .sum::<f64>() as f32
            })
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}: output {i} is {g}, expected {w}"
            );
        }
    }

    #[test]
    fn quantization_follows_ggml() {
        // amax 2.54 -> d = 0.02; 0.01 / 0.02 = 0.5 rounds away from zero to 1; -2.54 -> -127.
        let mut x = vec![0f32; BLOCK];
        x[0] = 0.01;
        x[1] = -0.01;
        x[2] = -2.54;
        x[3] = 1.27;
        let (mut qs, mut d) = (vec![0u8; BLOCK], vec![0f32]);
        quantize_row(&x, &mut qs, &mut d, false);
        assert_eq!(d[0], f16::from_f32(2.54 / 127.0).to_f32());
        let q: Vec<i8> = qs.iter().map(|&b| b as i8).collect();
        assert_eq!(&q[..5], [1, -1, -127, 64, 0]);
        quantize_row(&x, &mut qs, &mut d, true);
        assert_eq!(qs[2], (-127i8 as u8) ^ 0x80);
        // An all-zero block has scale 0 and zero values.
        quantize_row(&[0.0; BLOCK], &mut qs, &mut d, false);
        assert_eq!((d[0], qs.iter().all(|&q| q == 0)), (0.0, true));
    }

    #[test]
    fn every_kernel_matches_the_exact_product() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Odd row counts and widths that leave partial tiles and panels; m = 70 crosses a
        // prompt panel, n = 67 a column panel.
        let shapes = [
            (1, 32, 1),
            (1, 96, 67),
            (3, 64, 5),
            (5, 160, 18),
            (9, 32, 7),
            (70, 96, 67),
            (2, 640, 33),
        ];
        eprintln!("kernels on this CPU: {:?}", Kernel::available());
        for kernel in Kernel::available() {
            for &(m, k, n) in &shapes {
                let x = random_x(&mut rng, m * k);
                let w = random_blocks(&mut rng, n, k);
                let got = matmul(&x, m, k, &w, n, kernel).unwrap();
                let what = format!("{kernel:?} m {m} k {k} n {n}");
                assert_close(&got, &exact(&x, m, k, &w, n), &what);
            }
        }
    }

    #[test]
    fn the_op_matches_candles_q8_0_matmul() {
        // candle's QMatMul on the same blocks (k not a multiple of 256: its plain Q8_0 path,
        // which quantizes the activations the same way): an independent implementation.
        let dev = Device::Cpu;
        let (m, k, n) = (6, 96, 40);
        let w = Tensor::randn(0f32, 1., (n, k), &dev).unwrap();
        let qw = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let blocks = Tensor::from_vec(qw.data().unwrap().to_vec(), (n, k / 32 * 34), &dev);
        let blocks = blocks.unwrap();
        // A narrowed (offset) view of a wider tensor: the op makes it contiguous.
        let wide = Tensor::randn(0f32, 1., (m + 2, k), &dev).unwrap();
        let x = wide.narrow(0, 1, m).unwrap();
        let want = QMatMul::from_qtensor(qw).unwrap().forward(&x).unwrap();
        let got = forward(&x, &blocks).unwrap();
        assert_eq!(got.dims(), [m, n]);
        let diff = crate::linear::max_diff(&got, &want);
        assert!(diff < 1e-4, "largest difference {diff}");
    }

    #[test]
    fn looked_up_rows_equal_candles_dequantization() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (10, 64), &dev).unwrap();
        let qw = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let blocks = Tensor::from_vec(qw.data().unwrap().to_vec(), (10, 68), &dev).unwrap();
        let ids = Tensor::new(&[3u32, 0, 9, 3], &dev).unwrap();
        let got: Vec<Vec<f32>> = dequantize_rows(&blocks, &ids).unwrap().to_vec2().unwrap();
        let all = qw.dequantize(&dev).unwrap();
        let want: Vec<Vec<f32>> = all.index_select(&ids, 0).unwrap().to_vec2().unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn operands_that_do_not_fit_are_errors() {
        let x = vec![0f32; 64];
        // 40 values per row is not whole blocks; 2 rows of 64 need 136 bytes, not 100.
        assert!(matmul(&x, 1, 40, &[0; 34], 1, Kernel::Scalar).is_err());
        assert!(matmul(&x, 1, 64, &[0; 100], 2, Kernel::Scalar).is_err());
        let dev = Device::Cpu;
        let xt = Tensor::zeros((1, 64), DType::F32, &dev).unwrap();
        let bad = Tensor::zeros((2, 60), DType::U8, &dev).unwrap();
        let err = forward(&xt, &bad).unwrap_err().to_string();
        assert!(err.contains("do not hold 64 values"), "{err}");
    }
}
