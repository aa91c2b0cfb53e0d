//! Streaming GGUF reader: the header over any `Read`, tensors by seeking.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::path::Path;

use half::{bf16, f16};

use super::{
    alignment_of, GgmlType, GgufError, GgufHeader, MetaArray, MetaValue, TensorInfo, ValueType,
    ALIGNMENT_KEY, MAGIC, MAX_DIMS, SUPPORTED_VERSIONS,
};

/// Longest string a header may hold (1 GiB): longer is corruption, not a real value.
const MAX_STRING: u64 = 1 << 30;
/// Most items in an array or entries in a table (real files stay far below).
const MAX_COUNT: u64 = 1 << 32;
/// Items allocated ahead of reading them: a count read from a corrupt file must not allocate
/// what the file does not hold. Kept small so that, when the file's length is unknown, a
/// few bytes claiming a huge count cost kilobytes, not megabytes (1 << 16 tensor infos were
/// 4 MiB).
const PREALLOCATE: u64 = 1 << 12;
/// Strings up to this long are allocated before they are read, whatever the file's length.
const SMALL_STRING: u64 = 1 << 16;

struct Reader<R> {
    inner: R,
    /// Bytes read so far.
    position: u64,
    /// The file's length when the caller knows it: lengths beyond it are corrupt.
    len: Option<u64>,
    /// What is being read, for error messages.
    context: String,
}

