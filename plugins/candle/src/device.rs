//! Which devices this build can use, and opening the one a load asks for.
//!
//! `cuda:N` and `metal` exist only when the crate is compiled with the `cuda` / `metal`
//! feature AND the device really opens at run time; a default build is CPU only.

use crate::error::Result;
use candle_core::Device;
use llmlocal_plugin_api::PluginError;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};

/// Keeps the calling thread's current CUDA context and puts it back when dropped.
///
/// candle (cudarc) makes its device's context current on whatever thread runs its work, and
/// the host calls plugins on its shared worker threads. A context left current there outlives
/// the candle objects that set it (once they release it, the primary context is inactive), and
/// the next CUDA user on that thread trips over it: a server with both CUDA plugins loaded
/// crashed inside libggml-cuda while llama.cpp loaded a model on a thread where candle had
/// probed the GPU. So every entry point that may touch CUDA leaves the thread as it found it.
#[must_use = "the context is put back when this is dropped"]
pub struct ThreadContext {
    #[cfg(feature = "cuda")]
    saved: Option<candle_core::cuda_backend::cudarc::driver::sys::CUcontext>,
}

impl ThreadContext {
    #[cfg(feature = "cuda")]
    pub fn keep() -> Self {
        use candle_core::cuda_backend::cudarc::driver::result::ctx;
        // Fails only when the driver is not initialised: then there is nothing to put back
        // but "no context" (null), which restoring sets.
        let saved = ctx::get_current()
            .ok()
            .map(|current| current.unwrap_or(std::ptr::null_mut()));
        ThreadContext { saved }
    }

    #[cfg(not(feature = "cuda"))]
    pub fn keep() -> Self {
        ThreadContext {}
    }
}

impl Drop for ThreadContext {
    fn drop(&mut self) {
        #[cfg(feature = "cuda")]
        if let Some(saved) = self.saved {
            use candle_core::cuda_backend::cudarc::driver::result::ctx;
            // SAFETY: `saved` is what this thread had current (or null, meaning none), so
            // making it current again is what the thread's other users expect.
            let _ = unsafe { ctx::set_current(saved) };
        }
    }
}

/// A value whose drop (freeing device memory makes candle's context current) runs under a
/// [`ThreadContext`], so dropping a model or a generation also leaves the thread as it was.
pub struct KeepsContext<T>(ManuallyDrop<T>);

impl<T> KeepsContext<T> {
    pub fn new(value: T) -> Self {
        KeepsContext(ManuallyDrop::new(value))
    }
}

impl<T> Deref for KeepsContext<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for KeepsContext<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T> Drop for KeepsContext<T> {
    fn drop(&mut self) {
        let _kept = ThreadContext::keep();
        // SAFETY: dropped exactly once, here, and never used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.0) };
    }
}

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
    let _kept = ThreadContext::keep();
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
    Device::new_cuda(ordinal)
        .map(|d| (d, format!("cuda:{ordinal}")))
        .map_err(|e| PluginError::invalid_request(format!("cannot open cuda:{ordinal}: {e}")))
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
