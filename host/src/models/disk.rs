//! Disk space around a pull: a check before it starts, partial data removed when the disk
//! fills up, and no half-made repo folder left behind by a failed pull.
//!
//! Why: a full disk left the `.incomplete` file behind, so the disk stayed full; nothing
//! checked the space first; and a failed pull left `models--org--name/` without `snapshots/`,
//! which huggingface_hub's `scan_cache_dir` reports as a corrupted repo.

use std::path::Path;

use super::cache::HubCache;
use super::cli::human_bytes;
use super::error::{ModelError, Result};

/// Fails with [`ModelError::NoSpace`] when `need` bytes do not fit on the disk of `dir` (or
/// of its nearest existing parent). When the free space cannot be read, the pull goes on.
pub(crate) fn check_free_space(repo: &str, dir: &Path, need: u64) -> Result<()> {
    let Some(existing) = dir.ancestors().find(|d| d.exists()) else {
        return Ok(());
    };
    match fs4::available_space(existing) {
        Ok(free) if free < need => Err(ModelError::NoSpace {
            repo: repo.to_string(),
            need: human_bytes(need),
            free: human_bytes(free),
            path: existing.to_path_buf(),
        }),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::debug!(path = %existing.display(), error = %e, "cannot read the free disk space; not checking it");
            Ok(())
        }
    }
}

/// Whether an I/O error is the disk being full.
pub(crate) fn is_disk_full(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::StorageFull || error.raw_os_error() == Some(ENOSPC)
}

/// ENOSPC on Linux and macOS (older std versions mapped it to `ErrorKind::Other`).
const ENOSPC: i32 = 28;

/// After a failed pull: a repo folder this pull created that holds no data (no blob, no
/// partial bytes) is deleted; one that keeps data (partial downloads to resume) gets an
/// empty `snapshots/`, so its layout stays valid for huggingface_hub.
pub(crate) fn tidy_after_failure(cache: &HubCache, repo: &str, created: bool) {
    let dir = cache.repo_dir(repo);
    if !dir.is_dir() {
        return;
    }
    // An empty `.incomplete` (a transfer that failed before its first byte) is no data.
    let holds_data = std::fs::read_dir(dir.join("blobs"))
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.metadata().is_ok_and(|m| m.len() > 0))
        })
        .unwrap_or(false);
    let snapshots = dir.join("snapshots");
    let result = if created && !holds_data {
        std::fs::remove_dir_all(&dir)
    } else if !snapshots.is_dir() {
        std::fs::create_dir_all(&snapshots)
    } else {
        Ok(())
    };
    if let Err(e) = result {
        tracing::warn!(path = %dir.display(), error = %e, "could not tidy the repo folder after a failed pull");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_is_recognised_by_kind_and_by_errno() {
        assert!(is_disk_full(&std::io::Error::from_raw_os_error(ENOSPC)));
        assert!(is_disk_full(&std::io::ErrorKind::StorageFull.into()));
        assert!(!is_disk_full(&std::io::ErrorKind::PermissionDenied.into()));
    }

    #[test]
    fn a_need_over_the_free_space_names_both() {
        let tmp = tempfile::tempdir().unwrap();
        let err = check_free_space("org/m", &tmp.path().join("not/yet"), u64::MAX).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("org/m") && shown.contains("TiB"), "{shown}");
        assert!(check_free_space("org/m", tmp.path(), 1).is_ok());
    }
}
