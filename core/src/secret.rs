//! Secret types that never print, and key files that never leak through permissions.
//!
//! [`SecretString`] and [`SecretBytes`] hold tokens and key material: `Debug` and `Display`
//! print `[redacted]`, the memory is zeroized on drop, and the only way to the contents is an
//! explicit, greppable `expose_secret()`. [`SecretString`] implements serde because the API and
//! Vault bodies carry tokens; **serializing it writes the secret in clear** (that is the point),
//! so only serialize into a request body, never into logs or files. Deserialization cannot
//! zeroize the deserializer's own buffers; keep the source buffers short-lived.
//!
//! [`AgeIdentity`] wraps an age X25519 secret key and never prints it; [`AgeRecipient`] is the
//! validated public half (`age1...`). Key files are created with `create_new` and mode 0600 in a
//! directory created with mode 0700 when missing, and are refused on read when their mode lets
//! the group or others in: a key another user could read is already compromised, and failing
//! loudly with a `hint:` is better than using it.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// Mode of key files we create.
pub const KEY_FILE_MODE: u32 = 0o600;
/// Mode of directories we create for key files.
pub const KEY_DIR_MODE: u32 = 0o700;
/// Largest key file we read; real ones are a few hundred bytes.
pub const KEY_FILE_MAX_BYTES: u64 = 64 * 1024;

const REDACTED: &str = "[redacted]";

/// Errors of secret handling and key files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The directory for a key file could not be created.
    #[error("failed to create directory {path} for a key file")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The key file already exists; we never overwrite keys.
    #[error(
        "key file {path} already exists; refusing to overwrite it\nhint: remove it first if it is no longer needed"
    )]
    KeyFileExists {
        /// The file.
        path: PathBuf,
    },
    /// The key file could not be created or written.
    #[error("failed to write key file {path}")]
    WriteKeyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The key file could not be opened or read.
    #[error("failed to read key file {path}")]
    ReadKeyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The key file is not a regular file.
    #[error("key file {path} is not a regular file")]
    NotRegularFile {
        /// The file.
        path: PathBuf,
    },
    /// The key file's mode lets the group or others in.
    #[error(
        "key file {path} has mode {mode:04o}, which gives access to group or others\nhint: chmod 600 '{path}'",
        path = path.display()
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is implausibly large.
    #[error("key file {path} is {size} bytes, more than the maximum of {max}")]
    KeyFileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The maximum.
        max: u64,
    },
    /// The key file is not UTF-8 text.
    #[error("key file {path} is not UTF-8 text")]
    KeyFileNotText {
        /// The file.
        path: PathBuf,
    },
    /// A string is not an age X25519 identity.
    #[error("invalid age identity: {reason}")]
    InvalidIdentity {
        /// Why, without the input (it is secret).
        reason: &'static str,
    },
    /// A key file does not hold exactly one age X25519 identity.
    #[error("invalid age identity file {path}: {reason}")]
    InvalidIdentityFile {
        /// The file.
        path: PathBuf,
        /// Why, without the contents (they are secret).
        reason: &'static str,
    },
    /// A string is not an age X25519 recipient.
    #[error("invalid age recipient {value:?}: {reason}")]
    InvalidRecipient {
        /// The input (shortened if long).
        value: String,
        /// Why.
        reason: &'static str,
    },
}

/// A secret string: redacted when printed, zeroized on drop.
#[derive(Clone, Default)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a string. The caller should not keep other copies.
    #[must_use]
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// The secret itself. Every call site is a place where the secret leaves its wrapper.
    #[must_use]
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretString {
    fn from(secret: String) -> Self {
        Self(secret)
    }
}

