//! With the `cuda` feature, compiles `kernels/decode.cu` to PTX (loaded at run time by
//! `src/decode_kernels.rs`). Without it, does nothing: a default build needs no CUDA toolkit.
//!
//! nvcc comes from `CUDA_HOME`/`CUDA_PATH` or the PATH, as for candle-kernels; the PTX
//! targets `CUDA_COMPUTE_CAP` (e.g. 90 for Hopper, also what candle-kernels reads), default
//! 80, and the driver JIT-compiles it for the GPU it runs on.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels/decode.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(env::var_os)
        .map(|home| PathBuf::from(home).join("bin/nvcc"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".to_string());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("decode.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
        .arg(&out)
        .arg("kernels/decode.cu")
        .status()
        .unwrap_or_else(|e| panic!("cannot run {} (set CUDA_HOME): {e}", nvcc.display()));
    assert!(status.success(), "nvcc failed to compile kernels/decode.cu");
}
