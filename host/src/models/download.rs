//! Downloading one file into the cache: `blobs/<etag>.incomplete`, resumed with `Range` (also
//! after a restart of the process, since the partial file is the state), verified (size, and
//! sha256 for LFS files), then renamed to `blobs/<etag>` and linked from the snapshot.
//!
//! Why our own transfer instead of hf-hub 0.5's `download`: it reports progress through a
//! callback trait rather than a stream, has no cancellation, does not verify sha256, and its
//! retry policy does not tell a 404/401 (fail now) from a reset (retry); its partial file is
//! `<etag>.sync.part`, not the layout's `<etag>.incomplete`. The layout and the repo types are
//! hf-hub's. (huggingface_hub 2.x writes `<etag>.<random>.incomplete` and does not resume
//! across processes, so partial files are not shared with Python; complete blobs are.)
//!
//! Two processes (or two managers) fetching the same blob take turns: each download holds an
//! advisory lock (flock, through fs4) on `<cache>/.locks/models--org--name/<etag>.lock`, the
//! lock file huggingface_hub uses for the same blob. A separate lock file, not the partial file
//! itself, because the partial file is renamed to the blob when done: a waiter holding the old
//! handle would otherwise lock (and append to) the finished blob. The second one waits, saying
//! so, then finds the blob done, or resumes the partial data the first one left.
//!
//! The bytes go to the partial file and the hasher through `pipeline.rs`.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::cache::HubCache;
use super::disk::is_disk_full;
use super::error::{ModelError, Result};
use super::pipeline::Writer;
use super::progress::Tracker;
use super::remote::{backoff_delay, Ctx, FileMeta, Hub};

/// One file to fetch.
pub(crate) struct FileJob<'a> {
    pub repo: &'a str,
    pub revision: &'a str,
    pub file: &'a str,
    pub meta: &'a FileMeta,
}

/// Bytes of `meta`'s blob already on disk: the full size when complete, else the partial length.
pub(crate) fn present_bytes(cache: &HubCache, repo: &str, meta: &FileMeta) -> u64 {
    if cache.blob_path(repo, &meta.etag).is_file() {
        return meta.size;
    }
    std::fs::metadata(cache.incomplete_path(repo, &meta.etag))
        .map(|m| m.len().min(meta.size))
        .unwrap_or(0)
}

/// Fetches (or finds) one file and links it into `snapshots/<commit>/`; returns the snapshot
/// path and the bytes transferred.
pub(crate) async fn fetch_file(
    hub: &Hub,
    cache: &HubCache,
    job: &FileJob<'_>,
    tracker: &mut Tracker,
    cancel: &CancellationToken,
) -> Result<(PathBuf, u64)> {
    let blob = cache.blob_path(job.repo, &job.meta.etag);
    let mut transferred = 0;
    // Held until the blob is in place (the writer thread holds a clone until it has flushed).
    let mut lock = None;
    if !blob.is_file() {
        lock = lock_download(cache, job, cancel).await?;
    }
    if !blob.is_file() {
        transferred = transfer(hub, cache, job, tracker, cancel, lock.clone()).await?;
    } else {
        tracker.start_file(job.file, job.meta.size, job.meta.size);
    }
    let link = cache.link_snapshot(job.repo, &job.meta.commit, job.file, &job.meta.etag)?;
    drop(lock);
    tracker.finish_file();
    Ok((link, transferred))
}

/// How often a download waiting for another one's lock checks again.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// Takes the blob's download lock, waiting (cancellably) while another process holds it.
/// `None` where the file system has no locks: the download goes on unguarded, as before.
async fn lock_download(
    cache: &HubCache,
    job: &FileJob<'_>,
    cancel: &CancellationToken,
) -> Result<Option<Arc<File>>> {
    let path = cache.lock_path(job.repo, &job.meta.etag);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io("creating", dir, e))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| ModelError::io("opening the lock file", &path, e))?;
    let mut said = false;
    loop {
        // The trait's method, by path: std's inherent `File::try_lock` needs Rust 1.89.
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {
                if said {
                    tracing::warn!(file = job.file, "the other download finished; going on");
                }
                return Ok(Some(Arc::new(file)));
            }
            Err(fs4::TryLockError::WouldBlock) => {
                if !said {
                    tracing::warn!(
                        file = job.file,
                        lock = %path.display(),
                        "another process is downloading this file; waiting for it"
                    );
                    said = true;
                }
            }
            Err(fs4::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                tracing::warn!(lock = %path.display(), error = %e, "file locks are not supported here; downloading without one");
                return Ok(None);
            }
            Err(fs4::TryLockError::Error(e)) => {
                return Err(ModelError::io("locking", &path, e));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(ModelError::Cancelled { file: job.file.into() }),
            _ = tokio::time::sleep(LOCK_POLL) => {}
        }
    }
}

