//! The write side of a download: network bytes -> sha256 and -> partial file.
//!
//! Each received chunk is copied into one of a small pool of buffers ([`DEPTH`] x [`BUF`]);
//! a full buffer goes to a hasher thread (LFS files), then to a writer thread that puts it on
//! disk and hands it back. So:
//! - the network read, the hash and the disk write run side by side: the download goes at
//!   the slowest of the three, not at their sum;
//! - the reader does nothing but copy, so it is back on the socket at once (hashing on the
//!   reader made it alternate with hyper's connection task chunk by chunk: on the 16-core
//!   Xeon a 1 GiB pull took 1.5 s with 0.64 s of CPU, the rest waiting on wake-ups);
//! - memory is bounded by the pool whatever the file size, and the buffers are reused: no
//!   fresh allocation (and page faults) per chunk;
//! - the network's own buffers are released at once, so hyper reuses them.
//!
//! 1 MiB buffers made the writer's copy into the page cache erratic on the 2-core box (4x the
//! CPU in some runs); 256 KiB less so. The writer hands each buffer to `write` in
//! [`WRITE_PIECE`]s, as curl writes: after memory churn on that box (a full test run) 256 KiB
//! writes still had runs with 2-4 s of system time per GiB where curl had none, and the
//! median of curl/llmlocal over 6 pulls fell to 0.81-0.97; 16 KiB writes gave medians of
//! 1.01-1.05 in the same minutes (4 benches), at ~10 % below 256 KiB writes when the box is
//! quiet. Likely cause, not verified: the page cache allocates a larger folio for a larger
//! write, and large allocations are what gets slow when free memory is fragmented.
//!
//! A dropped download (cancel, dropped future) still flushes everything handed off.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::error::{ModelError, Result};

/// Buffers in the pool: the most data in flight between the network and the disk/hash.
const DEPTH: usize = 16;
/// Bytes per buffer (one hand-off).
const BUF: usize = 256 << 10;
/// Bytes per `write` call (see the module doc).
const WRITE_PIECE: usize = 16 << 10;

enum Msg {
    Data(Vec<u8>),
    /// The server ignored a Range request: start the file over.
    Restart,
}

type Joined<T> = tokio::task::JoinHandle<std::io::Result<T>>;

/// Receives the bytes of one partial file.
pub(crate) struct Writer {
    /// To the hasher thread when hashing, else straight to the writer thread.
    to_file: Option<std_mpsc::Sender<Msg>>,
    free: mpsc::UnboundedReceiver<Vec<u8>>,
    allocated: usize,
    current: Vec<u8>,
    hash_thread: Option<Joined<Sha256>>,
    file_thread: Joined<u64>,
    path: PathBuf,
    /// Time the reader waited for a free buffer (the hash or the disk behind), for the log.
    waited: std::time::Duration,
}

impl Writer {
    /// Opens `path` for writing at `have` bytes; hashes the existing prefix when `hash`.
    /// `lock` (the download lock) is held until the writer thread has flushed.
    pub fn start(path: PathBuf, have: u64, hash: bool, lock: Option<Arc<File>>) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| ModelError::io("opening", &path, e))?;
        let hasher = if hash {
            Some(hash_prefix(&mut file, have).map_err(|e| ModelError::io("reading", &path, e))?)
        } else {
            None
        };
        // Only the writer thread returns buffers: when it ends, the pool says so.
        let (to_pool, free) = mpsc::unbounded_channel();
        let (to_file, file_rx) = std_mpsc::channel();
        let thread_path = path.clone();
        let file_thread = tokio::task::spawn_blocking(move || {
            let _lock = lock;
            write_loop(file, &thread_path, have, file_rx, to_pool)
        });
        let (to_file, hash_thread) = match hasher {
            Some(hasher) => {
                let (to_hasher, hash_rx) = std_mpsc::channel();
                let thread =
                    tokio::task::spawn_blocking(move || hash_loop(hasher, hash_rx, to_file));
                (to_hasher, Some(thread))
            }
            None => (to_file, None),
        };
        Ok(Writer {
            to_file: Some(to_file),
            free,
            allocated: 0,
            current: Vec::new(),
            hash_thread,
            file_thread,
            path,
            waited: std::time::Duration::ZERO,
        })
    }

    /// Appends `data` (copied: the network's buffer is free again at once).
    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if self.current.capacity() == 0 {
                self.current = self.free_buffer().await?;
            }
            let room = BUF - self.current.len();
            let take = room.min(data.len());
            self.current.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.current.len() == BUF {
                self.hand_off()?;
            }
        }
        Ok(())
    }

    /// Drops what was received so far: the file and the hash start again from zero.
    pub async fn restart(&mut self) -> Result<()> {
        self.current.clear();
        self.send(Msg::Restart)
    }

    /// Flushes and returns (bytes in the file, sha256 hex if hashing).
    pub async fn finish(mut self) -> Result<(u64, Option<String>)> {
        // On failure the thread's own error (below) says more.
        let _ = self.hand_off();
        // Closing the channel ends the hasher, which closes the writer's.
        drop(self.to_file.take());
        let digest = match self.hash_thread.take() {
            Some(thread) => Some(hex(&joined(thread, &self.path).await?.finalize())),
            None => None,
        };
        let len = joined(&mut self.file_thread, &self.path).await?;
        tracing::debug!(
            path = %self.path.display(),
            waited_ms = self.waited.as_millis() as u64,
            "download pipeline: time the network reader waited for the hash/disk stages"
        );
        Ok((len, digest))
    }

    /// An empty buffer: a new one while the pool is not full, else one coming back.
    async fn free_buffer(&mut self) -> Result<Vec<u8>> {
        if self.allocated < DEPTH {
            self.allocated += 1;
            return Ok(Vec::with_capacity(BUF));
        }
        let started = std::time::Instant::now();
        let returned = self.free.recv().await;
        self.waited += started.elapsed();
        match returned {
            Some(mut buf) => {
                buf.clear();
                Ok(buf)
            }
            None => Err(self.stopped()),
        }
    }

    fn hand_off(&mut self) -> Result<()> {
        if self.current.is_empty() {
            return Ok(());
        }
        let full = std::mem::take(&mut self.current);
        self.send(Msg::Data(full))
    }

    fn send(&self, msg: Msg) -> Result<()> {
        match &self.to_file {
            Some(tx) => tx.send(msg).map_err(|_| self.stopped()),
            None => Err(self.stopped()),
        }
    }

    /// A closed channel means a thread stopped on an I/O error; `finish` reports it.
    fn stopped(&self) -> ModelError {
        ModelError::io(
            "writing",
            &self.path,
            std::io::Error::other("the writer thread stopped"),
        )
    }
}

