//! Bad input gives a clear error of the right kind, and the process survives it.

use super::load_request;
use crate::outcome::{describe, fail, Failure, Outcome};
use llmlocal::{
    api::ErrorKind,
    plugins::{BackendError, LoadedBackend},
};
use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

/// Check "missing model path": loading a path that does not exist is `NotFound`.
pub fn missing_path(backend: &LoadedBackend, model: &Path, device: &str) -> Outcome {
    let dir = tempdir()?;
    let missing = dir.path().join("does-not-exist").join(file_name(model));
    let result = backend.load_model(load_request(&missing, 1, device));
    expect_kind(result.err(), &[ErrorKind::NotFound], &missing)
}

/// Check "corrupt model file": random bytes shaped like the model under test (same file
/// name, or a folder with a garbage config.json and weights) are refused as a bad format.
pub fn corrupt_model(backend: &LoadedBackend, model: &Path, device: &str) -> Outcome {
    let dir = tempdir()?;
    let corrupt = write_corrupt_copy(model, dir.path())
        .map_err(|e| fail(format!("could not write the corrupt model: {e}")))?;
    let result = backend.load_model(load_request(&corrupt, 1, device));
    expect_kind(
        result.err(),
        &[ErrorKind::UnsupportedFormat, ErrorKind::InvalidRequest],
        &corrupt,
    )
}

fn expect_kind(err: Option<BackendError>, kinds: &[ErrorKind], path: &Path) -> Outcome {
    let err = err.ok_or_else(|| {
        fail(format!(
            "loading {} succeeded; expected an error of kind {kinds:?}",
            path.display()
        ))
    })?;
    if kinds.contains(&err.kind()) {
        Ok(describe(&err))
    } else {
        Err(fail(format!(
            "expected an error of kind {kinds:?}, got: {}",
            describe(&err)
        )))
    }
}

fn tempdir() -> Result<tempfile::TempDir, Failure> {
    tempfile::tempdir().map_err(|e| fail(format!("could not create a temporary folder: {e}")))
}

fn file_name(model: &Path) -> PathBuf {
    model
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("model"))
}

/// A folder model becomes a folder with garbage `config.json` and `model.safetensors`; a
/// file model becomes a file of the same name full of random bytes.
fn write_corrupt_copy(model: &Path, dir: &Path) -> io::Result<PathBuf> {
    let target = dir.join(file_name(model));
    let mut bytes = RandomBytes::seeded();
    if model.is_dir() {
        fs::create_dir_all(&target)?;
        let mut config = b"{ not json: ".to_vec();
        config.extend(bytes.take(200));
        fs::write(target.join("config.json"), config)?;
        fs::write(target.join("model.safetensors"), bytes.take(4096))?;
        fs::write(target.join("tokenizer.json"), bytes.take(512))?;
    } else {
        fs::write(&target, bytes.take(4096))?;
    }
    Ok(target)
}

/// xorshift64: enough randomness for garbage, without a dependency.
struct RandomBytes(u64);

impl RandomBytes {
    fn seeded() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        RandomBytes(nanos | 1)
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 24) as u8
            })
            .collect()
    }
}
