//! Where llmlocal keeps its own records about a cache (last-used times, the repositories'
//! file lists): beside the cache, not in it.
//!
//! Why: huggingface_hub's `scan_cache_dir` takes every folder in the cache root for a
//! repository, so the `<root>/.llmlocal` folder older versions wrote there made it warn
//! ("Repo path is not a valid HuggingFace cache directory"). The records now live in
//! `<parent of root>/llmlocal/<root name>/`: for the standard `$HF_HOME/hub` that is
//! `$HF_HOME/llmlocal/hub/`, one folder per cache root, so two caches never share records.
//! A `<root>/.llmlocal` left by an older version is moved there on first use.

use std::path::{Path, PathBuf};

/// The state folder for a cache root (see the module doc).
pub fn default_state_dir(root: &Path) -> PathBuf {
    match (root.parent(), root.file_name()) {
        (Some(parent), Some(name)) => parent.join("llmlocal").join(name),
        // A root without a parent (`/`): nowhere beside it, so inside, as before.
        _ => legacy_state_dir(root),
    }
}

/// Where versions before this one kept the records.
pub fn legacy_state_dir(root: &Path) -> PathBuf {
    root.join(".llmlocal")
}

/// Moves `<root>/.llmlocal` into `state`, keeping records already in `state`, then deletes
/// it. A failure only loses last-used times and file lists, so it is logged, not returned.
pub fn migrate_legacy_state(root: &Path, state: &Path) {
    let legacy = legacy_state_dir(root);
    if legacy == state || !legacy.is_dir() {
        return;
    }
    let result = merge_move(&legacy, state).and_then(|()| std::fs::remove_dir_all(&legacy));
    match result {
        Ok(()) => {
            tracing::info!(from = %legacy.display(), to = %state.display(), "moved llmlocal's records out of the cache folder")
        }
        Err(e) => {
            tracing::warn!(from = %legacy.display(), to = %state.display(), error = %e, "could not move llmlocal's records out of the cache folder")
        }
    }
}

/// Moves every file under `from` to the same place under `to`, unless one is there already.
fn merge_move(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            merge_move(&entry.path(), &target)?;
        } else if !target.exists() {
            // rename fails across file systems: copy then.
            if std::fs::rename(entry.path(), &target).is_err() {
                std::fs::copy(entry.path(), &target)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_lives_beside_the_cache_root() {
        assert_eq!(
            default_state_dir(Path::new("/home/u/.cache/huggingface/hub")),
            PathBuf::from("/home/u/.cache/huggingface/llmlocal/hub")
        );
        assert_eq!(
            default_state_dir(Path::new("/")),
            PathBuf::from("/.llmlocal")
        );
    }

    #[test]
    fn old_records_move_out_of_the_cache_without_overwriting_new_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("hub");
        let state = default_state_dir(&root);
        let legacy = legacy_state_dir(&root);
        std::fs::create_dir_all(legacy.join("manifests/models--a--b")).unwrap();
        std::fs::write(legacy.join("last_used.json"), "old").unwrap();
        std::fs::write(legacy.join("manifests/models--a--b/c.json"), "list").unwrap();
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("last_used.json"), "new").unwrap();
        migrate_legacy_state(&root, &state);
        assert!(!legacy.exists());
        assert_eq!(
            std::fs::read_to_string(state.join("last_used.json")).unwrap(),
            "new"
        );
        assert_eq!(
            std::fs::read_to_string(state.join("manifests/models--a--b/c.json")).unwrap(),
            "list"
        );
    }
}
