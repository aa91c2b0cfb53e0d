//! Writes a random-weight llama GGUF (F16, F32 or Q8_0 matrices, F32 norms) big enough for
//! meaningful throughput numbers, with the tokenizer copied from an existing llama GGUF. The
//! weights are the same noise sequence in every storage, so the F32 and Q8_0 files of one shape
//! hold the same model up to rounding.

use half::f16;
use std::{
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::Path,
};

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
    Source {
        path: String,
        source: std::io::Error,
    },
    #[error("the tokenizer source is not a GGUF v2/v3 file: {0}")]
    BadSource(String),
    #[error("unsupported random-model shape: {0}")]
    BadShape(String),
    #[error("cannot write the random model: {0}")]
    Io(#[from] std::io::Error),
}

const T_U32: u32 = 4;
const T_F32: u32 = 6;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const ALIGN: u64 = 32;
/// ggml tensor types.
const GGML_F32: u32 = 0;
const GGML_F16: u32 = 1;
const GGML_Q8_0: u32 = 8;
/// Values per Q8_0 block and bytes per block (f16 scale + 32 x i8).
const Q8_BLOCK: usize = 32;
const Q8_BYTES: u64 = 34;

/// Raw key/value entries of a GGUF header: key and the bytes of type + value.
fn read_kvs(path: &Path) -> Result<Vec<(String, Vec<u8>)>, WriteError> {
    let source = |e| WriteError::Source {
        path: path.display().to_string(),
        source: e,
    };
    let mut r = BufReader::new(File::open(path).map_err(source)?);
    let mut head = [0u8; 24];
    r.read_exact(&mut head).map_err(source)?;
    let version = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if &head[..4] != b"GGUF" || !(2..=3).contains(&version) {
        return Err(WriteError::BadSource(path.display().to_string()));
    }
    let n_kv = u64::from_le_bytes(head[16..24].try_into().unwrap_or_default());
    let mut kvs = Vec::new();
    for _ in 0..n_kv {
        let key = String::from_utf8_lossy(&read_string(&mut r).map_err(source)?).into_owned();
        let mut raw = Vec::new();
        let ty = read_u32(&mut r).map_err(source)?;
        raw.extend_from_slice(&ty.to_le_bytes());
        copy_value(&mut r, ty, &mut raw).map_err(source)?;
        kvs.push((key, raw));
    }
    Ok(kvs)
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_string(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let n = read_u64(r)?;
    let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0)];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn scalar_size(ty: u32) -> Option<usize> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

fn copy_value(r: &mut impl Read, ty: u32, out: &mut Vec<u8>) -> std::io::Result<()> {
    if let Some(size) = scalar_size(ty) {
        let mut b = vec![0u8; size];
        r.read_exact(&mut b)?;
        out.extend_from_slice(&b);
        return Ok(());
    }
    match ty {
        T_STRING => {
            let s = read_string(r)?;
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(&s);
            Ok(())
        }
        T_ARRAY => {
            let item = read_u32(r)?;
            let n = read_u64(r)?;
            out.extend_from_slice(&item.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
            for _ in 0..n {
                copy_value(r, item, out)?;
            }
            Ok(())
        }
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unknown GGUF value type {ty}"),
        )),
    }
}

fn kv_string(key: &str, value: &str) -> (String, Vec<u8>) {
    let mut raw = T_STRING.to_le_bytes().to_vec();
    raw.extend_from_slice(&(value.len() as u64).to_le_bytes());
    raw.extend_from_slice(value.as_bytes());
    (key.into(), raw)
}

fn kv_u32(key: &str, value: u64) -> (String, Vec<u8>) {
    let mut raw = T_U32.to_le_bytes().to_vec();
    raw.extend_from_slice(&u32::try_from(value).unwrap_or(u32::MAX).to_le_bytes());
    (key.into(), raw)
}

fn kv_f32(key: &str, value: f32) -> (String, Vec<u8>) {
    let mut raw = T_F32.to_le_bytes().to_vec();
    raw.extend_from_slice(&value.to_le_bytes());
    (key.into(), raw)
}

struct Tensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: u32,
}

