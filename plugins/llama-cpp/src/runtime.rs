//! Process-wide llama.cpp state: the one `LlamaBackend`, log routing and the device list.

use llama_cpp_2::{
    list_llama_ggml_backend_devices, llama_backend::LlamaBackend, LlamaBackendDeviceType,
};
use llmlocal_plugin_api::PluginError;
use std::sync::{Once, OnceLock};

/// Routes llama.cpp's and ggml's logs into `tracing` ([`crate::logs`]). Done before any other
/// llama.cpp call so that nothing is ever printed raw to the terminal.
pub fn route_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(crate::logs::install);
}

/// The llama.cpp backend, initialised once per process and never freed: llama.cpp's global
/// state cannot be torn down while any model from any thread may still exist.
pub fn backend() -> Result<&'static LlamaBackend, PluginError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    route_logs();
    BACKEND
        .get_or_init(|| LlamaBackend::init().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| PluginError::internal(format!("cannot initialise llama.cpp: {e}")))
}

/// A device the plugin can run a model on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The name users pass in `LoadRequest::device`: `cpu`, `cuda:0`, `metal`.
    pub name: String,
    /// ggml's backend-device index, `None` for the CPU.
    pub ggml_index: Option<usize>,
}

impl Device {
    pub fn cpu() -> Self {
        Device {
            name: "cpu".into(),
            ggml_index: None,
        }
    }
    pub fn is_gpu(&self) -> bool {
        self.ggml_index.is_some()
    }
}

/// The devices llama.cpp reports as usable now: the CPU always, then each CUDA GPU (`cuda:N`,
/// numbered among CUDA devices) and Metal. Only back-ends compiled in can report devices, so a
/// default (CPU) build lists `cpu` alone.
pub fn devices() -> Vec<Device> {
    route_logs();
    let mut out = vec![Device::cpu()];
    let mut cuda = 0usize;
    for dev in list_llama_ggml_backend_devices() {
        if !matches!(
            dev.device_type,
            LlamaBackendDeviceType::Gpu | LlamaBackendDeviceType::IntegratedGpu
        ) {
            continue;
        }
        let backend = dev.backend.to_ascii_lowercase();
        let name = if backend.starts_with("cuda") {
            cuda += 1;
            format!("cuda:{}", cuda - 1)
        } else if backend == "metal" || backend == "mtl" {
            "metal".to_string()
        } else {
            continue;
        };
        out.push(Device {
            name,
            ggml_index: Some(dev.index),
        });
    }
    out
}

/// Resolves `LoadRequest::device` (`auto`, `cpu`, `cuda`, `cuda:N`, `metal`) to a usable device.
pub fn select_device(requested: &str) -> Result<Device, PluginError> {
    let available = devices();
    let wanted = requested.trim().to_ascii_lowercase();
    let found = match wanted.as_str() {
        "" | "auto" => available.iter().find(|d| d.is_gpu()).or(available.first()),
        "cuda" | "gpu" => available.iter().find(|d| d.is_gpu()),
        other => available.iter().find(|d| d.name == other),
    };
    found.cloned().ok_or_else(|| {
        let names: Vec<&str> = available.iter().map(|d| d.name.as_str()).collect();
        PluginError::invalid_request(format!(
            "device '{requested}' is not available to the llama-cpp backend; usable devices: {}",
            names.join(", ")
        ))
    })
}
