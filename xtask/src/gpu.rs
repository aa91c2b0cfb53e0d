//! `cargo xtask gpu-build`: everything the GPU machine needs, built here and packed into
//! `.gpu/` (git-ignored) for the device tool to carry. See docs/gpu.md.
//!
//! The GPU machine has CUDA, cmake and ninja but no Rust; this machine has Rust but no GPU.
//! So:
//! - llama.cpp plugin: built here with llama-cpp-2's `dynamic-link` feature (libllama and
//!   libggml as shared libraries, CPU only). The vendored llama.cpp source of that same build
//!   is packed; `scripts/gpu/device.sh` compiles it there with `GGML_CUDA=ON` and puts those
//!   libraries first on the loader path. Same source, same C API, so the plugin binary runs
//!   unchanged on the CUDA libraries. (Debian's CUDA 11.8 would allow a direct `--features
//!   cuda` build here, but its cuBLAS 11 does not exist on the CUDA 13 machine, and a static
//!   cuBLAS is far over the 64 MiB the device tool carries.)
//! - candle plugin: `--features cuda` needs nvcc at build time (candle-kernels compiles its
//!   kernels to PTX, cudarc links cuBLAS/cuRAND/NVRTC). NVIDIA publishes the CUDA toolkit as
//!   pip wheels; we fetch CUDA 13.0's (the GPU machine's driver 580 runs PTX up to 13.0) into
//!   target/cuda-toolkit. At run time the GPU machine's own cuBLAS (PyTorch's) is used.
//! - The host binaries (`gpu-bench`, `conformance`, `llmlocal`, and the `download_bench`
//!   example, for download speed on that machine's CPU) are plain CPU binaries, built
//!   with `--release` as users run `llmlocal`: the dev profile keeps our own crates at
//!   opt-level 1 with overflow checks, and the HTTP path measured there (request parsing, the
//!   engine, the streamed frames) is our code.

use crate::{
    process::{cargo, run},
    workspace::Workspace,
};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

/// CUDA 13.0 wheels: compiler, headers, and the libraries cudarc links.
const CUDA_WHEELS: [&str; 8] = [
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-cublas==13.0.2.14",
    "nvidia-curand==10.4.5.25",
];

/// Unused GPU/accelerator back-ends of ggml left out of the packed source (size only).
const LLAMA_EXCLUDES: [&str; 12] = [
    "ggml/src/ggml-vulkan",
    "ggml/src/ggml-sycl",
    "ggml/src/ggml-opencl",
    "ggml/src/ggml-metal",
    "ggml/src/ggml-hexagon",
    "ggml/src/ggml-et",
    "ggml/src/ggml-openvino",
    "ggml/src/ggml-webgpu",
    "ggml/src/ggml-cann",
    "ggml/src/ggml-virtgpu",
    "ggml/src/ggml-musa",
    "ggml/src/ggml-zdnn",
];

pub struct Options {
    /// A CUDA toolkit to use instead of fetching the wheels.
    pub cuda_home: Option<PathBuf>,
    /// Skip the candle CUDA build (it needs the toolkit and takes the longest).
    pub no_candle: bool,
}

pub fn command(ws: &Workspace, options: &Options) -> Result<()> {
    let bundle = ws.root.join(".gpu");
    if bundle.exists() {
        fs::remove_dir_all(&bundle).with_context(|| format!("removing {}", bundle.display()))?;
    }
    for dir in ["bin", "plugins", "models"] {
        fs::create_dir_all(bundle.join(dir))?;
    }
    let gpu_target = ws.target.join("gpu");
    build_llama_plugin(ws, &gpu_target)?;
    copy_stripped(
        &gpu_target.join("debug/libllmlocal_backend_llama_cpp.so"),
        &bundle.join("plugins"),
    )?;
    if !options.no_candle {
        let toolkit = match &options.cuda_home {
            Some(home) => home.clone(),
            None => fetch_toolkit(&ws.target.join("cuda-toolkit"))?,
        };
        build_candle_plugin(ws, &gpu_target, &toolkit)?;
        copy_stripped(
            &gpu_target.join("debug/libllmlocal_backend_candle.so"),
            &bundle.join("plugins"),
        )?;
    }
    build_host_binaries(ws)?;
    for bin in [
        "gpu-bench",
        "conformance",
        "llmlocal",
        "examples/download_bench",
    ] {
        copy_stripped(&ws.release_dir().join(bin), &bundle.join("bin"))?;
    }
    copy_stripped(&build_agreement_test(ws)?, &bundle.join("bin"))?;
    pack_llama_source(&llama_source(ws)?, &bundle.join("llama.cpp.tar.gz"))?;
    copy_models(ws, &bundle.join("models"))?;
    let size = dir_size(&bundle)?;
    println!(
        "\n.gpu/ holds {:.1} MiB (the device tool carries at most 64 MiB).\n\
         On the GPU machine run, from the repo root with `.gpu` carried:\n  \
         bash scripts/gpu/device.sh build   (then)   bash scripts/gpu/device.sh bench",
        size as f64 / (1u64 << 20) as f64
    );
    if size > 60 << 20 {
        bail!(".gpu/ is over 60 MiB: leave something out");
    }
    Ok(())
}

