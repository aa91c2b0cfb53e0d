//! Writes a random-weight llama GGUF (F16, F32 or Q8_0 matrices, F32 norms) big enough for
//! meaningful throughput numbers, with the tokenizer copied from an existing llama GGUF. The
//! weights are the same noise sequence in every storage, so the F32 and Q8_0 files of one shape
//! hold the same model up to rounding.

use llmlocal_formats::gguf::{
    read_file_header, GgmlType, GgufError, GgufWriter, MetaArray, MetaValue, TensorSpec,
};
use std::{fs::File, io::BufWriter, path::Path};

/// Shape of the random model.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub n_embd: u64,
    pub n_layer: u64,
    pub n_ff: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub context_length: u64,
    /// Vocabulary size; 0 = the tokenizer source's. A larger value pads the vocabulary with
    /// unused tokens so the embedding and output matrices have the real model's size.
    pub n_vocab: u64,
    /// Output matrix shared with the token embedding (no `output.weight`), as in Llama 3.2.
    pub tied_embeddings: bool,
}

impl Shape {
    /// ~85M parameters in the blocks (the 110M class once a 32k vocabulary is added), like the random
    /// llama the DESIGN throughput figures were taken on.
    pub const RANDOM_85M: Shape = Shape {
        n_embd: 768,
        n_layer: 12,
        n_ff: 2048,
        n_head: 12,
        n_head_kv: 12,
        context_length: 2048,
        n_vocab: 0,
        tied_embeddings: false,
    };

    /// ~50M parameters in the blocks: the backend comparison runs F32 on it, which at 85M
    /// (340 MB of weights per token) takes too long on a small machine.
    pub const RANDOM_50M: Shape = Shape {
        n_embd: 640,
        n_layer: 10,
        n_ff: 1728,
        n_head: 10,
        n_head_kv: 10,
        context_length: 2048,
        n_vocab: 0,
        tied_embeddings: false,
    };

    /// The shapes of Llama-3.2-1B (1.24B parameters: 16 layers, 2048 wide, GQA 32/8, 128256
    /// tokens, tied embeddings), for GPU throughput numbers comparable with published ones.
    pub const LLAMA_3_2_1B: Shape = Shape {
        n_embd: 2048,
        n_layer: 16,
        n_ff: 8192,
        n_head: 32,
        n_head_kv: 8,
        context_length: 8192,
        n_vocab: 128_256,
        tied_embeddings: true,
    };
}

/// How the 2-D matrices are stored (1-D norms are always F32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Storage {
    F16,
    F32,
    /// ggml Q8_0: blocks of 32 values as an f16 scale and 32 signed bytes.
    Q8_0,
}

impl Storage {
    /// `general.file_type` (llama_ftype).
    fn file_type(self) -> u64 {
        match self {
            Storage::F32 => 0,
            Storage::F16 => 1,
            Storage::Q8_0 => 7,
        }
    }

