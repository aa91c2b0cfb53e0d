//! GGUF, llama.cpp's model and adapter file format: one reader and one writer for the tree.
//!
//! A file is a header (magic, version, metadata key/values, a table of tensor infos) followed
//! by an aligned data section holding the tensors. [`read_header`] streams the header only
//! (it never reads tensor data); [`GgufHeader::check_data_section`] tells whether the file is
//! long enough for the tensors it declares; [`read_tensor_f32`] reads F32/F16/BF16 tensors
//! widened to f32. [`GgufWriter`] writes metadata (in the order given) and F32, F16 or Q8_0
//! tensors, streaming one tensor at a time.
//!
//! Tensor dimensions are kept as GGUF stores them (`ne`: the innermost, contiguous dimension
//! first); [`TensorInfo::shape`] gives the row-major order PyTorch uses.

mod quant;
mod read;
mod value;
mod write;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use quant::{quantize_q8_0, Q8_0_BLOCK, Q8_0_BLOCK_BYTES};
pub use read::{
    read_file_f32, read_file_header, read_header, read_header_bounded, read_tensor_f32,
    read_tensors_f32,
};
pub use value::{MetaArray, MetaValue, ValueType};
pub use write::{write_to_vec, GgufWriter, TensorSpec};

/// The first four bytes of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The version the writer produces.
pub const VERSION: u32 = 3;
/// The versions the reader accepts (v1 used 32-bit counts; llama.cpp refuses it too).
pub const SUPPORTED_VERSIONS: [u32; 2] = [2, 3];
/// Data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that sets the data-section alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Most dimensions a tensor may have (ggml uses 4; anything above 8 is corrupt).
pub const MAX_DIMS: u32 = 8;
/// Largest `general.alignment` accepted (real files use 32 or 64): a larger one would only
/// make the reader or the writer pad the data section by a corrupt amount.
pub const MAX_ALIGNMENT: u64 = 1 << 20;

/// The data-section alignment the metadata value of [`ALIGNMENT_KEY`] sets
/// ([`DEFAULT_ALIGNMENT`] when absent). It must be a power of two, as llama.cpp requires.
fn alignment_of(value: Option<&MetaValue>) -> Result<u64, GgufError> {
    let Some(value) = value else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match value.as_u64() {
        Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => Ok(a),
        Some(a) => Err(GgufError::BadAlignment {
            found: a.to_string(),
        }),
        None => Err(GgufError::BadAlignment {
            found: match value.as_i64() {
                Some(negative) => negative.to_string(),
                None => format!("a {:?} value", value.value_type()),
            },
        }),
    }
}

/// A ggml tensor type (`ggml_type`); unknown codes are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const BF16: GgmlType = GgmlType(30);

    /// (name, values per block, bytes per block) of the types whose size is known.
    fn layout(self) -> Option<(&'static str, u64, u64)> {
        Some(match self.0 {
            0 => ("F32", 1, 4),
            1 => ("F16", 1, 2),
            2 => ("Q4_0", 32, 18),
            3 => ("Q4_1", 32, 20),
            6 => ("Q5_0", 32, 22),
            7 => ("Q5_1", 32, 24),
            8 => ("Q8_0", 32, 34),
            9 => ("Q8_1", 32, 36),
            10 => ("Q2_K", 256, 84),
            11 => ("Q3_K", 256, 110),
            12 => ("Q4_K", 256, 144),
            13 => ("Q5_K", 256, 176),
            14 => ("Q6_K", 256, 210),
            15 => ("Q8_K", 256, 292),
            24 => ("I8", 1, 1),
            25 => ("I16", 1, 2),
            26 => ("I32", 1, 4),
            27 => ("I64", 1, 8),
            28 => ("F64", 1, 8),
            30 => ("BF16", 1, 2),
            _ => return None,
        })
    }

    /// (values per block, bytes per block), `None` for types this crate does not know.
    pub fn block(self) -> Option<(u64, u64)> {
        self.layout().map(|(_, values, bytes)| (values, bytes))
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.layout() {
            Some((name, _, _)) => f.write_str(name),
            None => write!(f, "GGML type {}", self.0),
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order (`ne`): the innermost dimension first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Row-major shape (`[rows, cols]`, as in PyTorch): `dims` reversed.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    /// Number of values, `None` on overflow.
    pub fn element_count(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |n, d| n.checked_mul(*d))
    }

    /// Bytes of data, `None` for an unknown type or on overflow.
    pub fn byte_size(&self) -> Option<u64> {
        let (values, bytes) = self.ggml_type.block()?;
        (self.element_count()? / values).checked_mul(bytes)
    }
}

