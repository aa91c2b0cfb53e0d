//! The traits a plugin author implements: plain Rust, `Result`-returning, no FFI types in
//! sight except the plain data of the request, metadata and step modules. `export_backend!` adapts them.

use crate::{
    error::PluginError,
    metadata::ModelMetadata,
    request::{EmbedRequest, GenerateRequest, LoadRequest},
    step::{GenerationStats, Step},
};

/// Loads models. One instance per process; `load` may be called from several threads.
pub trait Backend: Send + Sync + 'static {
    fn load(&self, request: LoadRequest) -> Result<Box<dyn Model>, PluginError>;
}

/// A loaded model, shared between threads by the host.
pub trait Model: Send + Sync + 'static {
    fn metadata(&self) -> ModelMetadata;

    /// `add_special`: add BOS (and whatever the model's tokenizer adds).
    /// `parse_special`: turn special-token text such as `<|im_start|>` into its token.
    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, PluginError>;

    fn detokenize(&self, tokens: &[u32], skip_special: bool) -> Result<String, PluginError>;

    /// Starts a generation. It must own (or share) what it needs: it outlives this borrow.
    /// The export glue has already checked the request against the contract
    /// ([`GenerateRequest::validate`]) and the declared capabilities.
    fn generate(&self, request: GenerateRequest) -> Result<Box<dyn Generation>, PluginError>;

    /// Next-token logits (one per vocabulary entry) after `tokens`, from an empty context.
    /// Used to check that backends agree numerically.
    fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>, PluginError>;

    /// One vector per input (docs/contract.md, "Embeddings"). Only called when the manifest
    /// declares `embeddings`.
    fn embed(&self, _request: EmbedRequest) -> Result<Vec<Vec<f32>>, PluginError> {
        Err(PluginError::unsupported(
            "this backend does not compute embeddings",
        ))
    }
}

/// A running generation. Dropping it must stop the work promptly.
pub trait Generation: Send + 'static {
    /// The next token, or the end. After the end, keeps returning the same end.
    fn next(&mut self) -> Result<Step, PluginError>;

    fn stats(&self) -> GenerationStats;
}
