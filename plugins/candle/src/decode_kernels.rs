//! The fused CUDA kernels of `kernels/decode.cu` as candle custom ops, for generating one
//! token with [`crate::dense_llama`] on a GPU in F16/BF16 (see the .cu file for why).
//!
//! Each op takes contiguous tensors and checks what its kernel assumes; the CPU has no
//! version of them (the dense llama runs candle's own ops there).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, WrapErr};
use candle_core::{
    bail, CpuStorage, CudaDevice, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout,
    Result, Shape, Tensor,
};
use half::{bf16, f16};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/decode.ptx"));
const MODULE: &str = "llmlocal_decode";

/// `x` (`[1, k]`) times `w` (`[rows, k]`) transposed: `[1, rows]`. Needs k % 8 == 0 and
/// both tensors starting on a 16-byte boundary ([`gemv_fits`]).
pub fn gemv(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &Gemv)
}

/// Whether [`gemv`] takes these operands.
pub fn gemv_fits(x: &Tensor, w: &Tensor) -> bool {
    let aligned = |t: &Tensor| (t.layout().start_offset() * t.dtype().size_in_bytes()) % 16 == 0;
    let k = w.dims().last().copied().unwrap_or(0);
    k % 8 == 0 && aligned(x) && aligned(w) && x.is_contiguous() && w.is_contiguous()
}

/// One generated token's attention at position `pos`: RoPE of its q and k from `qkv`
/// (`[1, (heads + 2 kv_heads) * d]`) with `rope` (`[1, d]` F32: this position's cos, then
/// sin), k and v appended to `cache` (`[2, kv_heads, capacity, d]` F32, written in place
/// at `pos`), and softmax(q k^T) v over positions `0..=pos`, q scaled by `q_scale`:
/// `[1, heads * d]` in the dtype of `qkv`. Needs [`attention_fits`].
pub fn attention(
    qkv: &Tensor,
    rope: &Tensor,
    cache: &Tensor,
    heads: usize,
    pos: usize,
    q_scale: f32,
) -> Result<Tensor> {
    qkv.apply_op3_no_bwd(
        rope,
        cache,
        &DecodeAttention {
            heads,
            pos,
            q_scale,
        },
    )
}

/// Whether [`attention`] takes heads of `head_dim`: decode.cu has a kernel for each of
/// these sizes.
pub fn attention_fits(head_dim: usize) -> bool {
    matches!(head_dim, 16 | 32 | 64 | 128 | 256)
}

/// The residual add `x + delta` and the RMS norm of that sum times `weight`, for one token
/// (`[1, n]` each): `[2, n]`, the sum in row 0 and the normed row in row 1.
pub fn add_rms_norm(x: &Tensor, delta: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    x.apply_op3_no_bwd(delta, weight, &AddRmsNorm { eps })
}

/// The index of the largest of `logits` (any shape, F16/BF16): the lowest index on ties,
/// NaN never wins, as the CPU sampler's argmax. A `[1]` U32 tensor.
pub fn argmax(logits: &Tensor) -> Result<Tensor> {
    logits.apply_op1_no_bwd(&Argmax)
}

/// `silu(gate) * up` of a `[rows, 2 * ffn]` gate/up projection (each row: gate, then up):
/// `[rows, ffn]`. One row per token: one when generating, the prompt's at prefill.
pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    gate_up.apply_op1_no_bwd(&SwiGlu)
}

/// Softmax over the last dimension of F32 attention scores (`[.., len]`, contiguous, rows
/// ordered with the query index innermost, `t` queries at positions `pos..pos + t`), each
/// query seeing keys `0..=pos + i` only (causal); the keys it may not see get 0. Replaces
/// adding a `-inf` mask and a softmax at prefill.
pub fn causal_softmax(scores: &Tensor, t: usize, pos: usize) -> Result<Tensor> {
    scores.apply_op1_no_bwd(&CausalSoftmax { t, pos })
}

fn cpu_refused() -> Result<(CpuStorage, Shape)> {
    bail!("the fused decode kernels run on CUDA only")
}

fn kernel_name(name: &str, dtype: DType) -> Result<String> {
    let suffix = match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => bail!("the fused decode kernels take F16 or BF16, not {other:?}"),
    };
    Ok(format!("{name}_{suffix}"))
}

