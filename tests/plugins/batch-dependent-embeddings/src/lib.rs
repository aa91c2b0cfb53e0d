//! Test plugin: a scripted backend that declares `embeddings` and computes well-formed
//! vectors (deterministic, the metadata's dimension, unit norm when asked) that shift with
//! the number of inputs in the request. The conformance suite's "embeddings batch
//! invariant" check must catch it.

use llmlocal_plugin_api::{
    capability, pooling, Backend, EmbedRequest, GenerateRequest, Generation, LoadRequest, Manifest,
    Model, ModelMetadata, PluginError,
};
use llmlocal_scripted_core::ScriptedBackend;

/// The dimension this plugin reports and embeds in.
const DIM: usize = 8;

fn manifest() -> Manifest {
    let mut manifest = llmlocal_scripted_core::manifest_named(
        "batch-dependent-embeddings",
        "test plugin: scripted, declares embeddings whose values depend on the batch size",
    );
    manifest.capabilities.insert(capability::EMBEDDINGS);
    manifest
}

struct Wrapped(ScriptedBackend);

impl Backend for Wrapped {
    fn load(&self, request: LoadRequest) -> Result<Box<dyn Model>, PluginError> {
        Ok(Box::new(Embedding(self.0.load(request)?)))
    }
}

/// The scripted model plus an `embed` of its own.
struct Embedding(Box<dyn Model>);

impl Model for Embedding {
    fn metadata(&self) -> ModelMetadata {
        ModelMetadata {
            embedding_length: DIM as u32,
            ..self.0.metadata()
        }
    }

    fn tokenize(&self, text: &str, add: bool, parse: bool) -> Result<Vec<u32>, PluginError> {
        self.0.tokenize(text, add, parse)
    }

    fn detokenize(&self, tokens: &[u32], skip: bool) -> Result<String, PluginError> {
        self.0.detokenize(tokens, skip)
    }

    fn generate(&self, request: GenerateRequest) -> Result<Box<dyn Generation>, PluginError> {
        self.0.generate(request)
    }

    fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>, PluginError> {
        self.0.logits(tokens)
    }

    fn embed(&self, request: EmbedRequest) -> Result<Vec<Vec<f32>>, PluginError> {
        let name = request.pooling.as_str();
        if !["", pooling::MEAN].contains(&name) {
            return Err(PluginError::invalid_request(format!(
                "pooling `{name}` is not offered"
            )));
        }
        // The flaw: every value moves with the number of inputs.
        let shift = 0.1 * request.inputs.len() as f32;
        Ok(request
            .inputs
            .iter()
            .map(|input| {
                let mut v: Vec<f32> = (0..DIM)
                    .map(|d| {
                        let sum: f32 = input
                            .iter()
                            .map(|&t| ((t as f32) * (d as f32 + 1.0)).sin())
                            .sum();
                        sum / input.len() as f32 + shift
                    })
                    .collect();
                if request.normalize {
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                v
            })
            .collect())
    }
}

fn new_backend() -> Result<Wrapped, PluginError> {
    Ok(Wrapped(ScriptedBackend::new()?))
}

llmlocal_plugin_api::export_backend! { manifest: manifest, backend: new_backend }
