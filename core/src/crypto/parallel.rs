//! Pipelined, multi-threaded age payload encryption and decryption, byte-compatible with age v1.
//!
//! The header (recipient stanzas, MAC, nonce) is produced and checked by the `age` crate; only
//! the file key is captured on the way, through recipient and identity wrappers, to derive the
//! payload key exactly as age does: `HKDF-SHA256(ikm = file key, salt = nonce, info =
//! "payload")`. The payload is age's STREAM: ChaCha20-Poly1305 over 64 KiB plaintext chunks,
//! nonce = 11-byte big-endian chunk counter || last-chunk flag. The AEAD is OpenSSL's
//! (`libcrypto`'s assembly implementation, see [`ChunkCipher`]).
//!
//! The payload moves through a pipeline in batches of [`BATCH_CHUNKS`] chunks:
//!
//! - the calling thread does all I/O (the caller's reader and writer need not be `Send`): it
//!   reads batches and writes finished ones, in order;
//! - worker threads, one per core, seal or open whole batches in place, several batches at once;
//! - a hasher thread computes the SHA-256 of the ciphertext, in order: after sealing when
//!   encrypting, before opening when decrypting (opening overwrites the ciphertext in place).
//!
//! At most [`IN_FLIGHT`] batch buffers exist at a time (about 13 MiB), so memory stays bounded
//! whatever the input size. A batch's last chunk is only sealed once the next read has shown
//! whether more input follows (it decides the last-chunk flag).
//!
//! Decryption keeps age's rules: every chunk but the last is full; the last chunk carries the
//! last flag and is empty only when the whole plaintext is; a truncated, reordered or extended
//! payload fails authentication. No plaintext of a chunk leaves this module before the chunk's
//! tag has been verified (a failed chunk's buffer is wiped), and the final batch is written only
//! after the ciphertext digest has been compared with the expected one.

use std::collections::{HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::num::NonZeroUsize;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use age_core::format::{FileKey, Stanza};
use age_core::secrecy::ExposeSecret as _;
use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use openssl::error::ErrorStack;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::{CipherSummary, CryptoError, DecryptSummary, Sha256Digest};
use crate::secret::{AgeIdentity, AgeRecipient};

/// Plaintext bytes per STREAM chunk (fixed by the age format).
pub const CHUNK_BYTES: usize = 64 * 1024;
const TAG_BYTES: usize = 16;
const CT_CHUNK_BYTES: usize = CHUNK_BYTES + TAG_BYTES;
/// Chunks per batch (1 MiB of plaintext): the unit of work of a worker thread.
pub const BATCH_CHUNKS: usize = 16;
/// Batch buffers that exist at a time (1.25 MiB each): bounds memory.
const IN_FLIGHT: usize = 10;
/// Worker threads are capped here; more cores than this wait on I/O and hashing anyway.
const MAX_WORKERS: usize = 8;
const NONCE_BYTES: usize = 16;
/// Headers longer than this are handed to age as they are, which then rejects them.
const MAX_HEADER_BYTES: usize = 1024 * 1024;

type FileKeySlot = Mutex<Option<Zeroizing<[u8; 16]>>>;

fn store(slot: &FileKeySlot, key: &FileKey) {
    *slot.lock().unwrap_or_else(PoisonError::into_inner) =
        Some(Zeroizing::new(*key.expose_secret()));
}

/// An X25519 recipient that remembers the file key it wraps.
struct CapturingRecipient<'a> {
    inner: &'a age::x25519::Recipient,
    slot: &'a FileKeySlot,
}

impl age::Recipient for CapturingRecipient<'_> {
    fn wrap_file_key(
        &self,
        file_key: &FileKey,
    ) -> Result<(Vec<Stanza>, HashSet<String>), age::EncryptError> {
        store(self.slot, file_key);
        age::Recipient::wrap_file_key(self.inner, file_key)
    }
}

/// An X25519 identity that remembers the file key it unwraps.
struct CapturingIdentity<'a> {
    inner: &'a age::x25519::Identity,
    slot: &'a FileKeySlot,
}

impl age::Identity for CapturingIdentity<'_> {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, age::DecryptError>> {
        let result = age::Identity::unwrap_stanza(self.inner, stanza);
        if let Some(Ok(key)) = &result {
            store(self.slot, key);
        }
        result
    }
}

/// The 32-byte payload key, wiped on drop.
struct PayloadKey(Zeroizing<[u8; 32]>);

impl PayloadKey {
    /// Derives the key from the file key a capturing wrapper stored in `slot` (taken out and
    /// wiped) and the payload nonce.
    fn take(slot: &FileKeySlot, nonce: &[u8]) -> Self {
        let file_key = slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .expect("age handed the file key to the capturing wrapper");
        Self(Zeroizing::new(age_core::primitives::hkdf(
            nonce,
            b"payload",
            file_key.as_slice(),
        )))
    }
}

/// Checks `header` (an age header followed by the payload nonce) with age, and returns its
/// payload key.
fn open_header(header: &[u8], identity: &AgeIdentity) -> Result<PayloadKey, CryptoError> {
    let slot = FileKeySlot::default();
    let wrapper = CapturingIdentity {
        inner: identity.as_age(),
        slot: &slot,
    };
    let header_err = |source| match source {
        age::DecryptError::NoMatchingKeys => CryptoError::WrongKey,
        source => CryptoError::InvalidHeader { source },
    };
    let decryptor = age::Decryptor::new(header).map_err(header_err)?;
    // age has read the nonce once the stream exists, so the header holds one.
    drop(
        decryptor
            .decrypt(std::iter::once(&wrapper as &dyn age::Identity))
            .map_err(header_err)?,
    );
    Ok(PayloadKey::take(
        &slot,
        &header[header.len() - NONCE_BYTES..],
    ))
}

