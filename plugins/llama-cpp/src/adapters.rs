//! LoRA adapters: GGUF LoRA files loaded with the model, activated on the context.
//!
//! Adapters are read once at load (`llama_adapter_lora_init` needs the model mutably, which
//! is only possible before the model is shared). A generation may then pick its own set among
//! those loaded adapters, with its own scales; the decode thread switches the context's set
//! between batches and only batches sequences that want the same set together.
//!
//! Limit: llama-cpp-2 0.1.160's safe API activates one adapter at a time
//! (`LlamaContext::lora_adapter_set` replaces the set with that one; stacking several needs
//! the raw context pointer, which the crate keeps private). A set of two or more adapters is
//! refused with a clear error.

use llama_cpp_2::{
    context::LlamaContext,
    model::{LlamaLoraAdapter, LlamaModel},
};
use llmlocal_plugin_api::{AdapterRequest, PluginError};
use std::{collections::HashMap, path::Path};

/// Adapters and their scales, compared by path and exact scale.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdapterSet(pub Vec<(String, f32)>);

impl AdapterSet {
    pub fn from_requests(requests: &[AdapterRequest]) -> Result<Self, PluginError> {
        let mut set = Vec::with_capacity(requests.len());
        for request in requests {
            if !request.scale.is_finite() {
                return Err(PluginError::invalid_request(format!(
                    "adapter '{}' has a non-finite scale",
                    request.path
                )));
            }
            set.push((request.path.to_string(), request.scale));
        }
        if set.len() > 1 {
            return Err(PluginError::unsupported(
                "the llama-cpp backend activates one LoRA adapter at a time (llama-cpp-2 \
                 0.1.160 cannot stack several); merge the adapters or pass only one",
            ));
        }
        Ok(AdapterSet(set))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The adapters loaded with a model, owned by the decode thread.
pub struct AdapterStore {
    adapters: HashMap<String, LlamaLoraAdapter>,
    load_set: AdapterSet,
}

impl AdapterStore {
    /// Reads every adapter of the load request into `model`.
    pub fn load(model: &mut LlamaModel, requests: &[AdapterRequest]) -> Result<Self, PluginError> {
        let load_set = AdapterSet::from_requests(requests)?;
        let mut adapters = HashMap::new();
        for (path, _) in &load_set.0 {
            if adapters.contains_key(path) {
                continue;
            }
            let adapter = init_adapter(model, path)?;
            adapters.insert(path.clone(), adapter);
        }
        Ok(AdapterStore { adapters, load_set })
    }

    /// The set used by generations that do not name their own.
    pub fn load_set(&self) -> &AdapterSet {
        &self.load_set
    }

    /// The paths a generation may choose among.
    pub fn paths(&self) -> Vec<String> {
        self.adapters.keys().cloned().collect()
    }

    /// Makes `set` the context's active adapters.
    pub fn activate(
        &mut self,
        context: &mut LlamaContext<'_>,
        set: &AdapterSet,
    ) -> Result<(), PluginError> {
        match set.0.as_slice() {
            [] => {
                // Removing needs some adapter handle (it is ignored); with none loaded there is
                // nothing active to remove.
                if let Some(any) = self.adapters.values_mut().next() {
                    context.lora_adapter_remove(any).map_err(|e| {
                        PluginError::internal(format!("cannot remove the LoRA adapters: {e}"))
                    })?;
                }
                Ok(())
            }
            [(path, scale)] => {
                let adapter = self.adapters.get_mut(path).ok_or_else(|| {
                    PluginError::invalid_request(format!(
                        "adapter '{path}' was not loaded with this model"
                    ))
                })?;
                context.lora_adapter_set(adapter, *scale).map_err(|e| {
                    PluginError::adapter_incompatible(format!(
                        "llama.cpp refused to apply adapter '{path}': {e}"
                    ))
                })
            }
            _ => Err(PluginError::unsupported(
                "the llama-cpp backend activates one LoRA adapter at a time",
            )),
        }
    }
}

fn init_adapter(model: &mut LlamaModel, path: &str) -> Result<LlamaLoraAdapter, PluginError> {
    let file = Path::new(path);
    if !file.exists() {
        return Err(PluginError::not_found(format!(
            "LoRA adapter '{path}' does not exist"
        )));
    }
    if !file.is_file() {
        return Err(PluginError::unsupported_format(format!(
            "LoRA adapter '{path}' is not a file: the llama-cpp backend reads GGUF LoRA files \
             (convert a PEFT folder with llama.cpp's convert_lora_to_gguf.py)"
        )));
    }
    let header = crate::gguf::read_header(file)
        .map_err(|e| PluginError::unsupported_format(format!("LoRA adapter '{path}': {e}")))?;
    if header.tensor_count == 0 {
        return Err(PluginError::unsupported_format(format!(
            "LoRA adapter '{path}' has no tensors"
        )));
    }
    model.lora_adapter_init(file).map_err(|e| {
        PluginError::adapter_incompatible(format!(
            "llama.cpp could not load LoRA adapter '{path}' for this model ({e}); is it a GGUF \
             LoRA made for this base model?"
        ))
    })
}
