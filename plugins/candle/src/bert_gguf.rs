//! GGUF `general.architecture = bert` files (as llama.cpp's `convert_hf_to_gguf.py` writes
//! `BertModel`, and RoBERTa-style models whose converter already dropped the position
//! offset) as a [`crate::bert::Bert`].
//!
//! Every tensor is read and dequantized to F32 (F16 and block-quantized Q8_0 / k-quant
//! matrices alike: an embedding model is small, and F32 keeps candle's vectors within
//! rounding of the weights the file holds), renamed from llama.cpp's names to Hugging Face's
//! `BertModel` names and handed to candle-transformers' BERT through a `VarBuilder`. A tensor
//! plain BERT does not read (a reranker's `cls.*` head, a fused `attn_qkv`) is refused rather
//! than ignored. GELU is the exact (erf) one of BERT's `hidden_act: gelu`; llama.cpp
//! computes the tanh approximation, within the agreement tolerance (docs/models.md).

use crate::bert::{self, Bert};
use crate::embed::Pooling;
use crate::error::{no_panic, Result, ResultExt};
use crate::gguf::Loaded;
use crate::gguf_meta::{self as meta, Metadata};
use crate::model::ModelInfo;
use crate::net::Net;
use crate::tokenizer::gguf::GgufVocab;
use crate::tokenizer::wordpiece::Framing;
use crate::tokenizer::Vocab;
use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct, PositionEmbeddingType};
use llmlocal_plugin_api::PluginError;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// llama.cpp's name of a per-layer tensor -> Hugging Face's (under `encoder.layer.N.`).
const LAYER_NAMES: [(&str, &str); 8] = [
    ("attn_q", "attention.self.query"),
    ("attn_k", "attention.self.key"),
    ("attn_v", "attention.self.value"),
    ("attn_output", "attention.output.dense"),
    ("attn_output_norm", "attention.output.LayerNorm"),
    ("ffn_up", "intermediate.dense"),
    ("ffn_down", "output.dense"),
    ("layer_output_norm", "output.LayerNorm"),
];

/// Top-level tensors, llama.cpp -> Hugging Face (under `embeddings.`).
const TOP_NAMES: [(&str, &str); 4] = [
    ("token_embd", "word_embeddings"),
    ("position_embd", "position_embeddings"),
    ("token_types", "token_type_embeddings"),
    ("token_embd_norm", "LayerNorm"),
];

/// The token-type table's Hugging Face name.
const TOKEN_TYPES: &str = "embeddings.token_type_embeddings.weight";

/// Loads a GGUF `bert` file.
pub fn load(
    content: Content,
    file: &mut std::fs::File,
    path: &Path,
    device: &Device,
    context: u32,
) -> Result<Loaded> {
    let md = &content.metadata;
    if meta::boolean(md, "bert.attention.causal") == Some(true) {
        return Err(PluginError::unsupported_architecture(
            "a GGUF bert with causal attention (`bert.attention.causal`) is not supported by \
             the candle backend (BERT attends both ways)",
        ));
    }
    let pooling = file_pooling(md)?;
    let layers = required(md, "bert.block_count")?;
    let names = hf_names(&content, layers)?;
    let mut tensors = no_panic("reading the GGUF tensors", || {
        read_tensors(&content, file, device, &names)
            .format_err(|| format!("cannot read the tensors of {}", path.display()))
    })?;
    if !tensors.contains_key(TOKEN_TYPES) {
        // Optional in llama.cpp (RoBERTa-style models have one type): adding nothing.
        let hidden = required(md, "bert.embedding_length")?;
        let zeros = Tensor::zeros((1, hidden), DType::F32, device)
            .internal_err(|| "creating the token-type table".to_string())?;
        tensors.insert(TOKEN_TYPES.to_string(), zeros);
    }
    let config = config(md, &tensors, layers)?;
    let parameters: u64 = tensors.values().map(|t| t.elem_count() as u64).sum();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let net = Bert::load(vb, &config, pooling)?;
    let vocab = load_vocab(path, md)?;
    let name = meta::string(md, "general.name")
        .map(str::to_string)
        .unwrap_or_else(|| crate::gguf::file_stem(path));
    let info = ModelInfo {
        architecture: "bert".to_string(),
        name,
        context_length: bert::context_length(config.max_position_embeddings, context),
        train_context_length: meta::uint(md, "bert.context_length")
            .map_or(config.max_position_embeddings, |n| n as usize),
        vocab_size: config.vocab_size,
        embedding_length: config.hidden_size,
        layer_count: layers,
        parameter_count: parameters,
        // Held dequantized: 4 bytes per weight.
        size_bytes: parameters * 4,
    };
    Ok(Loaded {
        net: Net::Encoder(Arc::new(net)),
        vocab,
        info,
    })
}

fn required(md: &Metadata, key: &str) -> Result<usize> {
    meta::uint(md, key).map(|n| n as usize).ok_or_else(|| {
        PluginError::unsupported_format(format!("the GGUF is missing the metadata key `{key}`"))
    })
}

/// `bert.pooling_type` (llama.cpp's numbering); mean when the file names none.
fn file_pooling(md: &Metadata) -> Result<Pooling> {
    match meta::uint(md, "bert.pooling_type") {
        None | Some(1) => Ok(Pooling::Mean),
        Some(0) => Ok(Pooling::None),
        Some(2) => Ok(Pooling::Cls),
        Some(3) => Ok(Pooling::Last),
        Some(4) => Err(PluginError::unsupported_architecture(
            "a GGUF bert reranker (`bert.pooling_type` 4 = rank) is not supported by the candle \
             backend; use the llama-cpp backend",
        )),
        Some(n) => Err(PluginError::unsupported_format(format!(
            "GGUF `bert.pooling_type` {n} is not one llama.cpp defines (0 to 4)"
        ))),
    }
}

