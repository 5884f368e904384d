//! The info file, `<name>.info.yaml`, that travels next to every ciphertext.
//!
//! The prep tools write it, job-prep and the node runtime read it. The layout follows HPCS: one
//! top-level `info` mapping holding HPCS's keys (`path_at_rest`, `secret_path`, `access_role`,
//! `checksum`, `spiffeID`, spelled exactly as HPCS spells them) plus ours:
//!
//! ```yaml
//! info:
//!   version: 1
//!   kind: image            # image | data
//!   name: jp2a
//!   path_at_rest: /scratch/project_1/alice/jp2a.age
//!   secret_path: hpcs/data/secrets/0b7e5c1e-8a7c-4c39-9a59-2f5d8d1f3b6a
//!   access_role: hpcs-secret-0b7e5c1e-8a7c-4c39-9a59-2f5d8d1f3b6a
//!   checksum: 9f86d081...  # HPCS field; always equal to sha256
//!   spiffeID: spiffe://hpcs.test/hpcs/secret/0b7e5c1e-8a7c-4c39-9a59-2f5d8d1f3b6a
//!   sha256: 9f86d081...    # of the ciphertext
//!   size: 73400320         # ciphertext bytes
//!   owner: spiffe://hpcs.test/client/alice
//!   created: 2025-01-31T12:00:00Z
//!   secret_id: 0b7e5c1e-8a7c-4c39-9a59-2f5d8d1f3b6a
//!   image:                 # kind: image only
//!     digest: sha256:...   # image ID (config digest) the engine must report after loading
//!     entrypoint: [/usr/bin/jp2a]
//!     cmd: [--help]
//!     user: "1000"
//!     env: [PATH=/usr/bin:/bin]
//!     working_dir: /
//! ```
//!
//! HPCS wrote a SHA-512 into `checksum`; we write the ciphertext SHA-256 into both `checksum`
//! and `sha256` and require them to be equal, so HPCS-era files are rejected rather than
//! misread.
//!
//! Info files sit on shared storage that other users may be able to write, so parsing is strict:
//! the input is capped at [`INFO_FILE_MAX_BYTES`], unknown and duplicate keys are errors, every
//! field is validated into its typed form (names, paths, SPIFFE IDs, digests), fields that must
//! agree are checked, and every error names the file and the field. A well-formed info file is
//! still only a claim: the node must trust the digest and size recorded in Vault (reachable only
//! with the reader identity) over the ones in this file.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::crypto::{CipherSummary, Sha256Digest};
use crate::ids::{
    ArtefactName, RemotePath, RoleName, SecretId, SecretReaderId, SpiffeId, VaultPath,
};

/// The info file format version this crate reads and writes.
pub const INFO_FILE_VERSION: u32 = 1;
/// Largest info file we parse; real ones are well under 4 KiB.
pub const INFO_FILE_MAX_BYTES: u64 = 64 * 1024;
/// Suffix of info file names.
pub const INFO_FILE_SUFFIX: &str = ".info.yaml";
/// Suffix of ciphertext file names written by the prep tools.
pub const CIPHERTEXT_SUFFIX: &str = ".age";

/// Errors of reading, parsing and writing info files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InfoError {
    /// The file could not be read.
    #[error("failed to read info file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The input exceeds [`INFO_FILE_MAX_BYTES`].
    #[error("info file {path} is larger than the maximum of {max} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The maximum.
        max: u64,
    },
    /// The input is not UTF-8.
    #[error("info file {path} is not UTF-8 text")]
    NotText {
        /// The file.
        path: PathBuf,
    },
    /// The YAML is malformed, has unknown or duplicate keys, or a value of the wrong type.
    #[error("invalid info file {path}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The cause, with line and column.
        #[source]
        source: serde_norway::Error,
    },
    /// A required field is missing.
    #[error("info file {path}: missing field `{field}`")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The field, as spelled in the file.
        field: &'static str,
    },
    /// A field's value is invalid.
    #[error("info file {path}: invalid field `{field}`")]
    Field {
        /// The file.
        path: PathBuf,
        /// The field, as spelled in the file.
        field: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A field's value breaks a rule of its own or disagrees with another field.
    #[error("info file {path}: field `{field}`: {reason}")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// The field, as spelled in the file.
        field: &'static str,
        /// The rule.
        reason: String,
    },
    /// The file's format version is not supported.
    #[error("info file {path} has version {version}; this build reads version {INFO_FILE_VERSION}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// The info could not be serialized (an invalid value was constructed).
    #[error("failed to serialize info file for {name}")]
    Serialize {
        /// The artefact.
        name: String,
        /// The cause.
        #[source]
        source: serde_norway::Error,
    },
}