impl From<Zeroizing<String>> for SecretString {
    fn from(secret: Zeroizing<String>) -> Self {
        Self(secret.as_str().to_owned())
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for SecretString {}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretString({REDACTED})")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Serializes the secret **in clear**; see the module docs.
impl Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// Secret bytes: redacted when printed, zeroized on drop.
#[derive(Clone, Default)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wraps bytes. The caller should not keep other copies.
    #[must_use]
    pub fn new(secret: Vec<u8>) -> Self {
        Self(secret)
    }

    /// The secret itself.
    #[must_use]
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(secret: Vec<u8>) -> Self {
        Self(secret)
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for SecretBytes {}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({REDACTED}, {} bytes)", self.0.len())
    }
}

impl fmt::Display for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// An age X25519 identity (secret key). Never printed; `Debug` shows only the public key.
#[derive(Clone)]
pub struct AgeIdentity(age::x25519::Identity);

impl AgeIdentity {
    /// Generates a fresh identity from the OS random number generator.
    #[must_use]
    pub fn generate() -> Self {
        Self(age::x25519::Identity::generate())
    }

    /// Parses an `AGE-SECRET-KEY-1...` string (surrounding whitespace ignored).
    ///
    /// # Errors
    ///
    /// [`SecretError::InvalidIdentity`] naming what is wrong, never echoing the input.
    pub fn parse(secret: &str) -> Result<Self, SecretError> {
        age::x25519::Identity::from_str(secret.trim())
            .map(Self)
            .map_err(|reason| SecretError::InvalidIdentity { reason })
    }

    /// Parses the text of an identity file as `age-keygen` writes it: `#` comment lines, blank
    /// lines and exactly one `AGE-SECRET-KEY-1...` line.
    ///
    /// # Errors
    ///
    /// [`SecretError::InvalidIdentity`] if there is no key line, more than one, or it is invalid.
    pub fn parse_file_text(text: &str) -> Result<Self, SecretError> {
        let mut keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let key = keys.next().ok_or(SecretError::InvalidIdentity {
            reason: "no AGE-SECRET-KEY-1 line",
        })?;
        if keys.next().is_some() {
            return Err(SecretError::InvalidIdentity {
                reason: "more than one key line; HPCS expects exactly one identity per file",
            });
        }
        Self::parse(key)
    }

    /// The identity as `AGE-SECRET-KEY-1...`, still wrapped.
    #[must_use]
    pub fn to_secret_string(&self) -> SecretString {
        SecretString::new(self.0.to_string().expose_secret().to_owned())
    }

    /// The recipient (public key) that encrypts to this identity.
    #[must_use]
    pub fn to_public(&self) -> AgeRecipient {
        AgeRecipient::from_age(self.0.to_public())
    }

    /// The age library type, for decryption.
    #[must_use]
    pub fn as_age(&self) -> &age::x25519::Identity {
        &self.0
    }

    /// The text of an identity file in `age-keygen` format, readable by the Go and Rust age
    /// tools (`age -d -i FILE`).
    #[must_use]
    pub fn to_file_text(&self) -> SecretString {
        let created = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        SecretString::new(format!(
            "# created: {created}\n# public key: {}\n{}\n",
            self.to_public(),
            self.to_secret_string().expose_secret()
        ))
    }
}

impl fmt::Debug for AgeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgeIdentity({REDACTED}, public: {})", self.to_public())
    }
}

/// An age X25519 recipient (public key), `age1...`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgeRecipient {
    key: age::x25519::Recipient,
    text: String,
}

impl AgeRecipient {
    fn from_age(key: age::x25519::Recipient) -> Self {
        let text = key.to_string();
        Self { key, text }
    }

    /// The age library type, for encryption.
    #[must_use]
    pub fn as_age(&self) -> &age::x25519::Recipient {
        &self.key
    }

    /// The `age1...` string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for AgeRecipient {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| SecretError::InvalidRecipient {
            value: s.chars().take(80).collect(),
            reason,
        };
        if !s.starts_with("age1") {
            return Err(invalid("an X25519 recipient starts with \"age1\""));
        }
        let key = age::x25519::Recipient::from_str(s).map_err(invalid)?;
        // age accepts mixed case Bech32; keep the canonical spelling so equal keys compare equal.
        Ok(Self::from_age(key))
    }
}

