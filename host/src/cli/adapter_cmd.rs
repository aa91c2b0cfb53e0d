//! `llmlocal adapter pull|list|rm`: the LoRA adapter cache from the command line. The work is
//! in [`crate::adapters::cli`]; this file is only the clap surface.

use crate::{
    adapters::{cli, AdapterConfig, AdapterManager},
    models::{ManagerConfig, ModelManager},
};
use anyhow::Context as _;
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum AdapterCommand {
    /// Fetch an adapter: `gh:OWNER/REPO@TAG/ASSET`, `hf:ORG/REPO[@REV][/FILE]` or a local path.
    Pull {
        spec: String,
        /// Check it against this base model (a GGUF file or a Hugging Face folder).
        #[arg(long, value_name = "MODEL")]
        base: Option<PathBuf>,
    },
    /// List the cached adapters.
    List,
    /// Delete cached adapters: `gh:OWNER/REPO[@TAG[/ASSET]]`.
    Rm { what: String },
    /// Convert a PEFT adapter folder to a GGUF LoRA file (what llama.cpp reads).
    Convert {
        /// The PEFT folder (adapter_config.json + adapter_model.safetensors).
        peft: PathBuf,
        /// The base model it is for (a GGUF file or a Hugging Face folder).
        #[arg(long, value_name = "MODEL")]
        base: PathBuf,
        /// Where to write the GGUF LoRA.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

pub fn run(command: &AdapterCommand) -> anyhow::Result<()> {
    let manager = AdapterManager::new(AdapterConfig::from_env())?
        .with_model_manager(ModelManager::new(ManagerConfig::from_env()?)?);
    let mut out = std::io::stdout();
    match command {
        AdapterCommand::Pull { spec, base } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(cli::pull(&manager, spec, base.as_deref(), &mut out))?;
        }
        AdapterCommand::List => {
            cli::list(&manager, &mut out)?;
        }
        AdapterCommand::Rm { what } => {
            cli::rm(&manager, what, &mut out)?;
        }
        AdapterCommand::Convert {
            peft,
            base,
            out: file,
        } => {
            cli::convert(peft, base, file, &mut out)?;
        }
    }
    Ok(())
}