/// The info file name for an artefact, `<name>.info.yaml`.
#[must_use]
pub fn info_file_name(name: &ArtefactName) -> String {
    format!("{name}{INFO_FILE_SUFFIX}")
}

/// The ciphertext file name for an artefact, `<name>.age`.
#[must_use]
pub fn ciphertext_file_name(name: &ArtefactName) -> String {
    format!("{name}{CIPHERTEXT_SUFFIX}")
}

/// The image ID (config digest) of a container image, `sha256:<64 hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageDigest(pub Sha256Digest);

impl std::fmt::Display for ImageDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl std::str::FromStr for ImageDigest {
    type Err = crate::crypto::CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex =
            s.strip_prefix("sha256:")
                .ok_or_else(|| crate::crypto::CryptoError::InvalidDigest {
                    value: s.chars().take(80).collect(),
                })?;
        Ok(Self(hex.parse()?))
    }
}

/// Container settings recorded for an image artefact, taken from the image's config when it was
/// prepared. The node runtime may use them as defaults; policy decides what actually runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMeta {
    /// Image ID the engine must report after loading the decrypted tarball.
    pub digest: ImageDigest,
    /// `ENTRYPOINT`, if the image sets one.
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`, if the image sets one.
    pub cmd: Option<Vec<String>>,
    /// `USER` of the image (informational: jobs run as the submitting user).
    pub user: Option<String>,
    /// `ENV` entries, `KEY=value`.
    pub env: Vec<String>,
    /// `WORKDIR`, an absolute path, if set.
    pub working_dir: Option<String>,
}

/// What an artefact is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArtefactKind {
    /// A container image (`docker save` tarball).
    Image(ImageMeta),
    /// A data set (tar of a directory).
    Data,
}

impl ArtefactKind {
    /// `image` or `data`, as written in the file.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Image(_) => "image",
            Self::Data => "data",
        }
    }
}

/// A parsed and validated info file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoFile {
    /// Artefact name.
    pub name: ArtefactName,
    /// Image (with its settings) or data.
    pub kind: ArtefactKind,
    /// Where the ciphertext lives on the cluster.
    pub path_at_rest: RemotePath,
    /// Vault KV path of the secret holding the age identity.
    pub secret_path: VaultPath,
    /// Vault role to log in with to read the secret.
    pub access_role: RoleName,
    /// SPIFFE ID allowed to read the secret (`spiffeID`); it determines `secret_id`.
    pub reader_id: SecretReaderId,
    /// Digest and size of the ciphertext (`sha256`, `checksum`, `size`).
    pub ciphertext: CipherSummary,
    /// Client SPIFFE ID that created the secret.
    pub owner: SpiffeId,
    /// When the artefact was prepared.
    pub created: OffsetDateTime,
}

impl InfoFile {
    /// The secret ID, from `reader_id`.
    #[must_use]
    pub fn secret_id(&self) -> &SecretId {
        self.reader_id.secret_id()
    }

    /// Reads and parses the info file at `path`.
    ///
    /// # Errors
    ///
    /// [`InfoError::Read`], [`InfoError::TooLarge`] and everything [`InfoFile::from_slice`]
    /// returns.
    pub fn read(path: &Path) -> Result<Self, InfoError> {
        let read_err = |source| InfoError::Read {
            path: path.to_owned(),
            source,
        };
        let mut buf = Vec::new();
        File::open(path)
            .map_err(read_err)?
            .take(INFO_FILE_MAX_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(read_err)?;
        Self::from_slice(&buf, path)
    }

    /// Parses info file bytes; `origin` names the file in errors.
    ///
    /// # Errors
    ///
    /// [`InfoError::TooLarge`], [`InfoError::NotText`] and everything
    /// [`InfoFile::from_yaml`] returns.
    pub fn from_slice(bytes: &[u8], origin: &Path) -> Result<Self, InfoError> {
        if bytes.len() as u64 > INFO_FILE_MAX_BYTES {
            return Err(InfoError::TooLarge {
                path: origin.to_owned(),
                max: INFO_FILE_MAX_BYTES,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| InfoError::NotText {
            path: origin.to_owned(),
        })?;
        Self::from_yaml(text, origin)
    }

    /// Parses info file text; `origin` names the file in errors.
    ///
    /// # Errors
    ///
    /// [`InfoError::TooLarge`], [`InfoError::Syntax`] (malformed YAML, unknown or duplicate
    /// keys), [`InfoError::Missing`], [`InfoError::Field`], [`InfoError::Inconsistent`] or
    /// [`InfoError::UnsupportedVersion`].
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Self, InfoError> {
        if text.len() as u64 > INFO_FILE_MAX_BYTES {
            return Err(InfoError::TooLarge {
                path: origin.to_owned(),
                max: INFO_FILE_MAX_BYTES,
            });
        }
        let raw: RawDoc = serde_norway::from_str(text).map_err(|source| InfoError::Syntax {
            path: origin.to_owned(),
            source,
        })?;
        Validator { path: origin }.info(raw.info)
    }

    /// Serializes to YAML in the layout above.
    ///
    /// # Errors
    ///
    /// [`InfoError::Serialize`], which valid typed values do not produce.
    pub fn to_yaml(&self) -> Result<String, InfoError> {
        let sha = self.ciphertext.sha256.to_string();
        let image = match &self.kind {
            ArtefactKind::Image(m) => Some(RawImage {
                digest: Some(m.digest.to_string()),
                entrypoint: m.entrypoint.clone(),
                cmd: m.cmd.clone(),
                user: m.user.clone(),
                env: Some(m.env.clone()),
                working_dir: m.working_dir.clone(),
            }),
            ArtefactKind::Data => None,
        };
        let raw =
            RawDoc {
                info: RawInfo {
                    version: Some(INFO_FILE_VERSION),
                    kind: Some(self.kind.as_str().to_owned()),
                    name: Some(self.name.to_string()),
                    path_at_rest: Some(self.path_at_rest.to_string()),
                    secret_path: Some(self.secret_path.to_string()),
                    access_role: Some(self.access_role.to_string()),
                    checksum: Some(sha.clone()),
                    spiffe_id: Some(self.reader_id.to_string()),
                    sha256: Some(sha),
                    size: Some(self.ciphertext.size),
                    owner: Some(self.owner.to_string()),
                    created: Some(self.created.format(&Rfc3339).map_err(|e| {
                        InfoError::Serialize {
                            name: self.name.to_string(),
                            source: serde::ser::Error::custom(e),
                        }
                    })?),
                    secret_id: Some(self.secret_id().to_string()),
                    image,
                },
            };
        serde_norway::to_string(&raw).map_err(|source| InfoError::Serialize {
            name: self.name.to_string(),
            source,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename = "info file")]
struct RawDoc {
    info: RawInfo,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawInfo {
    version: Option<u32>,
    kind: Option<String>,
    name: Option<String>,
    path_at_rest: Option<String>,
    secret_path: Option<String>,
    access_role: Option<String>,
    checksum: Option<String>,
    #[serde(rename = "spiffeID")]
    spiffe_id: Option<String>,
    sha256: Option<String>,
    size: Option<u64>,
    owner: Option<String>,
    created: Option<String>,
    secret_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<RawImage>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawImage {
    digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    env: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<String>,
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn required<T>(&self, field: &'static str, value: Option<T>) -> Result<T, InfoError> {
        value.ok_or_else(|| InfoError::Missing {
            path: self.path.to_owned(),
            field,
        })
    }

    fn parse<T>(&self, field: &'static str, value: Option<String>) -> Result<T, InfoError>
    where
        T: std::str::FromStr,
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        self.required(field, value)?
            .parse()
            .map_err(|e: T::Err| InfoError::Field {
                path: self.path.to_owned(),
                field,
                source: Box::new(e),
            })
    }

    fn inconsistent(&self, field: &'static str, reason: String) -> InfoError {
        InfoError::Inconsistent {
            path: self.path.to_owned(),
            field,
            reason,
        }
    }

    fn info(&self, raw: RawInfo) -> Result<InfoFile, InfoError> {
        let version = self.required("version", raw.version)?;
        if version != INFO_FILE_VERSION {
            return Err(InfoError::UnsupportedVersion {
                path: self.path.to_owned(),
                version,
            });
        }
        let name: ArtefactName = self.parse("name", raw.name)?;
        let path_at_rest: RemotePath = self.parse("path_at_rest", raw.path_at_rest)?;
        let secret_path: VaultPath = self.parse("secret_path", raw.secret_path)?;
        let access_role: RoleName = self.parse("access_role", raw.access_role)?;
        let reader_id: SecretReaderId = self.parse("spiffeID", raw.spiffe_id)?;
        let sha256: Sha256Digest = self.parse("sha256", raw.sha256)?;
        let checksum: Sha256Digest = self.parse("checksum", raw.checksum)?;
        if checksum != sha256 {
            return Err(self.inconsistent(
                "checksum",
                "must equal `sha256` (the ciphertext SHA-256); HPCS-era SHA-512 checksums are not supported".into(),
            ));
        }
        let size = self.required("size", raw.size)?;
        let owner: SpiffeId = self.parse("owner", raw.owner)?;
        if owner.trust_domain() != reader_id.trust_domain() {
            return Err(self.inconsistent(
                "owner",
                format!(
                    "trust domain {} differs from the trust domain {} of `spiffeID`",
                    owner.trust_domain(),
                    reader_id.trust_domain()
                ),
            ));
        }
        let created = self.required("created", raw.created)?;
        let created = OffsetDateTime::parse(&created, &Rfc3339).map_err(|_| {
            self.inconsistent(
                "created",
                format!(
                    "{:?} is not an RFC 3339 timestamp such as 2025-01-31T12:00:00Z",
                    shorten(&created)
                ),
            )
        })?;
        let secret_id: SecretId = self.parse("secret_id", raw.secret_id)?;
        if &secret_id != reader_id.secret_id() {
            return Err(self.inconsistent(
                "secret_id",
                format!(
                    "{secret_id} differs from the secret ID {} in `spiffeID`",
                    reader_id.secret_id()
                ),
            ));
        }
        let kind = match self.required("kind", raw.kind)?.as_str() {
            "image" => {
                let image = raw.image.ok_or_else(|| {
                    self.inconsistent("image", "required when kind is image".into())
                })?;
                ArtefactKind::Image(self.image(image)?)
            }
            "data" => {
                if raw.image.is_some() {
                    return Err(
                        self.inconsistent("image", "only allowed when kind is image".into())
                    );
                }
                ArtefactKind::Data
            }
            other => {
                return Err(self.inconsistent(
                    "kind",
                    format!("expected image or data, found {:?}", shorten(other)),
                ));
            }
        };
        Ok(InfoFile {
            name,
            kind,
            path_at_rest,
            secret_path,
            access_role,
            reader_id,
            ciphertext: CipherSummary { sha256, size },
            owner,
            created,
        })
    }

    fn image(&self, raw: RawImage) -> Result<ImageMeta, InfoError> {
        let digest: ImageDigest = self.parse("image.digest", raw.digest)?;
        for (field, list) in [
            ("image.entrypoint", &raw.entrypoint),
            ("image.cmd", &raw.cmd),
        ] {
            for arg in list.iter().flatten() {
                self.no_nul(field, arg)?;
            }
        }
        if let Some(user) = &raw.user {
            self.no_nul("image.user", user)?;
        }
        let env = raw.env.unwrap_or_default();
        for entry in &env {
            self.no_nul("image.env", entry)?;
            let key = entry.split_once('=').map(|(k, _)| k);
            let valid_key = key.is_some_and(|k| {
                k.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            if !valid_key {
                return Err(self.inconsistent(
                    "image.env",
                    format!(
                        "entry {:?} is not KEY=value with KEY of [A-Za-z_][A-Za-z0-9_]*",
                        shorten(entry)
                    ),
                ));
            }
        }
        if let Some(dir) = &raw.working_dir {
            // An image's WORKDIR is a path inside the container; it only has to be absolute and
            // free of components that could climb out of the root.
            if let Err(e) = dir.parse::<RemotePath>() {
                return Err(InfoError::Field {
                    path: self.path.to_owned(),
                    field: "image.working_dir",
                    source: Box::new(e),
                });
            }
        }
        Ok(ImageMeta {
            digest,
            entrypoint: raw.entrypoint,
            cmd: raw.cmd,
            user: raw.user,
            env,
            working_dir: raw.working_dir,
        })
    }

    fn no_nul(&self, field: &'static str, value: &str) -> Result<(), InfoError> {
        if value.contains('\0') {
            return Err(self.inconsistent(field, "contains a NUL character".into()));
        }
        Ok(())
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TrustDomain;
    use proptest::prelude::*;
    use rstest::rstest;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const SID: &str = "0b7e5c1e-8a7c-4c39-9a59-2f5d8d1f3b6a";

    fn sample_yaml() -> String {
        format!(
            "info:
  version: 1
  kind: image
  name: jp2a
  path_at_rest: /scratch/project_1/alice/jp2a.age
  secret_path: hpcs/data/secrets/{SID}
  access_role: hpcs-secret-{SID}
  checksum: {SHA}
  spiffeID: spiffe://hpcs.test/hpcs/secret/{SID}
  sha256: {SHA}
  size: 73400320
  owner: spiffe://hpcs.test/client/alice
  created: 2025-01-31T12:00:00Z
  secret_id: {SID}
  image:
    digest: sha256:{SHA}
    entrypoint: [/usr/bin/jp2a]
    cmd: [--help]
    user: '1000'
    env: [PATH=/usr/bin:/bin]
    working_dir: /
"
        )
    }

    fn origin() -> &'static Path {
        Path::new("/scratch/jp2a.info.yaml")
    }

    #[test]
    fn parses_sample() {
        let info = InfoFile::from_yaml(&sample_yaml(), origin()).unwrap();
        assert_eq!(info.name.as_str(), "jp2a");
        assert_eq!(info.secret_id().as_str(), SID);
        assert_eq!(info.ciphertext.size, 73_400_320);
        assert_eq!(info.ciphertext.sha256.to_string(), SHA);
        assert_eq!(info.owner.as_str(), "spiffe://hpcs.test/client/alice");
        let ArtefactKind::Image(meta) = &info.kind else {
            panic!("not an image")
        };
        assert_eq!(
            meta.entrypoint.as_deref(),
            Some(&["/usr/bin/jp2a".to_owned()][..])
        );
        assert_eq!(meta.env, ["PATH=/usr/bin:/bin"]);
        let yaml = info.to_yaml().unwrap();
        assert!(yaml.starts_with("info:\n  version: 1\n"), "{yaml}");
        assert!(yaml.contains("\n  spiffeID: spiffe://"), "{yaml}");
        assert_eq!(InfoFile::from_yaml(&yaml, origin()).unwrap(), info);
    }

    #[test]
    fn names_and_hpcs_reader_view() {
        let name: ArtefactName = "jp2a_input".parse().unwrap();
        assert_eq!(info_file_name(&name), "jp2a_input.info.yaml");
        assert_eq!(ciphertext_file_name(&name), "jp2a_input.age");
        // What an HPCS reader looks up: info["info"][key].
        let info = InfoFile::from_yaml(&sample_yaml(), origin()).unwrap();
        let v: serde_norway::Value = serde_norway::from_str(&info.to_yaml().unwrap()).unwrap();
        for key in [
            "path_at_rest",
            "secret_path",
            "access_role",
            "checksum",
            "spiffeID",
        ] {
            assert!(v["info"][key].is_string(), "{key}");
        }
    }

    fn replace(line_start: &str, new: &str) -> String {
        sample_yaml()
            .lines()
            .map(|l| {
                if l.trim_start().starts_with(line_start) {
                    new.to_owned()
                } else {
                    l.to_owned()
                }
            })
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn remove(line_start: &str) -> String {
        replace(line_start, "")
    }

    #[rstest]
    #[case::unknown_key(format!("{}  extra: 1\n", sample_yaml()), "unknown field `extra`")]
    #[case::unknown_top(format!("{}other: 1\n", sample_yaml()), "unknown field `other`")]
    #[case::duplicate(sample_yaml().replace("  version: 1\n", "  version: 1\n  name: dup\n"), "duplicate field `name`")]
    #[case::missing_name(remove("name:"), "missing field `name`")]
    #[case::missing_version(remove("version:"), "missing field `version`")]
    #[case::missing_size(remove("size:"), "missing field `size`")]
    #[case::version_2(
        replace("version:", "  version: 2"),
        "has version 2; this build reads version 1"
    )]
    #[case::bad_kind(
        replace("kind:", "  kind: script"),
        "field `kind`: expected image or data"
    )]
    #[case::bad_name(replace("name:", "  name: ../etc"), "invalid field `name`")]
    #[case::relative_path(
        replace("path_at_rest:", "  path_at_rest: data.age"),
        "invalid field `path_at_rest`"
    )]
    #[case::dotdot_path(
        replace("path_at_rest:", "  path_at_rest: /a/../b"),
        "invalid field `path_at_rest`"
    )]
    #[case::bad_secret_path(
        replace("secret_path:", "  secret_path: /hpcs/../sys"),
        "invalid field `secret_path`"
    )]
    #[case::bad_role(
        replace("access_role:", "  access_role: 'a b'"),
        "invalid field `access_role`"
    )]
    #[case::bad_spiffe(
        replace("spiffeID:", "  spiffeID: spiffe://hpcs.test/client/alice"),
        "invalid field `spiffeID`"
    )]
    #[case::checksum_sha512(replace("checksum:", &format!("  checksum: {SHA}{SHA}")), "invalid field `checksum`")]
    #[case::checksum_differs(replace("checksum:", &format!("  checksum: {}", SHA.replace('9', "8"))), "field `checksum`: must equal `sha256`")]
    #[case::upper_sha(replace("sha256:", &format!("  sha256: {}", SHA.to_uppercase())), "invalid field `sha256`")]
    #[case::negative_size(replace("size:", "  size: -1"), "invalid info file")]
    #[case::string_size(replace("size:", "  size: big"), "invalid info file")]
    #[case::owner_td(
        replace("owner:", "  owner: spiffe://other.td/client/alice"),
        "field `owner`: trust domain other.td differs"
    )]
    #[case::bad_created(
        replace("created:", "  created: yesterday"),
        "field `created`: \"yesterday\" is not an RFC 3339 timestamp"
    )]
    #[case::secret_id_differs(
        replace("secret_id:", "  secret_id: abc"),
        "field `secret_id`: abc differs"
    )]
    #[case::data_with_image(
        replace("kind:", "  kind: data"),
        "field `image`: only allowed when kind is image"
    )]
    #[case::bad_digest(
        replace("digest:", "    digest: md5:abc"),
        "invalid field `image.digest`"
    )]
    #[case::bad_env(
        replace("env:", "    env: ['1A=b']"),
        "field `image.env`: entry \"1A=b\""
    )]
    #[case::env_no_eq(replace("env:", "    env: [PATH]"), "field `image.env`")]
    #[case::nul_cmd(
        replace("cmd:", "    cmd: [\"a\\0b\"]"),
        "field `image.cmd`: contains a NUL"
    )]
    #[case::relative_workdir(
        replace("working_dir:", "    working_dir: app"),
        "invalid field `image.working_dir`"
    )]
    #[case::not_a_map("- a\n- b\n", "invalid info file")]
    #[case::empty("", "invalid info file")]
    #[case::hpcs_era(
        "info:\n  path_at_rest: /x\n  secret_path: a/b\n  access_role: r\n  checksum: abc\n  spiffeID: spiffe://hpcs/x\n",
        "missing field `version`"
    )]
    fn bad_inputs(#[case] yaml: String, #[case] msg: &str) {
        let err = InfoFile::from_yaml(&yaml, origin()).unwrap_err();
        let full = format!("{:#}", ErrChain(&err));
        assert!(full.contains(msg), "{full:?} does not contain {msg:?}");
        assert!(full.contains("/scratch/jp2a.info.yaml"), "{full}");
    }

    #[test]
    fn image_section_required_for_images() {
        let yaml = sample_yaml();
        let cut = &yaml[..yaml.find("  image:").unwrap()];
        let err = InfoFile::from_yaml(cut, origin()).unwrap_err();
        assert!(
            err.to_string().contains("required when kind is image"),
            "{err}"
        );
    }

    #[test]
    fn size_cap() {
        let big = format!(
            "{}#{}\n",
            sample_yaml(),
            "x".repeat(INFO_FILE_MAX_BYTES as usize)
        );
        let err = InfoFile::from_yaml(&big, origin()).unwrap_err();
        assert!(matches!(err, InfoError::TooLarge { .. }), "{err}");
        let err = InfoFile::from_slice(big.as_bytes(), origin()).unwrap_err();
        assert!(matches!(err, InfoError::TooLarge { .. }), "{err}");
        let err = InfoFile::from_slice(&[0xff, 0xfe], origin()).unwrap_err();
        assert!(matches!(err, InfoError::NotText { .. }), "{err}");
    }

    /// Anchors and aliases must not let a small file expand into a huge document; the strict
    /// schema rejects the stray keys before anything is expanded.
    #[test]
    fn alias_bomb_is_rejected() {
        let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            yaml.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        yaml.push_str("info: *a11\n");
        let err = InfoFile::from_yaml(&yaml, origin()).unwrap_err();
        assert!(matches!(err, InfoError::Syntax { .. }), "{err}");
    }

    #[test]
    fn read_from_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("jp2a.info.yaml");
        std::fs::write(&path, sample_yaml()).unwrap();
        InfoFile::read(&path).unwrap();
        let err = InfoFile::read(&tmp.path().join("missing.info.yaml")).unwrap_err();
        assert!(err.to_string().contains("missing.info.yaml"), "{err}");
        std::fs::write(&path, vec![b'#'; INFO_FILE_MAX_BYTES as usize + 10]).unwrap();
        let err = InfoFile::read(&path).unwrap_err();
        assert!(matches!(err, InfoError::TooLarge { .. }), "{err}");
    }

    /// Formats an error with its sources, like anyhow's `{:#}`.
    struct ErrChain<'a>(&'a dyn std::error::Error);

    impl std::fmt::Display for ErrChain<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0)?;
            let mut source = self.0.source();
            while let Some(s) = source {
                write!(f, ": {s}")?;
                source = s.source();
            }
            Ok(())
        }
    }

    fn arb_info() -> impl Strategy<Value = InfoFile> {
        let text = "[ -~]{0,20}|true|null|~|1e3|0x1F|'|\"|: x|- y|#z";
        let image = (
            any::<[u8; 32]>(),
            proptest::option::of(proptest::collection::vec(text, 0..3)),
            proptest::option::of(proptest::collection::vec(text, 0..3)),
            proptest::option::of("[a-z0-9:]{1,10}"),
            proptest::collection::vec("[A-Z_][A-Z0-9_]{0,5}=[ -~]{0,10}", 0..3),
            proptest::option::of("(/[a-z0-9]{1,5}){0,3}"),
        )
            .prop_map(|(d, entrypoint, cmd, user, env, working_dir)| {
                ArtefactKind::Image(ImageMeta {
                    digest: ImageDigest(Sha256Digest::from_bytes(d)),
                    entrypoint,
                    cmd,
                    user,
                    env,
                    working_dir: working_dir.map(|w| if w.is_empty() { "/".into() } else { w }),
                })
            });
        let kind = prop_oneof![Just(ArtefactKind::Data), image];
        (
            "[A-Za-z0-9_][A-Za-z0-9._-]{0,30}|true|null|1e3|0|yes"
                .prop_filter("no ..", |s| !s.contains("..")),
            kind,
            "(/[A-Za-z0-9 ._-]{0,8}[A-Za-z0-9_]){1,4}",
            "[a-z0-9]{1,8}(/[a-z0-9_][a-z0-9._-]{0,8}){0,3}"
                .prop_filter("no ..", |s| !s.contains("..")),
            "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
            any::<[u8; 32]>(),
            any::<u64>(),
            "[a-z0-9.-]{1,12}",
            "[a-z_][a-z0-9_-]{0,10}",
            0i64..4_000_000_000,
        )
            .prop_map(
                |(name, kind, at_rest, vault, secret, sha, size, td, user, secs)| {
                    let td: TrustDomain = td.parse().unwrap();
                    let secret: SecretId = secret.parse().unwrap();
                    InfoFile {
                        name: name.parse().unwrap(),
                        kind,
                        path_at_rest: at_rest.parse().unwrap(),
                        secret_path: vault.parse().unwrap(),
                        access_role: format!("hpcs-secret-{secret}").parse().unwrap(),
                        reader_id: SecretReaderId::new(&td, &secret),
                        ciphertext: CipherSummary {
                            sha256: Sha256Digest::from_bytes(sha),
                            size,
                        },
                        owner: crate::ids::ClientId::new(&td, &user.parse().unwrap()).into(),
                        created: OffsetDateTime::from_unix_timestamp(secs).unwrap(),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn prop_round_trip(info in arb_info()) {
            let yaml = info.to_yaml().unwrap();
            let back = InfoFile::from_yaml(&yaml, origin()).unwrap();
            prop_assert_eq!(back, info);
        }
    }
}