/// Launches kernel `$name` (for `$dtype`) of decode.cu with the given arguments.
macro_rules! launch {
    ($dev:expr, $name:expr, $dtype:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {
        launch_named!($dev, &kernel_name($name, $dtype)?, $cfg, $($arg),+)
    };
}

/// Launches the decode.cu kernel named exactly `$name` (one without a dtype suffix).
macro_rules! launch_named {
    ($dev:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let func = $dev.get_or_load_custom_func($name, MODULE, PTX)?;
        let mut builder = func.builder();
        $( builder.arg($arg); )+
        // SAFETY: the argument lists match the kernels' signatures in decode.cu.
        unsafe { builder.launch($cfg) }.w()?;
    }};
}

/// The contiguous elements of a tensor's storage.
fn view<'a, T: CudaDType>(storage: &'a CudaStorage, layout: &Layout) -> Result<CudaView<'a, T>> {
    let slice = storage.as_cuda_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => bail!("the fused decode kernels need contiguous tensors"),
    }
}

fn blocks(threads: usize, per_block: usize) -> u32 {
    threads.div_ceil(per_block).max(1) as u32
}

fn wrap(slice: CudaStorageSlice, dev: &CudaDevice) -> CudaStorage {
    CudaStorage {
        slice,
        device: dev.clone(),
    }
}

struct Gemv;

impl Gemv {
    fn run<T: CudaDType + DeviceRepr>(
        dev: &CudaDevice,
        x: (&CudaStorage, &Layout),
        w: (&CudaStorage, &Layout),
        dtype: DType,
    ) -> Result<CudaSlice<T>> {
        let (rows, k) = w.1.shape().dims2()?;
        if x.1.shape().elem_count() != k || k % 8 != 0 {
            bail!("gemv: x {:?} does not fit w {:?}", x.1.shape(), w.1.shape())
        }
        let (xv, wv) = (view::<T>(x.0, x.1)?, view::<T>(w.0, w.1)?);
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<T>(rows)? };
        let cfg = LaunchConfig {
            grid_dim: (blocks(rows, 8), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (rows, k) = (rows as u32, k as u32);
        launch!(dev, "gemv", dtype, cfg, &wv, &xv, &out, &rows, &k);
        Ok(out)
    }
}

impl CustomOp2 for Gemv {
    fn name(&self) -> &'static str {
        "llmlocal-gemv"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused()
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.device();
        let rows = wl.shape().dims2()?.0;
        let slice = match (&x.slice, &w.slice) {
            (CudaStorageSlice::F16(_), CudaStorageSlice::F16(_)) => {
                CudaStorageSlice::F16(Self::run::<f16>(dev, (x, xl), (w, wl), DType::F16)?)
            }
            (CudaStorageSlice::BF16(_), CudaStorageSlice::BF16(_)) => {
                CudaStorageSlice::BF16(Self::run::<bf16>(dev, (x, xl), (w, wl), DType::BF16)?)
            }
            _ => bail!("gemv takes F16 or BF16 operands of one dtype"),
        };
        Ok((wrap(slice, dev), Shape::from((1, rows))))
    }
}

/// Threads per block of decode.cu's `decode_attention` (ATTN_THREADS there).
const ATTN_THREADS: u32 = 1024;

/// Beyond this many positions a head's attention is split over several blocks of
/// [`SPLIT_SPAN`] positions each (flash decoding), and a second kernel joins them. One block
/// per head leaves most of the GPU idle on long contexts (57 us per layer at 4000 positions
/// on an H100); below this, that block takes less time than a second launch costs the CPU.
const SPLIT_FROM: usize = 1024;
/// Positions per block when split.
const SPLIT_SPAN: usize = 512;

struct DecodeAttention {
    heads: usize,
    pos: usize,
    q_scale: f32,
}