fn chunk_nonce(counter: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// Why a chunk was rejected.
#[derive(Debug, Clone, Copy)]
enum Reject {
    /// The tag did not verify.
    Tag,
    /// A chunk that is not the last is shorter than a full chunk (cannot happen with our reader,
    /// kept as a guard).
    ShortChunk,
    /// The final chunk is shorter than a tag: the payload is truncated.
    Truncated,
    /// An empty final chunk after other chunks (age forbids it).
    EmptyLastChunk,
}

/// Failure of a batch on a worker thread.
#[derive(Debug)]
enum ChunkError {
    Rejected {
        counter: u64,
        why: Reject,
    },
    Backend(ErrorStack),
    /// A worker or the hasher stopped (it panicked; the thread scope re-raises the panic).
    Lost,
}

impl ChunkError {
    /// The caller's error; `written` is the plaintext already written (decryption).
    fn into_crypto(self, written: u64) -> CryptoError {
        match self {
            Self::Rejected { counter, why } => CryptoError::Decrypt {
                plaintext_written: written,
                source: auth_error(counter, why),
            },
            Self::Backend(source) => backend_error(io::Error::other(source)),
            Self::Lost => backend_error(io::Error::other("a worker thread stopped")),
        }
    }
}

/// One thread's ChaCha20-Poly1305 context, keyed once; each chunk only sets its nonce.
/// `CipherCtx` is not `Send`, so each worker builds its own. Freeing the context makes OpenSSL
/// cleanse its key schedule.
struct ChunkCipher {
    ctx: CipherCtx,
    encrypt: bool,
}

impl ChunkCipher {
    fn new(key: &PayloadKey, encrypt: bool) -> Result<Self, ErrorStack> {
        let mut ctx = CipherCtx::new()?;
        let cipher = Cipher::chacha20_poly1305();
        if encrypt {
            ctx.encrypt_init(Some(cipher), Some(key.0.as_slice()), None)?;
        } else {
            ctx.decrypt_init(Some(cipher), Some(key.0.as_slice()), None)?;
        }
        Ok(Self { ctx, encrypt })
    }

    fn set_nonce(&mut self, counter: u64, last: bool) -> Result<(), ErrorStack> {
        let nonce = chunk_nonce(counter, last);
        if self.encrypt {
            self.ctx.encrypt_init(None, None, Some(&nonce))
        } else {
            self.ctx.decrypt_init(None, None, Some(&nonce))
        }
    }

    /// Seals `chunk[..len - TAG_BYTES]` in place and writes the tag after it.
    fn seal(&mut self, chunk: &mut [u8], counter: u64, last: bool) -> Result<(), ErrorStack> {
        let (body, tag) = chunk.split_at_mut(chunk.len() - TAG_BYTES);
        self.set_nonce(counter, last)?;
        let body_len = body.len();
        self.ctx.cipher_update_inplace(body, body_len)?;
        self.ctx.cipher_final(&mut [])?;
        self.ctx.tag(tag)
    }

    /// Opens `chunk` (ciphertext || tag) in place: on success its first `len - TAG_BYTES` bytes
    /// are the plaintext. On failure the chunk is wiped, so unauthenticated plaintext never
    /// outlives this call.
    fn open(&mut self, chunk: &mut [u8], counter: u64, last: bool) -> Result<(), ChunkError> {
        let reject = |why| ChunkError::Rejected { counter, why };
        if chunk.len() < TAG_BYTES {
            return Err(reject(if last {
                Reject::Truncated
            } else {
                Reject::ShortChunk
            }));
        }
        if !last && chunk.len() != CT_CHUNK_BYTES {
            return Err(reject(Reject::ShortChunk));
        }
        if last && chunk.len() == TAG_BYTES && counter != 0 {
            return Err(reject(Reject::EmptyLastChunk));
        }
        let (body, tag) = chunk.split_at_mut(chunk.len() - TAG_BYTES);
        self.set_nonce(counter, last).map_err(ChunkError::Backend)?;
        self.ctx.set_tag(tag).map_err(ChunkError::Backend)?;
        let body_len = body.len();
        let verified = self
            .ctx
            .cipher_update_inplace(body, body_len)
            .map_err(ChunkError::Backend)
            .and_then(|_| {
                self.ctx
                    .cipher_final(&mut [])
                    .map_err(|_| reject(Reject::Tag))
            });
        if verified.is_err() {
            zeroize::Zeroize::zeroize(body);
        }
        verified.map(drop)
    }
}

/// A batch of chunk slots at a stride of [`CT_CHUNK_BYTES`]: plaintext chunks (encryption) are
/// read with room for their tag, so sealing in place yields contiguous ciphertext; ciphertext
/// (decryption) is read contiguously and opened in place, leaving gaps where the tags were.
struct Batch {
    buf: Zeroizing<Vec<u8>>,
    /// Slots holding data (0 only for an empty input).
    chunks: usize,
    /// Bytes in the last of those slots.
    tail: usize,
    /// STREAM counter of the first chunk.
    first: u64,
    /// Whether this batch's last chunk is the last of the stream.
    last: bool,
}

impl Batch {
    fn new() -> Self {
        Self {
            buf: Zeroizing::new(vec![0u8; BATCH_CHUNKS * CT_CHUNK_BYTES]),
            chunks: 0,
            tail: 0,
            first: 0,
            last: false,
        }
    }

    /// Reads up to [`BATCH_CHUNKS`] chunks of up to `per` bytes each: plaintext chunks into
    /// their slots, ciphertext in one piece. Returns true when the input ended inside this
    /// batch (a short or empty read), false when every slot is full.
    fn fill<R: Read>(&mut self, reader: &mut R, per: usize) -> io::Result<bool> {
        self.chunks = 0;
        self.tail = 0;
        if per == CT_CHUNK_BYTES {
            let n = read_full(reader, &mut self.buf)?;
            self.chunks = n.div_ceil(CT_CHUNK_BYTES);
            self.tail = n - self.chunks.saturating_sub(1) * CT_CHUNK_BYTES;
            return Ok(n < self.buf.len());
        }
        for i in 0..BATCH_CHUNKS {
            let slot = &mut self.buf[i * CT_CHUNK_BYTES..i * CT_CHUNK_BYTES + per];
            let n = read_full(reader, slot)?;
            if n == 0 {
                return Ok(true);
            }
            self.chunks = i + 1;
            self.tail = n;
            if n < per {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Bytes read into the batch.
    fn input_len(&self, per: usize) -> usize {
        self.chunks.saturating_sub(1) * per + self.tail
    }

    fn counter(&self, i: usize) -> u64 {
        self.first + i as u64
    }

    fn seal(&mut self, cipher: &mut ChunkCipher) -> Result<(), ChunkError> {
        for i in 0..self.chunks {
            let is_last = i + 1 == self.chunks;
            let len = if is_last { self.tail } else { CHUNK_BYTES } + TAG_BYTES;
            let (counter, last) = (self.counter(i), self.last && is_last);
            let chunk = &mut self.buf[i * CT_CHUNK_BYTES..i * CT_CHUNK_BYTES + len];
            cipher
                .seal(chunk, counter, last)
                .map_err(ChunkError::Backend)?;
        }
        Ok(())
    }

    /// The ciphertext after sealing (contiguous).
    fn sealed(&self) -> &[u8] {
        &self.buf[..self.input_len(CT_CHUNK_BYTES) + TAG_BYTES]
    }

    fn open(&mut self, cipher: &mut ChunkCipher) -> Result<(), ChunkError> {
        for i in 0..self.chunks {
            let is_last = i + 1 == self.chunks;
            let len = if is_last { self.tail } else { CT_CHUNK_BYTES };
            let (counter, last) = (self.counter(i), self.last && is_last);
            let chunk = &mut self.buf[i * CT_CHUNK_BYTES..i * CT_CHUNK_BYTES + len];
            cipher.open(chunk, counter, last)?;
        }
        Ok(())
    }

    /// The plaintext pieces after opening, one per chunk.
    fn opened(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.chunks).map(|i| {
            let len = if i + 1 == self.chunks {
                self.tail
            } else {
                CT_CHUNK_BYTES
            };
            &self.buf[i * CT_CHUNK_BYTES..i * CT_CHUNK_BYTES + len - TAG_BYTES]
        })
    }
}

/// STREAM framing of batches as they are read, shared by both directions: counters, and the
/// last-chunk flag, which a full batch only gets once the next read has shown whether more
/// input follows.
#[derive(Default)]
struct Framer {
    counter: u64,
    /// A full batch whose last-chunk flag waits for the next read.
    pending: Option<Batch>,
}

impl Framer {
    /// Takes `batch`, just filled (`ended`: the input ended inside it), and hands every batch
    /// whose last-chunk flag is now known to `dispatch`, in order. Returns true once the stream
    /// is complete (nothing more is to be read).
    fn push(&mut self, mut batch: Batch, ended: bool, mut dispatch: impl FnMut(Batch)) -> bool {
        batch.first = self.counter;
        batch.last = false;
        // The previous (full) batch ends the stream exactly when nothing followed it.
        if let Some(mut prev) = self.pending.take() {
            prev.last = batch.chunks == 0;
            dispatch(prev);
        }
        if batch.chunks == 0 {
            if self.counter == 0 {
                // No input at all: a single empty, final chunk (encryption writes it;
                // decryption rejects it as truncated).
                batch.chunks = 1;
                batch.last = true;
                dispatch(batch);
            }
            // Otherwise the empty buffer is dropped: nothing more is read.
            return true;
        }
        self.counter += batch.chunks as u64;
        if ended {
            batch.last = true;
            dispatch(batch);
            return true;
        }
        self.pending = Some(batch);
        false
    }
}

/// A batch handed to the workers, with the channel its result goes back on.
struct Job {
    batch: Batch,
    done: SyncSender<Result<Batch, ChunkError>>,
}

fn workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(MAX_WORKERS)
}

/// A worker: seals or opens the batches it takes from `jobs` until the queue closes.
fn work(jobs: &Mutex<Receiver<Job>>, key: &PayloadKey, encrypt: bool) {
    let mut cipher = ChunkCipher::new(key, encrypt);
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(Job { mut batch, done }) = job else {
            return;
        };
        let result = match &mut cipher {
            Ok(c) if encrypt => batch.seal(c),
            Ok(c) => batch.open(c),
            Err(e) => Err(ChunkError::Backend(e.clone())),
        };
        // The receiver is gone only when the caller already failed; nothing to report then.
        let _ = done.send(result.map(|()| batch));
    }
}

/// Reads until `buf` is full or the input ends; returns the number of bytes read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn backend_error(source: io::Error) -> CryptoError {
    CryptoError::Backend { source }
}

