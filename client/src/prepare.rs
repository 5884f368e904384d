//! The pipeline shared by container-prep and data-prep: encrypt, register, write the key, ship,
//! and on any failure after registration, revoke.
//!
//! 1. [`encrypt_to_spool`]: the plaintext stream is encrypted with a fresh age X25519 identity
//!    into a ciphertext spool file (mode 0600, in a private temp dir) while the ciphertext is
//!    hashed. Plaintext never touches the disk; only ciphertext is spooled, because its digest
//!    and size must be known before the key record is written.
//! 2. [`Pipeline::run`]: the destination is checked first (SSH host key, login, remote
//!    directory), so a wrong host key or a bad path aborts before anything is registered. Then
//!    a JWT-SVID is fetched, the secret registered, the key record written with the single-use
//!    credential, the ciphertext and the info file shipped and verified remotely. Any failure
//!    after the registration revokes the secret (with a fresh JWT-SVID) so no orphan remains.
//!
//! The destination is a trait ([`Destination`]); [`SshDestination`] is the real one.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hpcs_core::api::{CreateSecretRequest, CreateSecretResponse, Readers};
use hpcs_core::crypto::CipherSummary;
use hpcs_core::ids::{ArtefactName, NodeName, RemotePath, SecretId, SecretReaderId, SpiffeId};
use hpcs_core::info::{self, InfoFile};
use hpcs_core::secret::AgeIdentity;
use serde::Serialize;
use time::OffsetDateTime;

use crate::identity::{IdentityError, IdentitySource};
use crate::server_api::{ServerApi, ServerApiError};
use crate::ssh::{SshError, SshSession, SshTarget};
use crate::vault::{KeyRecordMeta, KeyWriter, VaultError};

/// Mode of the files written on the cluster (ciphertext and info file).
pub const REMOTE_FILE_MODE: i32 = 0o600;
/// Mode of the remote directory when it has to be created.
pub const REMOTE_DIR_MODE: u32 = 0o700;

/// Errors of the pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    /// The spool file for the ciphertext could not be created.
    #[error("failed to create a ciphertext spool file in {dir}")]
    Spool {
        /// Directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Encryption failed (including reading the plaintext).
    #[error("failed to encrypt {what}")]
    Encrypt {
        /// The input.
        what: String,
        /// Cause.
        #[source]
        source: Box<hpcs_core::crypto::CryptoError>,
    },
    /// The destination check failed (nothing was registered).
    #[error("the destination {dest} is not usable")]
    Destination {
        /// Destination.
        dest: String,
        /// Cause.
        #[source]
        source: Box<ShipError>,
    },
    /// No client identity.
    #[error("failed to get the client identity")]
    Identity {
        /// Cause.
        #[source]
        source: IdentityError,
    },
    /// The server refused or failed the registration (nothing is registered).
    #[error("failed to register the secret")]
    Register {
        /// Cause.
        #[source]
        source: ServerApiError,
    },
    /// The server's answer is inconsistent.
    #[error("the server's registration answer is unusable: {what}")]
    BadAnswer {
        /// What.
        what: String,
    },
    /// Writing the key record failed.
    #[error("failed to write the key to Vault")]
    WriteKey {
        /// Cause.
        #[source]
        source: VaultError,
    },
    /// The info file could not be produced.
    #[error("failed to produce the info file")]
    Info {
        /// Cause.
        #[source]
        source: info::InfoError,
    },
    /// Shipping failed.
    #[error("failed to ship the artefact to {dest}")]
    Ship {
        /// Destination.
        dest: String,
        /// Cause.
        #[source]
        source: Box<ShipError>,
    },
    /// A step after registration failed; the secret was revoked.
    #[error("the secret {id} was revoked after a failure")]
    RolledBack {
        /// The revoked secret.
        id: SecretId,
        /// What failed.
        #[source]
        source: Box<PrepareError>,
    },
    /// A step after registration failed and revoking the secret failed too.
    #[error(
        "the secret {id} may still be registered: revoking it after a failure also failed ({revoke})\nhint: revoke it with DELETE /api/v1/secrets/{id}"
    )]
    RevokeFailed {
        /// The secret.
        id: SecretId,
        /// Why revoking failed.
        revoke: String,
        /// What failed first.
        #[source]
        source: Box<PrepareError>,
    },
    /// A blocking task panicked or was cancelled.
    #[error("internal task of {what} failed")]
    Task {
        /// The step.
        what: &'static str,
        /// Cause.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl PrepareError {
    /// Whether a secret may be left registered (revocation failed).
    #[must_use]
    pub fn may_leave_orphan(&self) -> bool {
        matches!(self, Self::RevokeFailed { .. })
    }
}

