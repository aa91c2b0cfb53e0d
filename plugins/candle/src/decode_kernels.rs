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

/// One token's q/k/v projection (`[1, (heads + 2 kv_heads) * d]`) as F32
/// `[heads + 2 kv_heads, d]`: q and k rotated with `cos`/`sin` (`[1, d / 2]` F32, this
/// position's row), q also multiplied by `q_scale`.
pub fn rope_qkv(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
    kv_heads: usize,
    q_scale: f32,
) -> Result<Tensor> {
    qkv.apply_op3_no_bwd(
        cos,
        sin,
        &RopeQkv {
            heads,
            kv_heads,
            q_scale,
        },
    )
}

/// `silu(gate) * up` of one token's `[1, 2 * ffn]` gate/up projection: `[1, ffn]`.
pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    gate_up.apply_op1_no_bwd(&SwiGlu)
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
    ($dev:expr, $name:expr, $dtype:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let func = $dev.get_or_load_custom_func(&kernel_name($name, $dtype)?, MODULE, PTX)?;
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

struct RopeQkv {
    heads: usize,
    kv_heads: usize,
    q_scale: f32,
}

impl RopeQkv {
    fn run<T: CudaDType + DeviceRepr>(
        &self,
        dev: &CudaDevice,
        qkv: (&CudaStorage, &Layout),
        cos: (&CudaStorage, &Layout),
        sin: (&CudaStorage, &Layout),
        dtype: DType,
    ) -> Result<(CudaSlice<f32>, Shape)> {
        let rows = self.heads + 2 * self.kv_heads;
        let half = cos.1.shape().elem_count();
        let d = half * 2;
        if qkv.1.shape().elem_count() != rows * d || sin.1.shape().elem_count() != half {
            bail!("rope_qkv: {:?} is not {rows} heads of {d}", qkv.1.shape())
        }
        let qkv_v = view::<T>(qkv.0, qkv.1)?;
        let (cos_v, sin_v) = (view::<f32>(cos.0, cos.1)?, view::<f32>(sin.0, sin.1)?);
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<f32>(rows * d)? };
        let threads = (self.heads + self.kv_heads) * half + self.kv_heads * d;
        let cfg = LaunchConfig {
            grid_dim: (blocks(threads, 256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (heads, kv_heads) = (self.heads as u32, self.kv_heads as u32);
        let d = d as u32;
        launch!(
            dev,
            "rope_qkv",
            dtype,
            cfg,
            &qkv_v,
            &cos_v,
            &sin_v,
            &out,
            &heads,
            &kv_heads,
            &d,
            &self.q_scale
        );
        Ok((out, Shape::from((rows, d as usize))))
    }
}

impl CustomOp3 for RopeQkv {
    fn name(&self) -> &'static str {
        "llmlocal-rope-qkv"
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
        cos: &CudaStorage,
        cl: &Layout,
        sin: &CudaStorage,
        sl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = qkv.device();
        let (q, c, s) = ((qkv, ql), (cos, cl), (sin, sl));
        let (out, shape) = match &qkv.slice {
            CudaStorageSlice::F16(_) => self.run::<f16>(dev, q, c, s, DType::F16)?,
            CudaStorageSlice::BF16(_) => self.run::<bf16>(dev, q, c, s, DType::BF16)?,
            _ => bail!("rope_qkv takes an F16 or BF16 projection"),
        };
        Ok((wrap(CudaStorageSlice::F32(out), dev), shape))
    }
}

struct SwiGlu;

impl SwiGlu {
    fn run<T: CudaDType + DeviceRepr>(
        dev: &CudaDevice,
        gate_up: (&CudaStorage, &Layout),
        dtype: DType,
    ) -> Result<(CudaSlice<T>, Shape)> {
        let n = gate_up.1.shape().elem_count();
        if n % 2 != 0 {
            bail!(
                "swiglu: {:?} has an odd number of elements",
                gate_up.1.shape()
            )
        }
        let ffn = n / 2;
        let input = view::<T>(gate_up.0, gate_up.1)?;
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<T>(ffn)? };
        let cfg = LaunchConfig {
            grid_dim: (blocks(ffn, 256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let ffn32 = ffn as u32;
        launch!(dev, "swiglu", dtype, cfg, &input, &out, &ffn32);
        Ok((out, Shape::from((1, ffn))))
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
