//! Streaming age (X25519) encryption and decryption with on-the-fly ciphertext hashing.
//!
//! Images and data sets are many gigabytes, so everything here streams with constant memory.
//! [`encrypt`] and [`decrypt`] process age's 64 KiB STREAM chunks on all cores with OpenSSL's
//! ChaCha20-Poly1305, a bounded number of 1 MiB batches at a time, I/O on the calling thread
//! and hashing on a thread of its own (the `parallel` submodule; the output is the standard age
//! format); [`decrypt_reader`] is a pull-style reader on the same decryption pipeline. The
//! SHA-256 and size recorded for an artefact (in Vault and in the info file) are those of the
//! **ciphertext**, so anyone can check a file on shared storage without the key, and they are
//! computed while the bytes pass through: encryption hashes what it writes, decryption hashes
//! what it reads.
//!
//! # When decryption fails late
//!
//! age authenticates each 64 KiB chunk before releasing its plaintext, so [`decrypt`] never
//! writes bytes that failed authentication. But a file can only be compared with its recorded
//! digest at its end, and a truncated or substituted file is only detected there too: by then
//! earlier chunks have been written. Every decryption error therefore carries
//! [`CryptoError::plaintext_written`], the number of bytes already handed to the writer, and the
//! caller **must discard them** (delete or wipe the output, abort the consumer) when it is
//! non-zero. Where a consumer cannot un-read data (e.g. an engine loading an image), call
//! [`verify_file`] first: it reads the ciphertext once, without the key, and rejects a file that
//! does not match before any plaintext exists. [`decrypt`] still checks while decrypting, because
//! shared storage can change between the two reads. A ciphertext longer than expected is
//! rejected as soon as the excess is read, not at the end.
//!
//! Interoperability with the Go `age` and `rage` command-line tools is covered by separate tests
//! that need those binaries; this module does not depend on them.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::secret::{AgeIdentity, AgeRecipient};

mod parallel;

pub use parallel::{BATCH_CHUNKS, CHUNK_BYTES, DecryptReader};

/// Size of the read buffer of [`summarize`] (the cipher pipeline reads in batches of
/// [`BATCH_CHUNKS`] chunks instead).
pub const STREAM_BUFFER_BYTES: usize = 1024 * 1024;

/// Errors of encryption, decryption and verification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// No recipient was given.
    #[error("no recipients to encrypt to")]
    NoRecipients,
    /// age refused the recipient set.
    #[error("failed to set up age encryption")]
    Encrypt {
        /// The cause.
        #[source]
        source: age::EncryptError,
    },
    /// Reading the plaintext input failed.
    #[error("failed to read plaintext")]
    ReadPlaintext {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the ciphertext output failed.
    #[error("failed to write ciphertext")]
    WriteCiphertext {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading the ciphertext input failed (an I/O error, not a cryptographic one).
    #[error("failed to read ciphertext")]
    ReadCiphertext {
        /// Plaintext bytes already written; they must be discarded.
        plaintext_written: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The input is not an age file this library can read.
    #[error("ciphertext is not a valid age file")]
    InvalidHeader {
        /// The cause.
        #[source]
        source: age::DecryptError,
    },
    /// The identity is not one of the file's recipients.
    #[error("the age identity does not match any recipient of the ciphertext")]
    WrongKey,
    /// A chunk failed authentication, the file is truncated, or data follows its end.
    #[error("ciphertext failed authentication (tampered, truncated or corrupt)")]
    Decrypt {
        /// Plaintext bytes already written; they must be discarded.
        plaintext_written: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The ciphertext is longer than the recorded size.
    #[error("ciphertext is longer than the recorded {expected_size} bytes")]
    CiphertextTooLong {
        /// The recorded size.
        expected_size: u64,
        /// Plaintext bytes already written; they must be discarded.
        plaintext_written: u64,
    },
    /// The ciphertext does not match the recorded digest and size.
    #[error(
        "ciphertext does not match the recorded checksum: expected sha256 {} ({} bytes), got {} ({} bytes)",
        expected.sha256, expected.size, actual.sha256, actual.size
    )]
    CiphertextMismatch {
        /// What was recorded.
        expected: CipherSummary,
        /// What was read.
        actual: CipherSummary,
        /// Plaintext bytes already written; they must be discarded.
        plaintext_written: u64,
    },
    /// Writing the plaintext output failed.
    #[error("failed to write plaintext")]
    WritePlaintext {
        /// Plaintext bytes already written; they must be discarded.
        plaintext_written: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A ciphertext file could not be opened or read for verification.
    #[error("failed to read {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The ChaCha20-Poly1305 implementation (OpenSSL's libcrypto) failed to set up or run; not
    /// an authentication failure, which is [`CryptoError::Decrypt`].
    #[error("the ChaCha20-Poly1305 implementation (OpenSSL) failed")]
    Backend {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A string is not a lowercase hex SHA-256 digest.
    #[error("invalid sha256 digest {value:?}: expected 64 lowercase hex digits")]
    InvalidDigest {
        /// The input (shortened if long).
        value: String,
    },
}

impl CryptoError {
    /// Plaintext bytes that reached the writer before this error. When non-zero, they are
    /// untrusted and must be discarded. Zero for errors that are not about decryption.
    #[must_use]
    pub fn plaintext_written(&self) -> u64 {
        match self {
            Self::ReadCiphertext {
                plaintext_written, ..
            }
            | Self::Decrypt {
                plaintext_written, ..
            }
            | Self::CiphertextTooLong {
                plaintext_written, ..
            }
            | Self::CiphertextMismatch {
                plaintext_written, ..
            }
            | Self::WritePlaintext {
                plaintext_written, ..
            } => *plaintext_written,
            _ => 0,
        }
    }
}

/// A SHA-256 digest, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// Wraps raw digest bytes.
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest of `data`.
    #[must_use]
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }
}

impl FromStr for Sha256Digest {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || CryptoError::InvalidDigest {
            value: s.chars().take(80).collect(),
        };
        // Lowercase only: one digest, one spelling, so string comparisons elsewhere are exact.
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| invalid())?;
        Ok(Self(out))
    }
}

