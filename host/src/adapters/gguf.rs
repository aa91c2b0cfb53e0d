//! Just enough GGUF: writing an F32 adapter file, reading a file's metadata and tensor
//! shapes (for the compatibility check) without loading any tensor data, and reading the
//! F32/F16/BF16 tensors of an adapter (for stacking several into one).
//!
//! Shapes here are row-major (`[rows, cols]`, as in PyTorch); GGUF stores `ne`, the reverse.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::error::{format_err, io_err, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;
const ALIGNMENT: usize = 32;
const GGML_TYPE_F32: u32 = 0;
const GGML_TYPE_F16: u32 = 1;
const GGML_TYPE_BF16: u32 = 30;
/// Sanity bounds for lengths read from a file (a corrupt header must not allocate wildly).
const MAX_STRING: u64 = 1 << 30;
const MAX_DIMS: u32 = 8;

/// The metadata values this module writes, and the scalars it keeps when reading.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    /// An array (its items are skipped when reading).
    Array,
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            MetaValue::U32(v) => Some(u64::from(*v)),
            MetaValue::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
    pub fn as_f32(&self) -> Option<f32> {
        match self {
            MetaValue::F32(v) => Some(*v),
            MetaValue::F64(v) => Some(*v as f32),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One F32 tensor to write.
pub struct F32Tensor {
    pub name: String,
    /// Row-major shape.
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    let (ty, bytes): (u32, Vec<u8>) = match v {
        MetaValue::U32(x) => (4, x.to_le_bytes().to_vec()),
        MetaValue::F32(x) => (6, x.to_le_bytes().to_vec()),
        MetaValue::Bool(x) => (7, vec![u8::from(*x)]),
        MetaValue::Str(s) => {
            let mut b = Vec::new();
            put_str(&mut b, s);
            (8, b)
        }
        MetaValue::I64(x) => (11, x.to_le_bytes().to_vec()),
        MetaValue::F64(x) => (12, x.to_le_bytes().to_vec()),
        // Not written by this module; an empty u32 array keeps the file valid.
        MetaValue::Array => (
            9,
            [4u32.to_le_bytes().to_vec(), 0u64.to_le_bytes().to_vec()].concat(),
        ),
    };
    out.extend(ty.to_le_bytes());
    out.extend(bytes);
}

fn pad(out: &mut Vec<u8>) {
    while out.len() % ALIGNMENT != 0 {
        out.push(0);
    }
}

/// A complete GGUF v3 file with `meta` and all-F32 `tensors`.
pub fn write_f32(meta: &[(&str, MetaValue)], tensors: &[F32Tensor]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(MAGIC);
    out.extend(VERSION.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        put_str(&mut out, key);
        put_value(&mut out, value);
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend((t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(GGML_TYPE_F32.to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offset += (t.data.len() * 4).div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    pad(&mut out);
    for t in tensors {
        out.extend(t.data.iter().flat_map(|v| v.to_le_bytes()));
        pad(&mut out);
    }
    out
}

/// A GGUF file's metadata scalars and tensor shapes (row-major).
#[derive(Debug, Clone, Default)]
pub struct GgufInfo {
    pub meta: BTreeMap<String, MetaValue>,
    pub tensors: BTreeMap<String, Vec<usize>>,
}

impl GgufInfo {
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.meta.get(key).and_then(MetaValue::as_u64)
    }
    pub fn f32(&self, key: &str) -> Option<f32> {
        self.meta.get(key).and_then(MetaValue::as_f32)
    }
    pub fn str(&self, key: &str) -> Option<&str> {
        self.meta.get(key).and_then(MetaValue::as_str)
    }
}

struct Reader<R> {
    inner: R,
    /// Bytes read so far (where the data section starts after the header).
    position: u64,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b)?;
        self.position += N as u64;
        Ok(b)
    }
    fn u32(&mut self) -> std::io::Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn string(&mut self) -> std::io::Result<String> {
        let n = self.u64()?;
        if n > MAX_STRING {
            return Err(invalid("string length out of range"));
        }
        let mut b = vec![0u8; n as usize];
        self.inner.read_exact(&mut b)?;
        self.position += n;
        String::from_utf8(b).map_err(|_| invalid("string is not UTF-8"))
    }
    /// Reads a value of GGUF type `ty`; arrays are skipped.
    fn value(&mut self, ty: u32) -> std::io::Result<MetaValue> {
        Ok(match ty {
            0 | 1 => MetaValue::I64(i64::from(self.bytes::<1>()?[0])),
            2 | 3 => MetaValue::I64(i64::from(u16::from_le_bytes(self.bytes()?))),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I64(i64::from(i32::from_le_bytes(self.bytes()?))),
            6 => MetaValue::F32(f32::from_le_bytes(self.bytes()?)),
            7 => MetaValue::Bool(self.bytes::<1>()?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                let item = self.u32()?;
                let n = self.u64()?;
                for _ in 0..n {
                    self.value(item)?;
                }
                MetaValue::Array
            }
            10 | 11 => MetaValue::I64(i64::from_le_bytes(self.bytes()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.bytes()?)),
            _ => return Err(invalid("unknown metadata value type")),
        })
    }
}

fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string())
}

/// Where one tensor's data lies.
#[derive(Debug, Clone)]
struct TensorEntry {
    name: String,
    /// Row-major shape.
    shape: Vec<usize>,
    ty: u32,
    /// From the start of the data section.
    offset: u64,
}

/// The header: metadata, tensor entries and where the data section starts.
struct Header {
    meta: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorEntry>,
    data_start: u64,
}

fn read_header(path: &Path) -> Result<Header> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut r = Reader {
        inner: BufReader::new(file),
        position: 0,
    };
    let bad = |e: std::io::Error| format_err(path, format!("not a readable GGUF file ({e})"));
    if &r.bytes::<4>().map_err(bad)? != MAGIC {
        return Err(format_err(path, "not a GGUF file (bad magic)"));
    }
    let version = r.u32().map_err(bad)?;
    if !(2..=3).contains(&version) {
        return Err(format_err(
            path,
            format!("unsupported GGUF version {version}"),
        ));
    }
    let n_tensors = r.u64().map_err(bad)?;
    let n_kv = r.u64().map_err(bad)?;
    let mut meta = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string().map_err(bad)?;
        let ty = r.u32().map_err(bad)?;
        let value = r.value(ty).map_err(bad)?;
        meta.insert(key, value);
    }
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name = r.string().map_err(bad)?;
        let n_dims = r.u32().map_err(bad)?;
        if n_dims > MAX_DIMS {
            return Err(format_err(
                path,
                format!("tensor {name} has {n_dims} dimensions"),
            ));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(r.u64().map_err(bad)? as usize);
        }
        let ty = r.u32().map_err(bad)?;
        let offset = r.u64().map_err(bad)?;
        ne.reverse();
        tensors.push(TensorEntry {
            name,
            shape: ne,
            ty,
            offset,
        });
    }
    let alignment = meta
        .get("general.alignment")
        .and_then(MetaValue::as_u64)
        .filter(|a| *a > 0)
        .unwrap_or(ALIGNMENT as u64);
    Ok(Header {
        meta,
        tensors,
        data_start: r.position.div_ceil(alignment) * alignment,
    })
}

