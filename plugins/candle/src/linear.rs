//! `x · wᵀ` for the dense networks, with decode steps spread over the CPU's threads.
//!
//! Why: candle hands every CPU matmul to `gemm`, which runs a matrix-vector product (one
//! token: `x` has one row) on the calling thread only, whatever parallelism it is given. At
//! decode that is nearly all the work, so one of two cores idled while llama.cpp used both.
//! Here a one-row product is cut by output rows into one slice of `w` per rayon thread; each
//! slice is still `gemm`'s matrix-vector product, so every output element is the same dot
//! product over the same inputs as before, only computed on another thread. Several rows
//! (prompts) keep `gemm`'s own parallel kernel.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// Output rows of one slice are a multiple of this (whole SIMD registers, whole cache lines).
const ROW_ALIGN: usize = 16;
/// Below this many output rows per thread the hand-off costs more than it saves.
const MIN_ROWS_PER_THREAD: usize = 64;

/// `x` (`[m, in]`) times `w` (`[out, in]`) transposed: `[m, out]`.
pub fn forward(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    match slices(x, w)? {
        Some(rows) => split(x, w, rows),
        None => x.matmul(&w.t()?),
    }
}

/// The rows of `w` per slice when the product is split, `None` when it runs whole.
fn slices(x: &Tensor, w: &Tensor) -> Result<Option<usize>> {
    let threads = rayon::current_num_threads();
    let (m, out) = (x.dim(0)?, w.dim(0)?);
    if !x.device().is_cpu() || x.rank() != 2 || m != 1 || threads < 2 {
        return Ok(None);
    }
    if out < threads * MIN_ROWS_PER_THREAD {
        return Ok(None);
    }
    Ok(Some(out.div_ceil(threads).next_multiple_of(ROW_ALIGN)))
}

/// One matrix-vector product per slice of `rows` rows of `w`, on rayon's threads, joined.
fn split(x: &Tensor, w: &Tensor, rows: usize) -> Result<Tensor> {
    let out = w.dim(0)?;
    let parts = (0..out.div_ceil(rows))
        .into_par_iter()
        .map(|i| {
            let start = i * rows;
            x.matmul(&w.narrow(0, start, rows.min(out - start))?.t()?)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 1)
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
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let rows = pool.install(|| slices(&x, &w)).unwrap();
        assert_eq!(
            rows,
            Some(112),
            "3 threads: 100 rows each, rounded up to 16"
        );
        let got = pool.install(|| forward(&x, &w)).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        assert_eq!(got.dims(), [1, 300]);
        let diff = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff <= 1e-5, "largest difference {diff}");
        // Prompts (several rows) are not split.
        let x2 = Tensor::cat(&[&x, &x], 0).unwrap();
        assert_eq!(pool.install(|| slices(&x2, &w)).unwrap(), None);
        let got2 = pool.install(|| forward(&x2, &w)).unwrap();
        assert_eq!(got2.i(1).unwrap().dims(), [300]);
    }
}
