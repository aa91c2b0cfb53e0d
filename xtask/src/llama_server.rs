//! llama-server, built once from a pinned llama.cpp source: the one vendored in the
//! `llama-cpp-python` source package (which includes `tools/server`; the llama-cpp-sys-2
//! crate's copy does not). Downloaded with pip from PyPI, checked against its sha256, built
//! with cmake into target/llama-server/, with native CPU flags off as our plugin's llama.cpp
//! is built, so both run the same kernels.

use crate::{
    process::{run, shown},
    workspace::Workspace,
};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The pinned source package and its sha256 (PyPI's).
const PACKAGE: &str = "llama_cpp_python";
const VERSION: &str = "0.3.36";
const SHA256: &str = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e";

/// The llama-server binary, built first if it is not there.
pub fn ensure(ws: &Workspace) -> Result<PathBuf> {
    let dir = ws.target.join("llama-server");
    let binary = dir.join("build").join("bin").join("llama-server");
    if binary.is_file() {
        return Ok(binary);
    }
    let source = unpack(&dir, &download(&dir)?)?;
    let build = dir.join("build");
    let mut configure = Command::new("cmake");
    configure
        .arg("-S")
        .arg(&source)
        .arg("-B")
        .arg(&build)
        .args([
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_BUILD_SERVER=ON",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_OPENSSL=OFF",
            "-DGGML_NATIVE=OFF",
            "-DBUILD_SHARED_LIBS=OFF",
        ]);
    run(&mut configure, "configuring llama-server (cmake)")?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut compile = Command::new("cmake");
    compile
        .arg("--build")
        .arg(&build)
        .args(["--target", "llama-server", "-j", &jobs.to_string()]);
    println!("building llama-server {VERSION} (several minutes on 2 cores)");
    run(&mut compile, "building llama-server")?;
    if !binary.is_file() {
        bail!("the build did not produce {}", binary.display());
    }
    Ok(binary)
}

/// The source package, downloaded once and checked.
fn download(dir: &Path) -> Result<PathBuf> {
    let archive = dir.join(format!("{PACKAGE}-{VERSION}.tar.gz"));
    if !archive.is_file() {
        std::fs::create_dir_all(dir)?;
        let mut pip = Command::new("python3");
        pip.args(["-m", "pip", "download", "--no-binary", ":all:", "--no-deps"])
            .arg(format!("llama-cpp-python=={VERSION}"))
            .arg("-d")
            .arg(dir);
        run(&mut pip, "downloading the llama-cpp-python source package")
            .with_context(|| format!("needs pip and PyPI: {}", shown(&pip)))?;
    }
    let bytes = std::fs::read(&archive).with_context(|| format!("read {}", archive.display()))?;
    let digest = format!("{:x}", Sha256::digest(&bytes));
    if digest != SHA256 {
        std::fs::remove_file(&archive)?;
        bail!(
            "{} has sha256 {digest}, not the pinned {SHA256}; removed it, run again",
            archive.display()
        );
    }
    Ok(archive)
}

/// The vendored llama.cpp folder of the unpacked source package.
fn unpack(dir: &Path, archive: &Path) -> Result<PathBuf> {
    let source = dir
        .join(format!("{PACKAGE}-{VERSION}"))
        .join("vendor")
        .join("llama.cpp");
    if !source.join("tools").join("server").is_dir() {
        let mut tar = Command::new("tar");
        tar.arg("xzf").arg(archive).arg("-C").arg(dir);
        run(&mut tar, "unpacking the llama-cpp-python source package")?;
    }
    if !source.join("tools").join("server").is_dir() {
        bail!("{} has no tools/server", source.display());
    }
    Ok(source)
}
