//! `llmlocal pull`, `llmlocal list`, `llmlocal rm`: the model cache from the command line.
//! The work is in [`crate::models::cli`]; this file is only the clap surface.

use crate::models::{cli, ManagerConfig};
use anyhow::Context as _;

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// A preset name (`qwen3:0.6b`; `llmlocal presets` lists them), `org/repo`,
    /// `org/repo:Q4_K_M`, `org/repo@revision`, or `hf://org/repo/file.gguf`.
    pub spec: String,
    /// One file of the repo to fetch (instead of a quantization tag).
    #[arg(long, value_name = "NAME")]
    pub file: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The repo to delete from the cache (`org/repo`).
    pub repo: String,
}

pub fn pull(args: &PullArgs) -> anyhow::Result<()> {
    let config = ManagerConfig::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let resolved = runtime.block_on(cli::pull(&config, &args.spec, args.file.as_deref()))?;
    println!("{}", resolved.path.display());
    Ok(())
}

pub fn list() -> anyhow::Result<()> {
    Ok(cli::list(&ManagerConfig::from_env()?)?)
}

pub fn rm(args: &RmArgs) -> anyhow::Result<()> {
    cli::rm(&ManagerConfig::from_env()?, &args.repo)?;
    Ok(())
}