/// Downloads into the `.incomplete` file, verifies, renames to the blob. Returns bytes
/// received. Partial data is kept for a resume, except when the disk is full: kept, it
/// would keep the disk full.
async fn transfer(
    hub: &Hub,
    cache: &HubCache,
    job: &FileJob<'_>,
    tracker: &mut Tracker,
    cancel: &CancellationToken,
    lock: Option<Arc<File>>,
) -> Result<u64> {
    let partial = cache.incomplete_path(job.repo, &job.meta.etag);
    match transfer_to(hub, cache, job, tracker, cancel, lock, &partial).await {
        Err(ModelError::Io { path, source, .. }) if is_disk_full(&source) => {
            if let Err(e) = std::fs::remove_file(&partial) {
                tracing::warn!(path = %partial.display(), error = %e, "could not delete the partial download");
            }
            tracing::error!(file = job.file, path = %path.display(), "the disk is full; partial download deleted");
            Err(ModelError::DiskFull {
                repo: job.repo.into(),
                file: job.file.into(),
                path,
                source,
            })
        }
        other => other,
    }
}

async fn transfer_to(
    hub: &Hub,
    cache: &HubCache,
    job: &FileJob<'_>,
    tracker: &mut Tracker,
    cancel: &CancellationToken,
    lock: Option<Arc<File>>,
    partial: &Path,
) -> Result<u64> {
    let partial = partial.to_path_buf();
    if let Some(dir) = partial.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io("creating", dir, e))?;
    }
    let mut have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    if have > job.meta.size {
        have = 0; // longer than the file: not ours to trust
    }
    tracker.start_file(job.file, job.meta.size, have);
    if have > 0 {
        tracing::info!(file = job.file, bytes = have, "resuming a partial download");
    }
    let mut writer = Writer::start(partial.clone(), have, job.meta.sha256, lock)?;
    let outcome = receive(hub, job, tracker, cancel, &mut writer, have).await;
    let (written, digest) = writer.finish().await?;
    let received = outcome?;
    verify(job, &partial, written, digest.as_deref())?;
    std::fs::rename(&partial, cache.blob_path(job.repo, &job.meta.etag))
        .map_err(|e| ModelError::io("moving into the cache", &partial, e))?;
    Ok(received)
}

/// Checks size and (for LFS files) sha256; deletes the bad data on a mismatch.
fn verify(job: &FileJob<'_>, partial: &Path, written: u64, digest: Option<&str>) -> Result<()> {
    let error = if written != job.meta.size {
        Some(ModelError::SizeMismatch {
            repo: job.repo.into(),
            file: job.file.into(),
            expected: job.meta.size,
            actual: written,
        })
    } else {
        match digest {
            Some(actual) if !actual.eq_ignore_ascii_case(&job.meta.etag) => {
                Some(ModelError::ChecksumMismatch {
                    repo: job.repo.into(),
                    file: job.file.into(),
                    expected: job.meta.etag.clone(),
                    actual: actual.to_string(),
                })
            }
            _ => None,
        }
    };
    match error {
        None => Ok(()),
        Some(e) => {
            let _ = std::fs::remove_file(partial);
            tracing::error!(file = job.file, error = %e, "verification failed, partial data deleted");
            Err(e)
        }
    }
}