    /// File-name suffix, e.g. `q8_0`.
    pub fn suffix(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::F16 => "f16",
            Storage::Q8_0 => "q8_0",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot read the tokenizer source '{path}': {source}")]
    Source { path: String, source: GgufError },
    #[error("the tokenizer source is not a GGUF v2/v3 file: {0}")]
    BadSource(String),
    #[error("unsupported random-model shape: {0}")]
    BadShape(String),
    #[error("cannot write the random model: {0}")]
    Io(#[from] std::io::Error),
}

const ALIGN: u32 = 32;

/// The tokenizer source's key/value pairs, in file order.
fn read_kvs(path: &Path) -> Result<Vec<(String, MetaValue)>, WriteError> {
    let shown = path.display().to_string();
    match read_file_header(path) {
        Ok(header) => Ok(header.metadata),
        Err(e) => Err(match e.into_without_path() {
            GgufError::NotGguf | GgufError::UnsupportedVersion(_) => WriteError::BadSource(shown),
            source => WriteError::Source {
                path: shown,
                source,
            },
        }),
    }
}

/// A writer error: I/O, or a tensor the shape makes unwritable.
fn write_err(err: GgufError) -> WriteError {
    match err.into_without_path() {
        GgufError::Io(e) => WriteError::Io(e),
        other => WriteError::BadShape(other.to_string()),
    }
}

fn kv(key: &str, value: MetaValue) -> (String, MetaValue) {
    (key.into(), value)
}

fn kv_u32(key: &str, value: u64) -> (String, MetaValue) {
    kv(
        key,
        MetaValue::U32(u32::try_from(value).unwrap_or(u32::MAX)),
    )
}

/// The tensor's random values: norms (1-D) at 1, matrices uniform noise with std ~0.02
/// (a = 0.02 * sqrt 3).
fn values(spec: &TensorSpec, noise: &mut Noise) -> Vec<f32> {
    let n = spec.dims.iter().product::<u64>() as usize;
    if spec.dims.len() == 1 {
        vec![1.0; n]
    } else {
        (0..n).map(|_| noise.next(0.035)).collect()
    }
}

fn tensors(shape: &Shape, n_vocab: u64, storage: Storage) -> Vec<TensorSpec> {
    let e = shape.n_embd;
    let kv = e / shape.n_head * shape.n_head_kv;
    let matrix = match storage {
        Storage::F16 => GgmlType::F16,
        Storage::F32 => GgmlType::F32,
        Storage::Q8_0 => GgmlType::Q8_0,
    };
    let t = |name: String, dims: Vec<u64>, is_matrix: bool| {
        TensorSpec::new(name, dims, if is_matrix { matrix } else { GgmlType::F32 })
    };
    let mut out = vec![
        t("token_embd.weight".into(), vec![e, n_vocab], true),
        t("output_norm.weight".into(), vec![e], false),
    ];
    if !shape.tied_embeddings {
        out.push(t("output.weight".into(), vec![e, n_vocab], true));
    }
    for l in 0..shape.n_layer {
        let b = |s: &str| format!("blk.{l}.{s}.weight");
        out.push(t(b("attn_norm"), vec![e], false));
        out.push(t(b("attn_q"), vec![e, e], true));
        out.push(t(b("attn_k"), vec![e, kv], true));
        out.push(t(b("attn_v"), vec![e, kv], true));
        out.push(t(b("attn_output"), vec![e, e], true));
        out.push(t(b("ffn_norm"), vec![e], false));
        out.push(t(b("ffn_gate"), vec![e, shape.n_ff], true));
        out.push(t(b("ffn_up"), vec![e, shape.n_ff], true));
        out.push(t(b("ffn_down"), vec![shape.n_ff, e], true));
    }
    out
}

/// Appends `n_vocab - have` tokens (`<unused_N>`, score 0) to the tokenizer's token, score and
/// type arrays, keeping the real tokens' ids. They are NORMAL tokens, so that a random model
/// that generates them streams visible text (UNUSED tokens detokenize to nothing).
fn pad_vocabulary(
    kvs: &mut [(String, MetaValue)],
    have: u64,
    n_vocab: u64,
) -> Result<(), WriteError> {
    const TOKEN_TYPE_NORMAL: i32 = 1;
    if n_vocab <= have {
        return Ok(());
    }
    let new = have..n_vocab;
    for (key, value) in kvs.iter_mut() {
        let padded = matches!(
            key.as_str(),
            "tokenizer.ggml.tokens" | "tokenizer.ggml.scores" | "tokenizer.ggml.token_type"
        );
        let (true, MetaValue::Array(array)) = (padded, value) else {
            continue;
        };
        if array.len() as u64 != have {
            return Err(WriteError::BadSource(format!(
                "{key} does not hold one entry per token"
            )));
        }
        match array {
            MetaArray::Str(v) => v.extend(new.clone().map(|id| format!("<unused_{id}>"))),
            MetaArray::F32(v) => v.extend(new.clone().map(|_| 0.0)),
            MetaArray::I32(v) => v.extend(new.clone().map(|_| TOKEN_TYPE_NORMAL)),
            _ => {
                return Err(WriteError::BadSource(format!(
                    "{key} is not an array of strings, f32 or i32"
                )))
            }
        }
    }
    Ok(())
}

/// xorshift64*: fast deterministic noise, uniform in [-scale, scale].
struct Noise(u64);

impl Noise {
    fn next(&mut self, scale: f32) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40; // 24 bits
        (bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }
}

/// Writes the random model with F16 matrices to `out` with the tokenizer (`tokenizer.*` keys)
/// of `tokenizer_from`.
pub fn write(out: &Path, tokenizer_from: &Path, shape: &Shape) -> Result<(), WriteError> {
    write_as(out, tokenizer_from, shape, Storage::F16)
}

/// [`write`] with the matrices stored as `storage`.
pub fn write_as(
    out: &Path,
    tokenizer_from: &Path,
    shape: &Shape,
    storage: Storage,
) -> Result<(), WriteError> {
    if storage == Storage::Q8_0
        && (!shape.n_embd.is_multiple_of(32) || !shape.n_ff.is_multiple_of(32))
    {
        return Err(WriteError::BadShape(
            "Q8_0 needs n_embd and n_ff to be multiples of 32".into(),
        ));
    }
    let mut source = read_kvs(tokenizer_from)?;
    let source_vocab = source
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| v.as_array())
        .map(|a| a.len() as u64)
        .ok_or_else(|| WriteError::BadSource("no tokenizer.ggml.tokens".into()))?;
    let n_vocab = source_vocab.max(shape.n_vocab);
    pad_vocabulary(&mut source, source_vocab, n_vocab)?;
    let mut kvs = vec![
        kv("general.architecture", MetaValue::Str("llama".into())),
        kv(
            "general.name",
            MetaValue::Str("llmlocal-bench-random-llama".into()),
        ),
        kv_u32("general.file_type", storage.file_type()),
        kv("general.alignment", MetaValue::U32(ALIGN)),
        kv_u32("llama.context_length", shape.context_length),
        kv_u32("llama.embedding_length", shape.n_embd),
        kv_u32("llama.block_count", shape.n_layer),
        kv_u32("llama.feed_forward_length", shape.n_ff),
        kv_u32("llama.attention.head_count", shape.n_head),
        kv_u32("llama.attention.head_count_kv", shape.n_head_kv),
        kv_u32("llama.rope.dimension_count", shape.n_embd / shape.n_head),
        kv(
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(1e-5),
        ),
    ];
    // The tokenizer, minus special-token ids set to "none" (u32::MAX), which llama.cpp warns about.
    kvs.extend(
        source
            .into_iter()
            .filter(|(k, v)| k.starts_with("tokenizer.") && *v != MetaValue::U32(u32::MAX)),
    );
    let tensors = tensors(shape, n_vocab, storage);
    let tmp = out.with_extension("partial");
    let file = BufWriter::new(File::create(&tmp)?);
    let mut w = GgufWriter::new(file, &kvs, tensors.clone()).map_err(write_err)?;
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    for t in &tensors {
        w.write_tensor(&values(t, &mut noise)).map_err(write_err)?;
    }
    drop(w.finish().map_err(write_err)?);
    std::fs::rename(&tmp, out)?;
    Ok(())
}
