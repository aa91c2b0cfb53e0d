//! The messages between the host and a plugin worker, and serde mirrors of the plugin-api
//! types they carry. plugin-api's types are `#[repr(C)]` abi_stable structs without serde
//! (the API crate stays free of a wire format); each mirror converts both ways, field by field.

use abi_stable::std_types::{RString, RVec};
use llmlocal_plugin_api as api;
use serde::{Deserialize, Serialize};

/// A call from the host. `id` pairs it with its [`Response`]; 0 is never used by the host
/// (the worker's greeting uses it).
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub call: Call,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    /// Run the plugin's constructor (after the greeting).
    Construct,
    Load(LoadRequest),
    Metadata {
        model: u64,
    },
    Tokenize {
        model: u64,
        text: String,
        add_special: bool,
        parse_special: bool,
    },
    Detokenize {
        model: u64,
        tokens: Vec<u32>,
        skip_special: bool,
    },
    Generate {
        model: u64,
        request: GenerateRequest,
    },
    Logits {
        model: u64,
        tokens: Vec<u32>,
    },
    Embed {
        model: u64,
        request: EmbedRequest,
    },
    Next {
        generation: u64,
    },
    Stats {
        generation: u64,
    },
    /// Fire-and-forget: no response.
    DropModel {
        model: u64,
    },
    /// Fire-and-forget (cancel on drop): no response.
    DropGeneration {
        generation: u64,
    },
}

impl Call {
    /// The contract call's name, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Construct => "the constructor",
            Call::Load(_) => "load",
            Call::Metadata { .. } => "metadata",
            Call::Tokenize { .. } => "tokenize",
            Call::Detokenize { .. } => "detokenize",
            Call::Generate { .. } => "generate",
            Call::Logits { .. } => "logits",
            Call::Embed { .. } => "embed",
            Call::Next { .. } => "next",
            Call::Stats { .. } => "stats",
            Call::DropModel { .. } => "drop model",
            Call::DropGeneration { .. } => "drop generation",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    pub reply: Reply,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// The greeting (id 0): the library passed every check and this is its manifest.
    Opened(Manifest),
    /// The greeting (id 0): the library was refused, with the reason users see.
    Refused(String),
    Done,
    Model(u64),
    Metadata(ModelMetadata),
    Tokens(Vec<u32>),
    Text(String),
    Generation(u64),
    Step(Step),
    Stats(GenerationStats),
    Floats(Vec<f32>),
    Vectors(Vec<Vec<f32>>),
    Error(PluginError),
}

// ---- mirrors -------------------------------------------------------------------------