/// Errors of shipping.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShipError {
    /// SSH failed.
    #[error("ssh failed")]
    Ssh(#[from] SshError),
    /// The local spool could not be read.
    #[error("failed to read the ciphertext spool {path}")]
    ReadSpool {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The remote copy differs from what was sent.
    #[error(
        "remote file {path} does not match: {actual_size} bytes sha256 {actual_sha256}, expected {expected_size} bytes sha256 {expected_sha256}"
    )]
    Mismatch {
        /// Remote path.
        path: String,
        /// Remote size.
        actual_size: u64,
        /// Remote digest.
        actual_sha256: String,
        /// Local size.
        expected_size: u64,
        /// Local digest.
        expected_sha256: String,
    },
    /// The remote side lacks a tool we need.
    #[error("the remote host has no {program} on PATH")]
    MissingTool {
        /// Program.
        program: &'static str,
    },
}

/// An encrypted artefact waiting in the spool: the identity that decrypts it lives only in
/// memory and is wiped when this is dropped.
pub struct Encrypted {
    identity: AgeIdentity,
    summary: CipherSummary,
    spool: tempfile::NamedTempFile,
}

impl std::fmt::Debug for Encrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encrypted")
            .field("summary", &self.summary)
            .field("spool", &self.spool.path())
            .finish_non_exhaustive()
    }
}

impl Encrypted {
    /// Digest and size of the ciphertext.
    #[must_use]
    pub fn summary(&self) -> &CipherSummary {
        &self.summary
    }

    /// The spool file holding the ciphertext.
    #[must_use]
    pub fn spool_path(&self) -> &Path {
        self.spool.path()
    }

    /// The identity that decrypts the ciphertext.
    #[must_use]
    pub fn identity(&self) -> &AgeIdentity {
        &self.identity
    }
}

/// Encrypts `plaintext` with a fresh identity into a spool file in `spool_dir`, hashing the
/// ciphertext. Blocking: run it with `spawn_blocking`. `what` names the input in errors.
///
/// # Errors
///
/// [`PrepareError::Spool`], [`PrepareError::Encrypt`].
pub fn encrypt_to_spool<R: Read>(
    plaintext: R,
    spool_dir: &Path,
    what: &str,
) -> Result<Encrypted, PrepareError> {
    let spool = tempfile::Builder::new()
        .prefix(".hpcs-spool-")
        .suffix(".age")
        .tempfile_in(spool_dir)
        .map_err(|source| PrepareError::Spool {
            dir: spool_dir.to_owned(),
            source,
        })?;
    let identity = AgeIdentity::generate();
    let summary = hpcs_core::crypto::encrypt(plaintext, spool.as_file(), &[identity.to_public()])
        .map_err(|source| PrepareError::Encrypt {
        what: what.to_owned(),
        source: Box::new(source),
    })?;
    tracing::debug!(size = summary.size, sha256 = %summary.sha256, "encrypted");
    Ok(Encrypted {
        identity,
        summary,
        spool,
    })
}

