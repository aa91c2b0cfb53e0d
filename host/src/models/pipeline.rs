//! The write side of a download: network bytes -> sha256 and -> partial file.
//!
//! Each received chunk is hashed right away, on the reader, while it is still in cache, and
//! copied into one of a small pool of buffers ([`DEPTH`] x [`BUF`]) that a writer thread puts
//! on disk and hands back. So:
//! - the disk write runs beside the network read and the hash;
//! - memory is bounded by the pool whatever the file size, and the buffers are reused: no
//!   fresh allocation (and page faults) per chunk;
//! - the network's own buffers are released at once, so hyper reuses them.
//!
//! Measured (`download_bench`, dev profile): with sha256 the limit is one core's SHA-256 rate
//! (on the 16-core 2.1 GHz Xeon, OpenSSL's best is ~1.26 GiB/s, about curl's loopback rate),
//! and hashing here or on a third thread after the writer gave the same times there; here
//! costs one thread less on a 2-core machine. Without a hash (non-LFS files) this pool took
//! 1 GiB in 0.72-0.88 s where the first version (queues of the network's own chunks, fanned
//! out, `BufWriter`) took 1.36-1.70 s. 1 MiB buffers made the writer's copy into the page
//! cache erratic on the 2-core box (4x the CPU in some runs); 256 KiB did not.
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
/// Bytes per buffer (one write, one hand-off).
const BUF: usize = 256 << 10;

enum Msg {
    Data(Vec<u8>),
    /// The server ignored a Range request: start the file over.
    Restart,
}

type Joined<T> = tokio::task::JoinHandle<std::io::Result<T>>;

/// Receives the bytes of one partial file.
pub(crate) struct Writer {
    to_file: Option<std_mpsc::Sender<Msg>>,
    free: mpsc::UnboundedReceiver<Vec<u8>>,
    allocated: usize,
    current: Vec<u8>,
    hasher: Option<Sha256>,
    file_thread: Joined<u64>,
    path: PathBuf,
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
        Ok(Writer {
            to_file: Some(to_file),
            free,
            allocated: 0,
            current: Vec::new(),
            hasher,
            file_thread,
            path,
        })
    }

    /// Hashes and appends `data` (copied: the network's buffer is free again at once).
    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(data);
        }
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
        if let Some(hasher) = self.hasher.as_mut() {
            *hasher = Sha256::new();
        }
        self.send(Msg::Restart)
    }

    /// Flushes and returns (bytes in the file, sha256 hex if hashing).
    pub async fn finish(mut self) -> Result<(u64, Option<String>)> {
        // On failure the thread's own error (below) says more.
        let _ = self.hand_off();
        drop(self.to_file.take());
        let len = match (&mut self.file_thread).await {
            Ok(r) => r.map_err(|e| ModelError::io("writing", &self.path, e))?,
            Err(e) => {
                let e = std::io::Error::other(e.to_string());
                return Err(ModelError::io("writing", &self.path, e));
            }
        };
        let digest = self.hasher.take().map(|h| hex(&h.finalize()));
        Ok((len, digest))
    }

    /// An empty buffer: a new one while the pool is not full, else one coming back.
    async fn free_buffer(&mut self) -> Result<Vec<u8>> {
        if self.allocated < DEPTH {
            self.allocated += 1;
            return Ok(Vec::with_capacity(BUF));
        }
        match self.free.recv().await {
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

fn write_loop(
    mut file: File,
    path: &Path,
    have: u64,
    rx: std_mpsc::Receiver<Msg>,
    pool: mpsc::UnboundedSender<Vec<u8>>,
) -> std::io::Result<u64> {
    file.set_len(have)?;
    file.seek(SeekFrom::Start(have))?;
    let mut len = have;
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Data(buf) => {
                file.write_all(&buf)?;
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
    tracing::debug!(path = %path.display(), len, "partial file flushed");
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