fn strings(v: &RVec<RString>) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn rstrings(v: Vec<String>) -> RVec<RString> {
    v.into_iter().map(RString::from).collect()
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PluginError {
    kind: u16,
    message: String,
}

impl From<api::PluginError> for PluginError {
    fn from(e: api::PluginError) -> Self {
        PluginError {
            kind: e.kind.0,
            message: e.message.into(),
        }
    }
}

impl From<PluginError> for api::PluginError {
    fn from(e: PluginError) -> Self {
        api::PluginError::new(api::ErrorKind(e.kind), e.message)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ExtValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Extension {
    key: String,
    value: ExtValue,
}

fn exts(v: &RVec<api::extension::Extension>) -> Vec<Extension> {
    v.iter()
        .map(|e| Extension {
            key: e.key.to_string(),
            value: match &e.value {
                api::extension::ExtValue::Bool(b) => ExtValue::Bool(*b),
                api::extension::ExtValue::Int(i) => ExtValue::Int(*i),
                api::extension::ExtValue::Float(f) => ExtValue::Float(*f),
                api::extension::ExtValue::Text(t) => ExtValue::Text(t.to_string()),
            },
        })
        .collect()
}

fn rexts(v: Vec<Extension>) -> RVec<api::extension::Extension> {
    v.into_iter()
        .map(|e| api::extension::Extension {
            key: e.key.into(),
            value: match e.value {
                ExtValue::Bool(b) => api::extension::ExtValue::Bool(b),
                ExtValue::Int(i) => api::extension::ExtValue::Int(i),
                ExtValue::Float(f) => api::extension::ExtValue::Float(f),
                ExtValue::Text(t) => api::extension::ExtValue::Text(t.into()),
            },
        })
        .collect()
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    name: String,
    version: String,
    api_version: String,
    description: String,
    devices: Vec<String>,
    formats: Vec<String>,
    capability_names: Vec<String>,
    parallel_generations: u32,
    extensions: Vec<Extension>,
}

impl From<&api::Manifest> for Manifest {
    fn from(m: &api::Manifest) -> Self {
        Manifest {
            name: m.name.to_string(),
            version: m.version.to_string(),
            api_version: m.api_version.to_string(),
            description: m.description.to_string(),
            devices: strings(&m.devices),
            formats: strings(&m.formats),
            capability_names: strings(&m.capabilities.names),
            parallel_generations: m.capabilities.parallel_generations,
            extensions: exts(&m.extensions),
        }
    }
}

impl From<Manifest> for api::Manifest {
    fn from(m: Manifest) -> Self {
        api::Manifest {
            name: m.name.into(),
            version: m.version.into(),
            api_version: m.api_version.into(),
            description: m.description.into(),
            devices: rstrings(m.devices),
            formats: rstrings(m.formats),
            capabilities: api::Capabilities {
                names: rstrings(m.capability_names),
                parallel_generations: m.parallel_generations,
            },
            extensions: rexts(m.extensions),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AdapterRequest {
    path: String,
    scale: f32,
}

fn adapters(v: &RVec<api::request::AdapterRequest>) -> Vec<AdapterRequest> {
    v.iter()
        .map(|a| AdapterRequest {
            path: a.path.to_string(),
            scale: a.scale,
        })
        .collect()
}

fn radapters(v: Vec<AdapterRequest>) -> RVec<api::request::AdapterRequest> {
    v.into_iter()
        .map(|a| api::request::AdapterRequest {
            path: a.path.into(),
            scale: a.scale,
        })
        .collect()
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LoadRequest {
    model_paths: Vec<String>,
    device: String,
    context_length: u32,
    threads: u32,
    batch_size: u32,
    gpu_layers: i32,
    parallel: u32,
    adapters: Vec<AdapterRequest>,
    extensions: Vec<Extension>,
}

impl From<&api::LoadRequest> for LoadRequest {
    fn from(r: &api::LoadRequest) -> Self {
        LoadRequest {
            model_paths: strings(&r.model_paths),
            device: r.device.to_string(),
            context_length: r.context_length,
            threads: r.threads,
            batch_size: r.batch_size,
            gpu_layers: r.gpu_layers,
            parallel: r.parallel,
            adapters: adapters(&r.adapters),
            extensions: exts(&r.extensions),
        }
    }
}

impl From<LoadRequest> for api::LoadRequest {
    fn from(r: LoadRequest) -> Self {
        api::LoadRequest {
            model_paths: rstrings(r.model_paths),
            device: r.device.into(),
            context_length: r.context_length,
            threads: r.threads,
            batch_size: r.batch_size,
            gpu_layers: r.gpu_layers,
            parallel: r.parallel,
            adapters: radapters(r.adapters),
            extensions: rexts(r.extensions),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Sampling {
    temperature: f32,
    top_k: u32,
    top_p: f32,
    min_p: f32,
    typical_p: f32,
    repeat_penalty: f32,
    frequency_penalty: f32,
    presence_penalty: f32,
    repeat_last_n: u32,
    seed: Option<u64>,
}

impl From<&api::Sampling> for Sampling {
    fn from(s: &api::Sampling) -> Self {
        Sampling {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            typical_p: s.typical_p,
            repeat_penalty: s.repeat_penalty,
            frequency_penalty: s.frequency_penalty,
            presence_penalty: s.presence_penalty,
            repeat_last_n: s.repeat_last_n,
            seed: s.seed.into_option(),
        }
    }
}

impl From<Sampling> for api::Sampling {
    fn from(s: Sampling) -> Self {
        api::Sampling {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            typical_p: s.typical_p,
            repeat_penalty: s.repeat_penalty,
            frequency_penalty: s.frequency_penalty,
            presence_penalty: s.presence_penalty,
            repeat_last_n: s.repeat_last_n,
            seed: s.seed.into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GenerateRequest {
    prompt_tokens: Vec<u32>,
    max_tokens: u32,
    sampling: Sampling,
    ignore_eos: bool,
    adapters: Option<Vec<AdapterRequest>>,
    logit_bias: Vec<(u32, f32)>,
    constraint: Option<(u8, String)>,
    logprobs: Option<u32>,
    cache_prompt: bool,
    extensions: Vec<Extension>,
}

impl From<&api::GenerateRequest> for GenerateRequest {
    fn from(r: &api::GenerateRequest) -> Self {
        GenerateRequest {
            prompt_tokens: r.prompt_tokens.to_vec(),
            max_tokens: r.max_tokens,
            sampling: (&r.sampling).into(),
            ignore_eos: r.ignore_eos,
            adapters: r.adapters.as_ref().map(adapters).into_option(),
            logit_bias: r.logit_bias.iter().map(|b| (b.token, b.bias)).collect(),
            constraint: r
                .constraint
                .as_ref()
                .map(|c| (c.kind.0, c.text.to_string()))
                .into_option(),
            logprobs: r.logprobs.into_option(),
            cache_prompt: r.cache_prompt,
            extensions: exts(&r.extensions),
        }
    }
}

impl From<GenerateRequest> for api::GenerateRequest {
    fn from(r: GenerateRequest) -> Self {
        api::GenerateRequest {
            prompt_tokens: r.prompt_tokens.into(),
            max_tokens: r.max_tokens,
            sampling: r.sampling.into(),
            ignore_eos: r.ignore_eos,
            adapters: r.adapters.map(radapters).into(),
            logit_bias: r
                .logit_bias
                .into_iter()
                .map(|(token, bias)| api::LogitBias { token, bias })
                .collect(),
            constraint: r
                .constraint
                .map(|(kind, text)| api::Constraint {
                    kind: api::ConstraintKind(kind),
                    text: text.into(),
                })
                .into(),
            logprobs: r.logprobs.into(),
            cache_prompt: r.cache_prompt,
            extensions: rexts(r.extensions),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EmbedRequest {
    inputs: Vec<Vec<u32>>,
    pooling: String,
    normalize: bool,
    extensions: Vec<Extension>,
}

impl From<&api::EmbedRequest> for EmbedRequest {
    fn from(r: &api::EmbedRequest) -> Self {
        EmbedRequest {
            inputs: r.inputs.iter().map(|i| i.to_vec()).collect(),
            pooling: r.pooling.to_string(),
            normalize: r.normalize,
            extensions: exts(&r.extensions),
        }
    }
}

impl From<EmbedRequest> for api::EmbedRequest {
    fn from(r: EmbedRequest) -> Self {
        api::EmbedRequest {
            inputs: r.inputs.into_iter().map(RVec::from).collect(),
            pooling: r.pooling.into(),
            normalize: r.normalize,
            extensions: rexts(r.extensions),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ModelMetadata {
    architecture: String,
    name: String,
    context_length: u32,
    train_context_length: u32,
    vocab_size: u32,
    embedding_length: u32,
    layer_count: u32,
    parameter_count: u64,
    size_bytes: u64,
    bos_token: Option<u32>,
    eos_token: Option<u32>,
    end_of_generation_tokens: Vec<u32>,
    chat_template: Option<String>,
    device: String,
    load_ms: f64,
    pooling: String,
    extensions: Vec<Extension>,
}

impl From<&api::ModelMetadata> for ModelMetadata {
    fn from(m: &api::ModelMetadata) -> Self {
        ModelMetadata {
            architecture: m.architecture.to_string(),
            name: m.name.to_string(),
            context_length: m.context_length,
            train_context_length: m.train_context_length,
            vocab_size: m.vocab_size,
            embedding_length: m.embedding_length,
            layer_count: m.layer_count,
            parameter_count: m.parameter_count,
            size_bytes: m.size_bytes,
            bos_token: m.bos_token.into_option(),
            eos_token: m.eos_token.into_option(),
            end_of_generation_tokens: m.end_of_generation_tokens.to_vec(),
            chat_template: m
                .chat_template
                .as_ref()
                .map(|t| t.to_string())
                .into_option(),
            device: m.device.to_string(),
            load_ms: m.load_ms,
            pooling: m.pooling.to_string(),
            extensions: exts(&m.extensions),
        }
    }
}

impl From<ModelMetadata> for api::ModelMetadata {
    fn from(m: ModelMetadata) -> Self {
        api::ModelMetadata {
            architecture: m.architecture.into(),
            name: m.name.into(),
            context_length: m.context_length,
            train_context_length: m.train_context_length,
            vocab_size: m.vocab_size,
            embedding_length: m.embedding_length,
            layer_count: m.layer_count,
            parameter_count: m.parameter_count,
            size_bytes: m.size_bytes,
            bos_token: m.bos_token.into(),
            eos_token: m.eos_token.into(),
            end_of_generation_tokens: m.end_of_generation_tokens.into(),
            chat_template: m.chat_template.map(RString::from).into(),
            device: m.device.into(),
            load_ms: m.load_ms,
            pooling: m.pooling.into(),
            extensions: rexts(m.extensions),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Token {
    id: u32,
    text: String,
    /// The chosen token's logprob and the alternatives as (id, logprob).
    logprobs: Option<(f32, Vec<(u32, f32)>)>,
    extensions: Vec<Extension>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Step {
    Token(Token),
    Finished {
        reason: u8,
        text: String,
        extensions: Vec<Extension>,
    },
}

impl From<&api::Step> for Step {
    fn from(s: &api::Step) -> Self {
        match s {
            api::Step::Token(t) => Step::Token(Token {
                id: t.id,
                text: t.text.to_string(),
                logprobs: t
                    .logprobs
                    .as_ref()
                    .map(|l| (l.logprob, l.top.iter().map(|a| (a.id, a.logprob)).collect()))
                    .into_option(),
                extensions: exts(&t.extensions),
            }),
            api::Step::Finished(f) => Step::Finished {
                reason: f.reason.0,
                text: f.text.to_string(),
                extensions: exts(&f.extensions),
            },
        }
    }
}

impl From<Step> for api::Step {
    fn from(s: Step) -> Self {
        match s {
            Step::Token(t) => api::Step::Token(api::Token {
                id: t.id,
                text: t.text.into(),
                logprobs: t
                    .logprobs
                    .map(|(logprob, top)| api::step::TokenLogprobs {
                        logprob,
                        top: top
                            .into_iter()
                            .map(|(id, logprob)| api::step::TopLogprob { id, logprob })
                            .collect(),
                    })
                    .into(),
                extensions: rexts(t.extensions),
            }),
            Step::Finished {
                reason,
                text,
                extensions,
            } => api::Step::Finished(api::Finished {
                reason: api::FinishReason(reason),
                text: text.into(),
                extensions: rexts(extensions),
            }),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GenerationStats {
    prompt_tokens: u32,
    cached_prompt_tokens: u32,
    generated_tokens: u32,
    time_to_first_token_ms: f64,
    prompt_tokens_per_second: f64,
    tokens_per_second: f64,
    total_ms: f64,
}

impl From<api::GenerationStats> for GenerationStats {
    fn from(s: api::GenerationStats) -> Self {
        GenerationStats {
            prompt_tokens: s.prompt_tokens,
            cached_prompt_tokens: s.cached_prompt_tokens,
            generated_tokens: s.generated_tokens,
            time_to_first_token_ms: s.time_to_first_token_ms,
            prompt_tokens_per_second: s.prompt_tokens_per_second,
            tokens_per_second: s.tokens_per_second,
            total_ms: s.total_ms,
        }
    }
}

impl From<GenerationStats> for api::GenerationStats {
    fn from(s: GenerationStats) -> Self {
        api::GenerationStats {
            prompt_tokens: s.prompt_tokens,
            cached_prompt_tokens: s.cached_prompt_tokens,
            generated_tokens: s.generated_tokens,
            time_to_first_token_ms: s.time_to_first_token_ms,
            prompt_tokens_per_second: s.prompt_tokens_per_second,
            tokens_per_second: s.tokens_per_second,
            total_ms: s.total_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::std_types::ROption;

    #[test]
    fn a_full_generate_request_round_trips() {
        let mut r = api::GenerateRequest::greedy(vec![1, 2, 3], 7);
        r.sampling.seed = ROption::RNone;
        r.logit_bias.push(api::LogitBias {
            token: 2,
            bias: f32::NEG_INFINITY,
        });
        r.constraint = ROption::RSome(api::Constraint {
            kind: api::ConstraintKind::Grammar,
            text: "root ::= \"a\"".into(),
        });
        r.logprobs = ROption::RSome(3);
        r.adapters = ROption::RSome(RVec::from(vec![api::request::AdapterRequest {
            path: "/a.gguf".into(),
            scale: 0.5,
        }]));
        r.extensions.push(api::extension::Extension {
            key: "x-k".into(),
            value: api::extension::ExtValue::Text("v".into()),
        });
        let bytes = postcard::to_stdvec(&GenerateRequest::from(&r)).expect("encode");
        let back: GenerateRequest = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(api::GenerateRequest::from(back), r);
    }

    #[test]
    fn a_token_with_logprobs_round_trips() {
        let mut token = api::Token::new(5, "é");
        token.logprobs = ROption::RSome(api::step::TokenLogprobs::from_logits(
            &[0.0, 1.0, f32::NEG_INFINITY],
            1,
            2,
        ));
        let step = api::Step::Token(token);
        let bytes = postcard::to_stdvec(&Step::from(&step)).expect("encode");
        let back: Step = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(api::Step::from(back), step);
    }
}
