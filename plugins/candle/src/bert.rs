//! BERT encoders (classic `bert`: all-MiniLM, bge, e5 and other sentence-transformers models
//! with absolute position embeddings) for embeddings, on candle-transformers'
//! `bert::BertModel`, from a Hugging Face folder (here) or a GGUF file ([`crate::bert_gguf`]).
//!
//! An encoder computes embeddings only: generation and next-token logits are `Unsupported`
//! (it has no language-model head). Weights are held in F32 on every device (f16/bf16
//! checkpoints widened, GGUF F16/Q8_0 tensors dequantized): embedding models are small, and
//! F32 keeps the vectors within rounding of the reference forward.
//!
//! The model's own pooling comes from the files: sentence-transformers' `modules.json` and
//! `1_Pooling/config.json` in a folder (mean when there are none), `bert.pooling_type` in a
//! GGUF. Refused with `UnsupportedArchitecture`, naming what: position embeddings other than
//! absolute (relative keys, jina-bert's alibi), activations other than GELU/ReLU, checkpoint
//! classes other than `Bert*` (custom code under `model_type: bert`), sentence-transformers
//! modules after pooling other than `Normalize` (a `Dense` projection would change the
//! vector), and poolings other than mean / cls / last-token. Other BERT-family types
//! (`roberta`, `nomic_bert`, `jina_bert`, ...) never reach this module: their `model_type` or
//! GGUF architecture is refused by the dispatch.

use crate::embed::Pooling;
use crate::error::{no_panic, read_file, Result};
use crate::files::HfFiles;
use crate::hf::config::{optional_usize, required_usize};
use crate::hf::{weights, Loaded};
use crate::model::ModelInfo;
use crate::net::Net;
use crate::tokenizer::{HfSpecials, Vocab};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, HiddenAct, PositionEmbeddingType};
use llmlocal_plugin_api::{AdapterRequest, PluginError};
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::Arc;

/// A loaded BERT encoder, shared read-only by every embedding request.
pub struct Bert {
    model: BertModel,
    device: Device,
    hidden: usize,
    pooling: Pooling,
}

