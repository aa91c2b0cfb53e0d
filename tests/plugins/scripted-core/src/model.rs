//! A loaded script: the `Model` implementation.

use crate::{
    generation::ScriptedGeneration,
    script::{self, Script, BOS, EOS, VOCAB_SIZE},
    Behaviour,
};
use llmlocal_plugin_api::{
    abi_stable::std_types::{ROption, RString, RVec},
    GenerateRequest, Generation, LoadRequest, Model, ModelMetadata, PluginError,
};
use std::{
    path::{Path, PathBuf},
    time::Instant,
};

/// The context length when the request leaves it to the backend.
pub const DEFAULT_CONTEXT: u32 = 4096;

pub struct ScriptedModel {
    path: PathBuf,
    script: Script,
    metadata: ModelMetadata,
    behaviour: Behaviour,
}

impl ScriptedModel {
    pub fn load(request: &LoadRequest, behaviour: Behaviour) -> Result<Self, PluginError> {
        let started = Instant::now();
        check_request(request)?;
        let path = match request.model_paths.as_slice() {
            [path] => Path::new(path.as_str()),
            [] => return Err(PluginError::invalid_request("no model path given")),
            _ => {
                return Err(PluginError::invalid_request(
                    "the scripted backend loads exactly one model file",
                ))
            }
        };
        let script = Script::read(path)?;
        if behaviour.hang_in_load && contains(script.bytes(), crate::HANG_MARKER) {
            crate::hang_forever();
        }
        tracing::info!(
            "loaded scripted model {}: {} script bytes",
            path.display(),
            script.len()
        );
        let context_length = match request.context_length {
            0 => DEFAULT_CONTEXT,
            n => n,
        };
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let metadata = ModelMetadata {
            architecture: RString::from("scripted"),
            name: RString::from(name),
            context_length,
            train_context_length: DEFAULT_CONTEXT,
            vocab_size: VOCAB_SIZE,
            embedding_length: 0,
            layer_count: 0,
            parameter_count: 0,
            size_bytes: script.len() as u64,
            bos_token: ROption::RSome(BOS),
            eos_token: ROption::RSome(EOS),
            end_of_generation_tokens: RVec::from(vec![EOS]),
            chat_template: ROption::RNone,
            device: RString::from("cpu"),
            load_ms: started.elapsed().as_secs_f64() * 1000.0,
            pooling: RString::new(),
            extensions: RVec::new(),
        };
        Ok(ScriptedModel {
            path: path.to_path_buf(),
            script,
            metadata,
            behaviour,
        })
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

fn check_request(request: &LoadRequest) -> Result<(), PluginError> {
    if !request.adapters.is_empty() {
        return Err(PluginError::unsupported(
            "the scripted backend does not take LoRA adapters",
        ));
    }
    match request.device.as_str() {
        "" | "auto" | "cpu" => Ok(()),
        other => Err(PluginError::invalid_request(format!(
            "device `{other}` is not available: the scripted backend runs on `cpu` only"
        ))),
    }
}

impl Model for ScriptedModel {
    fn metadata(&self) -> ModelMetadata {
        self.metadata.clone()
    }

    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, PluginError> {
        if self.behaviour.hang_in_tokenize && text.contains(crate::HANG_MARKER) {
            crate::hang_forever();
        }
        Ok(script::tokenize(text, add_special, parse_special))
    }

    fn detokenize(&self, tokens: &[u32], skip_special: bool) -> Result<String, PluginError> {
        script::detokenize(tokens, skip_special)
    }

    fn generate(&self, request: GenerateRequest) -> Result<Box<dyn Generation>, PluginError> {
        if let Some(delay) = self.behaviour.generate_delay {
            let mut marker = self.path.clone().into_os_string();
            marker.push(".generating");
            std::fs::write(&marker, b"")
                .map_err(|e| PluginError::internal(format!("writing the marker file: {e}")))?;
            std::thread::sleep(delay);
        }
        let generation = ScriptedGeneration::start(
            self.script.clone(),
            &request,
            self.metadata.context_length,
            self.behaviour,
        )?;
        Ok(Box::new(generation))
    }

    fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>, PluginError> {
        check_tokens(tokens)?;
        let next = self.script.next_after(tokens);
        // One-hot-ish: the scripted token far ahead, everything else flat.
        let mut logits = vec![0.0f32; VOCAB_SIZE as usize];
        logits[next as usize] = 10.0;
        Ok(logits)
    }
}

pub(crate) fn check_tokens(tokens: &[u32]) -> Result<(), PluginError> {
    match tokens.iter().find(|&&t| t >= VOCAB_SIZE) {
        Some(bad) => Err(PluginError::invalid_request(format!(
            "token id {bad} is out of range: the scripted vocabulary has {VOCAB_SIZE} tokens"
        ))),
        None => Ok(()),
    }
}
