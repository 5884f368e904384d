//! Multi-threaded age payload encryption and decryption, byte-compatible with age v1.
//!
//! The header (recipient stanzas, MAC, nonce) is produced and checked by the `age` crate; only
//! the file key is captured on the way, through recipient and identity wrappers, to derive the
//! payload key exactly as age does: `HKDF-SHA256(ikm = file key, salt = nonce, info =
//! "payload")`. The payload is age's STREAM: ChaCha20-Poly1305 over 64 KiB plaintext chunks,
//! nonce = 11-byte big-endian chunk counter || last-chunk flag. Chunks are independent, so a
//! batch of [`BATCH_CHUNKS`] chunks is split across all cores on worker threads while the
//! calling thread writes and hashes the previous batch and reads the next one (the caller's
//! reader and writer need not be `Send`). At most two plaintext and two ciphertext
//! batches exist at a time, so memory stays bounded whatever the input size.
//!
//! Decryption keeps age's rules: every chunk but the last is full; the last chunk carries the
//! last flag and is empty only when the whole plaintext is; a truncated, reordered or extended
//! payload fails authentication. The final batch is written only after the ciphertext digest
//! has been compared with the expected one.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::num::NonZeroUsize;
use std::sync::{Mutex, PoisonError};

use age_core::format::{FileKey, Stanza};
use age_core::secrecy::ExposeSecret as _;
use chacha20poly1305::aead::{AeadInPlace as _, KeyInit as _};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::{CipherSummary, CryptoError, DecryptSummary, Sha256Digest};
use crate::secret::{AgeIdentity, AgeRecipient};

/// Plaintext bytes per STREAM chunk (fixed by the age format).
pub const CHUNK_BYTES: usize = 64 * 1024;
const TAG_BYTES: usize = 16;
const CT_CHUNK_BYTES: usize = CHUNK_BYTES + TAG_BYTES;
/// Chunks per batch: 4 MiB of plaintext, enough work per batch to amortise thread start-up.
pub const BATCH_CHUNKS: usize = 64;
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

/// The payload key, wiped on drop.
struct PayloadKey(ChaCha20Poly1305);

impl PayloadKey {
    fn derive(file_key: &[u8; 16], nonce: &[u8]) -> Self {
        let key = Zeroizing::new(age_core::primitives::hkdf(nonce, b"payload", file_key));
        // `ChaCha20Poly1305` zeroizes its key on drop (the crate's `zeroize` feature, on by
        // default), so the copy inside the cipher is wiped too.
        Self(ChaCha20Poly1305::new(Key::from_slice(key.as_slice())))
    }
}

fn chunk_nonce(counter: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::from(n)
}