/// Everything before the data section.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    /// Key/value pairs in file order (keys are unique).
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the data section and of each tensor in it.
    pub alignment: u64,
    /// Where the data section starts, from the start of the file.
    pub data_offset: u64,
}

impl GgufHeader {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }

    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key).and_then(MetaValue::as_f32)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Bytes the file needs: the data section's start plus the end of the furthest tensor
    /// whose size is known (tensors of unknown types are left to the backend to check).
    /// A file with no tensor data needs only its header.
    pub fn required_file_len(&self) -> u64 {
        let data_end = self
            .tensors
            .iter()
            .filter(|t| t.ggml_type.block().is_some())
            .map(|t| t.offset.saturating_add(t.byte_size().unwrap_or(u64::MAX)))
            .max()
            .unwrap_or(0);
        if data_end == 0 {
            return 0;
        }
        self.data_offset.saturating_add(data_end)
    }

    /// Checks that a file of `file_len` bytes holds every tensor this header declares.
    pub fn check_data_section(&self, file_len: u64) -> Result<(), GgufError> {
        let needed = self.required_file_len();
        if needed > file_len {
            return Err(GgufError::Truncated {
                needed,
                actual: file_len,
            });
        }
        Ok(())
    }
}

/// Why a file cannot be read or written as GGUF.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file (it does not start with the bytes \"GGUF\")")]
    NotGguf,
    #[error("GGUF version {0} is not supported (versions 2 and 3 are)")]
    UnsupportedVersion(u32),
    #[error("the GGUF header is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error(
        "the GGUF file is truncated: its tensors need {needed} bytes but the file has {actual}"
    )]
    Truncated { needed: u64, actual: u64 },
    #[error("general.alignment is {found}; it must be a power of two no larger than {max}", max = MAX_ALIGNMENT)]
    BadAlignment { found: String },
    #[error("the tensors declare {declared} bytes of data but the data section holds only {available}: they overlap or the file is truncated")]
    TensorDataTooLarge { declared: u64, available: u64 },
    #[error("tensor {tensor} is stored as {ggml_type}; only F32, F16 and BF16 tensors can be read as f32")]
    TensorType { tensor: String, ggml_type: GgmlType },
    #[error("cannot write tensor {tensor}: {reason}")]
    InvalidTensor { tensor: String, reason: String },
    #[error("cannot read or write the file: {0}")]
    Io(#[from] std::io::Error),
    /// Any of the above, for the file at `path`.
    #[error("{}: {error}", path.display())]
    File {
        path: PathBuf,
        error: Box<GgufError>,
    },
}

impl GgufError {
    /// The same error, naming the file it is about.
    pub fn in_file(self, path: &Path) -> GgufError {
        match self {
            GgufError::File { error, .. } => GgufError::File {
                path: path.to_path_buf(),
                error,
            },
            other => GgufError::File {
                path: path.to_path_buf(),
                error: Box::new(other),
            },
        }
    }

    /// The error without the file name (for callers that name the file themselves).
    pub fn into_without_path(self) -> GgufError {
        match self {
            GgufError::File { error, .. } => *error,
            other => other,
        }
    }
}
