//! A minimal GGUF header reader, run before llama.cpp sees the file.
//!
//! llama.cpp reports every load failure the same way (a null model), so the plugin reads the
//! header itself first: the magic and version tell "not GGUF" from "GGUF", the key/value
//! section gives `general.architecture` (to name an unknown architecture), and the tensor
//! table tells whether the data section is truncated.

use std::{
    fs::File,
    io::{BufReader, Read},
    path::Path,
};

const MAGIC: &[u8; 4] = b"GGUF";
/// GGUF versions llama.cpp reads (v1 used 32-bit counts and is refused by llama.cpp too).
const SUPPORTED_VERSIONS: [u32; 2] = [2, 3];
const DEFAULT_ALIGNMENT: u64 = 32;
/// Strings and arrays longer than this are corrupt, not real (they would not fit in memory).
const MAX_LEN: u64 = 1 << 32;

/// Why a file is not a usable GGUF.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file (it does not start with the bytes \"GGUF\")")]
    NotGguf,
    #[error("GGUF version {0} is not supported (llama.cpp reads versions 2 and 3)")]
    Version(u32),
    #[error("the GGUF header is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error(
        "the GGUF file is truncated: its tensors need {needed} bytes but the file has {actual}"
    )]
    Truncated { needed: u64, actual: u64 },
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
}

/// What the plugin needs from the header before loading.
#[derive(Debug, Clone, Default)]
pub struct GgufHeader {
    pub version: u32,
    pub architecture: Option<String>,
    pub name: Option<String>,
    pub tensor_count: u64,
}

struct Reader<R> {
    inner: R,
    position: u64,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(eof_is_corrupt)?;
        self.position += N as u64;
        Ok(buf)
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())?;
        if copied != n {
            return Err(GgufError::Corrupt("unexpected end of file".into()));
        }
        self.position += n;
        Ok(())
    }
    fn len(&mut self) -> Result<u64, GgufError> {
        let n = self.u64()?;
        if n > MAX_LEN {
            return Err(GgufError::Corrupt(format!("implausible length {n}")));
        }
        Ok(n)
    }
    fn string(&mut self) -> Result<Vec<u8>, GgufError> {
        let n = self.len()?;
        let mut buf = Vec::new();
        let read = (&mut self.inner).take(n).read_to_end(&mut buf)?;
        if read as u64 != n {
            return Err(GgufError::Corrupt(
                "unexpected end of file in a string".into(),
            ));
        }
        self.position += n;
        Ok(buf)
    }
}

fn eof_is_corrupt(err: std::io::Error) -> GgufError {
    if err.kind() == std::io::ErrorKind::UnexpectedEof {
        GgufError::Corrupt("unexpected end of file".into())
    } else {
        GgufError::Io(err)
    }
}

/// GGUF value types (gguf.h `gguf_type`).
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

/// Size in bytes of a fixed-size GGUF value type, or `None` for strings/arrays/unknown.
fn scalar_size(value_type: u32) -> Option<u64> {
    match value_type {
        0 | 1 | 7 => Some(1), // u8, i8, bool
        2 | 3 => Some(2),     // u16, i16
        4..=6 => Some(4),     // u32, i32, f32
        10..=12 => Some(8),   // u64, i64, f64
        _ => None,
    }
}

/// The value of a key the plugin wants to keep.
enum Value {
    Str(String),
    U64(u64),
    Other,
}

fn read_value<R: Read>(r: &mut Reader<R>, value_type: u32) -> Result<Value, GgufError> {
    if let Some(size) = scalar_size(value_type) {
        return Ok(match size {
            4 if value_type == 4 => Value::U64(u64::from(r.u32()?)),
            8 if value_type == 10 => Value::U64(r.u64()?),
            _ => {
                r.skip(size)?;
                Value::Other
            }
        });
    }
    match value_type {
        T_STRING => Ok(Value::Str(
            String::from_utf8_lossy(&r.string()?).into_owned(),
        )),
        T_ARRAY => {
            let item_type = r.u32()?;
            let n = r.len()?;
            skip_array(r, item_type, n)?;
            Ok(Value::Other)
        }
        other => Err(GgufError::Corrupt(format!("unknown value type {other}"))),
    }
}