/// Worker threads for chunk crypto.
fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// Runs `f(first_index, group)` over `items` split into one contiguous group per worker.
fn par_groups<T: Send, F>(items: &mut [T], f: F) -> Result<(), u64>
where
    F: Fn(usize, &mut [T]) -> Result<(), u64> + Sync,
{
    let per = items.len().div_ceil(workers()).max(1);
    if items.len() <= per {
        return f(0, items);
    }
    std::thread::scope(|s| {
        let f = &f;
        let mut groups = items.chunks_mut(per).enumerate();
        let first = groups.next();
        let handles: Vec<_> = groups
            .map(|(g, group)| s.spawn(move || f(g * per, group)))
            .collect();
        let mut result = first.map_or(Ok(()), |(_, g)| f(0, g));
        for h in handles {
            let r = h.join().unwrap_or(Err(u64::MAX));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
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

/// Reads the next batch into `buf` (resized to what was read).
fn read_batch<R: Read>(reader: &mut R, buf: &mut Vec<u8>, capacity: usize) -> io::Result<()> {
    buf.resize(capacity, 0);
    let n = read_full(reader, buf)?;
    buf.truncate(n);
    Ok(())
}

struct Sink<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Sink<W> {
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.inner.write_all(data)?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    fn summary(self) -> CipherSummary {
        CipherSummary {
            sha256: Sha256Digest(self.hasher.finalize().into()),
            size: self.size,
        }
    }
}

/// Encrypts one batch in place: `out` receives `plain`'s chunks, each followed by its tag.
/// `chunks` is the number of chunks to encrypt (the last one of the batch may be held back).
fn encrypt_chunks(key: &PayloadKey, plain: &[u8], out: &mut [u8], first: u64, chunks: usize) {
    let mut jobs: Vec<(&[u8], &mut [u8])> = plain
        .chunks(CHUNK_BYTES)
        .zip(out.chunks_mut(CT_CHUNK_BYTES))
        .take(chunks)
        .collect();
    let _ = par_groups(&mut jobs, |start, group| {
        for (i, (p, c)) in group.iter_mut().enumerate() {
            seal(key, p, c, first + (start + i) as u64, false);
        }
        Ok(())
    });
}

fn seal(key: &PayloadKey, plain: &[u8], out: &mut [u8], counter: u64, last: bool) {
    let (body, tag) = out[..plain.len() + TAG_BYTES].split_at_mut(plain.len());
    body.copy_from_slice(plain);
    let t = key
        .0
        .encrypt_in_place_detached(&chunk_nonce(counter, last), &[], body)
        .expect("a 64 KiB chunk is far below the ChaCha20-Poly1305 length limit");
    tag.copy_from_slice(&t);
}

/// Parallel [`super::encrypt`].
pub(super) fn encrypt<R: Read, W: Write>(
    mut plaintext: R,
    ciphertext: W,
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
    let file_key = slot
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .expect("age wrapped the file key for at least one recipient");
    let key = PayloadKey::derive(&file_key, &header[header.len() - NONCE_BYTES..]);
    drop(file_key);

    let mut sink = Sink {
        inner: ciphertext,
        hasher: Sha256::new(),
        size: 0,
    };
    sink.put(&header).map_err(write_err)?;

    let batch = BATCH_CHUNKS * CHUNK_BYTES;
    let mut cur = Zeroizing::new(Vec::with_capacity(batch));
    let mut next = Zeroizing::new(Vec::with_capacity(batch));
    let mut out = vec![0u8; BATCH_CHUNKS * CT_CHUNK_BYTES];
    let mut prev = vec![0u8; BATCH_CHUNKS * CT_CHUNK_BYTES];
    let mut prev_len = 0usize;
    read_batch(&mut plaintext, &mut cur, batch).map_err(read_err)?;
    let mut counter = 0u64;
    loop {
        let chunks = cur.len().div_ceil(CHUNK_BYTES).max(1);
        let full = cur.len() == batch;
        // Side thread: write and hash the previous batch, read the next one. Here: all chunks
        // but the last, whose last-chunk flag depends on whether more input follows.
        let (written, read) = std::thread::scope(|s| {
            let crypto = s.spawn(|| encrypt_chunks(&key, &cur, &mut out, counter, chunks - 1));
            let w = sink.put(&prev[..prev_len]);
            let r = if full && w.is_ok() {
                read_batch(&mut plaintext, &mut next, batch)
            } else {
                next.clear();
                Ok(())
            };
            crypto
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (w, r)
        });
        written.map_err(write_err)?;
        read.map_err(read_err)?;
        let last = next.is_empty();
        let tail = (chunks - 1) * CHUNK_BYTES;
        seal(
            &key,
            &cur[tail..],
            &mut out[(chunks - 1) * CT_CHUNK_BYTES..],
            counter + chunks as u64 - 1,
            last,
        );
        let out_len = (chunks - 1) * CT_CHUNK_BYTES + cur.len() - tail + TAG_BYTES;
        if last {
            sink.put(&out[..out_len]).map_err(write_err)?;
            sink.inner.flush().map_err(write_err)?;
            return Ok(sink.summary());
        }
        counter += chunks as u64;
        std::mem::swap(&mut out, &mut prev);
        prev_len = out_len;
        std::mem::swap(&mut cur, &mut next);
    }
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
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        // Write in pieces so a failure leaves an exact count.
        for piece in data.chunks(CHUNK_BYTES) {
            self.inner.write_all(piece)?;
            self.written += piece.len() as u64;
        }
        Ok(())
    }
}

fn auth_error(counter: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("chunk {counter} failed authentication"),
    )
}

fn open(key: &PayloadKey, chunk: &[u8], out: &mut [u8], counter: u64, last: bool) -> bool {
    if chunk.len() < TAG_BYTES || (!last && chunk.len() != CT_CHUNK_BYTES) {
        return false;
    }
    // An empty final chunk is only allowed as the only chunk (empty plaintext).
    if last && chunk.len() == TAG_BYTES && counter != 0 {
        return false;
    }
    let (body, tag) = chunk.split_at(chunk.len() - TAG_BYTES);
    let dst = &mut out[..body.len()];
    dst.copy_from_slice(body);
    if key
        .0
        .decrypt_in_place_detached(&chunk_nonce(counter, last), &[], dst, Tag::from_slice(tag))
        .is_err()
    {
        dst.fill(0);
        return false;
    }
    true
}

/// Parallel [`super::decrypt`].
pub(super) fn decrypt<R: Read, W: Write>(
    mut ciphertext: R,
    plaintext: W,
    identity: &AgeIdentity,
    expected: Option<&CipherSummary>,
) -> Result<DecryptSummary, CryptoError> {
    let limit = expected.map(|e| e.size);
    let too_long = |size: u64, written: u64| -> Result<(), CryptoError> {
        match limit {
            Some(l) if size > l => Err(CryptoError::CiphertextTooLong {
                expected_size: l,
                plaintext_written: written,
            }),
            _ => Ok(()),
        }
    };
    let read_err = |written, source| CryptoError::ReadCiphertext {
        plaintext_written: written,
        source,
    };

    // Read just enough for the header, then let age parse it and check its MAC.
    let mut pre = Vec::with_capacity(4096);
    let mut piece = [0u8; 4096];
    let header_len = loop {
        if let Some(end) = header_end(&pre) {
            break end.min(pre.len());
        }
        let n = read_full(&mut ciphertext, &mut piece).map_err(|e| read_err(0, e))?;
        pre.extend_from_slice(&piece[..n]);
        too_long(pre.len() as u64, 0)?;
        if n < piece.len() || pre.len() > MAX_HEADER_BYTES {
            break header_end(&pre).unwrap_or(pre.len()).min(pre.len());
        }
    };
    let slot = FileKeySlot::default();
    let wrapper = CapturingIdentity {
        inner: identity.as_age(),
        slot: &slot,
    };
    let header_err = |source| match source {
        age::DecryptError::NoMatchingKeys => CryptoError::WrongKey,
        source => CryptoError::InvalidHeader { source },
    };
    let decryptor = age::Decryptor::new(&pre[..header_len]).map_err(header_err)?;
    drop(
        decryptor
            .decrypt(std::iter::once(&wrapper as &dyn age::Identity))
            .map_err(header_err)?,
    );
    let file_key = slot
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .expect("age unwrapped the file key with this identity");
    let key = PayloadKey::derive(&file_key, &pre[header_len - NONCE_BYTES..header_len]);
    drop(file_key);

    let mut hasher = Sha256::new();
    hasher.update(&pre[..header_len]);
    let mut size = header_len as u64;
    let mut input = io::Cursor::new(pre[header_len..].to_vec()).chain(ciphertext);
    let mut out = Counting {
        inner: plaintext,
        written: 0,
    };

    let batch = BATCH_CHUNKS * CT_CHUNK_BYTES;
    let mut cur = Vec::with_capacity(batch);
    let mut next = Vec::with_capacity(batch);
    let mut plain = Zeroizing::new(vec![0u8; BATCH_CHUNKS * CHUNK_BYTES]);
    let mut prev = Zeroizing::new(vec![0u8; BATCH_CHUNKS * CHUNK_BYTES]);
    let mut prev_len = 0usize;
    read_batch(&mut input, &mut cur, batch).map_err(|e| read_err(0, e))?;
    size += cur.len() as u64;
    too_long(size, 0)?;
    let mut counter = 0u64;
    loop {
        let chunks = cur.len().div_ceil(CT_CHUNK_BYTES).max(1);
        let full = cur.len() == batch;
        let (written, read, opened) = std::thread::scope(|s| {
            let crypto = s.spawn(|| {
                let mut jobs: Vec<(&[u8], &mut [u8])> = cur
                    .chunks(CT_CHUNK_BYTES)
                    .zip(plain.chunks_mut(CHUNK_BYTES))
                    .take(chunks - 1)
                    .collect();
                par_groups(&mut jobs, |start, group| {
                    for (i, (c, p)) in group.iter_mut().enumerate() {
                        let n = counter + (start + i) as u64;
                        if !open(&key, c, p, n, false) {
                            return Err(n);
                        }
                    }
                    Ok(())
                })
            });
            hasher.update(&cur);
            let w = out.put(&prev[..prev_len]);
            let r = if full && w.is_ok() {
                read_batch(&mut input, &mut next, batch)
            } else {
                next.clear();
                Ok(())
            };
            let opened = crypto
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (w, r, opened)
        });
        if let Err(source) = written {
            return Err(CryptoError::WritePlaintext {
                plaintext_written: out.written,
                source,
            });
        }
        if let Err(n) = opened {
            return Err(CryptoError::Decrypt {
                plaintext_written: out.written,
                source: auth_error(n),
            });
        }
        read.map_err(|e| read_err(out.written, e))?;
        size += next.len() as u64;
        too_long(size, out.written)?;
        let last = next.is_empty();
        let tail = (chunks - 1) * CT_CHUNK_BYTES;
        let n = counter + chunks as u64 - 1;
        if !open(
            &key,
            &cur[tail..],
            &mut plain[(chunks - 1) * CHUNK_BYTES..],
            n,
            last,
        ) {
            return Err(CryptoError::Decrypt {
                plaintext_written: out.written,
                source: auth_error(n),
            });
        }
        let plain_len = (chunks - 1) * CHUNK_BYTES + cur.len() - tail - TAG_BYTES;
        if last {
            let actual = CipherSummary {
                sha256: Sha256Digest(hasher.finalize().into()),
                size,
            };
            if let Some(expected) = expected
                && *expected != actual
            {
                return Err(CryptoError::CiphertextMismatch {
                    expected: *expected,
                    actual,
                    plaintext_written: out.written,
                });
            }
            let done = out
                .put(&plain[..plain_len])
                .and_then(|()| out.inner.flush());
            if let Err(source) = done {
                return Err(CryptoError::WritePlaintext {
                    plaintext_written: out.written,
                    source,
                });
            }
            return Ok(DecryptSummary {
                ciphertext: actual,
                plaintext_size: out.written,
            });
        }
        counter += chunks as u64;
        std::mem::swap(&mut plain, &mut prev);
        prev_len = plain_len;
        std::mem::swap(&mut cur, &mut next);
    }
}
