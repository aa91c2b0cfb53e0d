//! Which devices this build can use, and opening the one a load asks for.
//!
//! `cuda:N` and `metal` exist only when the crate is compiled with the `cuda` / `metal`
//! feature AND the device really opens at run time; a default build is CPU only.

use crate::error::Result;
use candle_core::Device;
use llmlocal_plugin_api::PluginError;

/// The devices usable now, named as the host names them (`cpu`, `cuda:0`, `metal`).
pub fn available() -> Vec<String> {
    let mut devices = Vec::new();
    devices.extend(cuda_devices());
    if metal_opens() {
        devices.push("metal".to_string());
    }
    devices.push("cpu".to_string());
    devices
}

#[cfg(feature = "cuda")]
fn cuda_devices() -> Vec<String> {
    // Probe ordinals until one fails to open; a machine rarely has more than 16 GPUs.
    (0..16)
        .take_while(|&i| Device::new_cuda(i).is_ok())
        .map(|i| format!("cuda:{i}"))
        .collect()
}

#[cfg(not(feature = "cuda"))]
fn cuda_devices() -> Vec<String> {
    Vec::new()
}

#[cfg(feature = "metal")]
fn metal_opens() -> bool {
    Device::new_metal(0).is_ok()
}

#[cfg(not(feature = "metal"))]
fn metal_opens() -> bool {
    false
}

/// Opens the device named in a load request. `auto` (or empty) picks CUDA, then Metal, then
/// the CPU. Returns the device and its name for the model metadata.
pub fn open(name: &str) -> Result<(Device, String)> {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "" | "auto" => Ok(auto()),
        "cpu" => Ok((Device::Cpu, "cpu".to_string())),
        "metal" | "metal:0" => open_metal(),
        "cuda" => open_cuda(0),
        _ => match name.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => open_cuda(ordinal),
            _ => Err(PluginError::invalid_request(format!(
                "unknown device `{name}`: the candle backend knows cpu, cuda, cuda:N, metal and auto"
            ))),
        },
    }
}

fn auto() -> (Device, String) {
    if let Ok(found) = open_cuda(0) {
        return found;
    }
    if let Ok(found) = open_metal() {
        return found;
    }
    (Device::Cpu, "cpu".to_string())
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<(Device, String)> {
    let device = Device::new_cuda(ordinal)
        .map_err(|e| PluginError::invalid_request(format!("cannot open cuda:{ordinal}: {e}")))?;
    if let Device::Cuda(cuda) = &device {
        cheaper_ops(cuda);
    }
    Ok((device, format!("cuda:{ordinal}")))
}

/// Freed GPU memory the pool keeps for reuse. One token's temporaries are a few MiB even
/// for large models, a 512-token prompt's some 100 MiB at 1B; above this, freed memory (an
/// unloaded model's weights) goes back to the driver at the next synchronization, for other
/// models, plugins and processes.
#[cfg(feature = "cuda")]
const POOL_KEEP: u64 = 256 << 20;

/// Takes driver calls off every op, which at one token per step is where the time goes
/// (candle issues each op from the CPU; the GPU finishes a 1B model's token faster):
///
/// - Freed memory stays in the device's memory pool, up to [`POOL_KEEP`]. By default the
///   pool hands it all back to the driver at every stream synchronization, which reading
///   each token's result is, so every token's allocations had to map memory again.
/// - No CUDA events per allocation. cudarc creates two per buffer to order work across
///   streams, but only waits on them once a second stream exists (`new_stream`); candle
///   issues everything on the device's one stream, so they were created and destroyed for
///   nothing.
///
/// Both only change speed; a failure is logged and the device used as it is.
#[cfg(feature = "cuda")]
fn cheaper_ops(cuda: &candle_core::CudaDevice) {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let stream = cuda.cuda_stream();
    // SAFETY: this plugin never creates a second stream on the device (the condition under
    // which cudarc would use the events).
    unsafe { cuda.disable_event_tracking() };
    let mut keep = POOL_KEEP;
    // SAFETY: the device comes from a live context; the attribute takes a u64.
    let kept = unsafe {
        result::device::get_mem_pool(stream.context().cu_device()).and_then(|pool| {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut keep as *mut u64).cast(),
            )
        })
    };
    if let Err(e) = kept {
        tracing::warn!("cannot keep freed GPU memory in the pool: {e}");
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<(Device, String)> {
    Err(PluginError::invalid_request(
        "this build of the candle backend has no CUDA support (build it with the `cuda` feature)",
    ))
}

#[cfg(feature = "metal")]
fn open_metal() -> Result<(Device, String)> {
    Device::new_metal(0)
        .map(|d| (d, "metal".to_string()))
        .map_err(|e| PluginError::invalid_request(format!("cannot open the Metal device: {e}")))
}

#[cfg(not(feature = "metal"))]
fn open_metal() -> Result<(Device, String)> {
    Err(PluginError::invalid_request(
        "this build of the candle backend has no Metal support (build it with the `metal` feature)",
    ))
}