/// The result of a pipeline thread; a panic or an I/O error is an I/O error on `path`.
async fn joined<T>(
    thread: impl std::future::Future<
        Output = std::result::Result<std::io::Result<T>, tokio::task::JoinError>,
    >,
    path: &Path,
) -> Result<T> {
    match thread.await {
        Ok(r) => r.map_err(|e| ModelError::io("writing", path, e)),
        Err(e) => Err(ModelError::io(
            "writing",
            path,
            std::io::Error::other(e.to_string()),
        )),
    }
}

/// Hashes each buffer on its way to the writer thread; returns the hasher when the reader
/// is done (its channel closed).
fn hash_loop(
    mut hasher: Sha256,
    rx: std_mpsc::Receiver<Msg>,
    to_file: std_mpsc::Sender<Msg>,
) -> std::io::Result<Sha256> {
    let (mut busy, started) = (std::time::Duration::ZERO, std::time::Instant::now());
    while let Ok(msg) = rx.recv() {
        let t = std::time::Instant::now();
        match &msg {
            Msg::Data(buf) => hasher.update(buf),
            Msg::Restart => hasher = Sha256::new(),
        }
        busy += t.elapsed();
        if to_file.send(msg).is_err() {
            // The writer thread stopped on an I/O error: `finish` reports it from there.
            break;
        }
    }
    tracing::debug!(
        busy_ms = busy.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "download pipeline: hasher thread"
    );
    Ok(hasher)
}

fn write_loop(
    mut file: File,
    path: &Path,
    have: u64,
    rx: std_mpsc::Receiver<Msg>,
    pool: mpsc::UnboundedSender<Vec<u8>>,
) -> std::io::Result<u64> {
    // Truncate only a partial file longer than what is kept: on ext4 a file truncated to
    // length 0 and rewritten is flushed to disk when closed (`auto_da_alloc`, meant for
    // rewrite-in-place saves), which made every fresh 1 GiB download wait ~0.4-0.8 s in
    // `close` for the disk.
    if file.metadata()?.len() != have {
        file.set_len(have)?;
    }
    file.seek(SeekFrom::Start(have))?;
    let mut len = have;
    let (mut busy, started) = (std::time::Duration::ZERO, std::time::Instant::now());
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Data(buf) => {
                let t = std::time::Instant::now();
                for piece in buf.chunks(WRITE_PIECE) {
                    file.write_all(piece)?;
                }
                busy += t.elapsed();
                len += buf.len() as u64;
                // A reader that is gone (it gave up) needs no buffer back.
                let _ = pool.send(buf);
            }
            Msg::Restart => {
                file.set_len(0)?;
                file.seek(SeekFrom::Start(0))?;
                len = 0;
            }
        }
    }
    tracing::debug!(
        path = %path.display(),
        len,
        write_ms = busy.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "partial file flushed"
    );
    Ok(len)
}

/// Hashes the first `len` bytes of a partial file (a resumed download).
fn hash_prefix(file: &mut File, len: u64) -> std::io::Result<Sha256> {
    let mut hasher = Sha256::new();
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; BUF];
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