fn init_error(source: ErrorStack) -> CryptoError {
    backend_error(io::Error::other(source))
}

/// Parallel [`super::encrypt`].
pub(super) fn encrypt<R: Read, W: Write>(
    mut plaintext: R,
    mut ciphertext: W,
    recipients: &[AgeRecipient],
) -> Result<CipherSummary, CryptoError> {
    if recipients.is_empty() {
        return Err(CryptoError::NoRecipients);
    }
    let write_err = |source| CryptoError::WriteCiphertext { source };
    let read_err = |source| CryptoError::ReadPlaintext { source };
    let slot = FileKeySlot::default();
    let wrappers: Vec<CapturingRecipient<'_>> = recipients
        .iter()
        .map(|r| CapturingRecipient {
            inner: r.as_age(),
            slot: &slot,
        })
        .collect();
    let encryptor =
        age::Encryptor::with_recipients(wrappers.iter().map(|w| w as &dyn age::Recipient))
            .map_err(|source| CryptoError::Encrypt { source })?;
    // age writes the header and the payload nonce as soon as the stream starts; the stream
    // itself is dropped unused (it writes nothing more without `finish`).
    let mut header = Vec::new();
    drop(encryptor.wrap_output(&mut header).map_err(write_err)?);
    let key = PayloadKey::take(&slot, &header[header.len() - NONCE_BYTES..]);
    // Fail here, not on a worker, if OpenSSL cannot provide the cipher.
    drop(ChunkCipher::new(&key, true).map_err(init_error)?);

    ciphertext.write_all(&header).map_err(write_err)?;
    let mut hasher = Sha256::new();
    hasher.update(&header);
    let mut size = header.len() as u64;

    std::thread::scope(|s| {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..workers() {
            let (jobs, key) = (Arc::clone(&job_rx), &key);
            s.spawn(move || work(&jobs, key, true));
        }
        // Sealed batches pass through the hasher in order, then come back here to be written.
        let (order_tx, order_rx) = mpsc::channel::<Receiver<Result<Batch, ChunkError>>>();
        let (out_tx, out_rx) = mpsc::channel::<Result<Batch, ChunkError>>();
        let hasher = s.spawn(move || {
            for result in order_rx {
                let result = result.recv().unwrap_or_else(|_| Err(ChunkError::Lost));
                if let Ok(batch) = &result {
                    hasher.update(batch.sealed());
                }
                if out_tx.send(result).is_err() {
                    break;
                }
            }
            hasher
        });

        let mut free: Vec<Batch> = Vec::new();
        let mut allocated = 0usize;
        let mut in_flight = 0usize;
        let mut write_out =
            |result: Result<Batch, ChunkError>, free: &mut Vec<Batch>| -> Result<(), CryptoError> {
                let batch = result.map_err(|e| e.into_crypto(0))?;
                let data = batch.sealed();
                ciphertext.write_all(data).map_err(write_err)?;
                size += data.len() as u64;
                free.push(batch);
                Ok(())
            };
        let dispatch = |batch: Batch| {
            let (done_tx, done_rx) = mpsc::sync_channel(1);
            // Sends fail only if every worker or the hasher is gone, i.e. one panicked; the
            // scope re-raises that panic once this function returns.
            let _ = job_tx.send(Job {
                batch,
                done: done_tx,
            });
            let _ = order_tx.send(done_rx);
        };

        let mut framer = Framer::default();
        loop {
            // Write whatever is ready, then find a buffer for the next read.
            while let Ok(result) = out_rx.try_recv() {
                in_flight -= 1;
                write_out(result, &mut free)?;
            }
            let mut batch = match free.pop() {
                Some(b) => b,
                None if allocated < IN_FLIGHT => {
                    allocated += 1;
                    Batch::new()
                }
                None => {
                    let result = out_rx.recv().unwrap_or_else(|_| Err(ChunkError::Lost));
                    in_flight -= 1;
                    write_out(result, &mut free)?;
                    free.pop().expect("a batch was just written")
                }
            };
            let ended = batch.fill(&mut plaintext, CHUNK_BYTES).map_err(read_err)?;
            let complete = framer.push(batch, ended, |batch| {
                dispatch(batch);
                in_flight += 1;
            });
            if complete {
                break;
            }
        }
        drop(order_tx);
        while in_flight > 0 {
            let result = out_rx.recv().unwrap_or_else(|_| Err(ChunkError::Lost));
            in_flight -= 1;
            write_out(result, &mut free)?;
        }
        ciphertext.flush().map_err(write_err)?;
        let hasher = hasher
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        Ok(CipherSummary {
            sha256: Sha256Digest(hasher.finalize().into()),
            size,
        })
    })
}

