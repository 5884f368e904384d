//! Large SFTP transfers spread over several SSH connections.
//!
//! One libssh2 session encrypts, frames and decrypts on one thread; on a fast link that thread,
//! not the network, bounds a transfer (libssh2 1.11 ships a portable C ChaCha20-Poly1305, and
//! encrypts AES-GCM 16 bytes per call). [`SshTarget::streams`] connections, each on a thread of
//! its own, move the file in [`SFTP_IO_SIZE`] blocks at their offsets, as parallel copy tools do.
//!
//! - Upload: the calling thread reads the source in order and hands blocks to whichever
//!   connection is free; each connection writes its block at the block's offset into the same
//!   temporary file. At most `streams + 2` blocks are in memory.
//! - Download: connection `k` reads blocks `k`, `k + n`, `k + 2n`, ... each with read-ahead that
//!   stops at the block's end, and the reader returns them in order. At most `2n + 1` blocks
//!   are in memory.
//!
//! The extra connections open the temporary (or source) file by path after the first one made
//! (or opened) it; the directory is the user's own, so only the user could swap it in between.
//!
//! The extra connections are made up front, each checking the host key and authenticating like
//! the first; one that cannot connect is left out (logged) and the transfer uses the others, so
//! a login node that limits connections per user only makes the transfer slower. An error on a
//! connection during the transfer fails the transfer.

use std::io::{Read, Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};

use super::{SFTP_IO_SIZE, SshError, SshSession, SshTarget, chan, io_err, read_full};

/// Connects up to `count` more sessions to `target` in parallel; failures are logged and left
/// out.
pub(super) fn connect_more(target: &SshTarget, count: usize) -> Vec<SshSession> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..count)
            .map(|_| s.spawn(|| SshSession::connect(target)))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| match h.join() {
                Ok(Ok(session)) => Some(session),
                Ok(Err(e)) => {
                    tracing::warn!(
                        host = %target.host,
                        error = %crate::error_chain(&e),
                        "an extra SSH connection for a parallel transfer failed; using fewer"
                    );
                    None
                }
                Err(_) => None,
            })
            .collect()
    })
}

/// One block of an upload: its offset, the buffer and how much of it is data.
struct Block {
    offset: u64,
    buf: Vec<u8>,
    len: usize,
}