/// `--config` values for the plugin builds (in their own target folder, so the shared dev
/// build keeps its settings): our plugin crates optimised as fully as their dependencies
/// already are. At opt-level 1 the per-token CPU work that is ours (sampling over a 128k
/// vocabulary, the candle network's op calls) is slower than a release build would have it,
/// and at one token per step on a GPU that CPU work shows in the speed.
const PLUGIN_OPT: [&str; 6] = [
    "--config",
    "profile.dev.package.llmlocal-backend-llama-cpp.opt-level=3",
    "--config",
    "profile.dev.package.llmlocal-backend-candle.opt-level=3",
    "--config",
    "profile.dev.package.llmlocal-plugin-api.opt-level=3",
];

fn build_llama_plugin(ws: &Workspace, target: &Path) -> Result<()> {
    run(
        cargo(&ws.root)
            .env("CARGO_TARGET_DIR", target)
            .args(PLUGIN_OPT)
            .args(["build", "-p", "llmlocal-backend-llama-cpp"])
            .args(["--features", "dynamic-link"]),
        "building the llama.cpp plugin against shared libllama",
    )
}

fn build_candle_plugin(ws: &Workspace, target: &Path, toolkit: &Path) -> Result<()> {
    let nvcc_dir = toolkit.join("bin");
    let path = env::join_paths(
        [nvcc_dir, toolkit.join("nvvm/bin")]
            .into_iter()
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;
    let libs = env::join_paths([toolkit.join("lib"), toolkit.join("lib/stubs")])?;
    run(
        cargo(&ws.root)
            .env("CARGO_TARGET_DIR", target)
            .env("CUDA_HOME", toolkit)
            .env("PATH", path)
            .env("LIBRARY_PATH", &libs)
            .env("LD_LIBRARY_PATH", &libs)
            // Hopper (H100/H200); there is no GPU here to detect it from.
            .env("CUDA_COMPUTE_CAP", "90")
            .args(PLUGIN_OPT)
            .args([
                "rustc",
                "-p",
                "llmlocal-backend-candle",
                "--features",
                "cuda",
                "--lib",
            ])
            // The libcuda stub has no symbols, so `--as-needed` would drop it and the plugin
            // would not name libcuda.so.1: its cu* symbols would then stay unresolved at load.
            .args([
                "--",
                "-C",
                "link-args=-Wl,--push-state,--no-as-needed,-lcuda,--pop-state",
            ]),
        "building the candle plugin with CUDA",
    )
}

fn build_host_binaries(ws: &Workspace) -> Result<()> {
    run(
        cargo(&ws.root).args([
            "build",
            "--release",
            "-p",
            "llmlocal-bench",
            "--bin",
            "gpu-bench",
            "-p",
            "llmlocal-conformance",
            "--bin",
            "conformance",
            "-p",
            "llmlocal",
            "--bin",
            "llmlocal",
            "--example",
            "download_bench",
        ]),
        "building gpu-bench, conformance, llmlocal and download_bench",
    )
}

/// The family agreement test (host/tests/agreement.rs) as a binary of its own, renamed
/// `agreement`: on the GPU machine it runs llama.cpp and candle on CUDA
/// (`LLMLOCAL_AGREEMENT_DEVICE=cuda`), writing the family fixtures there itself. Built in the
/// dev profile, as CI runs it (its dependencies are optimised there too).
fn build_agreement_test(ws: &Workspace) -> Result<PathBuf> {
    let output = cargo(&ws.root)
        .args(["test", "-p", "llmlocal", "--test", "agreement", "--no-run"])
        .args(["--message-format", "json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("building the agreement test")?;
    if !output.status.success() {
        bail!("building the agreement test failed");
    }
    let executable = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["target"]["name"] == "agreement")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo named no agreement test executable")?;
    let renamed = ws.target.join("gpu").join("agreement");
    fs::copy(&executable, &renamed).with_context(|| format!("copying {}", executable.display()))?;
    Ok(renamed)
}

/// Downloads the CUDA 13.0 wheels with pip and unpacks them into `dir`; returns the toolkit
/// root (`dir/nvidia/cu13`), with the unversioned library links and the libcuda stub the
/// linker wants.
fn fetch_toolkit(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("nvidia/cu13");
    if root.join("bin/nvcc").is_file() && root.join("lib/stubs/libcuda.so").is_file() {
        return Ok(root);
    }
    let wheels = dir.join("wheels");
    fs::create_dir_all(&wheels)?;
    run(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args(["--platform", "manylinux_2_27_x86_64", "--platform"])
            .args(["manylinux2014_x86_64", "--python-version", "3.11", "-d"])
            .arg(&wheels)
            .args(CUDA_WHEELS),
        "downloading the CUDA 13.0 toolkit wheels",
    )?;
    for wheel in fs::read_dir(&wheels)? {
        let wheel = wheel?.path();
        run(
            Command::new("python3")
                .args(["-m", "zipfile", "-e"])
                .arg(&wheel)
                .arg(dir),
            "unpacking a CUDA wheel",
        )?;
    }
    // Wheels lose the executable bit.
    for tool in [
        "bin/nvcc",
        "bin/ptxas",
        "bin/fatbinary",
        "bin/nvlink",
        "bin/cudafe++",
    ] {
        set_executable(&root.join(tool))?;
    }
    set_executable(&root.join("nvvm/bin/cicc"))?;
    link_unversioned(&root.join("lib"))?;
    write_libcuda_stub(&root.join("lib/stubs"))?;
    Ok(root)
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if path.is_file() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// `libX.so -> libX.so.N` for the libraries cudarc links by name.
fn link_unversioned(lib: &Path) -> Result<()> {
    for (name, versioned) in [
        ("libcublas.so", "libcublas.so.13"),
        ("libcublasLt.so", "libcublasLt.so.13"),
        ("libcudart.so", "libcudart.so.13"),
        ("libnvrtc.so", "libnvrtc.so.13"),
        ("libcurand.so", "libcurand.so.10"),
    ] {
        let link = lib.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(versioned, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    Ok(())
}

/// libcuda.so comes with the driver, not the toolkit wheels: a stub with its soname lets the
/// plugin link; the GPU machine's real libcuda.so.1 is loaded at run time.
fn write_libcuda_stub(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    let source = dir.join("stub.c");
    fs::write(&source, "void llmlocal_libcuda_stub(void) {}\n")?;
    run(
        Command::new("cc")
            .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
            .arg(dir.join("libcuda.so"))
            .arg(&source),
        "writing the libcuda link stub",
    )
}

/// The llama.cpp source llama-cpp-sys-2 vendors (the version in Cargo.lock).
fn llama_source(ws: &Workspace) -> Result<PathBuf> {
    let output = cargo(&ws.root)
        .args(["metadata", "--format-version", "1"])
        .output()
        .context("running `cargo metadata`")?;
    let metadata: Value = serde_json::from_slice(&output.stdout)?;
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "llama-cpp-sys-2")
        .and_then(|p| p["manifest_path"].as_str())
        .context("llama-cpp-sys-2 is not in the dependency graph")?;
    let source = Path::new(manifest)
        .parent()
        .map(|dir| dir.join("llama.cpp"))
        .context("llama-cpp-sys-2's manifest has no folder")?;
    if !source.join("CMakeLists.txt").is_file() {
        bail!("no llama.cpp source at {}", source.display());
    }
    Ok(source)
}

fn pack_llama_source(source: &Path, out: &Path) -> Result<()> {
    let parent = source.parent().context("llama.cpp source has no parent")?;
    let mut tar = Command::new("tar");
    tar.arg("-czf").arg(out).arg("-C").arg(parent);
    for excluded in LLAMA_EXCLUDES {
        tar.arg(format!("--exclude=llama.cpp/{excluded}"));
    }
    run(tar.arg("llama.cpp"), "packing the llama.cpp source")
}

/// The fixture models and stories260K, for conformance and agreement on the GPU.
fn copy_models(ws: &Workspace, dest: &Path) -> Result<()> {
    let fixtures = ws.target.join("fixtures");
    if !fixtures.join("tiny-llama-f32.gguf").is_file() {
        bail!(
            "no fixtures in {}: run `cargo xtask fixtures`",
            fixtures.display()
        );
    }
    for name in ["tiny-llama-f32.gguf", "tiny-llama-q8_0.gguf"] {
        fs::copy(fixtures.join(name), dest.join(name))?;
    }
    copy_dir(&fixtures.join("tiny-llama"), &dest.join("tiny-llama"))?;
    let stories = ws.shared_models().join("stories260K");
    fs::copy(
        stories.join("stories260K.gguf"),
        dest.join("stories260K.gguf"),
    )
    .with_context(|| format!("copying stories260K from {}", stories.display()))?;
    copy_dir(&stories.join("hf"), &dest.join("stories260K-hf"))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Puts a binary or library into `dir` without its debug symbols and xz-compressed (`NAME.xz`):
/// the CUDA kernels make the candle plugin 65 MB, and the device tool carries 64 MiB in all.
/// `scripts/gpu/device.sh` unpacks them.
fn copy_stripped(file: &Path, dir: &Path) -> Result<()> {
    let name = file.file_name().context("no file name")?;
    let stripped = dir.join(name);
    run(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&stripped)
            .arg(file),
        "stripping",
    )?;
    run(
        Command::new("xz").args(["-T0", "-6", "-f"]).arg(&stripped),
        "compressing",
    )
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