/// Finds the end of an age header (after the `--- MAC` line) plus the payload nonce.
fn header_end(buf: &[u8]) -> Option<usize> {
    let mac = buf.windows(5).position(|w| w == b"\n--- ")? + 1;
    let eol = buf[mac..].iter().position(|&b| b == b'\n')? + mac + 1;
    Some(eol + NONCE_BYTES)
}

/// A writer that counts what reached the caller's writer, for `plaintext_written`.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Counting<W> {
    /// Writes the opened chunks of `batch`, one by one so a failure leaves an exact count.
    fn put(&mut self, batch: &Batch) -> io::Result<()> {
        for piece in batch.opened() {
            self.inner.write_all(piece)?;
            self.written += piece.len() as u64;
        }
        Ok(())
    }
}

fn auth_error(counter: u64, why: Reject) -> io::Error {
    let what = match why {
        Reject::Tag => "failed authentication",
        Reject::ShortChunk => "is shorter than a full chunk but not the last one",
        Reject::Truncated => "is truncated (shorter than its tag)",
        Reject::EmptyLastChunk => "is an empty final chunk after non-empty ones",
    };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("payload chunk {counter} {what}"),
    )
}

/// What [`Opener::next`] yields.
enum Opened {
    /// An opened batch; more follow.
    More(Batch),
    /// The final opened batch, with the digest and size of the whole ciphertext. The caller
    /// compares them with the expected ones before releasing this batch.
    Final(Batch, CipherSummary),
}

