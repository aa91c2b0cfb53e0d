//! The demo model built into the binary: Karpathy's stories260K (MIT, 1.1 MB; see
//! `models/stories260K/PROVENANCE.md`). Embedding it means `llmlocal run stories` prints real
//! language on any machine, offline, without a checkout beside the binary.
//!
//! Backends load models from paths, so the bytes are written once to a file in the user's
//! cache folder (named by their hash, written under a temporary name then renamed, so a
//! half-written file is never loaded) and reused afterwards.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use sha2::{Digest as _, Sha256};

use super::error::{ModelError, Result};

/// The GGUF bytes, as shipped in `models/stories260K/`.
pub const STORIES260K_GGUF: &[u8] = include_bytes!("../../../models/stories260K/stories260K.gguf");

/// The sha256 the file had upstream (ggml-org/models `tinyllamas/stories260K.gguf`).
pub const STORIES260K_SHA256: &str =
    "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d";

/// The file name the embedded model is written as (backends detect GGUF by its extension).
pub const STORIES260K_FILE: &str = "stories260K.gguf";

/// The embedded model as a file on disk, written on first use.
///
/// The folder is `$LLMLOCAL_EMBEDDED_DIR` when set, else `<user cache>/llmlocal/embedded`,
/// else the temporary folder.
pub fn stories260k_path() -> Result<PathBuf> {
    // One write per process: parse() may be called for every request.
    static WRITTEN: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = WRITTEN.get() {
        if path.is_file() {
            return Ok(path.clone());
        }
    }
    let path = write_once(&embedded_dir())?;
    let _ = WRITTEN.set(path.clone());
    Ok(path)
}

fn embedded_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LLMLOCAL_EMBEDDED_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("llmlocal")
        .join("embedded")
}

/// Writes the bytes to `<dir>/<sha prefix>/stories260K.gguf` unless an identical file is there.
fn write_once(dir: &Path) -> Result<PathBuf> {
    let folder = dir.join(&STORIES260K_SHA256[..16]);
    let path = folder.join(STORIES260K_FILE);
    // Compare the bytes, not only the size: a truncated or edited file must not be loaded.
    if fs::read(&path).is_ok_and(|have| have == STORIES260K_GGUF) {
        return Ok(path);
    }
    fs::create_dir_all(&folder).map_err(|e| ModelError::io("creating", &folder, e))?;
    let partial = folder.join(format!("{STORIES260K_FILE}.{}.partial", std::process::id()));
    let written = fs::File::create(&partial)
        .and_then(|mut f| f.write_all(STORIES260K_GGUF).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        let _ = fs::remove_file(&partial);
        return Err(ModelError::io(
            "writing the embedded demo model to",
            &partial,
            e,
        ));
    }
    fs::rename(&partial, &path).map_err(|e| ModelError::io("renaming", &partial, e))?;
    Ok(path)
}

/// The sha256 of the embedded bytes, lower-case hex.
pub fn embedded_sha256() -> String {
    let digest = Sha256::digest(STORIES260K_GGUF);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_bytes_are_the_pinned_upstream_file() {
        assert_eq!(STORIES260K_GGUF.len(), 1_185_376);
        assert_eq!(embedded_sha256(), STORIES260K_SHA256);
    }

    #[test]
    fn written_once_and_rewritten_when_damaged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_once(dir.path()).expect("written");
        assert_eq!(fs::read(&path).expect("read"), STORIES260K_GGUF);
        // A truncated copy (an interrupted older write, a stray edit) is replaced.
        fs::write(&path, b"GGUF").expect("truncate");
        let again = write_once(dir.path()).expect("rewritten");
        assert_eq!(again, path);
        assert_eq!(fs::read(&path).expect("read"), STORIES260K_GGUF);
        let leftovers: Vec<_> = fs::read_dir(path.parent().expect("folder"))
            .expect("list")
            .flatten()
            .filter(|e| e.file_name() != STORIES260K_FILE)
            .collect();
        assert!(leftovers.is_empty(), "no partial files left: {leftovers:?}");
    }
}
