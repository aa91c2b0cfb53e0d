//! The file list of a repository at one commit, as the hub listed it on the last pull:
//! `<state>/manifests/models--org--name/<commit>.json`, in llmlocal's state folder beside the
//! cache (`state.rs`).
//!
//! Why: the hub layout records which files were downloaded, not which files the repository
//! has, so a snapshot that lacks a file (a pull stopped between two files, a blob deleted by
//! hand) would otherwise look complete to a cache-first resolve. Caches written by Python's
//! huggingface_hub have no manifest; the checks that need none (a safetensors index naming its
//! shards, the parts of a split GGUF) still run on them. Kept beside `last_used.json`, outside
//! the cache, so the layout Python reads is unchanged.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::cache::HubCache;
use super::remote::Sibling;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    files: Vec<ManifestFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestFile {
    name: String,
    #[serde(default)]
    size: Option<u64>,
}

impl HubCache {
    fn manifest_dir(&self, repo: &str) -> PathBuf {
        let folder = self
            .repo_dir(repo)
            .file_name()
            .map(|f| f.to_os_string())
            .unwrap_or_default();
        self.state_dir().join("manifests").join(folder)
    }

    fn manifest_path(&self, repo: &str, commit: &str) -> PathBuf {
        self.manifest_dir(repo).join(format!("{commit}.json"))
    }

    /// Records the repository's files at `commit`. A failure only weakens a later completeness
    /// check, so it is logged, not returned.
    pub(crate) fn write_manifest(&self, repo: &str, commit: &str, siblings: &[Sibling]) {
        let manifest = Manifest {
            files: siblings
                .iter()
                .map(|s| ManifestFile {
                    name: s.rfilename.clone(),
                    size: s.size.or(s.lfs.as_ref().map(|l| l.size)),
                })
                .collect(),
        };
        let path = self.manifest_path(repo, commit);
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let result = std::fs::create_dir_all(self.manifest_dir(repo))
            .and_then(|_| serde_json::to_vec(&manifest).map_err(std::io::Error::other))
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "could not record the repository's file list");
        }
    }

    /// The repository's files at `commit`, if a pull recorded them.
    pub(crate) fn read_manifest(&self, repo: &str, commit: &str) -> Option<Vec<Sibling>> {
        let bytes = std::fs::read(self.manifest_path(repo, commit)).ok()?;
        let manifest: Manifest = serde_json::from_slice(&bytes).ok()?;
        Some(
            manifest
                .files
                .into_iter()
                .map(|f| Sibling {
                    rfilename: f.name,
                    size: f.size,
                    lfs: None,
                })
                .collect(),
        )
    }

    /// Forgets the file lists of a deleted repository.
    pub(crate) fn remove_manifests(&self, repo: &str) {
        let dir = self.manifest_dir(repo);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "could not delete the repository's file lists")
            }
        }
    }
}