impl Bert {
    /// Builds the network from tensors under Hugging Face `BertModel` names.
    pub fn load(vb: VarBuilder, config: &Config, pooling: Pooling) -> Result<Self> {
        let device = vb.device().clone();
        let model = no_panic("building the bert model", || {
            BertModel::load(vb, config).map_err(|e| {
                PluginError::unsupported_format(format!("building the bert model: {e}"))
            })
        })?;
        Ok(Bert {
            model,
            device,
            hidden: config.hidden_size,
            pooling,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// The pooling the model's files ask for.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// The last layer's vector of every token (`[tokens, hidden]`), for one input alone:
    /// token type 0, positions from 0, every token attending to every other.
    pub fn hidden(&self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let types = ids.zeros_like()?;
        self.model.forward(&ids, &types, None)?.squeeze(0)
    }
}

/// Why a BERT model answers no generation or logits request.
pub fn cannot_generate() -> PluginError {
    PluginError::unsupported(
        "this is a BERT encoder (an embedding model): it computes embeddings only, it cannot \
         generate text or next-token logits; use /v1/embeddings or /api/embed",
    )
}

/// The positions a load covers: the asked number, else the position table's length, and
/// never more than that table (a later position has no embedding), so `metadata` reports
/// the context the model really holds.
pub fn context_length(max_positions: usize, asked: u32) -> usize {
    match asked as usize {
        0 => max_positions,
        n if n > max_positions => {
            tracing::info!(
                "candle: bert has {max_positions} position embeddings; its context is \
                 {max_positions}, not the {n} asked"
            );
            max_positions
        }
        n => n,
    }
}

/// Maps candle's `hidden_act` names (Hugging Face's) onto the activations BertModel has.
pub fn hidden_act(name: &str) -> Result<HiddenAct> {
    match name {
        "gelu" => Ok(HiddenAct::Gelu),
        // Hugging Face's tanh approximations of GELU.
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(HiddenAct::GeluApproximate),
        "relu" => Ok(HiddenAct::Relu),
        other => Err(PluginError::unsupported_architecture(format!(
            "bert with hidden_act `{other}` is not supported by the candle backend (gelu, \
             gelu_new, gelu_pytorch_tanh, relu)"
        ))),
    }
}

// ------------------------------------------------------------------ Hugging Face folders

/// Whether config.json describes a `bert` model (these load here, not as a decoder).
pub fn is_bert_folder(config: &Path) -> Result<bool> {
    Ok(read_config(config)?
        .get("model_type")
        .and_then(Value::as_str)
        == Some("bert"))
}

fn read_config(path: &Path) -> Result<Map<String, Value>> {
    let bytes = read_file(path)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(PluginError::unsupported_format(format!(
            "{} is not a JSON object",
            path.display()
        ))),
    }
}

/// Loads a sentence-transformers / Hugging Face BERT folder.
pub fn load_hf(
    files: &HfFiles,
    device: &Device,
    context: u32,
    adapters: &[AdapterRequest],
) -> Result<Loaded> {
    if !adapters.is_empty() {
        return Err(PluginError::unsupported(
            "the candle backend merges LoRA adapters into decoder models only, not into a \
             bert encoder; load it without adapters",
        ));
    }
    let json = read_config(&files.config)?;
    let config = hf_config(&json)?;
    let pooling = folder_pooling(&files.dir)?;
    let mut tensors = weights::load(&files.weights)?;
    weights::check_dtypes(&tensors)?;
    let parameters: u64 = tensors.values().map(|t| t.elem_count() as u64).sum();
    // Old checkpoints (BertForPreTraining) carry heads BertModel does not read; they are
    // dropped before the VarBuilder keeps every tensor alive.
    tensors.retain(|name, _| !name.starts_with("cls."));
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let bert = Bert::load(vb, &config, pooling)?;
    let tokenizer = files.tokenizer.as_ref().ok_or_else(|| {
        PluginError::not_found(format!(
            "no tokenizer.json in {}: the candle backend needs it for safetensors models",
            files.dir.display()
        ))
    })?;
    // tokenizer.json's post-processor frames inputs as `[CLS] ... [SEP]`.
    let vocab = Vocab::from_tokenizer_json(tokenizer, HfSpecials::default())?;
    let context = context_length(config.max_position_embeddings, context);
    let info = ModelInfo {
        architecture: "bert".to_string(),
        name: files.name(),
        context_length: context,
        train_context_length: config.max_position_embeddings,
        vocab_size: config.vocab_size,
        embedding_length: config.hidden_size,
        layer_count: config.num_hidden_layers,
        parameter_count: parameters,
        size_bytes: parameters * 4,
    };
    Ok(Loaded {
        net: Net::Encoder(Arc::new(bert)),
        vocab,
        info,
    })
}

/// candle's BERT config from config.json (Hugging Face's `BertConfig` defaults for keys a
/// checkpoint leaves out), refusing what `BertModel` would compute differently.
fn hf_config(json: &Map<String, Value>) -> Result<Config> {
    let text = |key: &str| json.get(key).and_then(Value::as_str);
    if let Some(kind) = text("position_embedding_type").filter(|k| *k != "absolute") {
        return Err(PluginError::unsupported_architecture(format!(
            "bert with position_embedding_type `{kind}` is not supported by the candle backend \
             (absolute position embeddings only); use the llama-cpp backend"
        )));
    }
    let class = json
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    if let Some(class) = class.filter(|c| !c.starts_with("Bert")) {
        return Err(PluginError::unsupported_architecture(format!(
            "`{class}` (model_type bert) is not a plain BERT: the candle backend computes \
             BertModel only; use the llama-cpp backend"
        )));
    }
    let hidden = required_usize(json, "hidden_size")?;
    let heads = required_usize(json, "num_attention_heads")?;
    if heads == 0 || hidden % heads != 0 {
        return Err(PluginError::unsupported_format(format!(
            "config.json: hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
        )));
    }
    let eps = json
        .get("layer_norm_eps")
        .and_then(Value::as_f64)
        .unwrap_or(1e-12);
    Ok(Config {
        vocab_size: required_usize(json, "vocab_size")?,
        hidden_size: hidden,
        num_hidden_layers: required_usize(json, "num_hidden_layers")?,
        num_attention_heads: heads,
        intermediate_size: required_usize(json, "intermediate_size")?,
        hidden_act: hidden_act(text("hidden_act").unwrap_or("gelu"))?,
        hidden_dropout_prob: 0.0,
        max_position_embeddings: optional_usize(json, "max_position_embeddings")?.unwrap_or(512),
        type_vocab_size: optional_usize(json, "type_vocab_size")?.unwrap_or(2),
        initializer_range: 0.02,
        layer_norm_eps: eps,
        pad_token_id: optional_usize(json, "pad_token_id")?.unwrap_or(0),
        position_embedding_type: PositionEmbeddingType::Absolute,
        use_cache: false,
        classifier_dropout: None,
        // Lets BertModel find checkpoints saved with a `bert.` prefix.
        model_type: Some("bert".to_string()),
    })
}

/// The pooling a sentence-transformers folder asks for: its Pooling module's config, mean
/// when the folder has none (a plain transformers checkpoint).
fn folder_pooling(dir: &Path) -> Result<Pooling> {
    let pooling_dir = match read_json(&dir.join("modules.json"))? {
        Some(modules) => pooling_module(&modules)?.map(|path| dir.join(path)),
        None => Some(dir.join("1_Pooling")),
    };
    let config = pooling_dir
        .map(|d| d.join("config.json"))
        .filter(|p| p.is_file());
    match config {
        Some(path) => match read_json(&path)? {
            Some(json) => pooling_mode(&json),
            None => Ok(Pooling::Mean),
        },
        None => Ok(Pooling::Mean),
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = read_file(path)?;
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        PluginError::unsupported_format(format!("{} is not valid JSON: {e}", path.display()))
    })
}

/// The Pooling module's folder named in modules.json; refuses modules that would change
/// the vector after pooling (only `Normalize` is left to the request's `normalize`).
fn pooling_module(modules: &Value) -> Result<Option<String>> {
    let list = modules
        .as_array()
        .ok_or_else(|| PluginError::unsupported_format("modules.json is not a list of modules"))?;
    let mut pooling = None;
    for module in list {
        let kind = module.get("type").and_then(Value::as_str).unwrap_or("");
        match kind.rsplit('.').next().unwrap_or("") {
            "Transformer" | "Normalize" => {}
            "Pooling" => {
                pooling = module
                    .get("path")
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
            _ => {
                return Err(PluginError::unsupported_architecture(format!(
                    "sentence-transformers module `{kind}` (modules.json) is not computed by the \
                     candle backend (Transformer, Pooling and Normalize only)"
                )))
            }
        }
    }
    Ok(pooling)
}

/// The one pooling mode set in a sentence-transformers Pooling config.
pub fn pooling_mode(json: &Value) -> Result<Pooling> {
    let flag = |key: &str| json.get(key).and_then(Value::as_bool).unwrap_or(false);
    for key in [
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
    ] {
        if flag(key) {
            return Err(PluginError::unsupported_architecture(format!(
                "sentence-transformers pooling `{key}` is not supported by the candle backend \
                 (mean, cls or last token)"
            )));
        }
    }
    if json.get("include_prompt").and_then(Value::as_bool) == Some(false) {
        return Err(PluginError::unsupported_architecture(
            "sentence-transformers pooling with `include_prompt: false` is not supported by \
             the candle backend",
        ));
    }
    let modes: Vec<Pooling> = [
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_lasttoken", Pooling::Last),
    ]
    .into_iter()
    .filter(|(key, _)| flag(key))
    .map(|(_, mode)| mode)
    .collect();
    match modes.as_slice() {
        [] => Ok(Pooling::Mean),
        [one] => Ok(*one),
        _ => Err(PluginError::unsupported_architecture(
            "a sentence-transformers pooling that concatenates several modes is not supported \
             by the candle backend",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pooling_configs_map_or_are_refused() {
        let cls = json!({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false});
        assert_eq!(pooling_mode(&cls).unwrap(), Pooling::Cls);
        assert_eq!(pooling_mode(&json!({})).unwrap(), Pooling::Mean);
        let max = json!({"pooling_mode_max_tokens": true});
        assert!(pooling_mode(&max)
            .unwrap_err()
            .message
            .contains("max_tokens"));
        let both = json!({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true});
        assert!(pooling_mode(&both).is_err());
    }

    #[test]
    fn modules_after_pooling_other_than_normalize_are_refused() {
        let ok = json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        ]);
        assert_eq!(pooling_module(&ok).unwrap().as_deref(), Some("1_Pooling"));
        let dense = json!([{"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]);
        let e = pooling_module(&dense).unwrap_err();
        assert!(e.message.contains("Dense"), "{}", e.message);
    }

    #[test]
    fn contexts_stay_within_the_position_table() {
        assert_eq!(context_length(64, 0), 64);
        assert_eq!(context_length(64, 256), 64);
        assert_eq!(context_length(64, 16), 16);
    }
}