/// The decryption pipeline, pulled batch by batch by `decrypt` and [`DecryptReader`]. The
/// calling thread reads (in [`Opener::next`]); the hasher and worker threads own what they use
/// and end on their own when the opener is dropped (the hasher's queue closes, then the
/// workers').
pub(super) struct Opener<R> {
    input: io::Chain<io::Cursor<Vec<u8>>, R>,
    limit: Option<u64>,
    size: u64,
    framer: Framer,
    hash_tx: Option<Sender<Job>>,
    hasher: Option<JoinHandle<Sha256>>,
    results: VecDeque<Receiver<Result<Batch, ChunkError>>>,
    free: Vec<Batch>,
    allocated: usize,
}

fn spawn<F: FnOnce() -> T + Send + 'static, T: Send + 'static>(
    name: &str,
    f: F,
) -> Result<JoinHandle<T>, CryptoError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map_err(backend_error)
}

impl<R: Read> Opener<R> {
    /// Reads and checks the header, derives the payload key and starts the threads.
    fn new(
        mut ciphertext: R,
        identity: &AgeIdentity,
        limit: Option<u64>,
    ) -> Result<Self, CryptoError> {
        let too_long = |size: u64| match limit {
            Some(l) if size > l => Err(CryptoError::CiphertextTooLong {
                expected_size: l,
                plaintext_written: 0,
            }),
            _ => Ok(()),
        };
        // Read just enough for the header, then let age parse it and check its MAC.
        let mut pre = Vec::with_capacity(4096);
        let mut piece = [0u8; 4096];
        let header_len = loop {
            if let Some(end) = header_end(&pre) {
                break end.min(pre.len());
            }
            let n = read_full(&mut ciphertext, &mut piece).map_err(|source| {
                CryptoError::ReadCiphertext {
                    plaintext_written: 0,
                    source,
                }
            })?;
            pre.extend_from_slice(&piece[..n]);
            too_long(pre.len() as u64)?;
            if n < piece.len() || pre.len() > MAX_HEADER_BYTES {
                break header_end(&pre).unwrap_or(pre.len()).min(pre.len());
            }
        };
        let key = Arc::new(open_header(&pre[..header_len], identity)?);
        // Fail here, not on a worker, if OpenSSL cannot provide the cipher.
        drop(ChunkCipher::new(&key, false).map_err(init_error)?);

        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..workers() {
            let (jobs, key) = (Arc::clone(&job_rx), Arc::clone(&key));
            spawn("hpcs-age-open", move || work(&jobs, &key, false))?;
        }
        // Ciphertext batches pass through the hasher in order, then on to the workers.
        let mut hasher = Sha256::new();
        hasher.update(&pre[..header_len]);
        let (hash_tx, hash_rx) = mpsc::channel::<Job>();
        let hasher = spawn("hpcs-age-hash", move || {
            for job in hash_rx {
                hasher.update(&job.batch.buf[..job.batch.input_len(CT_CHUNK_BYTES)]);
                if job_tx.send(job).is_err() {
                    break;
                }
            }
            hasher
        })?;
        Ok(Self {
            input: io::Cursor::new(pre[header_len..].to_vec()).chain(ciphertext),
            limit,
            size: header_len as u64,
            framer: Framer::default(),
            hash_tx: Some(hash_tx),
            hasher: Some(hasher),
            results: VecDeque::new(),
            free: Vec::new(),
            allocated: 0,
        })
    }

    /// Whether another batch can be read now.
    fn can_read(&self) -> bool {
        self.hash_tx.is_some() && (!self.free.is_empty() || self.allocated < IN_FLIGHT)
    }

