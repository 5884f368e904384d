//! Ciphertext in, plaintext only where it belongs; plaintext out, ciphertext only.
//!
//! - [`open_verified`]: a ciphertext file decrypted by the shared streaming decryptor, which
//!   hashes every byte and, at the end, compares the sha256 and the size with the values from
//!   Vault's record; any difference is an I/O error at that point, so a consumer never sees a
//!   clean end of a tampered or swapped ciphertext (age STREAM authenticates each 64 KiB chunk,
//!   the digest the whole file).
//! - [`unpack_data`]: a data archive unpacked into the job's private directory, refusing absolute
//!   paths, `..`, links that leave the tree, device files and fifos, and never following a link
//!   while writing.
//! - [`seal_output`]: the output directory packed, encrypted to the user's recipient, and
//!   written to `<dir>/<job>.tar.age` through a temporary file and an atomic rename.
//!
//! All of these are blocking; callers run them with `spawn_blocking`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use hpcs_core::crypto::{CipherSummary, Sha256Digest};
use hpcs_core::secret::AgeIdentity;

/// Errors of the artefact pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArtefactError {
    /// The ciphertext could not be opened.
    #[error("failed to open ciphertext {path}")]
    Open {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The ciphertext's size on disk differs from the record before any byte is read.
    #[error("ciphertext {path} has {actual} bytes, the key record says {expected}")]
    SizeMismatch {
        /// Path.
        path: PathBuf,
        /// On disk.
        actual: u64,
        /// In Vault.
        expected: u64,
    },
    /// The key is not an age identity.
    #[error("the key is not a valid age identity")]
    BadIdentity,
    /// The recipient is not an age X25519 recipient.
    #[error("invalid output recipient {0:?}")]
    BadRecipient(String),
    /// Decryption could not start (wrong key, not an age file, tampered header).
    #[error("failed to decrypt {path}")]
    Decrypt {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Box<hpcs_core::crypto::CryptoError>,
    },
    /// The data archive is unsafe or unreadable.
    #[error("refused data archive entry {entry}: {reason}")]
    UnsafeEntry {
        /// The entry.
        entry: String,
        /// Why.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("failed to {op} {path}")]
    Io {
        /// Operation.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Encryption failed.
    #[error("failed to encrypt the output")]
    Encrypt(#[source] age::EncryptError),
}

/// What Vault recorded about a ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// sha256 of the whole ciphertext.
    pub sha256: [u8; 32],
    /// Size in bytes.
    pub size: u64,
}

/// Open a ciphertext, check its size, and return a plaintext reader that verifies as it goes
/// ([`hpcs_core::crypto::decrypt_reader`]): each age chunk is authenticated before release, an
/// excess byte fails at once, and end-of-file is reported only when the whole file matched the
/// record's sha256 and size.
///
/// # Errors
///
/// [`ArtefactError`]; later read errors carry verification and authentication failures.
pub fn open_verified(
    path: &Path,
    identity: &str,
    expected: Expected,
) -> Result<Box<dyn Read + Send>, ArtefactError> {
    let open_err = |source| ArtefactError::Open {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    let actual = file.metadata().map_err(open_err)?.len();
    if actual != expected.size {
        return Err(ArtefactError::SizeMismatch {
            path: path.to_owned(),
            actual,
            expected: expected.size,
        });
    }
    let identity = AgeIdentity::parse(identity).map_err(|_| ArtefactError::BadIdentity)?;
    let summary = CipherSummary {
        sha256: Sha256Digest::from_bytes(expected.sha256),
        size: expected.size,
    };
    let reader =
        hpcs_core::crypto::decrypt_reader(file, &identity, Some(summary)).map_err(|source| {
            ArtefactError::Decrypt {
                path: path.to_owned(),
                source: Box::new(source),
            }
        })?;
    Ok(Box::new(reader))
}

/// Unpack a data archive into `dest` (an existing, private directory). See the module docs.
///
/// # Errors
///
/// [`ArtefactError::UnsafeEntry`] for refused entries; I/O errors (including decryption and
/// verification failures of `reader`).
pub fn unpack_data<R: Read>(reader: R, dest: &Path) -> Result<u64, ArtefactError> {
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |source| ArtefactError::Io { op, path, source }
    };
    let mut archive = tar::Archive::new(reader);
    let mut files = 0u64;
    for entry in archive.entries().map_err(io("read", dest))? {
        let mut entry = entry.map_err(io("read", dest))?;
        let raw = entry.path().map_err(io("read", dest))?.into_owned();
        let name = raw.display().to_string();
        let unsafe_entry = |reason: &str| ArtefactError::UnsafeEntry {
            entry: name.clone(),
            reason: reason.to_owned(),
        };
        let rel = safe_relative(&raw).ok_or_else(|| unsafe_entry("absolute path or '..'"))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(&rel);
        // Never write through a link: every existing ancestor must be a real directory.
        let mut cur = dest.to_path_buf();
        for comp in rel.parent().into_iter().flat_map(Path::components) {
            cur.push(comp);
            match std::fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(unsafe_entry("a parent is not a directory")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::DirBuilder::new()
                        .create(&cur)
                        .map_err(io("create", &cur))?;
                }
                Err(e) => return Err(io("inspect", &cur)(e)),
            }
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
        match entry.header().entry_type() {
            tar::EntryType::Directory => match std::fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(unsafe_entry("exists and is not a directory")),
                Err(_) => {
                    std::fs::DirBuilder::new()
                        .create(&target)
                        .map_err(io("create", &target))?;
                    std::fs::set_permissions(
                        &target,
                        std::fs::Permissions::from_mode(mode | 0o700),
                    )
                    .map_err(io("chmod", &target))?;
                }
            },
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode | 0o600)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(io("create", &target))?;
                std::io::copy(&mut entry, &mut out).map_err(io("write", &target))?;
                files += 1;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(io("read", &target))?
                    .ok_or_else(|| unsafe_entry("symlink without target"))?
                    .into_owned();
                if link.is_absolute() || !stays_inside(rel.parent().unwrap_or(Path::new("")), &link)
                {
                    return Err(unsafe_entry("symlink leaves the tree"));
                }
                std::os::unix::fs::symlink(&link, &target).map_err(io("create", &target))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(io("read", &target))?
                    .ok_or_else(|| unsafe_entry("hard link without target"))?
                    .into_owned();
                let link_rel = safe_relative(&link)
                    .ok_or_else(|| unsafe_entry("hard link leaves the tree"))?;
                let source = dest.join(&link_rel);
                match std::fs::symlink_metadata(&source) {
                    Ok(m) if m.is_file() => {}
                    _ => return Err(unsafe_entry("hard link target is not a file in the tree")),
                }
                std::fs::hard_link(&source, &target).map_err(io("link", &target))?;
            }
            // PAX/GNU metadata entries are consumed by the tar reader; anything else (devices,
            // fifos, sockets) has no business in a data set.
            other => {
                return Err(unsafe_entry(&format!(
                    "entry type {other:?} is not allowed"
                )));
            }
        }
    }
    Ok(files)
}