impl Tensor {
    fn bytes(&self) -> u64 {
        let n = self.dims.iter().product::<u64>();
        match self.ggml_type {
            GGML_F16 => n * 2,
            GGML_Q8_0 => n / Q8_BLOCK as u64 * Q8_BYTES,
            _ => n * 4,
        }
    }

    /// The tensor's random values (norms at 1) in its storage, padded to the alignment.
    fn encode(&self, noise: &mut Noise) -> Vec<u8> {
        let n = self.dims.iter().product::<u64>() as usize;
        let mut bytes = Vec::with_capacity(self.bytes() as usize);
        if self.dims.len() == 1 {
            for _ in 0..n {
                bytes.extend_from_slice(&1.0f32.to_le_bytes());
            }
        } else {
            // Uniform noise with std ~0.02 (a = 0.02 * sqrt 3).
            let values: Vec<f32> = (0..n).map(|_| noise.next(0.035)).collect();
            match self.ggml_type {
                GGML_F16 => values
                    .iter()
                    .for_each(|v| bytes.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
                GGML_Q8_0 => quantize_q8_0(&values, &mut bytes),
                _ => values
                    .iter()
                    .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
            }
        }
        let pad = self.bytes().div_ceil(ALIGN) * ALIGN - self.bytes();
        bytes.extend(std::iter::repeat_n(0u8, pad as usize));
        bytes
    }
}

/// ggml's reference Q8_0 quantisation: per block of 32, scale = max |x| / 127 and
/// q = round(x / scale). Rows are multiples of 32 long for every shape we write.
fn quantize_q8_0(values: &[f32], out: &mut Vec<u8>) {
    for block in values.chunks(Q8_BLOCK) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        // The clamp keeps the cast in range; `as` on a value in [-127, 127] is exact.
        out.extend(
            block
                .iter()
                .map(|v| (v * id).round().clamp(-127.0, 127.0) as i8 as u8),
        );
    }
}