impl DecodeAttention {
    fn run<T: CudaDType + DeviceRepr>(
        &self,
        dev: &CudaDevice,
        qkv: (&CudaStorage, &Layout),
        rope: (&CudaStorage, &Layout),
        cache: (&CudaStorage, &Layout),
        dtype: DType,
    ) -> Result<CudaSlice<T>> {
        let (two, kv_heads, cap, d) = cache.1.shape().dims4()?;
        let rows = self.heads + 2 * kv_heads;
        let fits = two == 2
            && attention_fits(d)
            && kv_heads > 0
            && self.heads % kv_heads == 0
            && self.pos < cap
            && rope.1.shape().elem_count() == d
            && qkv.1.shape().elem_count() == rows * d;
        if !fits {
            bail!(
                "decode attention: projection {:?}, rope {:?} and cache {:?} do not fit \
                 {} heads at position {}",
                qkv.1.shape(),
                rope.1.shape(),
                cache.1.shape(),
                self.heads,
                self.pos
            )
        }
        let qkv_v = view::<T>(qkv.0, qkv.1)?;
        let rope_v = view::<f32>(rope.0, rope.1)?;
        // The kernel writes this token's row of K and V into the cache: the session's own
        // state, which the unfused path also updates in place (`slice_set`).
        let cache_v = view::<f32>(cache.0, cache.1)?;
        let len = self.pos + 1;
        let (splits, span) = match len > SPLIT_FROM {
            true => (len.div_ceil(SPLIT_SPAN), SPLIT_SPAN),
            false => (1, len),
        };
        // With one split the kernel writes `out` and no partial results: one element keeps
        // that argument a valid pointer.
        let partial_len = match splits {
            1 => 1,
            _ => self.heads * splits * (d + 2),
        };
        // SAFETY: every element used is written by the kernels before it is read.
        let out = unsafe { dev.alloc::<T>(self.heads * d)? };
        let partial = unsafe { dev.alloc::<f32>(partial_len)? };
        let cfg = LaunchConfig {
            grid_dim: (self.heads as u32, splits as u32, 1),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let [heads, kv_heads, cap, pos, span, splits_u32] =
            [self.heads, kv_heads, cap, self.pos, span, splits].map(|n| n as u32);
        launch!(
            dev,
            &format!("decode_attention_{d}"),
            dtype,
            cfg,
            &qkv_v,
            &rope_v,
            &cache_v,
            &out,
            &partial,
            &heads,
            &kv_heads,
            &cap,
            &pos,
            &span,
            &self.q_scale
        );
        if splits > 1 {
            let cfg = LaunchConfig {
                grid_dim: (heads, 1, 1),
                block_dim: (d as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let name = format!("decode_attention_combine_{d}");
            launch!(dev, &name, dtype, cfg, &partial, &out, &splits_u32);
        }
        Ok(out)
    }
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "llmlocal-decode-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused()
    }

    fn cuda_fwd(
        &self,
        qkv: &CudaStorage,
        ql: &Layout,
        rope: &CudaStorage,
        rl: &Layout,
        cache: &CudaStorage,
        cl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = qkv.device();
        let (q, r, c) = ((qkv, ql), (rope, rl), (cache, cl));
        let slice = match &qkv.slice {
            CudaStorageSlice::F16(_) => {
                CudaStorageSlice::F16(self.run::<f16>(dev, q, r, c, DType::F16)?)
            }
            CudaStorageSlice::BF16(_) => {
                CudaStorageSlice::BF16(self.run::<bf16>(dev, q, r, c, DType::BF16)?)
            }
            _ => bail!("decode attention takes an F16 or BF16 projection"),
        };
        let d = cl.shape().dims4()?.3;
        Ok((wrap(slice, dev), Shape::from((1, self.heads * d))))
    }
}

struct AddRmsNorm {
    eps: f32,
}

impl AddRmsNorm {
    fn run<T: CudaDType + DeviceRepr>(
        &self,
        dev: &CudaDevice,
        [x, delta, weight]: [(&CudaStorage, &Layout); 3],
        dtype: DType,
    ) -> Result<CudaSlice<T>> {
        let n = x.1.shape().elem_count();
        if delta.1.shape().elem_count() != n || weight.1.shape().elem_count() != n {
            bail!(
                "add_rms_norm: {:?} + {:?} normed by {:?}",
                x.1.shape(),
                delta.1.shape(),
                weight.1.shape()
            )
        }
        let (x, delta, weight) = (
            view::<T>(x.0, x.1)?,
            view::<T>(delta.0, delta.1)?,
            view::<T>(weight.0, weight.1)?,
        );
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<T>(2 * n)? };
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        let n = n as u32;
        launch!(
            dev,
            "add_rms_norm",
            dtype,
            cfg,
            &x,
            &delta,
            &weight,
            &out,
            &n,
            &self.eps
        );
        Ok(out)
    }
}

impl CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "llmlocal-add-rms-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused()
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        delta: &CudaStorage,
        dl: &Layout,
        weight: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.device();
        let args = [(x, xl), (delta, dl), (weight, wl)];
        let slice = match (&x.slice, &delta.slice, &weight.slice) {
            (CudaStorageSlice::F16(_), CudaStorageSlice::F16(_), CudaStorageSlice::F16(_)) => {
                CudaStorageSlice::F16(self.run::<f16>(dev, args, DType::F16)?)
            }
            (CudaStorageSlice::BF16(_), CudaStorageSlice::BF16(_), CudaStorageSlice::BF16(_)) => {
                CudaStorageSlice::BF16(self.run::<bf16>(dev, args, DType::BF16)?)
            }
            _ => bail!("add_rms_norm takes F16 or BF16 operands of one dtype"),
        };
        Ok((wrap(slice, dev), Shape::from((2, xl.shape().elem_count()))))
    }
}