impl TryFrom<String> for AgeRecipient {
    type Error = SecretError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AgeRecipient> for String {
    fn from(r: AgeRecipient) -> String {
        r.text
    }
}

impl PartialEq for AgeRecipient {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for AgeRecipient {}

impl std::hash::Hash for AgeRecipient {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl fmt::Display for AgeRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for AgeRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgeRecipient({})", self.text)
    }
}

/// Writes a secret to a new file with mode 0600, creating missing parent directories with mode
/// 0700. Never overwrites: an existing file is an error.
///
/// # Errors
///
/// [`SecretError::KeyFileExists`] if the file exists, [`SecretError::CreateDir`] or
/// [`SecretError::WriteKeyFile`] on I/O failure (a partly written file is removed).
pub fn write_key_file(path: &Path, secret: &SecretString) -> Result<(), SecretError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        DirBuilder::new()
            .recursive(true)
            .mode(KEY_DIR_MODE)
            .create(parent)
            .map_err(|source| SecretError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(KEY_FILE_MODE)
        .open(path)
        .map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                SecretError::KeyFileExists {
                    path: path.to_owned(),
                }
            } else {
                SecretError::WriteKeyFile {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
    let written = file
        .write_all(secret.expose_secret().as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(source) = written {
        drop(file);
        // Best effort: a truncated key is worse than none. The write error is what we report.
        let _ = fs::remove_file(path);
        return Err(SecretError::WriteKeyFile {
            path: path.to_owned(),
            source,
        });
    }
    Ok(())
}

/// Reads a key file, refusing files that are not regular, are larger than
/// [`KEY_FILE_MAX_BYTES`], or whose mode gives any access to group or others.
///
/// The mode is checked on the opened file, so a swap between check and read is not possible.
///
/// # Errors
///
/// [`SecretError::InsecurePermissions`] (with a `hint:` line to `chmod 600`),
/// [`SecretError::NotRegularFile`], [`SecretError::KeyFileTooLarge`],
/// [`SecretError::KeyFileNotText`] or [`SecretError::ReadKeyFile`].
pub fn read_key_file(path: &Path) -> Result<SecretString, SecretError> {
    let read_err = |source| SecretError::ReadKeyFile {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(SecretError::NotRegularFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > KEY_FILE_MAX_BYTES {
        return Err(SecretError::KeyFileTooLarge {
            path: path.to_owned(),
            size: meta.len(),
            max: KEY_FILE_MAX_BYTES,
        });
    }
    let mut buf = Zeroizing::new(Vec::new());
    // The file may grow after the size check; the take() keeps the bound.
    file.take(KEY_FILE_MAX_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() as u64 > KEY_FILE_MAX_BYTES {
        return Err(SecretError::KeyFileTooLarge {
            path: path.to_owned(),
            size: buf.len() as u64,
            max: KEY_FILE_MAX_BYTES,
        });
    }
    let text = std::str::from_utf8(&buf).map_err(|_| SecretError::KeyFileNotText {
        path: path.to_owned(),
    })?;
    Ok(SecretString::new(text.to_owned()))
}

/// Writes an identity file in `age-keygen` format (mode 0600, never overwriting).
///
/// # Errors
///
/// As [`write_key_file`].
pub fn write_identity_file(path: &Path, identity: &AgeIdentity) -> Result<(), SecretError> {
    write_key_file(path, &identity.to_file_text())
}

/// Reads an identity file (as written by [`write_identity_file`] or `age-keygen`).
///
/// # Errors
///
/// As [`read_key_file`], and [`SecretError::InvalidIdentityFile`] if it does not hold exactly one
/// valid X25519 identity.
pub fn read_identity_file(path: &Path) -> Result<AgeIdentity, SecretError> {
    let text = read_key_file(path)?;
    AgeIdentity::parse_file_text(text.expose_secret()).map_err(|e| match e {
        SecretError::InvalidIdentity { reason } => SecretError::InvalidIdentityFile {
            path: path.to_owned(),
            reason,
        },
        other => other,
    })
}

/// Reads the identity at `path`, or creates one there if the file does not exist. Returns the
/// identity and whether it was created.
///
/// Two processes racing to create it end up with the same identity: the loser of the
/// `create_new` race reads the winner's file.
///
/// # Errors
///
/// As [`read_identity_file`] and [`write_identity_file`].
pub fn load_or_create_identity(path: &Path) -> Result<(AgeIdentity, bool), SecretError> {
    match read_identity_file(path) {
        Ok(identity) => return Ok((identity, false)),
        Err(SecretError::ReadKeyFile { source, .. })
            if source.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let identity = AgeIdentity::generate();
    match write_identity_file(path, &identity) {
        Ok(()) => Ok((identity, true)),
        Err(SecretError::KeyFileExists { .. }) => Ok((read_identity_file(path)?, false)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use rstest::rstest;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn secret_string_is_redacted() {
        let s = SecretString::new("hunter2".into());
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{s:?}"), "SecretString([redacted])");
        assert_eq!(format!("{s:#?}"), "SecretString([redacted])");
        assert_eq!(s.expose_secret(), "hunter2");
        let b = SecretBytes::new(b"key".to_vec());
        assert_eq!(format!("{b:?}"), "SecretBytes([redacted], 3 bytes)");
        assert_eq!(format!("{b}"), "[redacted]");
        assert_eq!(b.expose_secret(), b"key");
    }

    #[test]
    fn secret_string_serde_exposes_on_purpose() {
        #[derive(Serialize, Deserialize, Debug)]
        struct Body {
            token: SecretString,
        }
        let body: Body = serde_json::from_str(r#"{"token":"s.abc"}"#).unwrap();
        assert_eq!(body.token.expose_secret(), "s.abc");
        assert!(!format!("{body:?}").contains("s.abc"));
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"token":"s.abc"}"#
        );
    }

    #[test]
    fn identity_round_trip_and_never_printed() {
        let id = AgeIdentity::generate();
        let secret = id.to_secret_string();
        assert!(secret.expose_secret().starts_with("AGE-SECRET-KEY-1"));
        let debug = format!("{id:?}");
        assert!(!debug.contains("AGE-SECRET-KEY"), "{debug}");
        assert!(debug.contains(id.to_public().as_str()));
        let back = AgeIdentity::parse(&format!(" {}\n", secret.expose_secret())).unwrap();
        assert_eq!(back.to_public(), id.to_public());
        let from_file = AgeIdentity::parse_file_text(id.to_file_text().expose_secret()).unwrap();
        assert_eq!(from_file.to_public(), id.to_public());
    }

    #[rstest]
    #[case("", "no AGE-SECRET-KEY-1 line")]
    #[case("# only a comment\n\n", "no AGE-SECRET-KEY-1 line")]
    #[case("AGE-SECRET-KEY-1XYZ\nAGE-SECRET-KEY-1XYZ", "more than one key line")]
    #[case("AGE-SECRET-KEY-1QQQQ", "invalid age identity")]
    #[case("age1qqqq", "invalid age identity")]
    fn identity_file_text_bad(#[case] text: &str, #[case] msg: &str) {
        let err = AgeIdentity::parse_file_text(text).unwrap_err().to_string();
        assert!(err.contains(msg), "{err:?} does not contain {msg:?}");
        assert!(
            !err.contains("QQQQ"),
            "error must not echo key material: {err}"
        );
    }

    #[test]
    fn recipient_parse() {
        let id = AgeIdentity::generate();
        let r = id.to_public();
        assert!(r.as_str().starts_with("age1"));
        assert_eq!(r.as_str().parse::<AgeRecipient>().unwrap(), r);
        let upper = r.as_str().to_uppercase();
        upper.parse::<AgeRecipient>().unwrap_err();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<AgeRecipient>(&json).unwrap(), r);
        for bad in [
            "",
            "age1",
            "age1qqqq",
            "AGE-SECRET-KEY-1X",
            "ssh-ed25519 AAAA",
        ] {
            let err = bad.parse::<AgeRecipient>().unwrap_err();
            assert!(matches!(err, SecretError::InvalidRecipient { .. }), "{bad}");
        }
    }

    #[test]
    fn key_file_created_0600_in_0700_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/key.txt");
        let secret = SecretString::new("AGE-SECRET-KEY-1TEST".into());
        write_key_file(&path, &secret).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(mode_of(path.parent().unwrap()), 0o700);
        assert_eq!(mode_of(&tmp.path().join("a")), 0o700);
        assert_eq!(
            read_key_file(&path).unwrap().expose_secret(),
            "AGE-SECRET-KEY-1TEST"
        );
        let err = write_key_file(&path, &secret).unwrap_err();
        assert!(matches!(err, SecretError::KeyFileExists { .. }), "{err}");
    }

    #[rstest]
    #[case(0o640)]
    #[case(0o604)]
    #[case(0o644)]
    #[case(0o660)]
    #[case(0o610)]
    fn key_file_with_open_mode_refused(#[case] mode: u32) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("key");
        write_key_file(&path, &SecretString::new("x".into())).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let err = read_key_file(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, SecretError::InsecurePermissions { .. }));
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
        assert!(msg.contains("\nhint: chmod 600 '"), "{msg}");
    }

    #[test]
    fn key_file_0400_is_fine() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("key");
        write_key_file(&path, &SecretString::new("x".into())).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_key_file(&path).unwrap().expose_secret(), "x");
    }

    #[test]
    fn key_file_other_refusals() {
        let tmp = tempfile::tempdir().unwrap();
        let err = read_key_file(tmp.path()).unwrap_err();
        assert!(matches!(err, SecretError::NotRegularFile { .. }), "{err}");

        let missing = tmp.path().join("missing");
        let err = read_key_file(&missing).unwrap_err();
        assert!(matches!(err, SecretError::ReadKeyFile { .. }), "{err}");

        let big = tmp.path().join("big");
        write_key_file(
            &big,
            &SecretString::new("a".repeat(KEY_FILE_MAX_BYTES as usize + 1)),
        )
        .unwrap();
        let err = read_key_file(&big).unwrap_err();
        assert!(matches!(err, SecretError::KeyFileTooLarge { .. }), "{err}");

        let bin = tmp.path().join("bin");
        fs::write(&bin, [0xff, 0xfe]).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o600)).unwrap();
        let err = read_key_file(&bin).unwrap_err();
        assert!(matches!(err, SecretError::KeyFileNotText { .. }), "{err}");
    }

    #[test]
    fn identity_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("hpcs/identity.age");
        let (id, created) = load_or_create_identity(&path).unwrap();
        assert!(created);
        assert_eq!(mode_of(&path), 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# created: "), "{text}");
        assert!(text.contains(&format!("# public key: {}\n", id.to_public())));
        let (again, created) = load_or_create_identity(&path).unwrap();
        assert!(!created);
        assert_eq!(again.to_public(), id.to_public());

        let junk = tmp.path().join("junk");
        write_key_file(&junk, &SecretString::new("not a key\n".into())).unwrap();
        let err = read_identity_file(&junk).unwrap_err();
        assert!(
            matches!(err, SecretError::InvalidIdentityFile { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("junk"), "{err}");
        let err = load_or_create_identity(&junk).unwrap_err();
        assert!(
            matches!(err, SecretError::InvalidIdentityFile { .. }),
            "{err}"
        );
    }
}
