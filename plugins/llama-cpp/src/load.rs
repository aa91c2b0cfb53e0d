//! Loading a GGUF model: input checks, llama.cpp load with error diagnosis, settings and the
//! memory estimate, then the decode thread.

use crate::{
    adapters::AdapterStore,
    engine::{Engine, EngineConfig},
    gguf::{self, GgufError, GgufHeader},
    kv::KvOptions,
    model::LlamaCppModel,
    runtime::{self, Device},
};
use llama_cpp_2::model::{params::LlamaModelParams, LlamaModel};
use llmlocal_plugin_api::{LoadRequest, PluginError};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

/// Context length used when the request says 0 and the model was trained with more.
const DEFAULT_CONTEXT: u32 = 4096;
const DEFAULT_PARALLEL: u32 = 4;
const DEFAULT_BATCH: u32 = 512;

/// Loads the model the request names.
pub fn load(request: &LoadRequest) -> Result<LlamaCppModel, PluginError> {
    let started = Instant::now();
    let path = model_path(request)?;
    let header = check_file(&path)?;
    runtime::backend()?;
    let device = runtime::select_device(&request.device)?;
    let source = ModelSource {
        path,
        device,
        gpu_layers: request.gpu_layers,
    };
    let mut model = source.open(&header)?;
    let adapters = AdapterStore::load(&mut model, &request.adapters)?;
    let config = engine_config(&model, request)?;
    config.kv.check_head_size(head_size(&model))?;
    check_memory(&model, &config, &source.device)?;
    let shape = ModelShape::of(&model);
    let model = Arc::new(std::sync::RwLock::new(Some(model)));
    let load_set = adapters.load_set().clone();
    let name = header
        .name
        .clone()
        .unwrap_or_else(|| file_stem(&source.path));
    let device = source.device.clone();
    let engine = Engine::start(
        Arc::clone(&model),
        config.clone(),
        Reload { source, shape },
        adapters,
    )?;
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    LlamaCppModel::new(crate::model::Parts {
        model,
        engine,
        config,
        device,
        name,
        load_ms,
        load_set,
    })
}

/// What loading the model's weights needs, kept so that the decode thread can load them
/// again: llama.cpp frees LoRA adapters only with their model, so freeing adapters read at
/// run time means reloading the model ([`crate::engine`]).
#[derive(Debug, Clone)]
pub struct ModelSource {
    pub path: PathBuf,
    pub device: Device,
    pub gpu_layers: i32,
}

impl ModelSource {
    /// Loads the weights (the header was checked already).
    fn open(&self, header: &GgufHeader) -> Result<LlamaModel, PluginError> {
        let params = model_params(&self.device, self.gpu_layers);
        LlamaModel::load_from_file(runtime::backend()?, &self.path, &params)
            .map_err(|e| diagnose_load_failure(&self.path, header, &e.to_string()))
    }

    /// Checks the file again (it may have been deleted or replaced since the load) and loads
    /// the weights with the same parameters as the first load.
    pub fn reload(&self) -> Result<LlamaModel, PluginError> {
        let header = check_file(&self.path)?;
        self.open(&header)
    }
}

/// The sizes callers rely on after a reload (token ids are checked against the vocabulary
/// size taken at load): a file replaced by a different model under the same path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    pub n_vocab: i32,
    pub n_embd: i32,
    pub n_layer: u32,
    pub n_params: u64,
}

impl ModelShape {
    pub fn of(model: &LlamaModel) -> Self {
        ModelShape {
            n_vocab: model.n_vocab(),
            n_embd: model.n_embd(),
            n_layer: model.n_layer(),
            n_params: model.n_params(),
        }
    }
}

/// Everything the decode thread needs to reload the model.
#[derive(Debug, Clone)]
pub struct Reload {
    pub source: ModelSource,
    /// The shape at load; a reloaded model must have the same.
    pub shape: ModelShape,
}

fn model_path(request: &LoadRequest) -> Result<PathBuf, PluginError> {
    match request.model_paths.as_slice() {
        [] => Err(PluginError::invalid_request("no model path given")),
        [one] => Ok(PathBuf::from(one.as_str())),
        many => {
            // A Hugging Face file list may come with a single GGUF among other files.
            let ggufs: Vec<_> = many
                .iter()
                .filter(|p| p.as_str().to_ascii_lowercase().ends_with(".gguf"))
                .collect();
            match ggufs.as_slice() {
                [one] => Ok(PathBuf::from(one.as_str())),
                _ => Err(PluginError::unsupported_format(
                    "the llama-cpp backend loads exactly one .gguf file (split GGUFs: pass the \
                     first part only)",
                )),
            }
        }
    }
}

/// Existence and format checks before llama.cpp sees the path (llama-cpp-2 debug-asserts
/// that the path exists, and llama.cpp reports every failure as a null model).
fn check_file(path: &Path) -> Result<GgufHeader, PluginError> {
    let shown = path.display();
    if !path.exists() {
        return Err(PluginError::not_found(format!(
            "model file '{shown}' does not exist"
        )));
    }
    if path.is_dir() {
        return Err(PluginError::unsupported_format(format!(
            "'{shown}' is a folder; the llama-cpp backend reads a single .gguf file"
        )));
    }
    if path.to_str().is_none() {
        return Err(PluginError::invalid_request(format!(
            "model path '{shown}' is not valid UTF-8, which llama.cpp needs"
        )));
    }
    gguf::read_header(path).map_err(|e| match e {
        GgufError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            PluginError::not_found(format!("model file '{shown}' does not exist"))
        }
        other => PluginError::unsupported_format(format!("'{shown}': {other}")),
    })
}