fn tensors(shape: &Shape, n_vocab: u64, storage: Storage) -> Vec<Tensor> {
    let e = shape.n_embd;
    let kv = e / shape.n_head * shape.n_head_kv;
    let matrix = match storage {
        Storage::F16 => GGML_F16,
        Storage::F32 => GGML_F32,
        Storage::Q8_0 => GGML_Q8_0,
    };
    let t = |name: String, dims: Vec<u64>, is_matrix: bool| Tensor {
        name,
        dims,
        ggml_type: if is_matrix { matrix } else { GGML_F32 },
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
    kvs: &mut [(String, Vec<u8>)],
    have: u64,
    n_vocab: u64,
) -> Result<(), WriteError> {
    const TOKEN_TYPE_NORMAL: i32 = 1;
    if n_vocab <= have {
        return Ok(());
    }
    for (key, raw) in kvs.iter_mut() {
        let item: fn(u64, &mut Vec<u8>) = match key.as_str() {
            "tokenizer.ggml.tokens" => |id, out| {
                let text = format!("<unused_{id}>");
                out.extend_from_slice(&(text.len() as u64).to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            },
            "tokenizer.ggml.scores" => |_, out| out.extend_from_slice(&0.0f32.to_le_bytes()),
            "tokenizer.ggml.token_type" => {
                |_, out| out.extend_from_slice(&TOKEN_TYPE_NORMAL.to_le_bytes())
            }
            _ => continue,
        };
        // Array layout: value type (4 bytes), item type (4), count (8), items.
        let count = raw
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes);
        if count != Some(have) {
            return Err(WriteError::BadSource(format!(
                "{key} does not hold one entry per token"
            )));
        }
        raw[8..16].copy_from_slice(&n_vocab.to_le_bytes());
        for id in have..n_vocab {
            item(id, raw);
        }
    }
    Ok(())
}

/// A writer that counts bytes (for the alignment padding).
struct Counting {
    inner: BufWriter<File>,
    written: u64,
}

impl Counting {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.written += bytes.len() as u64;
        self.inner.write_all(bytes)
    }
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
    let source = read_kvs(tokenizer_from)?;
    let mut source = source;
    let source_vocab = source
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, raw)| raw.get(8..16))
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| WriteError::BadSource("no tokenizer.ggml.tokens".into()))?;
    let n_vocab = source_vocab.max(shape.n_vocab);
    pad_vocabulary(&mut source, source_vocab, n_vocab)?;
    let mut kvs = vec![
        kv_string("general.architecture", "llama"),
        kv_string("general.name", "llmlocal-bench-random-llama"),
        kv_u32("general.file_type", storage.file_type()),
        kv_u32("general.alignment", ALIGN),
        kv_u32("llama.context_length", shape.context_length),
        kv_u32("llama.embedding_length", shape.n_embd),
        kv_u32("llama.block_count", shape.n_layer),
        kv_u32("llama.feed_forward_length", shape.n_ff),
        kv_u32("llama.attention.head_count", shape.n_head),
        kv_u32("llama.attention.head_count_kv", shape.n_head_kv),
        kv_u32("llama.rope.dimension_count", shape.n_embd / shape.n_head),
        kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5),
    ];
    // The tokenizer, minus special-token ids set to "none" (u32::MAX), which llama.cpp warns about.
    let none_id = [&T_U32.to_le_bytes()[..], &u32::MAX.to_le_bytes()[..]].concat();
    kvs.extend(
        source
            .into_iter()
            .filter(|(k, raw)| k.starts_with("tokenizer.") && *raw != none_id),
    );
    let tensors = tensors(shape, n_vocab, storage);
    let tmp = out.with_extension("partial");
    let mut w = Counting {
        inner: BufWriter::new(File::create(&tmp)?),
        written: 0,
    };
    w.put(b"GGUF")?;
    w.put(&3u32.to_le_bytes())?;
    w.put(&(tensors.len() as u64).to_le_bytes())?;
    w.put(&(kvs.len() as u64).to_le_bytes())?;
    for (key, raw) in &kvs {
        w.put(&(key.len() as u64).to_le_bytes())?;
        w.put(key.as_bytes())?;
        w.put(raw)?;
    }
    let mut offset = 0u64;
    for t in &tensors {
        w.put(&(t.name.len() as u64).to_le_bytes())?;
        w.put(t.name.as_bytes())?;
        w.put(&(t.dims.len() as u32).to_le_bytes())?;
        for d in &t.dims {
            w.put(&d.to_le_bytes())?;
        }
        w.put(&t.ggml_type.to_le_bytes())?;
        w.put(&offset.to_le_bytes())?;
        offset += t.bytes().div_ceil(ALIGN) * ALIGN;
    }
    let pad = w.written.div_ceil(ALIGN) * ALIGN - w.written;
    w.put(&vec![0u8; pad as usize])?;
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    for t in &tensors {
        w.put(&t.encode(&mut noise))?;
    }
    w.inner.flush()?;
    drop(w);
    std::fs::rename(&tmp, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dequantizes Q8_0 blocks back to f32.
    fn dequantize(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks(Q8_BYTES as usize)
            .flat_map(|b| {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                b[2..].iter().map(move |&q| f32::from(q as i8) * d)
            })
            .collect()
    }

    #[test]
    fn q8_0_round_trips_within_half_a_step_per_block() {
        let mut noise = Noise(42);
        let mut values: Vec<f32> = (0..256).map(|_| noise.next(0.035)).collect();
        values[40..72].fill(0.0); // an all-zero block must not divide by zero
        let mut bytes = Vec::new();
        quantize_q8_0(&values, &mut bytes);
        assert_eq!(bytes.len(), 8 * Q8_BYTES as usize);
        let back = dequantize(&bytes);
        for (block, (orig, deq)) in values.chunks(32).zip(back.chunks(32)).enumerate() {
            let amax = orig.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // Half a quantisation step, plus the f16 rounding of the scale.
            let tolerance = amax / 127.0 * 0.5 + amax * 1e-3;
            for (o, d) in orig.iter().zip(deq) {
                assert!((o - d).abs() <= tolerance, "block {block}: {o} vs {d}");
            }
        }
        assert!(back[32..64].iter().skip(8).all(|&v| v == 0.0));
    }
}
