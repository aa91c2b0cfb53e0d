//! The header check run before llama.cpp sees a file (the format is `llmlocal_formats::gguf`).
//!
//! llama.cpp reports every load failure the same way (a null model), so the plugin reads the
//! header itself first: the magic and version tell "not GGUF" from "GGUF", the key/value
//! section gives `general.architecture` (to name an unknown architecture), and the tensor
//! table tells whether the data section is truncated.

use std::path::Path;

use llmlocal_formats::gguf as format;

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

impl From<format::GgufError> for GgufError {
    fn from(err: format::GgufError) -> Self {
        match err.into_without_path() {
            format::GgufError::NotGguf => GgufError::NotGguf,
            format::GgufError::UnsupportedVersion(v) => GgufError::Version(v),
            format::GgufError::Corrupt(why) => GgufError::Corrupt(why),
            format::GgufError::Truncated { needed, actual } => {
                GgufError::Truncated { needed, actual }
            }
            format::GgufError::Io(e) => GgufError::Io(e),
            // Not produced by reading a header; kept as corruption should that change.
            other => GgufError::Corrupt(other.to_string()),
        }
    }
}

/// What the plugin needs from the header before loading.
#[derive(Debug, Clone, Default)]
pub struct GgufHeader {
    pub version: u32,
    pub architecture: Option<String>,
    pub name: Option<String>,
    pub tensor_count: u64,
}

/// Reads and checks the header of `path`: magic, version, every key/value pair and the tensor
/// table, and that the tensor data fits in the file.
pub fn read_header(path: &Path) -> Result<GgufHeader, GgufError> {
    let file_len = std::fs::metadata(path)?.len();
    let header = format::read_file_header(path)?;
    header.check_data_section(file_len)?;
    Ok(GgufHeader {
        version: header.version,
        architecture: header.architecture().map(str::to_owned),
        name: header.get_str("general.name").map(str::to_owned),
        tensor_count: header.tensors.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// GGUF value type of a string (gguf.h `GGUF_TYPE_STRING`).
    const T_STRING: u32 = 8;

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

    #[test]
    fn cut_tensor_data_is_truncated() {
        let spec = format::TensorSpec::new("t", vec![64], format::GgmlType::F32);
        let bytes = format::write_to_vec::<&str>(&[], &[(spec, &[1.0; 64])]).expect("write");
        assert!(read_header(write(&bytes).path()).is_ok());
        let err = read_header(write(&bytes[..bytes.len() - 8]).path()).unwrap_err();
        assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
    }
}
