//! `cargo xtask build-plugins`: build every in-tree plugin (dev profile) and copy the real
//! backends to target/plugins, the test plugins to target/test-plugins.

use crate::{
    process::{cargo, run},
    workspace::{PluginKind, PluginPackage, Workspace},
};
use anyhow::{bail, Context, Result};
use std::{fs, path::PathBuf};

/// What one build-plugins run produced.
pub struct Built {
    /// Library copies in target/plugins.
    pub real: Vec<PathBuf>,
    /// Library copies in target/test-plugins.
    pub test: Vec<PathBuf>,
    /// Packages that did not build (their old copies were removed).
    pub failed: Vec<String>,
}

pub fn command(ws: &Workspace) -> Result<()> {
    let built = build(ws)?;
    if !built.failed.is_empty() {
        bail!("these plugins did not build: {}", built.failed.join(", "));
    }
    Ok(())
}

/// Builds all plugins; a plugin that fails to build is listed in `failed`, not an error.
pub fn build(ws: &Workspace) -> Result<Built> {
    let packages = ws.plugin_packages();
    if packages.is_empty() {
        bail!("no plugin packages found under plugins/ or tests/plugins/");
    }
    let failed = compile(ws, &packages);
    let mut built = Built {
        real: Vec::new(),
        test: Vec::new(),
        failed,
    };
    for p in &packages {
        let dir = match p.kind {
            PluginKind::Real => ws.plugins_dir(),
            PluginKind::Test => ws.test_plugins_dir(),
        };
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let copy = dir.join(p.file_name());
        // Never leave a stale library behind: it would be tested instead of the new code.
        if copy.exists() {
            fs::remove_file(&copy).with_context(|| format!("removing {}", copy.display()))?;
        }
        if built.failed.contains(&p.package) {
            continue;
        }
        let source = ws.debug_dir().join(p.file_name());
        if !source.exists() {
            println!("{} built but {} is missing", p.package, source.display());
            built.failed.push(p.package.clone());
            continue;
        }
        fs::copy(&source, &copy)
            .with_context(|| format!("copying {} to {}", source.display(), copy.display()))?;
        match p.kind {
            PluginKind::Real => built.real.push(copy),
            PluginKind::Test => built.test.push(copy),
        }
    }
    report(ws, &built);
    Ok(built)
}

/// One `cargo build` for all; if that fails, one per package to find which ones fail.
fn compile(ws: &Workspace, packages: &[PluginPackage]) -> Vec<String> {
    let mut all = cargo(&ws.root);
    all.arg("build");
    for p in packages {
        all.args(["-p", &p.package]);
    }
    if run(&mut all, "building the plugins").is_ok() {
        return Vec::new();
    }
    println!("building the plugins one by one to find the failing ones");
    packages
        .iter()
        .filter(|p| {
            let mut one = cargo(&ws.root);
            one.args(["build", "-p", &p.package]);
            run(&mut one, &format!("building {}", p.package)).is_err()
        })
        .map(|p| p.package.clone())
        .collect()
}

fn report(ws: &Workspace, built: &Built) {
    println!("backends in {}:", ws.plugins_dir().display());
    for path in &built.real {
        println!("  {}", path.display());
    }
    println!("test plugins in {}:", ws.test_plugins_dir().display());
    for path in &built.test {
        println!("  {}", path.display());
    }
    for package in &built.failed {
        println!("  NOT BUILT: {package}");
    }
}