/// Writes everything `reader` yields into the remote file `tmp`, already created and opened as
/// `first` (blocks `0` and `1`, read by the caller, are `pending`), over `first` and `extra`.
/// Returns the byte count; `progress` gets the count of bytes written so far, in order of
/// completion.
pub(super) fn upload(
    first: &mut ssh2::File,
    extra: &[SshSession],
    tmp: &Path,
    reader: &mut dyn Read,
    pending: Vec<(Vec<u8>, usize)>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, SshError> {
    let extra_files = extra
        .iter()
        .map(|s| {
            s.sftp()?
                .open_mode(tmp, ssh2::OpenFlags::WRITE, 0o600, ssh2::OpenType::File)
                .map_err(chan(format!(
                    "open {} on another connection",
                    tmp.display()
                )))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let streams = 1 + extra_files.len();
    let (work_tx, work_rx) = mpsc::sync_channel::<Block>(streams);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = mpsc::channel::<Result<Block, SshError>>();
    let mut extra_files = extra_files;
    std::thread::scope(|s| {
        let mut files: Vec<&mut ssh2::File> = vec![first];
        files.extend(extra_files.iter_mut());
        for file in files {
            let work_rx = Arc::clone(&work_rx);
            let done_tx = done_tx.clone();
            s.spawn(move || write_blocks(file, tmp, &work_rx, &done_tx));
        }
        // Workers own the only receivers: if they all stop, sending fails instead of blocking.
        drop(work_rx);
        drop(done_tx);
        let result = dispatch(reader, pending, streams, &work_tx, &done_rx, progress, tmp);
        // Closing the queue ends the workers; the scope then waits for them.
        drop(work_tx);
        result
    })
}

/// The writer side of one connection: takes blocks until the queue closes.
fn write_blocks(
    file: &mut ssh2::File,
    tmp: &Path,
    work: &Mutex<Receiver<Block>>,
    done: &mpsc::Sender<Result<Block, SshError>>,
) {
    loop {
        let next = work.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(block) = next else { return };
        let written = file
            .seek(SeekFrom::Start(block.offset))
            .and_then(|_| file.write_all(&block.buf[..block.len]))
            .map_err(io_err(format!(
                "write {} at offset {}",
                tmp.display(),
                block.offset
            )));
        let failed = written.is_err();
        let _ = done.send(written.map(|()| block));
        if failed {
            return;
        }
    }
}

/// Reads the source in order and keeps every connection busy; returns the total once every
/// block has been written.
fn dispatch(
    reader: &mut dyn Read,
    pending: Vec<(Vec<u8>, usize)>,
    streams: usize,
    work: &SyncSender<Block>,
    done: &Receiver<Result<Block, SshError>>,
    progress: &mut dyn FnMut(u64),
    tmp: &Path,
) -> Result<u64, SshError> {
    let max_buffers = streams + 2;
    let mut buffers = pending.len();
    let mut in_flight = 0usize;
    let mut offset = 0u64;
    let mut written = 0u64;
    // Sending fails only when every connection stopped; the first to fail said why.
    let lost = || {
        done.try_iter()
            .find_map(Result::err)
            .unwrap_or_else(|| SshError::Io {
                op: format!("write {}", tmp.display()),
                source: std::io::Error::other("every SFTP connection of the transfer stopped"),
            })
    };
    let send = |buf: Vec<u8>, len: usize, offset: &mut u64| -> Result<(), SshError> {
        let block = Block {
            offset: *offset,
            buf,
            len,
        };
        *offset += len as u64;
        work.send(block).map_err(|_| lost())
    };
    for (buf, len) in pending {
        send(buf, len, &mut offset)?;
        in_flight += 1;
    }
    let mut finish =
        |block: Result<Block, SshError>, written: &mut u64| -> Result<Vec<u8>, SshError> {
            let block = block?;
            *written += block.len as u64;
            progress(*written);
            Ok(block.buf)
        };
    loop {
        let mut buf = if buffers < max_buffers {
            buffers += 1;
            vec![0u8; SFTP_IO_SIZE]
        } else {
            let block = done.recv().map_err(|_| lost())?;
            in_flight -= 1;
            finish(block, &mut written)?
        };
        let n = read_full(reader, &mut buf)
            .map_err(io_err(format!("read the data for {}", tmp.display())))?;
        if n == 0 {
            break;
        }
        send(buf, n, &mut offset)?;
        in_flight += 1;
    }
    while in_flight > 0 {
        let block = done.recv().map_err(|_| lost())?;
        in_flight -= 1;
        finish(block, &mut written)?;
    }
    Ok(written)
}

/// A block read by one connection, or the error that stopped it.
type ReadBlock = Result<Vec<u8>, std::io::Error>;

/// The reading side of a parallel download: yields the file's bytes in order.
pub(super) struct ParallelReader {
    /// One queue per connection; block `i` comes from queue `i % n`.
    queues: Vec<Receiver<ReadBlock>>,
    next_block: usize,
    current: Vec<u8>,
    pos: usize,
    /// A short block was returned: the file ends with it.
    ended: bool,
}

impl std::fmt::Debug for ParallelReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelReader")
            .field("streams", &self.queues.len())
            .field("next_block", &self.next_block)
            .finish_non_exhaustive()
    }
}

impl ParallelReader {
    /// Starts reading `remote` over `first` (opened on the caller's connection) and one more
    /// handle per session in `extra`. The threads end when the file ends, on an error, or when
    /// the reader is dropped.
    pub(super) fn start(
        first: ssh2::File,
        extra: Vec<SshSession>,
        remote: &str,
    ) -> Result<Self, SshError> {
        let mut files = vec![(first, None)];
        for session in extra {
            let file = session
                .sftp()?
                .open(Path::new(remote))
                .map_err(chan(format!("open {remote} on another connection")))?;
            files.push((file, Some(session)));
        }
        let streams = files.len();
        let mut queues = Vec::with_capacity(streams);
        for (k, (file, session)) in files.into_iter().enumerate() {
            let (tx, rx) = mpsc::sync_channel(1);
            let remote = remote.to_owned();
            std::thread::Builder::new()
                .name(format!("hpcs-sftp-read-{k}"))
                .spawn(move || {
                    // The session must outlive its file handle.
                    let _session = session;
                    read_blocks(file, k, streams, &remote, &tx);
                })
                .map_err(io_err("start a download thread"))?;
            queues.push(rx);
        }
        Ok(Self {
            queues,
            next_block: 0,
            current: Vec::new(),
            pos: 0,
            ended: false,
        })
    }
}

/// Reads blocks `k`, `k + streams`, ... of `file` into `tx` until the file ends.
fn read_blocks(
    mut file: ssh2::File,
    k: usize,
    streams: usize,
    remote: &str,
    tx: &SyncSender<ReadBlock>,
) {
    let mut block = k as u64;
    loop {
        let offset = block * SFTP_IO_SIZE as u64;
        let read = read_block(&mut file, offset).map_err(|e| {
            std::io::Error::new(e.kind(), format!("read {remote} at offset {offset}: {e}"))
        });
        let last = !read.as_ref().is_ok_and(|b| b.len() == SFTP_IO_SIZE);
        if tx.send(read).is_err() || last {
            return;
        }
        block += streams as u64;
    }
}

/// Reads up to [`SFTP_IO_SIZE`] bytes at `offset`, never asking for bytes past the block.
///
/// libssh2 keeps 4x the caller's buffer of read requests in flight; asking for a quarter of
/// what is left of the block keeps that read-ahead within the block, so no connection fetches
/// data that belongs to another.
fn read_block(file: &mut ssh2::File, offset: u64) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; SFTP_IO_SIZE];
    let mut filled = 0;
    while filled < buf.len() {
        let left = buf.len() - filled;
        let ask = (left / 4).max(1);
        match file.read(&mut buf[filled..filled + ask]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

impl Read for ParallelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            let queue = &self.queues[self.next_block % self.queues.len()];
            let block = queue.recv().map_err(|_| {
                std::io::Error::other(format!(
                    "the SFTP connection reading block {} stopped",
                    self.next_block
                ))
            })??;
            self.next_block += 1;
            self.ended = block.len() < SFTP_IO_SIZE;
            self.current = block;
            self.pos = 0;
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