fn safe_relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Does `link`, relative to directory `base` (itself relative to the tree root), stay inside?
fn stays_inside(base: &Path, link: &Path) -> bool {
    let mut depth: i64 = base
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count() as i64;
    for c in link.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Pack `src`, encrypt it to `recipient`, and atomically write `<out_dir>/<name>`.
/// The file is created with mode 0600 and appears only when complete.
///
/// # Errors
///
/// [`ArtefactError`] naming the step; no partial file is left behind.
pub fn seal_output(
    src: &Path,
    recipient: &str,
    out_dir: &Path,
    name: &str,
) -> Result<PathBuf, ArtefactError> {
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |source| ArtefactError::Io { op, path, source }
    };
    let recipient = age::x25519::Recipient::from_str(recipient)
        .map_err(|_| ArtefactError::BadRecipient(recipient.to_owned()))?;
    std::fs::create_dir_all(out_dir).map_err(io("create", out_dir))?;
    let final_path = out_dir.join(name);
    let tmp = out_dir.join(format!(".{name}.{}.partial", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .map_err(ArtefactError::Encrypt)?;
        let writer = encryptor
            .wrap_output(std::io::BufWriter::with_capacity(256 * 1024, file))
            .map_err(io("write", &tmp))?;
        let mut builder = tar::Builder::new(writer);
        builder.follow_symlinks(false);
        builder.mode(tar::HeaderMode::Deterministic);
        builder.append_dir_all(".", src).map_err(io("pack", src))?;
        let writer = builder.into_inner().map_err(io("pack", src))?;
        let mut buffered = writer.finish().map_err(io("write", &tmp))?;
        buffered.flush().map_err(io("write", &tmp))?;
        let file = buffered
            .into_inner()
            .map_err(|e| io("write", &tmp)(e.into_error()))?;
        file.sync_all().map_err(io("sync", &tmp))?;
        std::fs::rename(&tmp, &final_path).map_err(io("rename", &final_path))?;
        Ok(final_path.clone())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use sha2::{Digest, Sha256};

    fn encrypt(plain: &[u8]) -> (Vec<u8>, String, Expected) {
        let id = age::x25519::Identity::generate();
        let r = id.to_public();
        let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
            .expect("enc");
        let mut out = Vec::new();
        let mut w = enc.wrap_output(&mut out).expect("wrap");
        w.write_all(plain).expect("write");
        w.finish().expect("finish");
        let sha: [u8; 32] = Sha256::digest(&out).into();
        let expected = Expected {
            sha256: sha,
            size: out.len() as u64,
        };
        use age::secrecy::ExposeSecret;
        (out, id.to_string().expose_secret().to_owned(), expected)
    }

    #[test]
    fn verified_decryption_and_tampering() {
        let dir = tempfile::tempdir().expect("tmp");
        let plain = vec![42u8; 200_000];
        let (ct, key, expected) = encrypt(&plain);
        let path = dir.path().join("x.age");
        std::fs::write(&path, &ct).expect("write");
        let mut got = Vec::new();
        open_verified(&path, &key, expected)
            .expect("open")
            .read_to_end(&mut got)
            .expect("read");
        assert_eq!(got, plain);

        // Same size, one byte flipped in the last chunk: fails while reading.
        let mut bad = ct.clone();
        let last = bad.len() - 5;
        bad[last] ^= 1;
        std::fs::write(&path, &bad).expect("write");
        let mut sink = Vec::new();
        assert!(
            open_verified(&path, &key, expected)
                .expect("open")
                .read_to_end(&mut sink)
                .is_err()
        );

        // A different valid ciphertext for the same key (digest from the record differs).
        let other_expected = Expected {
            sha256: [0; 32],
            ..expected
        };
        std::fs::write(&path, &ct).expect("write");
        let mut sink = Vec::new();
        assert!(
            open_verified(&path, &key, other_expected)
                .expect("open")
                .read_to_end(&mut sink)
                .is_err()
        );

        // Size differs: refused before decrypting.
        std::fs::write(&path, &ct[..ct.len() - 1]).expect("write");
        assert!(matches!(
            open_verified(&path, &key, expected),
            Err(ArtefactError::SizeMismatch { .. })
        ));
    }

    fn tar_with(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().expect("tar")
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o4755);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses '..'; write the raw name for hostile cases.
        let bytes = name.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_cksum();
        b.append(&h, data).expect("append");
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(kind);
        let bytes = name.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        let t = target.as_bytes();
        h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        h.set_cksum();
        b.append(&h, std::io::empty()).expect("append");
    }

    #[test]
    fn unpacks_plain_trees() {
        let dir = tempfile::tempdir().expect("tmp");
        let t = tar_with(|b| {
            file(b, "a/b/c.txt", b"hello");
            link(b, tar::EntryType::Symlink, "a/l", "b/c.txt");
            link(b, tar::EntryType::Link, "a/h", "a/b/c.txt");
        });
        assert_eq!(unpack_data(t.as_slice(), dir.path()).expect("unpack"), 1);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a/l")).expect("read"),
            "hello"
        );
        let mode = std::fs::metadata(dir.path().join("a/b/c.txt"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7000, 0, "setuid bits are dropped");
    }

    #[rstest]
    #[case::dotdot(|b: &mut tar::Builder<Vec<u8>>| file(b, "../evil", b"x"), "absolute path or '..'")]
    #[case::absolute(|b: &mut tar::Builder<Vec<u8>>| file(b, "/etc/evil", b"x"), "absolute path or '..'")]
    #[case::symlink_out(|b: &mut tar::Builder<Vec<u8>>| link(b, tar::EntryType::Symlink, "a/l", "../../etc"), "symlink leaves the tree")]
    #[case::symlink_abs(|b: &mut tar::Builder<Vec<u8>>| link(b, tar::EntryType::Symlink, "l", "/etc/passwd"), "symlink leaves the tree")]
    #[case::hardlink_out(|b: &mut tar::Builder<Vec<u8>>| link(b, tar::EntryType::Link, "h", "../x"), "hard link leaves the tree")]
    #[case::write_through_link(|b: &mut tar::Builder<Vec<u8>>| { link(b, tar::EntryType::Symlink, "l", "."); file(b, "l/x", b"x"); }, "parent is not a directory")]
    #[case::overwrite_link(|b: &mut tar::Builder<Vec<u8>>| { link(b, tar::EntryType::Symlink, "l", "x"); file(b, "l", b"x"); }, "failed to create")]
    #[case::device(|b: &mut tar::Builder<Vec<u8>>| link(b, tar::EntryType::Char, "dev", ""), "not allowed")]
    fn refuses_hostile_archives(#[case] build: fn(&mut tar::Builder<Vec<u8>>), #[case] want: &str) {
        let dir = tempfile::tempdir().expect("tmp");
        let inner = dir.path().join("d");
        std::fs::create_dir(&inner).expect("mkdir");
        let t = tar_with(build);
        let err = unpack_data(t.as_slice(), &inner).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
        assert!(!dir.path().join("evil").exists());
    }

    #[test]
    fn sealed_output_round_trips() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = dir.path().join("out");
        std::fs::create_dir(&src).expect("mkdir");
        std::fs::write(src.join("result.txt"), "42").expect("write");
        let id = age::x25519::Identity::generate();
        let path = seal_output(
            &src,
            &id.to_public().to_string(),
            &dir.path().join("o"),
            "7.tar.age",
        )
        .expect("seal");
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let ct = std::fs::read(&path).expect("read");
        let d = age::Decryptor::new(ct.as_slice()).expect("dec");
        let r = d
            .decrypt(std::iter::once(&id as &dyn age::Identity))
            .expect("decrypt");
        let mut a = tar::Archive::new(r);
        let names: Vec<String> = a
            .entries()
            .expect("entries")
            .map(|e| e.expect("e").path().expect("p").display().to_string())
            .collect();
        assert!(names.iter().any(|n| n.ends_with("result.txt")), "{names:?}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("o")).expect("ls").count(),
            1,
            "no temp file left"
        );
        assert!(matches!(
            seal_output(&src, "age1bad", dir.path(), "x"),
            Err(ArtefactError::BadRecipient(_))
        ));
    }
}