/// Where the artefact goes and who may read it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Artefact name (file names `<name>.age`, `<name>.info.yaml`).
    pub name: ArtefactName,
    /// Image (with its settings) or data.
    pub kind: info::ArtefactKind,
    /// Readers.
    pub readers: Readers,
    /// Compute nodes.
    pub compute_nodes: BTreeSet<NodeName>,
    /// Remote directory (`--data-path-at-rest`).
    pub remote_dir: RemotePath,
}

impl Plan {
    /// Remote path of the ciphertext.
    ///
    /// # Errors
    ///
    /// An [`hpcs_core::ids::IdError`] if the joined path is invalid.
    pub fn ciphertext_remote(&self) -> Result<RemotePath, hpcs_core::ids::IdError> {
        self.remote_dir
            .join(&info::ciphertext_file_name(&self.name).parse()?)
    }

    /// Remote path of the info file.
    ///
    /// # Errors
    ///
    /// An [`hpcs_core::ids::IdError`] if the joined path is invalid.
    pub fn info_remote(&self) -> Result<RemotePath, hpcs_core::ids::IdError> {
        self.remote_dir
            .join(&info::info_file_name(&self.name).parse()?)
    }

    fn api_kind(&self) -> hpcs_core::api::ArtefactKind {
        match self.kind {
            info::ArtefactKind::Data => hpcs_core::api::ArtefactKind::Data,
            _ => hpcs_core::api::ArtefactKind::Image,
        }
    }
}

/// The result of a successful run (printed with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The registered secret.
    pub secret_id: String,
    /// The owner (our SPIFFE ID).
    pub owner: String,
    /// SPIFFE ID of the readers.
    pub reader_id: String,
    /// Vault path of the key record.
    pub secret_path: String,
    /// Vault role readers log in with.
    pub access_role: String,
    /// Remote ciphertext.
    pub ciphertext_path: String,
    /// Remote info file.
    pub info_path: String,
    /// Ciphertext sha256 (hex).
    pub sha256: String,
    /// Ciphertext size in bytes.
    pub size: u64,
    /// Image ID, for images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}

/// The far side: the cluster's storage.
pub trait Destination: Send + Sync {
    /// Human-readable name for messages.
    fn describe(&self) -> String;

    /// Checks that shipping to `dir` can work (connect, host key, login, directory, tools),
    /// creating `dir` if needed. Called before anything is registered.
    ///
    /// # Errors
    ///
    /// [`ShipError`].
    fn check(&self, dir: &RemotePath) -> Result<(), ShipError>;

    /// Uploads the ciphertext and then the info file (each to a temporary name, then renamed),
    /// and verifies the remote ciphertext's size and digest. On failure nothing is left under
    /// the final names.
    ///
    /// # Errors
    ///
    /// [`ShipError`].
    fn ship(
        &self,
        spool: &Path,
        expected: &CipherSummary,
        ciphertext: &RemotePath,
        info_yaml: &[u8],
        info_path: &RemotePath,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), ShipError>;
}

/// Shipping over SSH/SFTP (strict host keys, atomic uploads, remote sha256 check).
#[derive(Debug, Clone)]
pub struct SshDestination {
    target: SshTarget,
}

impl SshDestination {
    /// A destination on `target`.
    #[must_use]
    pub fn new(target: SshTarget) -> Self {
        Self { target }
    }
}

impl Destination for SshDestination {
    fn describe(&self) -> String {
        format!(
            "{}@{}:{}",
            self.target.user, self.target.host, self.target.port
        )
    }

    fn check(&self, dir: &RemotePath) -> Result<(), ShipError> {
        let session = SshSession::connect(&self.target)?;
        session.mkdir_p(dir.as_str(), REMOTE_DIR_MODE)?;
        if !session.has_command("sha256sum")? {
            return Err(ShipError::MissingTool {
                program: "sha256sum",
            });
        }
        Ok(())
    }