    /// Reads one batch and dispatches what can be dispatched.
    fn read_batch(&mut self, written: u64) -> Result<(), CryptoError> {
        let mut batch = self.free.pop().unwrap_or_else(|| {
            self.allocated += 1;
            Batch::new()
        });
        let ended = batch
            .fill(&mut self.input, CT_CHUNK_BYTES)
            .map_err(|source| CryptoError::ReadCiphertext {
                plaintext_written: written,
                source,
            })?;
        self.size += batch.input_len(CT_CHUNK_BYTES) as u64;
        if let Some(l) = self.limit
            && self.size > l
        {
            return Err(CryptoError::CiphertextTooLong {
                expected_size: l,
                plaintext_written: written,
            });
        }
        let (hash_tx, results) = (&self.hash_tx, &mut self.results);
        let complete = self.framer.push(batch, ended, |batch| {
            let (done_tx, done_rx) = mpsc::sync_channel(1);
            if let Some(tx) = hash_tx {
                // Fails only if the hasher is gone; `done_rx` then reports a lost worker.
                let _ = tx.send(Job {
                    batch,
                    done: done_tx,
                });
            }
            results.push_back(done_rx);
        });
        if complete {
            // Closes the hasher's queue, then the workers'.
            self.hash_tx = None;
        }
        Ok(())
    }

    /// The next opened batch, in order. `written` is the plaintext the caller has released,
    /// for errors. Not to be called again after [`Opened::Final`] or an error.
    fn next(&mut self, written: u64) -> Result<Opened, CryptoError> {
        let result = loop {
            // Keep the pipeline full: one read per batch taken, more while nothing is ready.
            if self.can_read() {
                self.read_batch(written)?;
            }
            let Some(rx) = self.results.front() else {
                if self.can_read() {
                    continue;
                }
                // Only reachable when called again after the final batch.
                break Err(ChunkError::Lost);
            };
            match rx.try_recv() {
                Ok(result) => break result,
                Err(mpsc::TryRecvError::Disconnected) => break Err(ChunkError::Lost),
                Err(mpsc::TryRecvError::Empty) if self.can_read() => {}
                Err(mpsc::TryRecvError::Empty) => {
                    break rx.recv().unwrap_or(Err(ChunkError::Lost));
                }
            }
        };
        self.results.pop_front();
        let batch = result.map_err(|e| e.into_crypto(written))?;
        if !batch.last {
            return Ok(Opened::More(batch));
        }
        // The final batch went through the hasher before the workers, and the hasher's queue
        // is closed: it has finished.
        let hasher = self
            .hasher
            .take()
            .expect("one final batch")
            .join()
            .map_err(|_| ChunkError::Lost.into_crypto(written))?;
        Ok(Opened::Final(
            batch,
            CipherSummary {
                sha256: Sha256Digest(hasher.finalize().into()),
                size: self.size,
            },
        ))
    }

    /// Returns a batch whose plaintext has been consumed.
    fn recycle(&mut self, batch: Batch) {
        self.free.push(batch);
    }
}

fn mismatch(
    expected: Option<&CipherSummary>,
    actual: CipherSummary,
    written: u64,
) -> Result<(), CryptoError> {
    match expected {
        Some(expected) if *expected != actual => Err(CryptoError::CiphertextMismatch {
            expected: *expected,
            actual,
            plaintext_written: written,
        }),
        _ => Ok(()),
    }
}

/// Parallel [`super::decrypt`].
pub(super) fn decrypt<R: Read, W: Write>(
    ciphertext: R,
    plaintext: W,
    identity: &AgeIdentity,
    expected: Option<&CipherSummary>,
) -> Result<DecryptSummary, CryptoError> {
    let mut opener = Opener::new(ciphertext, identity, expected.map(|e| e.size))?;
    let mut out = Counting {
        inner: plaintext,
        written: 0,
    };
    let write_err = |written, source| CryptoError::WritePlaintext {
        plaintext_written: written,
        source,
    };
    loop {
        match opener.next(out.written)? {
            Opened::More(batch) => {
                out.put(&batch).map_err(|e| write_err(out.written, e))?;
                opener.recycle(batch);
            }
            Opened::Final(batch, actual) => {
                mismatch(expected, actual, out.written)?;
                out.put(&batch)
                    .and_then(|()| out.inner.flush())
                    .map_err(|e| write_err(out.written, e))?;
                return Ok(DecryptSummary {
                    ciphertext: actual,
                    plaintext_size: out.written,
                });
            }
        }
    }
}

/// A reader of plaintext that decrypts and verifies an age ciphertext as it is read, on the
/// same pipeline as [`super::decrypt`].
///
/// Created by [`super::decrypt_reader`]. It returns end-of-file only after the whole
/// ciphertext has been authenticated and, if a [`CipherSummary`] was given, matched; the final
/// batch (up to 1 MiB) is not returned before that. Every failure is an [`io::Error`] whose
/// inner error is a [`CryptoError`] (see [`CryptoError::from_io`]). Bytes already read before
/// an error must be discarded, as for [`super::decrypt`]; after an error every read fails.
pub struct DecryptReader<R> {
    opener: Option<Opener<R>>,
    expected: Option<CipherSummary>,
    /// The batch being returned, its next chunk and the offset in it.
    current: Option<(Batch, usize, usize)>,
    plaintext: u64,
    /// The verified summary, set when the final batch is taken: `current` is then that batch.
    finished: Option<CipherSummary>,
}

impl<R> std::fmt::Debug for DecryptReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptReader")
            .field("expected", &self.expected)
            .field("plaintext", &self.plaintext)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// Parallel [`super::decrypt_reader`].