/// Every tensor's Hugging Face name, or an error naming one plain BERT does not read.
fn hf_names(content: &Content, layers: usize) -> Result<HashMap<String, String>> {
    let mut names = HashMap::new();
    for gguf in content.tensor_infos.keys() {
        let hf = hf_name(gguf, layers).ok_or_else(|| {
            PluginError::unsupported_architecture(format!(
                "GGUF bert tensor `{gguf}` is not part of a plain BertModel (a reranker head, a \
                 fused projection or a layer past `bert.block_count`): the candle backend \
                 computes plain BERT only; use the llama-cpp backend"
            ))
        })?;
        names.insert(gguf.clone(), hf);
    }
    Ok(names)
}

/// `blk.3.attn_q.weight` -> `encoder.layer.3.attention.self.query.weight`.
pub fn hf_name(gguf: &str, layers: usize) -> Option<String> {
    let (stem, kind) = gguf.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    if let Some((_, hf)) = TOP_NAMES.iter().find(|(g, _)| *g == stem) {
        return Some(format!("embeddings.{hf}.{kind}"));
    }
    let (layer, part) = stem.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok().filter(|&l| l < layers)?;
    let (_, hf) = LAYER_NAMES.iter().find(|(g, _)| *g == part)?;
    Some(format!("encoder.layer.{layer}.{hf}.{kind}"))
}

/// Reads every tensor, dequantized to F32, under its Hugging Face name.
fn read_tensors(
    content: &Content,
    file: &mut std::fs::File,
    device: &Device,
    names: &HashMap<String, String>,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    for (gguf, hf) in names {
        let tensor = content.tensor(file, gguf, device)?.dequantize(device)?;
        tensors.insert(hf.clone(), tensor);
    }
    Ok(tensors)
}

/// The BERT config: dimensions from the metadata, table sizes from the tensors.
fn config(md: &Metadata, tensors: &HashMap<String, Tensor>, layers: usize) -> Result<Config> {
    let rows = |name: &str| -> Result<usize> {
        let t = tensors
            .get(&format!("embeddings.{name}.weight"))
            .ok_or_else(|| {
                PluginError::unsupported_format(format!("the GGUF bert has no `{name}` table"))
            })?;
        Ok(t.dims().first().copied().unwrap_or(0))
    };
    let hidden = required(md, "bert.embedding_length")?;
    let heads = required(md, "bert.attention.head_count")?;
    if heads == 0 || hidden % heads != 0 {
        return Err(PluginError::unsupported_format(format!(
            "GGUF bert head count {heads} does not divide the embedding length {hidden}"
        )));
    }
    Ok(Config {
        vocab_size: rows("word_embeddings")?,
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        intermediate_size: required(md, "bert.feed_forward_length")?,
        // BERT's `gelu` (erf); see the module docs.
        hidden_act: HiddenAct::Gelu,
        hidden_dropout_prob: 0.0,
        max_position_embeddings: rows("position_embeddings")?,
        type_vocab_size: rows("token_type_embeddings")?,
        initializer_range: 0.02,
        layer_norm_eps: meta::float(md, "bert.attention.layer_norm_epsilon").unwrap_or(1e-12),
        pad_token_id: 0,
        position_embedding_type: PositionEmbeddingType::Absolute,
        use_cache: false,
        classifier_dropout: None,
        model_type: None,
    })
}

/// tokenizer.json beside the file if there is one, else the GGUF's WordPiece vocabulary
/// (`tokenizer.ggml.model = "bert"`) or, for other vocabularies, the GGUF tokenizer builder.
fn load_vocab(path: &Path, md: &Metadata) -> Result<Vocab> {
    let beside = path
        .parent()
        .is_some_and(|d| d.join("tokenizer.json").is_file());
    if beside || meta::string(md, "tokenizer.ggml.model") != Some("bert") {
        return crate::gguf::load_vocab(path, md);
    }
    let vocab = GgufVocab::from_metadata(md)?;
    let add_sep = meta::boolean(md, "tokenizer.ggml.add_sep_token")
        .or_else(|| meta::boolean(md, "tokenizer.ggml.add_eos_token"));
    let framing = Framing {
        cls: meta::token_id(md, "tokenizer.ggml.cls_token_id").or(vocab.bos),
        // llama.cpp's key is spelled `seperator`.
        sep: meta::token_id(md, "tokenizer.ggml.seperator_token_id").or(vocab.eos),
        add_cls: meta::boolean(md, "tokenizer.ggml.add_bos_token").unwrap_or(true),
        add_sep: add_sep.unwrap_or(true),
    };
    Vocab::from_wordpiece(&vocab, framing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_names_map_to_bert_model_names() {
        assert_eq!(
            hf_name("blk.1.attn_output_norm.bias", 2).as_deref(),
            Some("encoder.layer.1.attention.output.LayerNorm.bias")
        );
        assert_eq!(
            hf_name("token_types.weight", 2).as_deref(),
            Some("embeddings.token_type_embeddings.weight")
        );
        // A layer past block_count, a reranker head, a fused projection: not plain BERT.
        assert_eq!(hf_name("blk.2.attn_q.weight", 2), None);
        assert_eq!(hf_name("cls.output.weight", 2), None);
        assert_eq!(hf_name("blk.0.attn_qkv.weight", 2), None);
    }
}
