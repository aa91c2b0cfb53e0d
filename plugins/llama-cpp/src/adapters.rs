//! LoRA adapters: GGUF LoRA files read into the loaded model, activated on the context.
//!
//! Adapters given at load are read before the model is shared. A generation may name any
//! other GGUF LoRA file: the decode thread reads it into the *same* loaded model at run time
//! (no second instance). `llama_adapter_lora_init` needs the model mutably, so the model sits
//! in a `RwLock` ([`crate::model::SharedModel`]): callers tokenize under short read locks, the
//! decode thread holds a read lock for its context's life, and to read a new adapter it waits
//! until no sequence is running, drops the context, takes the write lock for the init only,
//! then creates the context again (queued jobs stay queued).
//!
//! Read adapters stay cached by path, at most [`MAX_ADAPTERS`] at a time: llama-cpp-2
//! 0.1.160's `LlamaLoraAdapter` has no `Drop` (dropping the handle frees nothing; llama.cpp
//! frees every adapter of a model when the model is freed, and `llama_adapter_lora_free` is
//! not exposed safely), so evicting one alone would only leak it. When a generation needs
//! a file and the model already holds [`MAX_ADAPTERS`], the decode thread frees them all at
//! once by reloading the model from its file (at the point where it would read an adapter
//! anyway: no sequence running, no context), reads the load-time adapters again, then the
//! files the queued jobs need ([`crate::engine`]'s `reload`). So any number of distinct
//! files can be used; every [`MAX_ADAPTERS`] new ones cost one model load. A file is read
//! once per reload cycle: one changed in place under the same path is not read again until
//! the next reload (the host's conversions and stacks are named by content hash, so they
//! never change in place).
//!
//! Limit: llama-cpp-2's safe API activates one adapter at a time
//! (`LlamaContext::lora_adapter_set` replaces the set with that one). The host stacks several
//! adapters into one file before they reach this plugin; a set of two or more is refused here.

use llama_cpp_2::{
    context::LlamaContext,
    model::{LlamaLoraAdapter, LlamaModel},
};
use llmlocal_plugin_api::{AdapterRequest, PluginError};
use std::{collections::HashMap, path::Path};

/// The most adapter files a model holds at once, load-time ones included. llama.cpp frees
/// adapters only with their model, so the decode thread reloads the model when a new file
/// would go past this. Each reload costs a model load, so the bound is a trade: it keeps the
/// memory of read adapters bounded (a LoRA of a large model can be hundreds of MiB) while
/// making reloads rare for a server that cycles through a few adapters.
pub const MAX_ADAPTERS: usize = 16;

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
                 0.1.160 cannot stack several); stack them into one GGUF LoRA (the llmlocal \
                 host does) or pass only one",
            ));
        }
        Ok(AdapterSet(set))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(path, _)| path.as_str())
    }
}

/// The adapters read into a model, owned by the decode thread.
pub struct AdapterStore {
    adapters: HashMap<String, LlamaLoraAdapter>,
    load_set: AdapterSet,
}

impl AdapterStore {
    /// Reads every adapter of the load request into `model`.
    pub fn load(model: &mut LlamaModel, requests: &[AdapterRequest]) -> Result<Self, PluginError> {
        let load_set = AdapterSet::from_requests(requests)?;
        let mut store = AdapterStore {
            adapters: HashMap::new(),
            load_set: AdapterSet::default(),
        };
        for (path, _) in &load_set.0 {
            store.read(model, path)?;
        }
        store.load_set = load_set;
        Ok(store)
    }

    /// The set used by generations that do not name their own.
    pub fn load_set(&self) -> &AdapterSet {
        &self.load_set
    }

    /// How many more files the model may read before it must be reloaded.
    pub fn room(&self) -> usize {
        MAX_ADAPTERS.saturating_sub(self.adapters.len())
    }

    /// Forgets every handle, returning how many there were. Call it right before the model
    /// they point into is dropped (which frees the adapters themselves).
    pub fn forget_all(&mut self) -> usize {
        let count = self.adapters.len();
        self.adapters.clear();
        count
    }

    /// Reads the load set into a freshly reloaded model.
    pub fn read_load_set(&mut self, model: &mut LlamaModel) -> Result<(), PluginError> {
        let paths: Vec<String> = self.load_set.paths().map(str::to_string).collect();
        for path in &paths {
            self.read(model, path)?;
        }
        Ok(())
    }

    /// The paths of `set` not read into the model yet.
    pub fn missing(&self, set: &AdapterSet) -> Vec<String> {
        set.paths()
            .filter(|path| !self.adapters.contains_key(*path))
            .map(str::to_string)
            .collect()
    }

    /// Reads the adapter at `path` into `model` (once; later calls find it cached).
    pub fn read(&mut self, model: &mut LlamaModel, path: &str) -> Result<(), PluginError> {
        if self.adapters.contains_key(path) {
            return Ok(());
        }
        if self.room() == 0 {
            // The decode thread reloads the model before this can happen.
            return Err(PluginError::internal(format!(
                "cannot read LoRA adapter '{path}': this model already holds {MAX_ADAPTERS} \
                 adapters and was not reloaded to free them"
            )));
        }
        let started = std::time::Instant::now();
        let adapter = init_adapter(model, path)?;
        tracing::info!(
            adapter = path,
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "read LoRA adapter into the loaded model"
        );
        self.adapters.insert(path.to_string(), adapter);
        Ok(())
    }

    /// Makes `set` the context's active adapters; every path must have been read.
    pub fn activate(
        &mut self,
        context: &mut LlamaContext<'_>,
        set: &AdapterSet,
    ) -> Result<(), PluginError> {
        match set.0.as_slice() {
            [] => {
                // Removing needs some adapter handle (it is ignored); with none read there is
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
                    PluginError::internal(format!(
                        "adapter '{path}' was not read before activation"
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

/// The checks that need no model: the file exists, is a GGUF file and holds tensors. Cheap
/// (header only), so `generate` runs them on the caller's thread and a bad path fails at once.
pub fn check_file(path: &str) -> Result<(), PluginError> {
    let file = Path::new(path);
    if !file.exists() {
        return Err(PluginError::not_found(format!(
            "LoRA adapter '{path}' does not exist"
        )));
    }
    if !file.is_file() {
        return Err(PluginError::unsupported_format(format!(
            "LoRA adapter '{path}' is not a file: the llama-cpp backend reads GGUF LoRA files \
             (the llmlocal host converts PEFT folders; or use llama.cpp's convert_lora_to_gguf.py)"
        )));
    }
    let header = crate::gguf::read_header(file)
        .map_err(|e| PluginError::unsupported_format(format!("LoRA adapter '{path}': {e}")))?;
    if header.tensor_count == 0 {
        return Err(PluginError::unsupported_format(format!(
            "LoRA adapter '{path}' has no tensors"
        )));
    }
    Ok(())
}

fn init_adapter(model: &mut LlamaModel, path: &str) -> Result<LlamaLoraAdapter, PluginError> {
    // Checked again here: the file may have changed since `generate` looked, and llama-cpp-2
    // debug-asserts that the path exists.
    check_file(path)?;
    model.lora_adapter_init(Path::new(path)).map_err(|e| {
        PluginError::adapter_incompatible(format!(
            "llama.cpp could not load LoRA adapter '{path}' for this model ({e}); is it a GGUF \
             LoRA made for this base model, and complete?"
        ))
    })
}
