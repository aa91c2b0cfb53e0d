//! The adapter manager's view of GGUF (the format itself is `llmlocal_formats::gguf`):
//! writing an F32 adapter file, reading a file's metadata and tensor shapes (for the
//! compatibility check) without loading any tensor data, and reading the F32/F16/BF16
//! tensors of an adapter (for stacking several into one). Errors map to [`AdapterError`].
//!
//! Shapes here are row-major (`[rows, cols]`, as in PyTorch); GGUF stores `ne`, the reverse.

use std::collections::BTreeMap;
use std::path::Path;

pub use llmlocal_formats::gguf::MetaValue;
use llmlocal_formats::gguf::{self as format, GgmlType, GgufError, GgufHeader, TensorSpec};

use super::error::{format_err, AdapterError, Result};

/// One F32 tensor to write.
pub struct F32Tensor {
    pub name: String,
    /// Row-major shape.
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A complete GGUF v3 file with `meta` and all-F32 `tensors`; `source` (what the tensors
/// come from) names the error when a tensor's data does not match its shape.
pub fn write_f32(
    source: &Path,
    meta: &[(&str, MetaValue)],
    tensors: &[F32Tensor],
) -> Result<Vec<u8>> {
    let tensors: Vec<_> = tensors
        .iter()
        .map(|t| {
            let spec = TensorSpec::from_shape(&t.name, &t.shape, GgmlType::F32);
            (spec, t.data.as_slice())
        })
        .collect();
    format::write_to_vec(meta, &tensors)
        .map_err(|e| format_err(source, format!("cannot write it as a GGUF LoRA: {e}")))
}

/// A GGUF file's metadata and tensor shapes (row-major).
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

    fn from_header(header: GgufHeader) -> Self {
        let tensors = header
            .tensors
            .iter()
            .map(|t| (t.name.clone(), row_major(&t.dims)))
            .collect();
        GgufInfo {
            meta: header.metadata.into_iter().collect(),
            tensors,
        }
    }
}

fn row_major(dims: &[u64]) -> Vec<usize> {
    dims.iter()
        .rev()
        .map(|d| usize::try_from(*d).unwrap_or(usize::MAX))
        .collect()
}

/// The adapter manager's error for a GGUF error about `path`.
fn adapter_err(path: &Path, err: GgufError) -> AdapterError {
    match err.into_without_path() {
        GgufError::Io(source) => AdapterError::Io {
            path: path.to_path_buf(),
            source,
        },
        GgufError::TensorType { tensor, ggml_type } => format_err(
            path,
            format!("tensor {tensor} is stored as {ggml_type}; only F32, F16 and BF16 adapters can be stacked"),
        ),
        other => format_err(path, other.to_string()),
    }
}

/// Reads the header of `path`: metadata and tensor shapes.
pub fn read_info(path: &Path) -> Result<GgufInfo> {
    let header = format::read_file_header(path).map_err(|e| adapter_err(path, e))?;
    Ok(GgufInfo::from_header(header))
}

/// A file's metadata and every tensor as F32 (adapters are small; F16 and BF16 are widened,
/// quantized types are refused).
pub fn read_f32(path: &Path) -> Result<(GgufInfo, Vec<F32Tensor>)> {
    let (header, data) = format::read_file_f32(path).map_err(|e| adapter_err(path, e))?;
    let tensors = header
        .tensors
        .iter()
        .zip(data)
        .map(|(t, data)| F32Tensor {
            name: t.name.clone(),
            shape: row_major(&t.dims),
            data,
        })
        .collect();
    Ok((GgufInfo::from_header(header), tensors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_header_reads_back() {
        let bytes = write_f32(
            Path::new("test"),
            &[
                ("general.type", MetaValue::Str("adapter".into())),
                ("adapter.lora.alpha", MetaValue::F32(8.0)),
            ],
            &[F32Tensor {
                name: "blk.0.attn_q.weight.lora_a".into(),
                shape: vec![4, 3],
                data: vec![0.5; 12],
            }],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let info = read_info(&path).unwrap();
        assert_eq!(info.str("general.type"), Some("adapter"));
        assert_eq!(info.f32("adapter.lora.alpha"), Some(8.0));
        assert_eq!(info.tensors["blk.0.attn_q.weight.lora_a"], vec![4, 3]);
        assert_eq!(bytes.len() % 32, 0);
        let (_, tensors) = read_f32(&path).unwrap();
        assert_eq!(tensors.len(), 1);
        assert_eq!(tensors[0].shape, vec![4, 3]);
        assert_eq!(tensors[0].data, vec![0.5; 12]);
    }

    #[test]
    fn a_cut_adapter_names_the_file_and_says_truncated() {
        let bytes = write_f32(
            Path::new("test"),
            &[("general.type", MetaValue::Str("adapter".into()))],
            &[F32Tensor {
                name: "t".into(),
                shape: vec![8, 8],
                data: vec![1.0; 64],
            }],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.gguf");
        std::fs::write(&path, &bytes[..bytes.len() - 64]).unwrap();
        assert!(read_info(&path).is_ok(), "the header alone is intact");
        let err = read_f32(&path).err().expect("cut data");
        assert!(matches!(err, AdapterError::Format { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("cut.gguf") && message.contains("truncated"),
            "{message}"
        );
    }
}
