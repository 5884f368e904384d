//! A directory as a plaintext tar stream for the encryptor.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use hpcs_core::archive::{ArchiveError, PackSummary, pack_dir};

/// Chunks in flight between the packer and the encryptor.
const CHANNEL_CHUNKS: usize = 16;
/// Size of one chunk.
const CHUNK_BYTES: usize = 256 * 1024;

struct ChannelWriter {
    tx: SyncSender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.tx
            .send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the encryptor stopped"))
    }
}

/// The reading end: yields the tar stream, or the packer's error.
#[derive(Debug)]
pub struct TarStream {
    rx: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    packer: Option<std::thread::JoinHandle<Result<PackSummary, ArchiveError>>>,
}

impl Read for TarStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl TarStream {
    /// Starts packing `dir` on a thread.
    #[must_use]
    pub fn start(dir: PathBuf) -> Self {
        let (tx, rx) = sync_channel(CHANNEL_CHUNKS);
        let packer = std::thread::spawn(move || {
            let mut writer = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK_BYTES),
            };
            let result = pack_dir(&dir, &mut writer).and_then(|s| {
                writer
                    .flush()
                    .map_err(|source| ArchiveError::Write { source })?;
                Ok(s)
            });
            if let Err(e) = &result {
                // The reader must fail, not see a clean end of a truncated archive.
                let _ = tx.send(Err(io::Error::other(format!("{e}"))));
            }
            result
        });
        Self {
            rx,
            current: Vec::new(),
            pos: 0,
            packer: Some(packer),
        }
    }

    /// Waits for the packer and returns its result (after the stream was read to its end).
    ///
    /// # Errors
    ///
    /// The packer's [`ArchiveError`].
    pub fn finish(mut self) -> Result<PackSummary, ArchiveError> {
        drop(std::mem::replace(&mut self.rx, sync_channel(0).1));
        match self.packer.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(ArchiveError::Write {
                source: io::Error::other("the packer thread panicked"),
            }),
        }
    }
}

/// Packs `dir` into nothing: checks the tree (refused entries) and counts it.
///
/// # Errors
///
/// [`ArchiveError`] naming the refused entry.
pub fn check_dir(dir: &std::path::Path) -> Result<PackSummary, ArchiveError> {
    pack_dir(dir, io::sink())
}
