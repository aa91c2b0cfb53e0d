//! Memory: what the OS has, what a model will need, and the default context length.

use std::{
    io::{BufReader, Read, Seek, SeekFrom},
    path::Path,
};

const GIB: u64 = 1 << 30;
/// The largest context chosen by default (an explicit setting may go higher).
pub const MAX_DEFAULT_CONTEXT: u32 = 8192;

/// Total and available memory of the machine, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryInfo {
    pub total: u64,
    pub available: u64,
}

/// Reads the OS's memory figures now.
pub fn read() -> MemoryInfo {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    MemoryInfo {
        total: system.total_memory(),
        available: system.available_memory(),
    }
}

/// The context length for a model when nothing sets one: <= 8 GiB of RAM -> 2048,
/// <= 12 GiB -> 4096, else the model's own maximum capped at 8192.
pub fn default_context_length(total_memory: u64, model_max: Option<u32>) -> u32 {
    let by_machine = if total_memory <= 8 * GIB {
        2048
    } else if total_memory <= 12 * GIB {
        4096
    } else {
        MAX_DEFAULT_CONTEXT
    };
    match model_max.filter(|&m| m > 0) {
        Some(max) => by_machine.min(max),
        None => by_machine,
    }
}

/// Bytes a load will need: the weights (file size) plus the KV cache and compute buffers for
/// `context_length` tokens (the model manager's heuristic, so both plan alike).
pub fn estimate_load_bytes(weight_bytes: u64, context_length: u32) -> u64 {
    weight_bytes + crate::models::quant::kv_allowance(weight_bytes, context_length)
}

/// Size of a model on disk: a file, or every file in a folder (one level, symlinks followed).
pub fn model_bytes(path: &Path) -> u64 {
    if path.is_file() {
        return std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The context length the model was trained with, read from its files before loading:
/// `max_position_embeddings` in a folder's config.json, `<arch>.context_length` in a GGUF.
pub fn model_max_context(path: &Path) -> Option<u32> {
    if path.is_dir() {
        let text = std::fs::read_to_string(path.join("config.json")).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let n = json.get("max_position_embeddings")?.as_u64()?;
        return u32::try_from(n).ok();
    }
    gguf_context_length(path).ok().flatten()
}

/// Scans a GGUF header's key/value pairs for `*.context_length`.
fn gguf_context_length(path: &Path) -> std::io::Result<Option<u32>> {
    let mut reader = BufReader::new(std::fs::File::open(path)?);
    let mut magic = [0u8; 4];
    reader.read_exact(&mut magic)?;
    if &magic != b"GGUF" {
        return Ok(None);
    }
    let version = read_u32(&mut reader)?;
    if version < 2 {
        return Ok(None);
    }
    let _tensors = read_u64(&mut reader)?;
    let kv_count = read_u64(&mut reader)?;
    for _ in 0..kv_count.min(100_000) {
        let key = read_string(&mut reader)?;
        let kind = read_u32(&mut reader)?;
        if key.ends_with(".context_length") && matches!(kind, 4 | 5 | 10 | 11) {
            let value = read_scalar(&mut reader, kind)?;
            return Ok(u32::try_from(value).ok());
        }
        skip_value(&mut reader, kind)?;
    }
    Ok(None)
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

fn read_string(r: &mut impl Read) -> std::io::Result<String> {
    let len = read_u64(r)?;
    if len > 1 << 20 {
        return Err(std::io::Error::other("GGUF key too long"));
    }
    let mut bytes = vec![0u8; len as usize];
    r.read_exact(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Integer GGUF types: 4 u32, 5 i32, 10 u64, 11 i64.
fn read_scalar(r: &mut impl Read, kind: u32) -> std::io::Result<u64> {
    Ok(match kind {
        4 => u64::from(read_u32(r)?),
        5 => u64::try_from(read_u32(r)? as i32).unwrap_or(0),
        _ => read_u64(r)?,
    })
}

/// Byte size of a fixed-size GGUF value type, `None` for strings and arrays.
fn fixed_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

fn skip_value<R: Read + Seek>(r: &mut R, kind: u32) -> std::io::Result<()> {
    if let Some(size) = fixed_size(kind) {
        r.seek(SeekFrom::Current(size as i64))?;
        return Ok(());
    }
    match kind {
        8 => {
            let len = read_u64(r)?;
            r.seek(SeekFrom::Current(i64::try_from(len).unwrap_or(i64::MAX)))?;
        }
        9 => {
            let item = read_u32(r)?;
            let count = read_u64(r)?;
            match fixed_size(item) {
                Some(size) => {
                    let bytes = size.saturating_mul(count);
                    r.seek(SeekFrom::Current(i64::try_from(bytes).unwrap_or(i64::MAX)))?;
                }
                None => {
                    for _ in 0..count {
                        skip_value(r, item)?;
                    }
                }
            }
        }
        _ => return Err(std::io::Error::other("unknown GGUF value type")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_context_follows_the_machine() {
        assert_eq!(default_context_length(8 * GIB, None), 2048);
        assert_eq!(default_context_length(12 * GIB, Some(32768)), 4096);
        assert_eq!(default_context_length(64 * GIB, Some(32768)), 8192);
        assert_eq!(default_context_length(64 * GIB, Some(512)), 512);
        assert_eq!(default_context_length(4 * GIB, Some(512)), 512);
    }

    #[test]
    fn reads_context_length_from_a_gguf_header() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(3u64.to_le_bytes());
        let mut kv = |key: &str, kind: u32, value: &[u8]| {
            bytes.extend((key.len() as u64).to_le_bytes());
            bytes.extend(key.as_bytes());
            bytes.extend(kind.to_le_bytes());
            bytes.extend(value);
        };
        let mut name = 5u64.to_le_bytes().to_vec();
        name.extend(b"llama");
        kv("general.architecture", 8, &name);
        let mut array = 4u32.to_le_bytes().to_vec();
        array.extend(2u64.to_le_bytes());
        array.extend([0u8; 8]);
        kv("llama.some_array", 9, &array);
        kv("llama.context_length", 4, &1234u32.to_le_bytes());
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, bytes).expect("write");
        assert_eq!(model_max_context(&path), Some(1234));
    }
}