    fn ship(
        &self,
        spool: &Path,
        expected: &CipherSummary,
        ciphertext: &RemotePath,
        info_yaml: &[u8],
        info_path: &RemotePath,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), ShipError> {
        let session = SshSession::connect(&self.target)?;
        let file = File::open(spool).map_err(|source| ShipError::ReadSpool {
            path: spool.to_owned(),
            source,
        })?;
        session.upload(file, ciphertext.as_str(), REMOTE_FILE_MODE, progress)?;
        let verified = (|| {
            let size = session.file_size(ciphertext.as_str())?;
            let sha = session.sha256(ciphertext.as_str())?;
            if size != expected.size || sha != expected.sha256 {
                return Err(ShipError::Mismatch {
                    path: ciphertext.to_string(),
                    actual_size: size,
                    actual_sha256: sha.to_string(),
                    expected_size: expected.size,
                    expected_sha256: expected.sha256.to_string(),
                });
            }
            session.upload(info_yaml, info_path.as_str(), REMOTE_FILE_MODE, |_| {})?;
            Ok(())
        })();
        if verified.is_err() {
            // Leave nothing behind that names a secret about to be revoked.
            let _ = session.exec(&["rm", "-f", "--", ciphertext.as_str(), info_path.as_str()]);
        }
        verified
    }
}

/// The client side of the HPCS services: identity, server API and Vault.
#[derive(Debug, Clone)]
pub struct Services {
    /// JWT-SVIDs for the server's audience.
    pub identity: IdentitySource,
    /// The server API.
    pub server: ServerApi,
    /// Vault.
    pub vault: KeyWriter,
}