impl<R: Read> Reader<R> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        self.inner.read_exact(buf).map_err(|e| self.read_error(e))?;
        self.position += buf.len() as u64;
        Ok(())
    }

    fn read_error(&self, err: std::io::Error) -> GgufError {
        if err.kind() == ErrorKind::UnexpectedEof {
            GgufError::Corrupt(format!(
                "the file ends after {} bytes, inside {}",
                self.position, self.context
            ))
        } else {
            GgufError::Io(err)
        }
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        self.fill(&mut buf)?;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// A count or length of items each at least `min_item` bytes long, checked against
    /// `max` and the bytes left in the file.
    fn length(&mut self, what: &str, min_item: u64, max: u64) -> Result<u64, GgufError> {
        let n = self.u64()?;
        if n > max {
            return Err(GgufError::Corrupt(format!(
                "{what} in {} is {n}, which is implausible",
                self.context
            )));
        }
        if let Some(len) = self.len {
            let left = len.saturating_sub(self.position);
            if n.saturating_mul(min_item) > left {
                return Err(GgufError::Corrupt(format!(
                    "{what} in {} is {n}, but only {left} bytes of the file are left",
                    self.context
                )));
            }
        }
        Ok(n)
    }

    /// A string (invalid UTF-8 is replaced, as llama.cpp's own tools print it).
    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.length("a string length", 1, MAX_STRING)?;
        let buf = if n <= SMALL_STRING || self.len.is_some() {
            // Small, or checked against the file's length: allocating it is safe.
            let mut buf = vec![0u8; n as usize];
            self.fill(&mut buf)?;
            buf
        } else {
            // `take` grows the buffer with the bytes actually there, never to a corrupt length.
            let mut buf = Vec::new();
            let read = (&mut self.inner)
                .take(n)
                .read_to_end(&mut buf)
                .map_err(|e| self.read_error(e))?;
            self.position += read as u64;
            if read as u64 != n {
                return Err(self.read_error(ErrorKind::UnexpectedEof.into()));
            }
            buf
        };
        Ok(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn value_type(&mut self) -> Result<ValueType, GgufError> {
        let code = self.u32()?;
        ValueType::from_code(code).ok_or_else(|| {
            GgufError::Corrupt(format!("unknown value type {code} in {}", self.context))
        })
    }

    fn value(&mut self, ty: ValueType) -> Result<MetaValue, GgufError> {
        Ok(match ty {
            ValueType::U8 => MetaValue::U8(u8::from_le_bytes(self.bytes()?)),
            ValueType::I8 => MetaValue::I8(i8::from_le_bytes(self.bytes()?)),
            ValueType::U16 => MetaValue::U16(u16::from_le_bytes(self.bytes()?)),
            ValueType::I16 => MetaValue::I16(i16::from_le_bytes(self.bytes()?)),
            ValueType::U32 => MetaValue::U32(self.u32()?),
            ValueType::I32 => MetaValue::I32(i32::from_le_bytes(self.bytes()?)),
            ValueType::F32 => MetaValue::F32(f32::from_le_bytes(self.bytes()?)),
            ValueType::Bool => MetaValue::Bool(self.bytes::<1>()?[0] != 0),
            ValueType::String => MetaValue::Str(self.string()?),
            ValueType::U64 => MetaValue::U64(self.u64()?),
            ValueType::I64 => MetaValue::I64(i64::from_le_bytes(self.bytes()?)),
            ValueType::F64 => MetaValue::F64(f64::from_le_bytes(self.bytes()?)),
            ValueType::Array => MetaValue::Array(self.array()?),
        })
    }

    fn array(&mut self) -> Result<MetaArray, GgufError> {
        let item = self.value_type()?;
        // A string item is at least its 8-byte length.
        let n = self.length("an array length", item.fixed_size().unwrap_or(8), MAX_COUNT)?;
        macro_rules! numbers {
            ($variant:ident, $t:ty) => {
                MetaArray::$variant(self.numbers(n, <$t>::from_le_bytes)?)
            };
        }
        Ok(match item {
            ValueType::U8 => numbers!(U8, u8),
            ValueType::I8 => numbers!(I8, i8),
            ValueType::U16 => numbers!(U16, u16),
            ValueType::I16 => numbers!(I16, i16),
            ValueType::U32 => numbers!(U32, u32),
            ValueType::I32 => numbers!(I32, i32),
            ValueType::F32 => numbers!(F32, f32),
            ValueType::Bool => MetaArray::Bool(self.numbers(n, |b: [u8; 1]| b[0] != 0)?),
            ValueType::String => MetaArray::Str(self.items(n, Self::string)?),
            ValueType::U64 => numbers!(U64, u64),
            ValueType::I64 => numbers!(I64, i64),
            ValueType::F64 => numbers!(F64, f64),
            ValueType::Array => {
                return Err(GgufError::Corrupt(format!(
                    "{} is an array of arrays, which GGUF readers do not support",
                    self.context
                )))
            }
        })
    }

    /// `n` fixed-size items, read a chunk at a time (token scores and types are long).
    fn numbers<T, const N: usize>(
        &mut self,
        n: u64,
        decode: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>, GgufError> {
        let mut out = Vec::with_capacity(n.min(PREALLOCATE) as usize);
        let mut chunk = vec![0u8; N * (n.min(PREALLOCATE) as usize)];
        let mut left = n;
        while left > 0 {
            let items = left.min(PREALLOCATE) as usize;
            let bytes = &mut chunk[..items * N];
            self.fill(bytes)?;
            out.extend(bytes.chunks_exact(N).map(|b| {
                let mut item = [0u8; N];
                item.copy_from_slice(b);
                decode(item)
            }));
            left -= items as u64;
        }
        Ok(out)
    }

    fn items<T>(
        &mut self,
        n: u64,
        mut item: impl FnMut(&mut Self) -> Result<T, GgufError>,
    ) -> Result<Vec<T>, GgufError> {
        let mut out = Vec::with_capacity(n.min(PREALLOCATE) as usize);
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(out)
    }

    fn metadata(&mut self, count: u64) -> Result<Vec<(String, MetaValue)>, GgufError> {
        let mut seen = HashSet::new();
        let mut metadata = Vec::with_capacity(count.min(PREALLOCATE) as usize);
        for index in 0..count {
            self.context = format!("metadata key {index}");
            let key = self.string()?;
            self.context = format!("the value of metadata key {key}");
            let ty = self.value_type()?;
            let value = self.value(ty)?;
            if !seen.insert(key.clone()) {
                return Err(GgufError::Corrupt(format!(
                    "metadata key {key} appears twice"
                )));
            }
            metadata.push((key, value));
        }
        Ok(metadata)
    }

    fn tensor_infos(&mut self, count: u64) -> Result<Vec<TensorInfo>, GgufError> {
        let mut tensors = Vec::with_capacity(count.min(PREALLOCATE) as usize);
        // Lookups by name find the first of two equal names; llama.cpp refuses such files.
        let mut seen = HashSet::new();
        for index in 0..count {
            self.context = format!("the info of tensor {index}");
            let name = self.string()?;
            if !seen.insert(name.clone()) {
                return Err(GgufError::Corrupt(format!("tensor {name} appears twice")));
            }
            self.context = format!("the info of tensor {name}");
            let n_dims = self.u32()?;
            if n_dims > MAX_DIMS {
                return Err(GgufError::Corrupt(format!(
                    "tensor {name} has {n_dims} dimensions (at most {MAX_DIMS} are possible)"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| self.u64())
                .collect::<Result<Vec<_>, _>>()?;
            let ggml_type = GgmlType(self.u32()?);
            let offset = self.u64()?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        Ok(tensors)
    }

    fn header(&mut self) -> Result<GgufHeader, GgufError> {
        self.context = "the magic bytes".into();
        let magic: [u8; 4] = self.bytes().map_err(|e| match e {
            GgufError::Io(e) => GgufError::Io(e),
            _ => GgufError::NotGguf,
        })?;
        if &magic != MAGIC {
            return Err(GgufError::NotGguf);
        }
        self.context = "the version".into();
        let version = self.u32()?;
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        self.context = "the header".into();
        // A tensor info is at least 24 bytes, a key/value pair at least 13.
        let n_tensors = self.length("the tensor count", 24, MAX_COUNT)?;
        let n_kv = self.length("the key/value count", 13, MAX_COUNT)?;
        let metadata = self.metadata(n_kv)?;
        let tensors = self.tensor_infos(n_tensors)?;
        let alignment = alignment_of(
            metadata
                .iter()
                .find(|(k, _)| k == ALIGNMENT_KEY)
                .map(|(_, v)| v),
        )?;
        let data_offset = self
            .position
            .div_ceil(alignment)
            .checked_mul(alignment)
            .ok_or_else(|| GgufError::Corrupt(format!("alignment {alignment} is implausible")))?;
        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }
}

/// Reads a GGUF header from `reader`, leaving it at the end of the tensor table (before the
/// alignment padding). Reads nothing of the data section.
pub fn read_header<R: Read>(reader: R) -> Result<GgufHeader, GgufError> {
    read(reader, None)
}

/// [`read_header`] for a file of `file_len` bytes: a length in the header that runs past the
/// end of the file is reported as corrupt before anything is allocated for it.
pub fn read_header_bounded<R: Read>(reader: R, file_len: u64) -> Result<GgufHeader, GgufError> {
    read(reader, Some(file_len))
}

fn read<R: Read>(inner: R, len: Option<u64>) -> Result<GgufHeader, GgufError> {
    Reader {
        inner,
        position: 0,
        len,
        context: String::new(),
    }
    .header()
}

/// Opens `path` and reads its header (errors name the file). Does not check the data
/// section: see [`GgufHeader::check_data_section`].
pub fn read_file_header(path: &Path) -> Result<GgufHeader, GgufError> {
    let (header, _) = open(path).map_err(|e| e.in_file(path))?;
    Ok(header)
}

fn open(path: &Path) -> Result<(GgufHeader, BufReader<File>), GgufError> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut reader = BufReader::new(file);
    let header = read_header_bounded(&mut reader, len)?;
    Ok((header, reader))
}

/// Reads the header of `path`, checks its data section, and reads every tensor widened to
/// f32 (in the header's order). For small files such as adapters: it holds all of them.
pub fn read_file_f32(path: &Path) -> Result<(GgufHeader, Vec<Vec<f32>>), GgufError> {
    let read = || {
        let (header, mut reader) = open(path)?;
        let tensors = read_tensors_f32(&mut reader, &header)?;
        Ok((header, tensors))
    };
    read().map_err(|e: GgufError| e.in_file(path))
}

/// Every tensor of `header` read from `reader` (the whole file) as f32, in the header's order.
/// The tensors must fit the data section side by side: tensors that overlap would let a
/// small file expand to any amount of memory.
pub fn read_tensors_f32<R: Read + Seek>(
    reader: &mut R,
    header: &GgufHeader,
) -> Result<Vec<Vec<f32>>, GgufError> {
    let len = reader.seek(SeekFrom::End(0))?;
    header.check_data_section(len)?;
    let declared = header
        .tensors
        .iter()
        .map(|t| t.byte_size().unwrap_or(0))
        .fold(0u64, u64::saturating_add);
    let available = len.saturating_sub(header.data_offset);
    if declared > available {
        return Err(GgufError::TensorDataTooLarge {
            declared,
            available,
        });
    }
    header
        .tensors
        .iter()
        .map(|t| read_tensor_f32(reader, header, t))
        .collect()
}

/// Reads one F32, F16 or BF16 tensor of `header` from `reader` (the whole file), as f32.
pub fn read_tensor_f32<R: Read + Seek>(
    reader: &mut R,
    header: &GgufHeader,
    tensor: &TensorInfo,
) -> Result<Vec<f32>, GgufError> {
    let width: u64 = match tensor.ggml_type {
        GgmlType::F32 => 4,
        GgmlType::F16 | GgmlType::BF16 => 2,
        other => {
            return Err(GgufError::TensorType {
                tensor: tensor.name.clone(),
                ggml_type: other,
            })
        }
    };
    let too_large = || GgufError::Corrupt(format!("tensor {} is implausibly large", tensor.name));
    let bytes = tensor
        .element_count()
        .and_then(|n| n.checked_mul(width))
        .ok_or_else(too_large)?;
    let start = header
        .data_offset
        .checked_add(tensor.offset)
        .ok_or_else(too_large)?;
    let end = start.checked_add(bytes).ok_or_else(too_large)?;
    // Checked before allocating: the sizes come from the file.
    let file_len = reader.seek(SeekFrom::End(0))?;
    if end > file_len {
        return Err(GgufError::Truncated {
            needed: end,
            actual: file_len,
        });
    }
    let mut raw = vec![0u8; usize::try_from(bytes).map_err(|_| too_large())?];
    reader.seek(SeekFrom::Start(start))?;
    reader.read_exact(&mut raw)?;
    Ok(widen(tensor.ggml_type, &raw))
}

/// Little-endian F32/F16/BF16 bytes as f32.
fn widen(ty: GgmlType, raw: &[u8]) -> Vec<f32> {
    match ty {
        GgmlType::F16 => raw
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        GgmlType::BF16 => raw
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}