/// Receives the rest of the file from offset `have`, retrying dropped transfers with Range.
async fn receive(
    hub: &Hub,
    job: &FileJob<'_>,
    tracker: &mut Tracker,
    cancel: &CancellationToken,
    writer: &mut Writer,
    mut have: u64,
) -> Result<u64> {
    let ctx = Ctx {
        repo: job.repo,
        revision: job.revision,
        file: Some(job.file),
    };
    let mut received = 0;
    let mut failures = 0;
    while have < job.meta.size {
        let before = have;
        let step = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(ModelError::Cancelled { file: job.file.into() }),
            r = one_request(hub, job, &ctx, tracker, writer, &mut have, &mut received) => r,
        };
        match step {
            Ok(()) => {}
            Err(Interrupted::Fatal(e)) => return Err(e),
            Err(Interrupted::Transient(reason)) => {
                // A transfer that made progress resets the count: only stalls use up retries.
                failures = if have > before { 1 } else { failures + 1 };
                if failures > hub.retries {
                    return Err(ModelError::Network {
                        url: job.meta.location.clone(),
                        attempts: failures,
                        reason,
                    });
                }
                let delay = backoff_delay(hub.backoff, failures);
                tracing::warn!(file = job.file, have, %reason, ?delay, "transfer interrupted, resuming");
                tokio::select! {
                    _ = cancel.cancelled() => return Err(ModelError::Cancelled { file: job.file.into() }),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    Ok(received)
}

enum Interrupted {
    Transient(String),
    Fatal(ModelError),
}

/// One GET from `*have` to the end (or until the connection drops).
async fn one_request(
    hub: &Hub,
    job: &FileJob<'_>,
    ctx: &Ctx<'_>,
    tracker: &mut Tracker,
    writer: &mut Writer,
    have: &mut u64,
    received: &mut u64,
) -> std::result::Result<(), Interrupted> {
    let mut response = hub
        .get_from(&job.meta.location, *have, ctx)
        .await
        .map_err(Interrupted::Fatal)?;
    match response.status().as_u16() {
        206 => check_range_start(&response, *have)?,
        200 if *have > 0 => {
            // The server ignored the Range header: start over.
            tracing::warn!(
                file = job.file,
                "server ignored Range, downloading from the start"
            );
            writer.restart().await.map_err(Interrupted::Fatal)?;
            *have = 0;
        }
        200 => {}
        s => {
            return Err(Interrupted::Transient(format!(
                "unexpected HTTP {s} for a file download"
            )))
        }
    }
    // One watchdog for the whole transfer, re-armed only when it fires: a stall is caught
    // without a timer per chunk.
    let stall = hub.read_timeout;
    let mut last_data = Instant::now();
    let watchdog = tokio::time::sleep(stall);
    tokio::pin!(watchdog);
    loop {
        let next = tokio::select! {
            biased;
            next = response.chunk() => next,
            _ = &mut watchdog => {
                let idle = last_data.elapsed();
                if idle >= stall {
                    return Err(Interrupted::Transient(format!("no data for {idle:?}")));
                }
                watchdog.as_mut().reset((last_data + stall).into());
                continue;
            }
        };
        match next {
            Ok(Some(chunk)) => {
                last_data = Instant::now();
                let len = chunk.len() as u64;
                let len = len.min(job.meta.size - *have);
                writer
                    .write(&chunk[..len as usize])
                    .await
                    .map_err(Interrupted::Fatal)?;
                *have += len;
                *received += len;
                tracker.set_file_done(*have);
                if *have >= job.meta.size {
                    return Ok(());
                }
            }
            Ok(None) if *have >= job.meta.size => return Ok(()),
            Ok(None) => {
                return Err(Interrupted::Transient(
                    "connection closed before the end of the file".into(),
                ))
            }
            Err(e) => return Err(Interrupted::Transient(format!("transfer failed: {e}"))),
        }
    }
}

fn check_range_start(
    response: &reqwest::Response,
    have: u64,
) -> std::result::Result<(), Interrupted> {
    let start = response
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.parse::<u64>().ok());
    match start {
        Some(s) if s == have => Ok(()),
        other => Err(Interrupted::Transient(format!(
            "server answered a Range request for offset {have} with Content-Range start {other:?}"
        ))),
    }
}