struct SwiGlu;

impl SwiGlu {
    fn run<T: CudaDType + DeviceRepr>(
        dev: &CudaDevice,
        gate_up: (&CudaStorage, &Layout),
        dtype: DType,
    ) -> Result<(CudaSlice<T>, Shape)> {
        let shape = gate_up.1.shape();
        let width = shape.dims().last().copied().unwrap_or(0);
        if width == 0 || width % 2 != 0 {
            bail!("swiglu: {shape:?} has no even last dimension")
        }
        let (ffn, rows) = (width / 2, shape.elem_count() / width);
        let total = rows * ffn;
        let input = view::<T>(gate_up.0, gate_up.1)?;
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<T>(total)? };
        let cfg = LaunchConfig {
            grid_dim: (blocks(total, 256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let [ffn32, total32] = [ffn, total].map(|n| n as u32);
        launch!(dev, "swiglu", dtype, cfg, &input, &out, &ffn32, &total32);
        Ok((out, Shape::from((rows, ffn))))
    }
}

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "llmlocal-swiglu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused()
    }

    fn cuda_fwd(&self, gate_up: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = gate_up.device();
        let (slice, shape) = match &gate_up.slice {
            CudaStorageSlice::F16(_) => {
                let (out, shape) = Self::run::<f16>(dev, (gate_up, layout), DType::F16)?;
                (CudaStorageSlice::F16(out), shape)
            }
            CudaStorageSlice::BF16(_) => {
                let (out, shape) = Self::run::<bf16>(dev, (gate_up, layout), DType::BF16)?;
                (CudaStorageSlice::BF16(out), shape)
            }
            _ => bail!("swiglu takes F16 or BF16"),
        };
        Ok((wrap(slice, dev), shape))
    }
}

struct CausalSoftmax {
    t: usize,
    pos: usize,
}

/// Rows (warps) per block of `causal_softmax_f32`.
const SOFTMAX_ROWS_PER_BLOCK: usize = 4;

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "llmlocal-causal-softmax"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused()
    }

    fn cuda_fwd(&self, scores: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = scores.device();
        let shape = layout.shape();
        let len = shape.dims().last().copied().unwrap_or(0);
        let rows = shape.elem_count() / len.max(1);
        if len == 0 || self.t == 0 || rows % self.t != 0 || self.pos + self.t > len {
            bail!(
                "causal softmax: scores {shape:?} do not fit {} queries at position {}",
                self.t,
                self.pos
            )
        }
        let input = view::<f32>(scores, layout)?;
        // SAFETY: the kernel writes every element of every row.
        let out = unsafe { dev.alloc::<f32>(rows * len)? };
        let cfg = LaunchConfig {
            grid_dim: (blocks(rows, SOFTMAX_ROWS_PER_BLOCK), 1, 1),
            block_dim: (32 * SOFTMAX_ROWS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let [rows32, t, len32, pos] = [rows, self.t, len, self.pos].map(|n| n as u32);
        launch_named!(
            dev,
            "causal_softmax_f32",
            cfg,
            &input,
            &out,
            &rows32,
            &t,
            &len32,
            &pos
        );
        Ok((wrap(CudaStorageSlice::F32(out), dev), shape.clone()))
    }
}

struct Argmax;

impl Argmax {
    fn run<T: CudaDType + DeviceRepr>(
        dev: &CudaDevice,
        logits: (&CudaStorage, &Layout),
        dtype: DType,
    ) -> Result<CudaSlice<u32>> {
        let n = u32::try_from(logits.1.shape().elem_count())
            .map_err(|_| candle_core::Error::Msg("argmax: too many logits".into()))?;
        let input = view::<T>(logits.0, logits.1)?;
        // SAFETY: the kernel writes the one element.
        let out = unsafe { dev.alloc::<u32>(1)? };
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(dev, "argmax", dtype, cfg, &input, &n, &out);
        Ok(out)
    }
}

impl CustomOp1 for Argmax {
    fn name(&self) -> &'static str {
        "llmlocal-argmax"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused()
    }

    fn cuda_fwd(&self, logits: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = logits.device();
        let out = match &logits.slice {
            CudaStorageSlice::F16(_) => Self::run::<f16>(dev, (logits, layout), DType::F16)?,
            CudaStorageSlice::BF16(_) => Self::run::<bf16>(dev, (logits, layout), DType::BF16)?,
            _ => bail!("argmax takes F16 or BF16 logits"),
        };
        Ok((wrap(CudaStorageSlice::U32(out), dev), Shape::from(1)))
    }
}