pub(super) fn decrypt_reader<R: Read>(
    ciphertext: R,
    identity: &AgeIdentity,
    expected: Option<CipherSummary>,
) -> Result<DecryptReader<R>, CryptoError> {
    Ok(DecryptReader {
        opener: Some(Opener::new(ciphertext, identity, expected.map(|e| e.size))?),
        expected,
        current: None,
        plaintext: 0,
        finished: None,
    })
}

impl<R: Read> DecryptReader<R> {
    /// Like [`Read::read`], with the typed error. `Ok(0)` means the ciphertext was complete,
    /// authentic and matched the expected summary.
    ///
    /// # Errors
    ///
    /// [`CryptoError::Decrypt`], [`CryptoError::ReadCiphertext`],
    /// [`CryptoError::CiphertextTooLong`] or [`CryptoError::CiphertextMismatch`]; their
    /// `plaintext_written` counts the bytes this reader returned before.
    pub fn read_checked(&mut self, buf: &mut [u8]) -> Result<usize, CryptoError> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some((batch, chunk, off)) = &mut self.current {
                if let Some(piece) = batch.opened().nth(*chunk) {
                    let n = (piece.len() - *off).min(buf.len());
                    buf[..n].copy_from_slice(&piece[*off..*off + n]);
                    *off += n;
                    if *off == piece.len() {
                        *chunk += 1;
                        *off = 0;
                    }
                    if n > 0 {
                        self.plaintext += n as u64;
                        return Ok(n);
                    }
                    continue;
                }
                let (batch, _, _) = self.current.take().expect("checked above");
                if let Some(opener) = &mut self.opener {
                    opener.recycle(batch);
                }
            }
            if self.finished.is_some() {
                // The final batch has been returned whole: stop the threads.
                self.opener = None;
                return Ok(0);
            }
            let Some(opener) = &mut self.opener else {
                return Err(CryptoError::Decrypt {
                    plaintext_written: self.plaintext,
                    source: io::Error::other("decryption already failed"),
                });
            };
            let next = opener.next(self.plaintext).and_then(|opened| match opened {
                Opened::More(batch) => Ok(batch),
                Opened::Final(batch, actual) => {
                    mismatch(self.expected.as_ref(), actual, self.plaintext)?;
                    self.finished = Some(actual);
                    Ok(batch)
                }
            });
            match next {
                Ok(batch) => self.current = Some((batch, 0, 0)),
                Err(e) => {
                    // Stops the threads; later reads fail.
                    self.opener = None;
                    return Err(e);
                }
            }
        }
    }

    /// Digest and size of the ciphertext, once the reader has returned end-of-file.
    #[must_use]
    pub fn ciphertext_summary(&self) -> Option<CipherSummary> {
        self.finished.filter(|_| self.current.is_none())
    }

    /// Plaintext bytes returned so far.
    #[must_use]
    pub fn plaintext_read(&self) -> u64 {
        self.plaintext
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_checked(buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    //! STREAM rules checked with chunks that carry valid tags: the payload key is recovered
    //! from a real file, so only the rule under test can reject them.

    use super::*;
    use crate::crypto::{decrypt, decrypt_reader, encrypt};
    use rstest::rstest;

    /// A file's header (with the payload nonce) and its payload key.
    fn header_and_key(id: &AgeIdentity) -> (Vec<u8>, PayloadKey) {
        let mut ct = Vec::new();
        encrypt(&b"x"[..], &mut ct, &[id.to_public()]).unwrap();
        ct.truncate(header_end(&ct).unwrap());
        let key = open_header(&ct, id).unwrap();
        (ct, key)
    }

    /// A file whose payload is `chunks` (plaintext, last flag), sealed with counters 0, 1, ...
    fn forge(id: &AgeIdentity, chunks: &[(usize, bool)]) -> Vec<u8> {
        let (mut ct, key) = header_and_key(id);
        let mut cipher = ChunkCipher::new(&key, true).unwrap();
        for (i, &(len, last)) in chunks.iter().enumerate() {
            let mut chunk = vec![0xa5u8; len + TAG_BYTES];
            cipher.seal(&mut chunk, i as u64, last).unwrap();
            ct.extend_from_slice(&chunk);
        }
        ct
    }

    /// Both decryption paths reject `ct` with an authentication error naming `chunk`, and
    /// `decrypt` writes no plaintext from the failing batch.
    fn assert_rejected(ct: &[u8], id: &AgeIdentity, chunk: u64, why: &str) {
        let mut out = Vec::new();
        let err = decrypt(ct, &mut out, id, None).unwrap_err();
        assert!(matches!(err, CryptoError::Decrypt { .. }), "{err}");
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(
            source.contains(&format!("payload chunk {chunk} ")) && source.contains(why),
            "{source}"
        );
        assert_eq!(err.plaintext_written(), out.len() as u64);
        let first_batch = chunk / BATCH_CHUNKS as u64 * BATCH_CHUNKS as u64;
        assert!(out.len() as u64 <= first_batch * CHUNK_BYTES as u64);
        let mut reader = decrypt_reader(ct, id, None).unwrap();
        let err = io::copy(&mut reader, &mut io::sink()).unwrap_err();
        let err = CryptoError::from_io(err).unwrap();
        assert!(matches!(err, CryptoError::Decrypt { .. }), "{err}");
    }

    #[rstest]
    #[case::single(&[(100, true)])]
    #[case::exact_chunk(&[(CHUNK_BYTES, true)])]
    #[case::exact_batch(&[(CHUNK_BYTES, false); BATCH_CHUNKS][..])]
    fn forged_valid_streams_decrypt(#[case] chunks: &[(usize, bool)]) {
        let id = AgeIdentity::generate();
        let mut chunks = chunks.to_vec();
        chunks.last_mut().unwrap().1 = true;
        let ct = forge(&id, &chunks);
        let mut out = Vec::new();
        decrypt(ct.as_slice(), &mut out, &id, None).unwrap();
        let total: usize = chunks.iter().map(|c| c.0).sum();
        assert_eq!(out, vec![0xa5u8; total]);
    }

    #[test]
    fn final_chunk_without_last_flag_fails() {
        let id = AgeIdentity::generate();
        // A file cut after a full chunk: its final chunk was not sealed as the last one.
        let ct = forge(&id, &[(CHUNK_BYTES, false), (CHUNK_BYTES, false)]);
        assert_rejected(&ct, &id, 1, "failed authentication");
        // Same at a batch boundary.
        let ct = forge(&id, &[(CHUNK_BYTES, false); BATCH_CHUNKS]);
        assert_rejected(&ct, &id, BATCH_CHUNKS as u64 - 1, "failed authentication");
    }

    #[test]
    fn last_flag_before_the_end_fails() {
        let id = AgeIdentity::generate();
        // A chunk flagged last followed by more chunks: age stops at the flagged chunk, so the
        // rest would be an extension; it must not decrypt.
        let ct = forge(
            &id,
            &[(CHUNK_BYTES, false), (CHUNK_BYTES, true), (10, true)],
        );
        assert_rejected(&ct, &id, 1, "failed authentication");
        // The same across a batch boundary.
        let mut chunks = vec![(CHUNK_BYTES, false); BATCH_CHUNKS + 1];
        chunks[BATCH_CHUNKS - 1].1 = true;
        chunks[BATCH_CHUNKS].1 = true;
        let ct = forge(&id, &chunks);
        assert_rejected(&ct, &id, BATCH_CHUNKS as u64 - 1, "failed authentication");
    }

    #[test]
    fn empty_last_chunk_after_data_fails() {
        let id = AgeIdentity::generate();
        // Correctly tagged, but age allows an empty final chunk only for an empty file.
        let ct = forge(&id, &[(CHUNK_BYTES, false), (0, true)]);
        let err = decrypt(ct.as_slice(), Vec::new(), &id, None).unwrap_err();
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(
            source.contains("payload chunk 1 is an empty final chunk"),
            "{source}"
        );
        // An empty file is exactly one empty final chunk.
        let ct = forge(&id, &[(0, true)]);
        let mut out = Vec::new();
        decrypt(ct.as_slice(), &mut out, &id, None).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn short_middle_chunk_fails() {
        let id = AgeIdentity::generate();
        // A short chunk that is not the last: the reader sees full chunks, so the short
        // chunk's bytes shift the framing and the tag no longer verifies.
        let ct = forge(&id, &[(100, false), (CHUNK_BYTES, true)]);
        assert_rejected(&ct, &id, 0, "failed authentication");
    }

    #[rstest]
    #[case::missing_payload(0)]
    #[case::partial_tag(TAG_BYTES - 1)]
    fn payload_shorter_than_a_tag_fails(#[case] keep: usize) {
        let id = AgeIdentity::generate();
        let ct = forge(&id, &[(0, true)]);
        let cut = ct.len() - TAG_BYTES + keep;
        let err = decrypt(&ct[..cut], Vec::new(), &id, None).unwrap_err();
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("payload chunk 0 is truncated"), "{source}");
    }

    #[test]
    fn tampered_tag_in_first_batch_releases_nothing() {
        let id = AgeIdentity::generate();
        let mut chunks = vec![(CHUNK_BYTES, false); 3 * BATCH_CHUNKS];
        chunks.last_mut().unwrap().1 = true;
        let mut ct = forge(&id, &chunks);
        // The tag of chunk 2: nothing of batch 0 may be written, nor anything after it.
        let end = header_end(&ct).unwrap();
        ct[end + 3 * CT_CHUNK_BYTES - 1] ^= 1;
        let mut out = Vec::new();
        let err = decrypt(ct.as_slice(), &mut out, &id, None).unwrap_err();
        assert!(out.is_empty(), "{} bytes released", out.len());
        assert_eq!(err.plaintext_written(), 0);
        assert_rejected(&ct, &id, 2, "failed authentication");
    }

    #[test]
    fn failed_open_wipes_the_chunk() {
        let id = AgeIdentity::generate();
        let (_, key) = header_and_key(&id);
        let mut chunk = vec![7u8; 1000 + TAG_BYTES];
        ChunkCipher::new(&key, true)
            .unwrap()
            .seal(&mut chunk, 0, true)
            .unwrap();
        chunk[0] ^= 1;
        let mut opener = ChunkCipher::new(&key, false).unwrap();
        assert!(opener.open(&mut chunk, 0, true).is_err());
        assert!(chunk[..1000].iter().all(|&b| b == 0), "not wiped");
        // The context is reusable after a failure.
        chunk[0] ^= 1;
        let mut good = vec![7u8; 1000 + TAG_BYTES];
        ChunkCipher::new(&key, true)
            .unwrap()
            .seal(&mut good, 0, true)
            .unwrap();
        opener.open(&mut good, 0, true).unwrap();
        assert_eq!(&good[..1000], &[7u8; 1000][..]);
    }
}
