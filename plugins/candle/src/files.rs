//! Which files a load request names: one GGUF file, or a Hugging Face folder (or its files).

use crate::error::{io_error, Result};
use crate::hf::weights::shards_from_index;
use llmlocal_plugin_api::PluginError;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A Hugging Face checkpoint.
#[derive(Debug, Clone)]
pub struct HfFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub weights: Vec<PathBuf>,
    pub tokenizer: Option<PathBuf>,
}

impl HfFiles {
    /// The folder's name, as a model name.
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub enum ModelFiles {
    Gguf(PathBuf),
    Hf(HfFiles),
}

const GGUF_MAGIC: &[u8; 4] = b"GGUF";

fn is_gguf(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| io_error(path, &e))?;
    Ok(file.read_exact(&mut magic).is_ok() && &magic == GGUF_MAGIC)
}

fn has_ext(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

pub fn resolve(paths: &[String]) -> Result<ModelFiles> {
    let paths: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
    let first = paths
        .first()
        .ok_or_else(|| PluginError::invalid_request("the load request names no model path"))?;
    for path in &paths {
        if !path.exists() {
            return Err(PluginError::not_found(format!(
                "model path {} does not exist",
                path.display()
            )));
        }
    }
    if paths.len() == 1 && first.is_dir() {
        return resolve_dir(first);
    }
    if paths.len() == 1 && (has_ext(first, "gguf") || is_gguf(first)?) {
        return Ok(ModelFiles::Gguf(first.clone()));
    }
    resolve_files(&paths)
}

fn resolve_dir(dir: &Path) -> Result<ModelFiles> {
    let config = dir.join("config.json");
    if config.is_file() {
        return Ok(ModelFiles::Hf(hf_folder(dir, config)?));
    }
    let ggufs: Vec<PathBuf> = list(dir)?
        .into_iter()
        .filter(|p| has_ext(p, "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(ModelFiles::Gguf(one.clone())),
        [] => Err(PluginError::unsupported_format(format!(
            "{} holds neither config.json (a Hugging Face folder) nor a .gguf file",
            dir.display()
        ))),
        _ => Err(PluginError::invalid_request(format!(
            "{} holds several .gguf files: name the one to load",
            dir.display()
        ))),
    }
}

fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_error(dir, &e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn hf_folder(dir: &Path, config: PathBuf) -> Result<HfFiles> {
    let index = dir.join("model.safetensors.index.json");
    let weights = if index.is_file() {
        shards_from_index(&index)?
    } else {
        let all: Vec<PathBuf> = list(dir)?
            .into_iter()
            .filter(|p| has_ext(p, "safetensors"))
            .filter(|p| !p.ends_with("adapter_model.safetensors"))
            .collect();
        all
    };
    if weights.is_empty() {
        return Err(PluginError::not_found(format!(
            "{} has a config.json but no .safetensors weights",
            dir.display()
        )));
    }
    let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
    Ok(HfFiles {
        dir: dir.to_path_buf(),
        config,
        weights,
        tokenizer,
    })
}

/// An explicit list of files: config.json, the weights (or their index), tokenizer.json.
fn resolve_files(paths: &[PathBuf]) -> Result<ModelFiles> {
    let named = |name: &str| {
        paths
            .iter()
            .find(|p| p.file_name().is_some_and(|n| n == name))
    };
    let dir = paths[0].parent().unwrap_or(Path::new(".")).to_path_buf();
    let config = named("config.json")
        .cloned()
        .or_else(|| Some(dir.join("config.json")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            PluginError::unsupported_format(
                "the model files include no config.json and are not one GGUF file",
            )
        })?;
    let mut weights: Vec<PathBuf> = match named("model.safetensors.index.json") {
        Some(index) => shards_from_index(index)?,
        None => paths
            .iter()
            .filter(|p| has_ext(p, "safetensors"))
            .cloned()
            .collect(),
    };
    if weights.is_empty() {
        return Err(PluginError::invalid_request(
            "the model files include no .safetensors weights",
        ));
    }
    weights.sort();
    weights.dedup();
    let tokenizer = named("tokenizer.json")
        .cloned()
        .or_else(|| Some(dir.join("tokenizer.json")).filter(|p| p.is_file()));
    Ok(ModelFiles::Hf(HfFiles {
        dir: config.parent().unwrap_or(Path::new(".")).to_path_buf(),
        config,
        weights,
        tokenizer,
    }))
}
