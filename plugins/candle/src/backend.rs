//! The backend: opens the device, finds the files and loads them into a [`CandleModel`].

use crate::error::Result;
use crate::files::{self, ModelFiles};
use crate::model::{CandleModel, Shared, DEFAULT_BATCH};
use crate::prefix::PrefixCache;
use crate::{device, gguf, hf};
use llmlocal_plugin_api::{Backend, LoadRequest, Model, PluginError};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Default)]
pub struct CandleBackend;

impl CandleBackend {
    pub fn new() -> Result<Self> {
        Ok(CandleBackend)
    }
}

impl Backend for CandleBackend {
    fn load(&self, request: LoadRequest) -> Result<Box<dyn Model>> {
        let start = Instant::now();
        let paths: Vec<String> = request.model_paths.iter().map(|p| p.to_string()).collect();
        let files = files::resolve(&paths)?;
        let (device, device_name) = device::open(request.device.as_str())?;
        let (net, vocab, info) = match &files {
            ModelFiles::Gguf(path) => {
                if !request.adapters.is_empty() {
                    return Err(PluginError::unsupported(
                        "the candle backend merges LoRA adapters into safetensors models only; \
                         load the model's Hugging Face folder to use adapters",
                    ));
                }
                let l = gguf::load(path, &device, request.context_length)?;
                (l.net, l.vocab, l.info)
            }
            ModelFiles::Hf(hf_files) => {
                let l = hf::load(
                    hf_files,
                    &device,
                    request.context_length,
                    request.adapters.as_slice(),
                )?;
                (l.net, l.vocab, l.info)
            }
        };
        let batch = match request.batch_size {
            0 => DEFAULT_BATCH,
            n => n as usize,
        };
        let load_ms = start.elapsed().as_secs_f64() * 1000.0;
        let adapters = request
            .adapters
            .iter()
            .map(|a| (a.path.to_string(), a.scale))
            .collect();
        let dense = match &net {
            crate::net::Net::Dense(m) => Some(m.clone()),
            _ => None,
        };
        let encoder = match &net {
            crate::net::Net::Encoder(m) => Some(m.clone()),
            _ => None,
        };
        let embedder = crate::embed::Embedder::new(
            files.clone(),
            request.adapters.to_vec(),
            info.context_length,
            device.clone(),
            dense,
        )
        .with_encoder(encoder);
        tracing::info!(
            "candle: loaded {} ({}, {} layers) on {device_name} in {load_ms:.0} ms",
            info.name,
            info.architecture,
            info.layer_count
        );
        let prefix = Mutex::new(PrefixCache::for_model(&info));
        Ok(Box::new(CandleModel::new(Shared {
            net,
            vocab,
            info,
            device,
            device_name,
            batch,
            load_ms,
            adapters,
            guidance: Default::default(),
            embedder,
            prefix,
        })))
    }
}
