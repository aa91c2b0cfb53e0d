//! The `#[sabi_trait]` objects that cross the boundary. Plugin authors never implement these
//! directly: they implement [`crate::Backend`] & co. and `export_backend!` wraps them in
//! panic-guarded adapters. The host calls these objects.
//!
//! The method lists are frozen for all of 2.x: abi_stable's load check refuses a plugin
//! whose vtable has fewer entries than the host's, so appending a method in a minor version
//! would cut off every older plugin (see plugin-api/README.md). The `last_prefix_field`
//! markers stay on the last 2.0 method.

// abi_stable's generated code trips `non_local_definitions`; nothing to change on our side.
#![allow(non_local_definitions)]

use crate::{
    error::PluginError,
    metadata::ModelMetadata,
    request::{EmbedRequest, GenerateRequest, LoadRequest},
    step::{GenerationStats, Step},
};
use abi_stable::{
    sabi_trait,
    std_types::{RBox, RResult, RSlice, RStr, RString, RVec},
};

/// A backend instance: loads models.
#[sabi_trait]
pub trait FfiBackend: Send + Sync {
    #[sabi(last_prefix_field)]
    fn load(&self, request: LoadRequest) -> RResult<ModelBox, PluginError>;
}

/// A loaded model. Shared between threads by the host; generations own what they need.
#[sabi_trait]
pub trait FfiModel: Send + Sync {
    fn metadata(&self) -> RResult<ModelMetadata, PluginError>;

    fn tokenize(
        &self,
        text: RStr<'_>,
        add_special: bool,
        parse_special: bool,
    ) -> RResult<RVec<u32>, PluginError>;

    fn detokenize(
        &self,
        tokens: RSlice<'_, u32>,
        skip_special: bool,
    ) -> RResult<RString, PluginError>;

    fn generate(&self, request: GenerateRequest) -> RResult<GenerationBox, PluginError>;

    /// Next-token logits (vocab_size values) after evaluating `tokens` from an empty context.
    fn logits(&self, tokens: RSlice<'_, u32>) -> RResult<RVec<f32>, PluginError>;

    #[sabi(last_prefix_field)]
    fn embed(&self, request: EmbedRequest) -> RResult<RVec<RVec<f32>>, PluginError>;
}

/// A running generation. Pull-based: every `next` returns one token or the end.
/// Dropping it cancels the generation.
#[sabi_trait]
pub trait FfiGeneration: Send {
    fn next(&mut self) -> RResult<Step, PluginError>;

    #[sabi(last_prefix_field)]
    fn stats(&self) -> RResult<GenerationStats, PluginError>;
}

pub type BackendBox = FfiBackend_TO<'static, RBox<()>>;
pub type ModelBox = FfiModel_TO<'static, RBox<()>>;
pub type GenerationBox = FfiGeneration_TO<'static, RBox<()>>;