impl TryFrom<String> for Sha256Digest {
    type Error = CryptoError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Sha256Digest> for String {
    fn from(d: Sha256Digest) -> String {
        d.to_string()
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

/// Digest and size of a ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CipherSummary {
    /// SHA-256 of the ciphertext bytes.
    pub sha256: Sha256Digest,
    /// Ciphertext length in bytes.
    pub size: u64,
}

/// Outcome of a successful decryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecryptSummary {
    /// Digest and size of the ciphertext that was read.
    pub ciphertext: CipherSummary,
    /// Plaintext bytes written.
    pub plaintext_size: u64,
}

/// Encrypts `plaintext` to `recipients`, writing the age file to `ciphertext`, and returns the
/// digest and size of the ciphertext.
///
/// Memory use is constant. `ciphertext` is flushed but not synced; pass `&mut File` to keep the
/// file and `sync_all` it afterwards.
///
/// # Errors
///
/// [`CryptoError::NoRecipients`], [`CryptoError::ReadPlaintext`],
/// [`CryptoError::WriteCiphertext`] or [`CryptoError::Encrypt`].
pub fn encrypt<R: Read, W: Write>(
    plaintext: R,
    ciphertext: W,
    recipients: &[AgeRecipient],
) -> Result<CipherSummary, CryptoError> {
    parallel::encrypt(plaintext, ciphertext, recipients)
}

/// Starts decrypting `ciphertext` with `identity`, reading and checking the age header now.
///
/// The returned reader decrypts on the same pipeline as [`decrypt`] (worker and hasher threads
/// that end when the reader is dropped); `ciphertext` itself is only read by the thread calling
/// `read`. Memory use is constant.
///
/// # Errors
///
/// [`CryptoError::InvalidHeader`], [`CryptoError::WrongKey`], [`CryptoError::ReadCiphertext`],
/// [`CryptoError::CiphertextTooLong`] or [`CryptoError::Backend`].
pub fn decrypt_reader<R: Read>(
    ciphertext: R,
    identity: &AgeIdentity,
    expected: Option<CipherSummary>,
) -> Result<DecryptReader<R>, CryptoError> {
    parallel::decrypt_reader(ciphertext, identity, expected)
}

impl CryptoError {
    /// Recovers the [`CryptoError`] from an [`io::Error`] produced by [`DecryptReader`]'s
    /// `Read` impl, e.g. after `io::copy`. Other I/O errors come back as `Err` unchanged.
    ///
    /// # Errors
    ///
    /// The original error when it does not wrap a [`CryptoError`].
    pub fn from_io(error: io::Error) -> Result<Self, io::Error> {
        if error.get_ref().is_some_and(|e| e.is::<Self>()) {
            let inner = error
                .into_inner()
                .map(|e| e.downcast::<Self>())
                .and_then(Result::ok);
            if let Some(e) = inner {
                return Ok(*e);
            }
            return Err(io::Error::other("unreachable: checked downcast failed"));
        }
        Err(error)
    }
}

/// Decrypts the age file read from `ciphertext` with `identity` into `plaintext`, hashing the
/// ciphertext as it is read and, if `expected` is given, failing when its digest or size differ.
///
/// Memory use is constant. See the module docs: on error, [`CryptoError::plaintext_written`]
/// bytes have reached `plaintext` and must be discarded by the caller. Buffered plaintext that
/// had not reached `plaintext` when the error occurred is dropped, not flushed.
///
/// # Errors
///
/// Everything [`decrypt_reader`] and [`DecryptReader::read_checked`] return, and
/// [`CryptoError::WritePlaintext`].
pub fn decrypt<R: Read, W: Write>(
    ciphertext: R,
    plaintext: W,
    identity: &AgeIdentity,
    expected: Option<&CipherSummary>,
) -> Result<DecryptSummary, CryptoError> {
    parallel::decrypt(ciphertext, plaintext, identity, expected)
}

/// Digest and size of everything `reader` yields, with constant memory.
///
/// # Errors
///
/// The reader's I/O error.
pub fn summarize<R: Read>(mut reader: R) -> io::Result<CipherSummary> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; STREAM_BUFFER_BYTES];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(CipherSummary {
        sha256: Sha256Digest(hasher.finalize().into()),
        size,
    })
}