fn skip_array<R: Read>(r: &mut Reader<R>, item_type: u32, n: u64) -> Result<(), GgufError> {
    if let Some(size) = scalar_size(item_type) {
        return r.skip(n * size);
    }
    match item_type {
        T_STRING => {
            for _ in 0..n {
                let len = r.len()?;
                r.skip(len)?;
            }
            Ok(())
        }
        other => Err(GgufError::Corrupt(format!(
            "unsupported array item type {other}"
        ))),
    }
}

/// (block size in elements, bytes per block) of the ggml tensor types whose size is known;
/// others are skipped in the truncation check (llama.cpp checks them itself).
fn type_block(ggml_type: u32) -> Option<(u64, u64)> {
    Some(match ggml_type {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        26 => (1, 4),     // I32
        27 => (1, 8),     // I64
        28 => (1, 8),     // F64
        30 => (1, 2),     // BF16
        _ => return None,
    })
}

/// Reads and checks the header of `path`: magic, version, every key/value pair and the tensor
/// table, and that the tensor data fits in the file.
pub fn read_header(path: &Path) -> Result<GgufHeader, GgufError> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = Reader {
        inner: BufReader::new(file),
        position: 0,
    };
    let magic: [u8; 4] = r.bytes().map_err(|_| GgufError::NotGguf)?;
    if &magic != MAGIC {
        return Err(GgufError::NotGguf);
    }
    let version = r.u32()?;
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(GgufError::Version(version));
    }
    let tensor_count = r.len()?;
    let kv_count = r.len()?;
    let mut header = GgufHeader {
        version,
        tensor_count,
        ..GgufHeader::default()
    };
    let mut alignment = DEFAULT_ALIGNMENT;
    for _ in 0..kv_count {
        let key = String::from_utf8_lossy(&r.string()?).into_owned();
        let value_type = r.u32()?;
        match (key.as_str(), read_value(&mut r, value_type)?) {
            ("general.architecture", Value::Str(s)) => header.architecture = Some(s),
            ("general.name", Value::Str(s)) => header.name = Some(s),
            ("general.alignment", Value::U64(a)) if a > 0 => alignment = a,
            _ => {}
        }
    }
    let data_end = read_tensor_table(&mut r, tensor_count)?;
    let data_start = r.position.div_ceil(alignment) * alignment;
    let needed = data_start.saturating_add(data_end);
    // With no tensor data there is no data section (and no padding) to check.
    if data_end > 0 && needed > file_len {
        return Err(GgufError::Truncated {
            needed,
            actual: file_len,
        });
    }
    Ok(header)
}

/// Reads the tensor infos; returns the end offset of the furthest tensor whose size is known,
/// relative to the start of the data section.
fn read_tensor_table<R: Read>(r: &mut Reader<R>, count: u64) -> Result<u64, GgufError> {
    let mut end = 0u64;
    for _ in 0..count {
        r.string()?; // name
        let n_dims = r.u32()?;
        if n_dims > 8 {
            return Err(GgufError::Corrupt(format!(
                "tensor with {n_dims} dimensions"
            )));
        }
        let mut elements = 1u64;
        for _ in 0..n_dims {
            elements = elements.saturating_mul(r.u64()?);
        }
        let ggml_type = r.u32()?;
        let offset = r.u64()?;
        if let Some((block, bytes)) = type_block(ggml_type) {
            let size = (elements / block).saturating_mul(bytes);
            end = end.max(offset.saturating_add(size));
        }
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(bytes).expect("write");
        f
    }

    #[test]
    fn text_file_is_not_gguf() {
        let f = write(b"hello, this is not a model\n");
        assert!(matches!(read_header(f.path()), Err(GgufError::NotGguf)));
    }

    #[test]
    fn version_one_is_refused() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&[0; 16]);
        let f = write(&bytes);
        assert!(matches!(read_header(f.path()), Err(GgufError::Version(1))));
    }

    #[test]
    fn minimal_header_with_architecture_parses() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes()); // tensors
        bytes.extend_from_slice(&1u64.to_le_bytes()); // kvs
        let key = b"general.architecture";
        bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(&T_STRING.to_le_bytes());
        bytes.extend_from_slice(&5u64.to_le_bytes());
        bytes.extend_from_slice(b"llama");
        let f = write(&bytes);
        let header = read_header(f.path()).expect("valid header");
        assert_eq!(header.architecture.as_deref(), Some("llama"));
        let truncated = write(&bytes[..bytes.len() - 2]);
        assert!(matches!(
            read_header(truncated.path()),
            Err(GgufError::Corrupt(_))
        ));
    }
}