/// Reads the header of `path`: metadata scalars and tensor shapes.
pub fn read_info(path: &Path) -> Result<GgufInfo> {
    let header = read_header(path)?;
    Ok(GgufInfo {
        meta: header.meta,
        tensors: header
            .tensors
            .into_iter()
            .map(|t| (t.name, t.shape))
            .collect(),
    })
}

/// A file's metadata and every tensor as F32 (adapters are small; F16 and BF16 are widened,
/// quantized types are refused).
pub fn read_f32(path: &Path) -> Result<(GgufInfo, Vec<F32Tensor>)> {
    let header = read_header(path)?;
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut tensors = Vec::with_capacity(header.tensors.len());
    for entry in &header.tensors {
        let count = entry
            .shape
            .iter()
            .try_fold(1usize, |n, d| n.checked_mul(*d))
            .ok_or_else(|| format_err(path, format!("tensor {} is too large", entry.name)))?;
        let width = match entry.ty {
            GGML_TYPE_F32 => 4,
            GGML_TYPE_F16 | GGML_TYPE_BF16 => 2,
            other => {
                return Err(format_err(
                    path,
                    format!(
                        "tensor {} has GGML type {other}; only F32, F16 and BF16 adapters can \
                         be stacked",
                        entry.name
                    ),
                ))
            }
        };
        let mut raw = vec![0u8; count * width];
        file.seek(SeekFrom::Start(header.data_start + entry.offset))
            .and_then(|_| file.read_exact(&mut raw))
            .map_err(|e| {
                format_err(
                    path,
                    format!(
                        "tensor {} cannot be read ({e}); is the file complete?",
                        entry.name
                    ),
                )
            })?;
        tensors.push(F32Tensor {
            name: entry.name.clone(),
            shape: entry.shape.clone(),
            data: widen(entry.ty, &raw),
        });
    }
    let info = GgufInfo {
        meta: header.meta,
        tensors: tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect(),
    };
    Ok((info, tensors))
}

/// Little-endian F32/F16/BF16 bytes as f32.
fn widen(ty: u32, raw: &[u8]) -> Vec<f32> {
    match ty {
        GGML_TYPE_F16 => raw
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        GGML_TYPE_BF16 => raw
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_header_reads_back() {
        let bytes = write_f32(
            &[
                ("general.type", MetaValue::Str("adapter".into())),
                ("adapter.lora.alpha", MetaValue::F32(8.0)),
            ],
            &[F32Tensor {
                name: "blk.0.attn_q.weight.lora_a".into(),
                shape: vec![4, 3],
                data: vec![0.5; 12],
            }],
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let info = read_info(&path).unwrap();
        assert_eq!(info.str("general.type"), Some("adapter"));
        assert_eq!(info.f32("adapter.lora.alpha"), Some(8.0));
        assert_eq!(info.tensors["blk.0.attn_q.weight.lora_a"], vec![4, 3]);
        assert_eq!(bytes.len() % ALIGNMENT, 0);
        let (_, tensors) = read_f32(&path).unwrap();
        assert_eq!(tensors.len(), 1);
        assert_eq!(tensors[0].shape, vec![4, 3]);
        assert_eq!(tensors[0].data, vec![0.5; 12]);
    }
}