fn model_params(device: &Device, gpu_layers: i32) -> LlamaModelParams {
    let params = LlamaModelParams::default().with_use_mmap(true);
    match device.ggml_index {
        None => params.with_n_gpu_layers(0),
        Some(index) => {
            let layers = u32::try_from(gpu_layers).unwrap_or(u32::MAX); // -1 = all
            let params = params.with_n_gpu_layers(layers);
            match params.with_devices(&[index]) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("cannot pin the model to device {}: {e}", device.name);
                    LlamaModelParams::default()
                        .with_use_mmap(true)
                        .with_n_gpu_layers(layers)
                }
            }
        }
    }
}

/// llama.cpp failed although the header is fine: either it does not implement the
/// architecture, or the tensors do not match it. A vocabulary-only load (which reads the
/// architecture and hyper-parameters but no tensors) tells the two apart.
fn diagnose_load_failure(path: &Path, header: &GgufHeader, error: &str) -> PluginError {
    let shown = path.display();
    let arch = header.architecture.as_deref().unwrap_or("<none>");
    let probe = LlamaModelParams::default().with_vocab_only(true);
    let vocab_loads = runtime::backend()
        .ok()
        .map(|backend| LlamaModel::load_from_file(backend, path, &probe).is_ok())
        .unwrap_or(false);
    if vocab_loads {
        PluginError::unsupported_format(format!(
            "llama.cpp could not load the tensors of '{shown}' ({error}): the file is corrupt or \
             does not match its architecture '{arch}'"
        ))
    } else {
        PluginError::unsupported_architecture(format!(
            "llama.cpp ({}) cannot load architecture '{arch}' of '{shown}' ({error})",
            env!("CARGO_PKG_NAME")
        ))
    }
}

fn engine_config(model: &LlamaModel, request: &LoadRequest) -> Result<EngineConfig, PluginError> {
    let train = model.n_ctx_train();
    let context_per_sequence = match request.context_length {
        0 if train > 0 => train.min(DEFAULT_CONTEXT),
        0 => DEFAULT_CONTEXT,
        n => n,
    };
    let parallel = if request.parallel == 0 {
        DEFAULT_PARALLEL
    } else {
        request.parallel
    };
    if context_per_sequence.checked_mul(parallel).is_none() {
        return Err(PluginError::invalid_request(format!(
            "context length {context_per_sequence} x {parallel} parallel sequences is more than \
             llama.cpp's context size can hold"
        )));
    }
    let threads = if request.threads == 0 {
        default_threads()
    } else {
        request.threads as usize
    };
    let batch_size = if request.batch_size == 0 {
        DEFAULT_BATCH
    } else {
        request.batch_size
    };
    Ok(EngineConfig {
        context_per_sequence,
        parallel,
        batch_size,
        threads: i32::try_from(threads).unwrap_or(i32::MAX),
        kv: KvOptions::from_extensions(&request.extensions)?,
        ram_cache_bytes: crate::ram_cache::cap_from_extensions(&request.extensions)?,
    })
}

/// One thread per physical core, as llama.cpp's own tools default to: SMT siblings share one
/// core's vector units, so a second thread per core adds little to matrix work, and ggml's
/// threads meet at a barrier for every op, so a thread that must share its core with the
/// server's I/O or a sibling stalls all of them. Never more than the CPUs this process may use.
fn default_threads() -> usize {
    let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
    num_cpus::get_physical().clamp(1, usable)
}

/// Channels of one attention head.
fn head_size(model: &LlamaModel) -> u64 {
    let n_embd = u64::try_from(model.n_embd()).unwrap_or(0);
    n_embd / u64::from(model.n_head().max(1))
}

/// Bytes of KV cache: K and V, for every layer, cell and KV channel, in the configured types.
pub fn kv_cache_bytes(model: &LlamaModel, config: &EngineConfig) -> u64 {
    let n_head = u64::from(model.n_head().max(1));
    let n_embd = u64::try_from(model.n_embd()).unwrap_or(0);
    let n_embd_kv = n_embd / n_head * u64::from(model.n_head_kv());
    let cells = u64::from(config.context_per_sequence) * u64::from(config.parallel);
    config
        .kv
        .bytes(u64::from(model.n_layer()), cells, n_embd_kv)
}

/// Refuses a context whose KV cache cannot fit in available memory before llama.cpp tries to
/// allocate it (an allocation that size can get the process killed instead of failing).
fn check_memory(
    model: &LlamaModel,
    config: &EngineConfig,
    device: &Device,
) -> Result<(), PluginError> {
    let needed = kv_cache_bytes(model, config);
    let available = if device.is_gpu() {
        gpu_free_memory(device)
    } else {
        available_ram()
    };
    let Some(available) = available else {
        return Ok(());
    };
    if needed > available {
        return Err(PluginError::out_of_memory(format!(
            "a context of {} tokens x {} parallel sequences needs about {} of KV cache but only \
             {} is available on {}; lower context_length or parallel",
            config.context_per_sequence,
            config.parallel,
            human_bytes(needed),
            human_bytes(available),
            device.name
        )));
    }
    Ok(())
}

/// `MemAvailable` from /proc/meminfo; `None` where that does not exist (the check is skipped).
fn available_ram() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn gpu_free_memory(device: &Device) -> Option<u64> {
    let index = device.ggml_index?;
    llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .find(|d| d.index == index)
        .map(|d| d.memory_free as u64)
        .filter(|&free| free > 0)
}

fn human_bytes(bytes: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    const MIB: f64 = 1024.0 * 1024.0;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.1} GiB", b / GIB)
    } else {
        format!("{:.1} MiB", b / MIB)
    }
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
