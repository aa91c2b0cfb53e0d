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
//! Received chunks are batched and fanned out to a writer thread and a sha256 thread through
//! bounded channels, so the network read, the disk write and the hash overlap and memory stays
//! bounded (`PIPE_DEPTH` x `BATCH` per channel) whatever the file size.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cache::HubCache;
use super::error::{ModelError, Result};
use super::progress::Tracker;
use super::remote::{backoff_delay, Ctx, FileMeta, Hub};

/// Batches in flight between the network, the writer thread and the hasher thread: with
/// [`BATCH`] this bounds memory to a few MiB whatever the file size.
const PIPE_DEPTH: usize = 32;
/// Bytes collected from the network before one hand-off to the writer thread.
const BATCH: usize = 256 << 10;
const WRITE_BUFFER: usize = 256 << 10;

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
    if !blob.is_file() {
        transferred = transfer(hub, cache, job, tracker, cancel).await?;
    } else {
        tracker.start_file(job.file, job.meta.size, job.meta.size);
    }
    let link = cache.link_snapshot(job.repo, &job.meta.commit, job.file, &job.meta.etag)?;
    tracker.finish_file();
    Ok((link, transferred))
}

/// Downloads into the `.incomplete` file, verifies, renames to the blob. Returns bytes received.
async fn transfer(
    hub: &Hub,
    cache: &HubCache,
    job: &FileJob<'_>,
    tracker: &mut Tracker,
    cancel: &CancellationToken,
) -> Result<u64> {
    let partial = cache.incomplete_path(job.repo, &job.meta.etag);
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
    let mut writer = Writer::start(partial.clone(), have, job.meta.sha256)?;
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
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let len = chunk.len() as u64;
                let len = len.min(job.meta.size - *have);
                writer
                    .write(chunk.slice(..len as usize))
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

#[derive(Clone)]
enum Cmd {
    Data(Arc<Vec<Bytes>>),
    Restart,
}

type Joined<T> = tokio::task::JoinHandle<std::io::Result<T>>;

/// Batches network chunks (~16-64 KiB each) and fans them out to a writer thread and a hasher
/// thread, which then run side by side; one message per [`BATCH`] bytes keeps cross-thread
/// wake-ups off the hot path.
struct Writer {
    to_file: mpsc::Sender<Cmd>,
    to_hash: Option<mpsc::Sender<Cmd>>,
    file_thread: Joined<u64>,
    hash_thread: Option<Joined<String>>,
    path: PathBuf,
    pending: Vec<Bytes>,
    pending_len: usize,
}

impl Writer {
    /// Opens `path` for appending at `have` bytes; hashes the existing prefix when `hash`.
    fn start(path: PathBuf, have: u64, hash: bool) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| ModelError::io("opening", &path, e))?;
        let (to_file, file_rx) = mpsc::channel(PIPE_DEPTH);
        let (to_hash, hash_thread) = if hash {
            let prefix =
                hash_prefix(&mut file, have).map_err(|e| ModelError::io("reading", &path, e))?;
            let (tx, rx) = mpsc::channel(PIPE_DEPTH);
            (
                Some(tx),
                Some(tokio::task::spawn_blocking(move || {
                    Ok(hash_loop(prefix, rx))
                })),
            )
        } else {
            (None, None)
        };
        let thread_path = path.clone();
        let file_thread =
            tokio::task::spawn_blocking(move || write_loop(file, &thread_path, have, file_rx));
        Ok(Writer {
            to_file,
            to_hash,
            file_thread,
            hash_thread,
            path,
            pending: Vec::new(),
            pending_len: 0,
        })
    }

    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.pending_len += data.len();
        self.pending.push(data);
        if self.pending_len >= BATCH {
            self.flush_pending().await?;
        }
        Ok(())
    }

    async fn flush_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.pending_len = 0;
        let batch = Arc::new(std::mem::take(&mut self.pending));
        self.send(Cmd::Data(batch)).await
    }

    async fn restart(&mut self) -> Result<()> {
        self.pending.clear();
        self.pending_len = 0;
        self.send(Cmd::Restart).await
    }

    async fn send(&self, cmd: Cmd) -> Result<()> {
        // A closed channel means a thread stopped on an I/O error; `finish` reports it.
        let stopped = || {
            ModelError::io(
                "writing",
                &self.path,
                std::io::Error::other("the writer thread stopped"),
            )
        };
        if let Some(hash) = &self.to_hash {
            hash.send(cmd.clone()).await.map_err(|_| stopped())?;
        }
        self.to_file.send(cmd).await.map_err(|_| stopped())
    }

    /// Flushes and returns (bytes in the file, sha256 hex if hashing).
    async fn finish(mut self) -> Result<(u64, Option<String>)> {
        // On failure the thread's own error (below) says more.
        let _ = self.flush_pending().await;
        drop(self.to_file);
        drop(self.to_hash);
        let failed = |e: &dyn std::fmt::Display| {
            ModelError::io("writing", &self.path, std::io::Error::other(e.to_string()))
        };
        let len = match self.file_thread.await {
            Ok(r) => r.map_err(|e| ModelError::io("writing", &self.path, e))?,
            Err(e) => return Err(failed(&e)),
        };
        let digest = match self.hash_thread {
            Some(h) => Some(h.await.map_err(|e| failed(&e))?.map_err(|e| failed(&e))?),
            None => None,
        };
        Ok((len, digest))
    }
}

fn write_loop(
    mut file: File,
    path: &Path,
    have: u64,
    mut rx: mpsc::Receiver<Cmd>,
) -> std::io::Result<u64> {
    use std::io::Seek;
    file.set_len(have)?;
    file.seek(std::io::SeekFrom::Start(have))?;
    let mut len = have;
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Cmd::Data(batch) => {
                for data in batch.iter() {
                    out.write_all(data)?;
                    len += data.len() as u64;
                }
            }
            Cmd::Restart => {
                out.flush()?;
                out.get_mut().set_len(0)?;
                out.get_mut().seek(std::io::SeekFrom::Start(0))?;
                len = 0;
            }
        }
    }
    out.flush()?;
    tracing::debug!(path = %path.display(), len, "partial file flushed");
    Ok(len)
}

fn hash_loop(mut hasher: Sha256, mut rx: mpsc::Receiver<Cmd>) -> String {
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Cmd::Data(batch) => batch.iter().for_each(|d| hasher.update(d)),
            Cmd::Restart => hasher = Sha256::new(),
        }
    }
    hex(&hasher.finalize())
}

/// Hashes the first `len` bytes of a partial file (a resumed download).
fn hash_prefix(file: &mut File, len: u64) -> std::io::Result<Sha256> {
    use std::io::Seek;
    let mut hasher = Sha256::new();
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut buf = vec![0u8; WRITE_BUFFER];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