/// Digest and size of the file at `path`.
///
/// # Errors
///
/// [`CryptoError::ReadFile`] naming the file.
pub fn summarize_file(path: &Path) -> Result<CipherSummary, CryptoError> {
    let read_err = |source| CryptoError::ReadFile {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    summarize(file).map_err(read_err)
}

/// Checks that the file at `path` has the recorded digest and size, before any decryption.
///
/// A size mismatch is detected from the file's metadata without reading it.
///
/// # Errors
///
/// [`CryptoError::ReadFile`], or [`CryptoError::CiphertextMismatch`] (with
/// `plaintext_written` 0).
pub fn verify_file(path: &Path, expected: &CipherSummary) -> Result<(), CryptoError> {
    let read_err = |source| CryptoError::ReadFile {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    let actual = if len == expected.size {
        summarize(file).map_err(read_err)?
    } else {
        // Hashing a file of the wrong size is wasted work; report the size with an empty digest.
        CipherSummary {
            sha256: Sha256Digest(Sha256::digest(b"").into()),
            size: len,
        }
    };
    if actual != *expected {
        return Err(CryptoError::CiphertextMismatch {
            expected: *expected,
            actual,
            plaintext_written: 0,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    const CHUNK: usize = 64 * 1024;

    /// Deterministic pseudo-random bytes (xorshift), so large inputs need no large strategies.
    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    fn encrypt_vec(plain: &[u8], id: &AgeIdentity) -> (Vec<u8>, CipherSummary) {
        let mut ct = Vec::new();
        let summary = encrypt(plain, &mut ct, &[id.to_public()]).unwrap();
        (ct, summary)
    }

    #[test]
    fn digest_parse_and_display() {
        let d = Sha256Digest::of(b"abc");
        let s = d.to_string();
        assert_eq!(
            s,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(s.parse::<Sha256Digest>().unwrap(), d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Sha256Digest>(&json).unwrap(), d);
    }

    #[rstest]
    #[case("")]
    #[case("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015a")]
    #[case("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad0")]
    #[case("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD")]
    #[case("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f200")]
    #[case("zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")]
    #[case("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015aé")]
    fn digest_bad(#[case] s: &str) {
        let err = s.parse::<Sha256Digest>().unwrap_err();
        assert!(matches!(err, CryptoError::InvalidDigest { .. }), "{err}");
    }

    #[rstest]
    #[case(0)]
    #[case(1)]
    #[case(CHUNK - 1)]
    #[case(CHUNK)]
    #[case(CHUNK + 1)]
    #[case(2 * CHUNK)]
    #[case(STREAM_BUFFER_BYTES + 3)]
    #[case(BATCH_CHUNKS * CHUNK - 1)]
    #[case(BATCH_CHUNKS * CHUNK)]
    #[case(BATCH_CHUNKS * CHUNK + 1)]
    #[case(2 * BATCH_CHUNKS * CHUNK + CHUNK)]
    fn round_trip_boundaries(#[case] len: usize) {
        let id = AgeIdentity::generate();
        let plain = data(len, len as u64);
        let (ct, summary) = encrypt_vec(&plain, &id);
        assert_eq!(summary.size, ct.len() as u64);
        assert_eq!(summary.sha256, Sha256Digest::of(&ct));
        let mut out = Vec::new();
        let got = decrypt(ct.as_slice(), &mut out, &id, Some(&summary)).unwrap();
        assert_eq!(out, plain);
        assert_eq!(got.ciphertext, summary);
        assert_eq!(got.plaintext_size, len as u64);
    }

    /// The parallel engine and the age crate's own single-threaded stream agree byte for byte.
    #[rstest]
    #[case(0)]
    #[case(CHUNK)]
    #[case(BATCH_CHUNKS * CHUNK)]
    #[case(BATCH_CHUNKS * CHUNK + 7)]
    fn parallel_and_age_crate_interoperate(#[case] len: usize) {
        let id = AgeIdentity::generate();
        let plain = data(len, 5);
        // Ours -> the age crate.
        let (ct, _) = encrypt_vec(&plain, &id);
        let mut r = age::Decryptor::new(ct.as_slice())
            .unwrap()
            .decrypt(std::iter::once(id.as_age() as &dyn age::Identity))
            .unwrap();
        let mut out = Vec::new();
        io::copy(&mut r, &mut out).unwrap();
        assert_eq!(out, plain);
        // The age crate -> ours.
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(id.to_public().as_age() as _)).unwrap();
        let mut ct = Vec::new();
        let mut w = encryptor.wrap_output(&mut ct).unwrap();
        w.write_all(&plain).unwrap();
        w.finish().unwrap();
        let mut out = Vec::new();
        decrypt(ct.as_slice(), &mut out, &id, None).unwrap();
        assert_eq!(out, plain);
    }

    fn payload_start(ct: &[u8]) -> usize {
        let mac = ct.windows(5).position(|w| w == b"\n--- ").unwrap() + 1;
        mac + ct[mac..].iter().position(|&b| b == b'\n').unwrap() + 1 + 16
    }

    #[test]
    fn reordered_chunks_fail() {
        let id = AgeIdentity::generate();
        let plain = data(3 * CHUNK + 10, 8);
        let (mut ct, _) = encrypt_vec(&plain, &id);
        let start = payload_start(&ct);
        let step = CHUNK + 16;
        let (a, b) = ct[start..].split_at_mut(step);
        a.swap_with_slice(&mut b[..step]);
        let mut out = Vec::new();
        let err = decrypt(ct.as_slice(), &mut out, &id, None).unwrap_err();
        assert!(matches!(err, CryptoError::Decrypt { .. }), "{err}");
        assert!(out.is_empty());
    }

    #[test]
    fn empty_payload_and_extra_empty_chunk_fail() {
        let id = AgeIdentity::generate();
        let (ct, _) = encrypt_vec(b"", &id);
        let start = payload_start(&ct);
        // No chunk at all.
        let err = decrypt(&ct[..start], Vec::new(), &id, None).unwrap_err();
        assert!(matches!(err, CryptoError::Decrypt { .. }), "{err}");
        // A full non-last chunk followed by the (empty, last) chunk of another file.
        let (full, _) = encrypt_vec(&data(CHUNK, 2), &id);
        let mut spliced = full[..payload_start(&full) + CHUNK + 16].to_vec();
        spliced.extend_from_slice(&ct[start..]);
        let err = decrypt(spliced.as_slice(), Vec::new(), &id, None).unwrap_err();
        assert!(matches!(err, CryptoError::Decrypt { .. }), "{err}");
    }

    #[test]
    fn multiple_recipients() {
        let a = AgeIdentity::generate();
        let b = AgeIdentity::generate();
        let mut ct = Vec::new();
        encrypt(&b"hi"[..], &mut ct, &[a.to_public(), b.to_public()]).unwrap();
        for id in [&a, &b] {
            let mut out = Vec::new();
            decrypt(ct.as_slice(), &mut out, id, None).unwrap();
            assert_eq!(out, b"hi");
        }
        let err = encrypt(&b"hi"[..], Vec::new(), &[]).unwrap_err();
        assert!(matches!(err, CryptoError::NoRecipients));
    }

    #[test]
    fn wrong_key_fails_before_any_output() {
        let (ct, summary) = encrypt_vec(&data(1000, 1), &AgeIdentity::generate());
        let mut out = Vec::new();
        let err = decrypt(
            ct.as_slice(),
            &mut out,
            &AgeIdentity::generate(),
            Some(&summary),
        )
        .unwrap_err();
        assert!(matches!(err, CryptoError::WrongKey), "{err}");
        assert!(out.is_empty());
        assert_eq!(err.plaintext_written(), 0);
    }

    #[test]
    fn not_age_fails() {
        let err = decrypt(
            &b"hello world, not an age file\n"[..],
            Vec::new(),
            &AgeIdentity::generate(),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, CryptoError::InvalidHeader { .. }), "{err}");
    }

    #[test]
    fn tampered_payload_fails() {
        let id = AgeIdentity::generate();
        let plain = data(3 * CHUNK, 7);
        let (mut ct, _) = encrypt_vec(&plain, &id);
        // Flip a byte in the last chunk: the first chunks decrypt (and are written) first.
        let at = ct.len() - 10;
        ct[at] ^= 1;
        let mut out = Vec::new();
        let err = decrypt(ct.as_slice(), &mut out, &id, None).unwrap_err();
        assert!(matches!(err, CryptoError::Decrypt { .. }), "{err}");
        assert_eq!(err.plaintext_written(), out.len() as u64);
        assert!(plain.starts_with(&out));
    }

    #[test]
    fn tampered_header_fails() {
        let id = AgeIdentity::generate();
        let (mut ct, _) = encrypt_vec(b"secret", &id);
        // The header MAC line is `--- <base64>`; corrupt a character of it.
        let pos = ct.windows(4).position(|w| w == b"--- ").unwrap() + 6;
        ct[pos] = if ct[pos] == b'A' { b'B' } else { b'A' };
        let err = decrypt(ct.as_slice(), Vec::new(), &id, None).unwrap_err();
        assert!(
            matches!(
                err,
                CryptoError::InvalidHeader { .. } | CryptoError::WrongKey
            ),
            "{err}"
        );
    }

    #[rstest]
    #[case(CHUNK + 100, 1)]
    #[case(CHUNK + 100, 17)]
    #[case(CHUNK + 100, 200)]
    #[case(3 * CHUNK, CHUNK + 16)]
    fn truncated_fails(#[case] len: usize, #[case] cut: usize) {
        let id = AgeIdentity::generate();
        let (ct, _) = encrypt_vec(&data(len, 3), &id);
        let short = &ct[..ct.len() - cut];
        let err = decrypt(short, Vec::new(), &id, None).unwrap_err();
        assert!(matches!(err, CryptoError::Decrypt { .. }), "{err}");
    }

    #[test]
    fn trailing_data_fails() {
        let id = AgeIdentity::generate();
        let (mut ct, _) = encrypt_vec(&data(100, 3), &id);
        ct.extend_from_slice(b"extra");
        let err = decrypt(ct.as_slice(), Vec::new(), &id, None).unwrap_err();
        assert!(matches!(err, CryptoError::Decrypt { .. }), "{err}");
    }

    #[test]
    fn substituted_ciphertext_is_a_mismatch_with_plaintext_written() {
        let id = AgeIdentity::generate();
        let plain = data(2 * BATCH_CHUNKS * CHUNK + 5, 9);
        let (ct, summary) = encrypt_vec(&plain, &id);
        // Same key, different file: every chunk authenticates, only the digest differs. (Headers
        // can differ in length, so compare against a record with the substitute's size.)
        let (ct2, summary2) = encrypt_vec(&plain, &id);
        let recorded = CipherSummary {
            size: summary2.size,
            ..summary
        };
        let mut out = Vec::new();
        let err = decrypt(ct2.as_slice(), &mut out, &id, Some(&recorded)).unwrap_err();
        match &err {
            CryptoError::CiphertextMismatch {
                expected, actual, ..
            } => {
                assert_eq!(expected, &recorded);
                assert_eq!(actual, &summary2);
            }
            other => panic!("unexpected {other}"),
        }
        assert!(err.plaintext_written() > 0);
        assert_eq!(err.plaintext_written(), out.len() as u64);
        // The final batch is held back until the digest has been compared, so it never left.
        assert!(out.len() < plain.len());
        assert!(plain.starts_with(&out));
        let msg = err.to_string();
        assert!(msg.contains(&summary.sha256.to_string()), "{msg}");
        decrypt(ct.as_slice(), io::sink(), &id, Some(&summary)).unwrap();
    }

    #[test]
    fn longer_than_expected_fails_early() {
        let id = AgeIdentity::generate();
        let (ct, summary) = encrypt_vec(&data(5 * STREAM_BUFFER_BYTES, 4), &id);
        let small = CipherSummary {
            size: 100,
            ..summary
        };
        let mut out = Vec::new();
        let err = decrypt(ct.as_slice(), &mut out, &id, Some(&small)).unwrap_err();
        assert!(
            matches!(
                err,
                CryptoError::CiphertextTooLong {
                    expected_size: 100,
                    ..
                }
            ),
            "{err}"
        );
        assert!(out.is_empty());
        let mid = CipherSummary {
            size: 2 * STREAM_BUFFER_BYTES as u64,
            ..summary
        };
        let mut out = Vec::new();
        let err = decrypt(ct.as_slice(), &mut out, &id, Some(&mid)).unwrap_err();
        assert!(
            matches!(err, CryptoError::CiphertextTooLong { .. }),
            "{err}"
        );
        assert!(out.len() < 3 * STREAM_BUFFER_BYTES, "stopped early");
    }

    #[test]
    fn write_failure_is_reported() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let id = AgeIdentity::generate();
        let (ct, _) = encrypt_vec(b"abc", &id);
        let err = decrypt(ct.as_slice(), Full, &id, None).unwrap_err();
        assert!(matches!(err, CryptoError::WritePlaintext { .. }), "{err}");
        let err = encrypt(&b"abc"[..], Full, &[id.to_public()]).unwrap_err();
        assert!(matches!(err, CryptoError::WriteCiphertext { .. }), "{err}");
    }

    #[test]
    fn read_failure_is_reported() {
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("EIO"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(0);
                self.0 -= n;
                Ok(n)
            }
        }
        let id = AgeIdentity::generate();
        let err = encrypt(Broken(10), Vec::new(), &[id.to_public()]).unwrap_err();
        assert!(matches!(err, CryptoError::ReadPlaintext { .. }), "{err}");

        let (ct, _) = encrypt_vec(&data(3 * CHUNK, 1), &id);
        let short = &ct[..ct.len() - 5];
        let err = decrypt(short.chain(Broken(0)), Vec::new(), &id, None).unwrap_err();
        assert!(matches!(err, CryptoError::ReadCiphertext { .. }), "{err}");
    }

    #[test]
    fn decrypt_reader_via_io_copy() {
        let id = AgeIdentity::generate();
        let plain = data(CHUNK * 2 + 5, 11);
        let (ct, summary) = encrypt_vec(&plain, &id);
        let mut r = decrypt_reader(ct.as_slice(), &id, Some(summary)).unwrap();
        let mut out = Vec::new();
        io::copy(&mut r, &mut out).unwrap();
        assert_eq!(out, plain);
        assert_eq!(r.ciphertext_summary(), Some(summary));

        let wrong = CipherSummary {
            sha256: Sha256Digest::of(b"x"),
            ..summary
        };
        let mut r = decrypt_reader(ct.as_slice(), &id, Some(wrong)).unwrap();
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        let err = CryptoError::from_io(err).unwrap();
        assert!(
            matches!(err, CryptoError::CiphertextMismatch { .. }),
            "{err}"
        );
        assert!(CryptoError::from_io(io::Error::other("x")).is_err());
    }

    #[test]
    fn decrypt_reader_small_reads_and_held_back_final_batch() {
        fn assert_send<T: Send>(_: &T) {}
        let id = AgeIdentity::generate();
        let plain = data(2 * BATCH_CHUNKS * CHUNK + 3 * CHUNK + 5, 12);
        let (ct, summary) = encrypt_vec(&plain, &id);
        // Odd-sized reads across chunk and batch boundaries.
        let mut r = decrypt_reader(ct.as_slice(), &id, Some(summary)).unwrap();
        assert_send(&r);
        let mut out = Vec::new();
        let mut buf = [0u8; 7777];
        loop {
            let n = r.read_checked(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, plain);
        assert_eq!(r.plaintext_read(), plain.len() as u64);
        assert_eq!(r.ciphertext_summary(), Some(summary));
        assert_eq!(r.read_checked(&mut buf).unwrap(), 0);

        // A substituted file (same key, every chunk authentic): the final batch is never
        // returned, and the reader stays failed.
        let (ct2, summary2) = encrypt_vec(&plain, &id);
        let recorded = CipherSummary {
            size: summary2.size,
            ..summary
        };
        let mut r = decrypt_reader(ct2.as_slice(), &id, Some(recorded)).unwrap();
        let mut out = Vec::new();
        let err = loop {
            match r.read_checked(&mut buf) {
                Ok(0) => panic!("substituted file accepted"),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, CryptoError::CiphertextMismatch { .. }),
            "{err}"
        );
        assert_eq!(err.plaintext_written(), out.len() as u64);
        assert_eq!(out.len(), 2 * BATCH_CHUNKS * CHUNK);
        assert!(r.read_checked(&mut buf).is_err());
        assert_eq!(r.ciphertext_summary(), None);
    }

    #[test]
    fn decrypt_reader_dropped_early_stops_cleanly() {
        let id = AgeIdentity::generate();
        let (ct, summary) = encrypt_vec(&data(40 * BATCH_CHUNKS * CHUNK, 13), &id);
        for _ in 0..20 {
            let mut r = decrypt_reader(ct.as_slice(), &id, Some(summary)).unwrap();
            let mut buf = [0u8; 1000];
            assert_eq!(r.read_checked(&mut buf).unwrap(), 1000);
            drop(r);
        }
    }

    #[test]
    fn verify_and_summarize_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.age");
        let id = AgeIdentity::generate();
        let mut file = File::create(&path).unwrap();
        let summary = encrypt(&data(CHUNK * 3, 5)[..], &mut file, &[id.to_public()]).unwrap();
        file.sync_all().unwrap();
        drop(file);
        verify_file(&path, &summary).unwrap();
        assert_eq!(summarize_file(&path).unwrap(), summary);

        let wrong_size = CipherSummary {
            size: summary.size + 1,
            ..summary
        };
        let err = verify_file(&path, &wrong_size).unwrap_err();
        assert!(
            matches!(err, CryptoError::CiphertextMismatch { .. }),
            "{err}"
        );
        let wrong_digest = CipherSummary {
            sha256: Sha256Digest::of(b""),
            ..summary
        };
        let err = verify_file(&path, &wrong_digest).unwrap_err();
        assert!(
            matches!(err, CryptoError::CiphertextMismatch { .. }),
            "{err}"
        );
        let err = verify_file(&tmp.path().join("missing"), &summary).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    fn sizes() -> impl Strategy<Value = usize> {
        prop_oneof![
            Just(0usize),
            Just(1),
            Just(CHUNK - 1),
            Just(CHUNK),
            Just(CHUNK + 1),
            Just(2 * CHUNK),
            0usize..4 * CHUNK,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn prop_round_trip(len in sizes(), seed: u64) {
            let id = AgeIdentity::generate();
            let plain = data(len, seed);
            let (ct, summary) = encrypt_vec(&plain, &id);
            prop_assert_eq!(summary, summarize(ct.as_slice()).unwrap());
            let mut out = Vec::new();
            let got = decrypt(ct.as_slice(), &mut out, &id, Some(&summary)).unwrap();
            prop_assert_eq!(&out, &plain);
            prop_assert_eq!(got.plaintext_size, len as u64);
        }

        #[test]
        fn prop_any_single_byte_flip_fails(len in 0usize..3 * CHUNK, seed: u64, pos: prop::sample::Index) {
            let id = AgeIdentity::generate();
            let plain = data(len, seed);
            let (mut ct, summary) = encrypt_vec(&plain, &id);
            let at = pos.index(ct.len());
            ct[at] ^= 0x40;
            // age is strict about its header encoding and authenticates every chunk, so even
            // without an expected summary no flip goes unnoticed.
            let res = decrypt(ct.as_slice(), io::sink(), &id, None);
            prop_assert!(res.is_err(), "flip at {} went unnoticed", at);
            // With the summary, every flip is caught.
            let err = decrypt(ct.as_slice(), io::sink(), &id, Some(&summary));
            prop_assert!(err.is_err());
        }
    }
}