/// Errors of setting up the services from the client config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// No identity source.
    #[error("cannot reach the SPIRE agent")]
    Identity(#[from] IdentityError),
    /// The server client.
    #[error("cannot set up the HPCS server client")]
    Server(#[from] ServerApiError),
    /// The Vault client.
    #[error("cannot set up the Vault client")]
    Vault(#[from] VaultError),
}

impl Services {
    /// The services named by the client config: `[spire-agent] socket-path` (or
    /// `SPIFFE_ENDPOINT_SOCKET`), `[hpcs-server]` and `[vault]`.
    ///
    /// # Errors
    ///
    /// [`SetupError`].
    pub fn from_config(cfg: &hpcs_core::config::ClientConfig) -> Result<Self, SetupError> {
        let socket = cfg.spire_agent.as_ref().map(|a| a.socket_path.as_path());
        Ok(Self {
            identity: IdentitySource::new(socket, &cfg.hpcs_server.audience)?,
            server: ServerApi::new(cfg.hpcs_server.url.clone(), cfg.hpcs_server.timeout)?,
            vault: KeyWriter::new(
                cfg.vault.url.clone(),
                cfg.vault.ca_cert.as_deref(),
                cfg.vault.timeout,
            )?,
        })
    }
}

/// One run of the pipeline.
pub struct Pipeline {
    /// Services.
    pub services: Services,
    /// Destination.
    pub destination: Arc<dyn Destination>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("services", &self.services)
            .field("destination", &self.destination.describe())
            .finish()
    }
}

impl Pipeline {
    /// The pipeline named by the client config, shipping over SSH as `username` (default:
    /// `[supercomputer] username`); `accept_new_host_key` records an unknown host key instead
    /// of refusing it.
    ///
    /// # Errors
    ///
    /// [`SetupError`].
    pub fn from_config(
        cfg: &hpcs_core::config::ClientConfig,
        username: Option<&hpcs_core::ids::UserName>,
        accept_new_host_key: bool,
    ) -> Result<Self, SetupError> {
        let mut target = SshTarget::from_config(&cfg.supercomputer, &cfg.ssh);
        if let Some(user) = username {
            target.user = user.to_string();
        }
        target.accept_new = target.accept_new || accept_new_host_key;
        Ok(Self {
            services: Services::from_config(cfg)?,
            destination: Arc::new(SshDestination::new(target)),
        })
    }

    /// Checks the destination; call before encrypting a large input to fail early.
    ///
    /// # Errors
    ///
    /// [`PrepareError::Destination`].
    pub async fn check_destination(&self, plan: &Plan) -> Result<(), PrepareError> {
        let dest = Arc::clone(&self.destination);
        let dir = plan.remote_dir.clone();
        tokio::task::spawn_blocking(move || dest.check(&dir))
            .await
            .map_err(|source| PrepareError::Task {
                what: "checking the destination",
                source,
            })?
            .map_err(|source| PrepareError::Destination {
                dest: self.destination.describe(),
                source: Box::new(source),
            })
    }

    /// Registers, writes the key, ships; revokes on any failure after the registration.
    /// The destination should have been checked with [`Pipeline::check_destination`].
    ///
    /// # Errors
    ///
    /// [`PrepareError`]; after registration always [`PrepareError::RolledBack`] or
    /// [`PrepareError::RevokeFailed`].
    pub async fn run(
        &self,
        plan: &Plan,
        encrypted: Encrypted,
        progress: Box<dyn FnMut(u64) + Send>,
    ) -> Result<Outcome, PrepareError> {
        let me = self
            .services
            .identity
            .fetch()
            .await
            .map_err(|source| PrepareError::Identity { source })?;
        let request = CreateSecretRequest {
            kind: plan.api_kind(),
            name: plan.name.clone(),
            readers: plan.readers.clone(),
            compute_nodes: plan.compute_nodes.clone(),
            expires_at: None,
        };
        let created = self
            .services
            .server
            .create_secret(&me.token, &request)
            .await
            .map_err(|source| PrepareError::Register { source })?;
        drop(me);
        let id = created.secret.id.clone();
        tracing::info!(secret_id = %id, "registered");
        match self
            .after_registration(plan, &created, encrypted, progress)
            .await
        {
            Ok(outcome) => Ok(outcome),
            Err(failure) => Err(self.revoke(&id, failure).await),
        }
    }

    async fn after_registration(
        &self,
        plan: &Plan,
        created: &CreateSecretResponse,
        encrypted: Encrypted,
        mut progress: Box<dyn FnMut(u64) + Send>,
    ) -> Result<Outcome, PrepareError> {
        let secret = &created.secret;
        let bad = |what: String| PrepareError::BadAnswer { what };
        let reader_id = SecretReaderId::try_from(secret.reader_id.clone())
            .map_err(|e| bad(format!("reader ID: {e}")))?;
        if reader_id.secret_id() != &secret.id {
            return Err(bad("the reader ID names another secret".into()));
        }
        let cred = &created.write_credential;
        if cred.kv_mount != secret.vault.kv_mount || cred.kv_path != secret.vault.kv_path {
            return Err(bad("the write credential is for another path".into()));
        }
        let secret_path = format!("{}/data/{}", secret.vault.kv_mount, secret.vault.kv_path)
            .parse()
            .map_err(|e| bad(format!("Vault path: {e}")))?;
        let ciphertext = plan
            .ciphertext_remote()
            .map_err(|e| bad(format!("remote path: {e}")))?;
        let info_path = plan
            .info_remote()
            .map_err(|e| bad(format!("remote path: {e}")))?;
        let summary = *encrypted.summary();
        let info = InfoFile {
            name: plan.name.clone(),
            kind: plan.kind.clone(),
            path_at_rest: ciphertext.clone(),
            secret_path,
            access_role: secret.vault.role.clone(),
            reader_id,
            ciphertext: summary,
            owner: secret.owner.clone(),
            created: OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .unwrap_or(OffsetDateTime::now_utc()),
        };
        let yaml = info
            .to_yaml()
            .map_err(|source| PrepareError::Info { source })?;

        self.services
            .vault
            .write(
                cred,
                encrypted.identity(),
                &KeyRecordMeta {
                    ciphertext: summary,
                    kind: plan.api_kind(),
                    owner: secret.owner.clone(),
                },
            )
            .await
            .map_err(|source| PrepareError::WriteKey { source })?;
        // The key is in Vault; wipe our copy before the long upload.
        let Encrypted {
            identity, spool, ..
        } = encrypted;
        drop(identity);

        let dest = Arc::clone(&self.destination);
        let (ct, ip) = (ciphertext.clone(), info_path.clone());
        let shipped = tokio::task::spawn_blocking(move || {
            dest.ship(
                spool.path(),
                &summary,
                &ct,
                yaml.as_bytes(),
                &ip,
                &mut *progress,
            )
        })
        .await
        .map_err(|source| PrepareError::Task {
            what: "shipping",
            source,
        })?;
        shipped.map_err(|source| PrepareError::Ship {
            dest: self.destination.describe(),
            source: Box::new(source),
        })?;
        Ok(Outcome {
            secret_id: secret.id.to_string(),
            owner: secret.owner.to_string(),
            reader_id: info.reader_id.to_string(),
            secret_path: info.secret_path.to_string(),
            access_role: info.access_role.to_string(),
            ciphertext_path: ciphertext.to_string(),
            info_path: info_path.to_string(),
            sha256: summary.sha256.to_string(),
            size: summary.size,
            image_digest: match &plan.kind {
                info::ArtefactKind::Image(m) => Some(m.digest.to_string()),
                _ => None,
            },
        })
    }

    async fn revoke(&self, id: &SecretId, failure: PrepareError) -> PrepareError {
        tracing::warn!(secret_id = %id, error = %failure, "revoking the secret after a failure");
        let result = async {
            let me = self
                .services
                .identity
                .fetch()
                .await
                .map_err(|e| e.to_string())?;
            self.services
                .server
                .delete_secret(&me.token, id)
                .await
                .map_err(|e| error_chain(&e))
        }
        .await;
        match result {
            Ok(()) => PrepareError::RolledBack {
                id: id.clone(),
                source: Box::new(failure),
            },
            Err(revoke) => PrepareError::RevokeFailed {
                id: id.clone(),
                revoke,
                source: Box::new(failure),
            },
        }
    }
}

/// Our SPIFFE ID, for plans and messages.
///
/// # Errors
///
/// [`PrepareError::Identity`].
pub async fn whoami(identity: &IdentitySource) -> Result<SpiffeId, PrepareError> {
    Ok(identity
        .fetch()
        .await
        .map_err(|source| PrepareError::Identity { source })?
        .spiffe_id)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_holds_ciphertext_that_decrypts() {
        let dir = tempfile::tempdir().unwrap();
        let plain = b"hello hpcs".repeat(1000);
        let enc = encrypt_to_spool(&plain[..], dir.path(), "test input").unwrap();
        let bytes = std::fs::read(enc.spool_path()).unwrap();
        assert_eq!(bytes.len() as u64, enc.summary().size);
        assert!(!bytes.windows(10).any(|w| w == b"hello hpcs"));
        let mut out = Vec::new();
        hpcs_core::crypto::decrypt(&bytes[..], &mut out, enc.identity(), Some(enc.summary()))
            .unwrap();
        assert_eq!(out, plain);
        let path = enc.spool_path().to_owned();
        drop(enc);
        assert!(!path.exists(), "the spool is removed with the value");
    }

    #[test]
    fn remote_paths_follow_the_name() {
        let plan = Plan {
            name: "jp2a".parse().unwrap(),
            kind: info::ArtefactKind::Data,
            readers: Readers::default(),
            compute_nodes: BTreeSet::new(),
            remote_dir: "/scratch/alice".parse().unwrap(),
        };
        assert_eq!(
            plan.ciphertext_remote().unwrap().as_str(),
            "/scratch/alice/jp2a.age"
        );
        assert_eq!(
            plan.info_remote().unwrap().as_str(),
            "/scratch/alice/jp2a.info.yaml"
        );
    }
}
