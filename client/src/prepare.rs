//! The pipeline shared by container-prep and data-prep: encrypt and upload, register, write the
//! key, publish, and on any failure after registration, revoke.
//!
//! 1. [`Pipeline::check_destination`]: SSH host key, login, remote directory, `sha256sum`; a
//!    wrong host key or a bad path aborts before anything is encrypted or registered.
//! 2. [`stage`]: the plaintext stream is encrypted with a fresh age X25519 identity straight
//!    into an upload (through a pipe: encryption and upload overlap, and nothing is written on
//!    the local disk), hashing the ciphertext on the way. The upload goes to a hidden staging
//!    name next to the final one; its size and SHA-256 are then checked remotely. Nothing is
//!    registered yet: any failure here removes the staged file.
//! 3. [`Pipeline::run`]: a JWT-SVID is fetched, the secret registered, the key record (with the
//!    digest and size just measured) written with the single-use credential, then the staged
//!    ciphertext renamed to its final name and the info file written. Any failure after the
//!    registration revokes the secret (with a fresh JWT-SVID) and removes the files, so no
//!    orphan remains.
//!
//! The destination is a trait ([`Destination`]); [`SshDestination`] is the real one.

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;

use hpcs_core::api::{CreateSecretRequest, CreateSecretResponse, Readers};
use hpcs_core::crypto::CipherSummary;
use hpcs_core::ids::{ArtefactName, NodeName, RemotePath, SecretId, SecretReaderId, SpiffeId};
use hpcs_core::info::{self, InfoFile};
use hpcs_core::secret::AgeIdentity;
use serde::Serialize;
use time::OffsetDateTime;

use crate::error_chain;
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
    /// The staging name next to the ciphertext is not a valid remote path.
    #[error("invalid staging path in the remote directory")]
    StagingPath {
        /// Why.
        #[source]
        source: hpcs_core::ids::IdError,
    },
    /// The pipe between encryption and upload could not be made.
    #[error("failed to create a pipe for the ciphertext")]
    Pipe(#[source] std::io::Error),
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

/// An encrypted artefact uploaded to its staging name and verified there, not yet registered:
/// the identity that decrypts it lives only in memory and is wiped when this is dropped.
pub struct Staged {
    identity: AgeIdentity,
    summary: CipherSummary,
    path: RemotePath,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("summary", &self.summary)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Staged {
    /// Digest and size of the ciphertext.
    #[must_use]
    pub fn summary(&self) -> &CipherSummary {
        &self.summary
    }

    /// The remote staging name.
    #[must_use]
    pub fn path(&self) -> &RemotePath {
        &self.path
    }

    /// The identity that decrypts the ciphertext.
    #[must_use]
    pub fn identity(&self) -> &AgeIdentity {
        &self.identity
    }
}

/// Encrypts `plaintext` with a fresh identity straight into an upload to a staging name in the
/// plan's remote directory, then checks the staged file's size and SHA-256 remotely. Blocking:
/// run it with `spawn_blocking`. `what` names the input in errors; `progress` gets the bytes
/// uploaded so far. On error nothing is left under the staging name (as far as the connection
/// allows) and nothing was registered.
///
/// # Errors
///
/// [`PrepareError::StagingPath`], [`PrepareError::Pipe`], [`PrepareError::Encrypt`],
/// [`PrepareError::Ship`].
pub fn stage<R: Read + Send>(
    dest: &dyn Destination,
    plan: &Plan,
    plaintext: R,
    what: &str,
    progress: &mut dyn FnMut(u64),
) -> Result<Staged, PrepareError> {
    let path = plan
        .staged_remote()
        .map_err(|source| PrepareError::StagingPath { source })?;
    let ship_err = |source| PrepareError::Ship {
        dest: dest.describe(),
        source: Box::new(source),
    };
    let identity = AgeIdentity::generate();
    let recipient = identity.to_public();
    let (reader, writer) = std::io::pipe().map_err(PrepareError::Pipe)?;
    let (encrypted, uploaded) = std::thread::scope(|s| {
        let encrypt = s.spawn(move || {
            // Dropping the writer at the end is the upload's end of file.
            let mut writer = writer;
            hpcs_core::crypto::encrypt(plaintext, &mut writer, &[recipient])
        });
        let uploaded = {
            // Dropped right after the upload, so a failed upload stops the encryption (its
            // next write fails) instead of leaving it blocked on a full pipe.
            let mut reader = reader;
            dest.upload(&mut reader, &path, progress)
        };
        (encrypt.join(), uploaded)
    });
    let encrypt_err = |source| PrepareError::Encrypt {
        what: what.to_owned(),
        source: Box::new(source),
    };
    let summary = match (encrypted, uploaded) {
        (Ok(Ok(summary)), Ok(())) => summary,
        // The upload failed first: encryption then stopped writing into a closed pipe.
        (Ok(Err(hpcs_core::crypto::CryptoError::WriteCiphertext { .. }) | Ok(_)), Err(e)) => {
            return Err(ship_err(e));
        }
        (Ok(Err(e)), uploaded) => {
            if uploaded.is_ok() {
                dest.discard(&[&path]);
            }
            return Err(encrypt_err(e));
        }
        (Err(panic), _) => {
            dest.discard(&[&path]);
            std::panic::resume_unwind(panic);
        }
    };
    if let Err(e) = dest.verify(&path, &summary) {
        dest.discard(&[&path]);
        return Err(ship_err(e));
    }
    Ok(Staged {
        identity,
        summary,
        path,
    })
}

/// A byte counter for [`stage`] on stderr: a bar when `len` (a size estimate) is known, a
/// running count otherwise; hidden with `quiet` (`--json`) and when stderr is not a terminal.
#[must_use]
pub fn progress_bar(len: Option<u64>, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let (bar, template) = match len {
        Some(len) => (
            indicatif::ProgressBar::new(len),
            "encrypting and uploading {bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ),
        None => (
            indicatif::ProgressBar::no_length(),
            "encrypting and uploading {bytes} {binary_bytes_per_sec} {elapsed}",
        ),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Removes a staged artefact that will not be registered (best effort). Blocking.
pub fn discard(dest: &dyn Destination, staged: Staged) {
    let Staged { identity, path, .. } = staged;
    // Wiped now: nothing will ever be registered for it.
    drop(identity);
    dest.discard(&[&path]);
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

    /// A hidden staging name for the ciphertext next to its final name, unique to this run
    /// (process ID and clock), so concurrent runs for the same name do not meet.
    ///
    /// # Errors
    ///
    /// An [`hpcs_core::ids::IdError`] if the joined path is invalid.
    pub fn staged_remote(&self) -> Result<RemotePath, hpcs_core::ids::IdError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // Hidden, so not an artefact name: joined by hand and checked as a remote path.
        let dir = self.remote_dir.as_str().trim_end_matches('/');
        format!(
            "{dir}/.{}.{}.{nanos:x}.staged",
            info::ciphertext_file_name(&self.name),
            std::process::id()
        )
        .parse()
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

    /// Uploads everything `ciphertext` yields to `staged` (to a temporary name first, then
    /// renamed, so `staged` never holds a partial file).
    ///
    /// # Errors
    ///
    /// [`ShipError`].
    fn upload(
        &self,
        ciphertext: &mut dyn Read,
        staged: &RemotePath,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), ShipError>;

    /// Checks the remote file's size and SHA-256 against `expected`.
    ///
    /// # Errors
    ///
    /// [`ShipError::Mismatch`], or what the check itself hit.
    fn verify(&self, staged: &RemotePath, expected: &CipherSummary) -> Result<(), ShipError>;

    /// Renames the staged ciphertext to `ciphertext`, then writes the info file (to a
    /// temporary name, then renamed). On failure nothing is left under either final name.
    ///
    /// # Errors
    ///
    /// [`ShipError`].
    fn publish(
        &self,
        staged: &RemotePath,
        ciphertext: &RemotePath,
        info_yaml: &[u8],
        info_path: &RemotePath,
    ) -> Result<(), ShipError>;

    /// Removes `paths` (best effort: a dead connection can leave them).
    fn discard(&self, paths: &[&RemotePath]);
}

/// Shipping over SSH/SFTP (strict host keys, atomic uploads, remote sha256 check).
///
/// One run checks, uploads, verifies, publishes (or discards) in turn; they share one SSH
/// connection, made on first use and dropped after any error (which may have been the
/// connection's), so the next step connects afresh. Large uploads add their own extra
/// connections (`[ssh] streams`).
#[derive(Debug)]
pub struct SshDestination {
    target: SshTarget,
    session: std::sync::Mutex<Option<SshSession>>,
}

impl SshDestination {
    /// A destination on `target`.
    #[must_use]
    pub fn new(target: SshTarget) -> Self {
        Self {
            target,
            session: std::sync::Mutex::new(None),
        }
    }

    /// Runs `step` on the shared connection (connecting if there is none); an error drops it.
    fn with_session<T>(
        &self,
        step: impl FnOnce(&SshSession) -> Result<T, ShipError>,
    ) -> Result<T, ShipError> {
        let mut cached = self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let session = match cached.take() {
            Some(session) => session,
            None => SshSession::connect(&self.target)?,
        };
        let result = step(&session);
        if result.is_ok() {
            *cached = Some(session);
        }
        result
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
        self.with_session(|session| {
            session.mkdir_p(dir.as_str(), REMOTE_DIR_MODE)?;
            if !session.has_command("sha256sum")? {
                return Err(ShipError::MissingTool {
                    program: "sha256sum",
                });
            }
            remove_stale_uploads(session, dir);
            Ok(())
        })
    }

    fn upload(
        &self,
        ciphertext: &mut dyn Read,
        staged: &RemotePath,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), ShipError> {
        self.with_session(|session| {
            session.upload(ciphertext, staged.as_str(), REMOTE_FILE_MODE, progress)?;
            Ok(())
        })
    }

    fn verify(&self, staged: &RemotePath, expected: &CipherSummary) -> Result<(), ShipError> {
        self.with_session(|session| {
            let size = session.file_size(staged.as_str())?;
            let sha = session.sha256(staged.as_str())?;
            if size != expected.size || sha != expected.sha256 {
                return Err(ShipError::Mismatch {
                    path: staged.to_string(),
                    actual_size: size,
                    actual_sha256: sha.to_string(),
                    expected_size: expected.size,
                    expected_sha256: expected.sha256.to_string(),
                });
            }
            Ok(())
        })
    }

    fn publish(
        &self,
        staged: &RemotePath,
        ciphertext: &RemotePath,
        info_yaml: &[u8],
        info_path: &RemotePath,
    ) -> Result<(), ShipError> {
        self.with_session(|session| {
            // rename(2) through `mv -T`: atomic, and replaces an older artefact of the name.
            let argv = ["mv", "-f", "-T", "--", staged.as_str(), ciphertext.as_str()];
            if let Err(e) = session.exec_ok(&argv) {
                let _ = session.exec(&["rm", "-f", "--", staged.as_str()]);
                return Err(e.into());
            }
            let info = session.upload(info_yaml, info_path.as_str(), REMOTE_FILE_MODE, |_| {});
            if let Err(e) = info {
                // Leave nothing behind that names a secret about to be revoked (an older info
                // file would describe another ciphertext).
                let _ = session.exec(&["rm", "-f", "--", ciphertext.as_str(), info_path.as_str()]);
                return Err(e.into());
            }
            Ok(())
        })
    }

    fn discard(&self, paths: &[&RemotePath]) {
        let removed = self.with_session(|session| {
            let mut argv = vec!["rm", "-f", "--"];
            argv.extend(paths.iter().map(|p| p.as_str()));
            session.exec_ok(&argv)?;
            Ok(())
        });
        if let Err(e) = removed {
            let paths: Vec<_> = paths.iter().map(ToString::to_string).collect();
            tracing::warn!(error = %error_chain(&e), ?paths, "could not remove staged files");
        }
    }
}

/// Hidden files of earlier runs that a dead connection kept from being removed: staged
/// ciphertexts (`.<name>.age.<pid>.<clock>.staged`) and the uploader's temporary files
/// (`.<file>.<pid>.partial`), untouched for [`STALE_UPLOAD_MINUTES`]. Nothing registered refers
/// to them: a staged file is renamed into place before the run that made it ends. Best effort.
fn remove_stale_uploads(session: &SshSession, dir: &RemotePath) {
    let age = format!("+{STALE_UPLOAD_MINUTES}");
    // Exactly the two shapes this code makes, not any hidden file that looks similar.
    let argv = [
        "find",
        dir.as_str(),
        "-maxdepth",
        "1",
        "-type",
        "f",
        "-regextype",
        "posix-extended",
        "-regex",
        r".*/\.[^/]+\.age\.[0-9]+\.[0-9a-f]+\.staged|.*/\.[^/]+\.[0-9]+\.partial",
        "-mmin",
        &age,
        "-delete",
    ];
    if let Err(e) = session.exec_ok(&argv) {
        tracing::warn!(error = %error_chain(&e), dir = %dir, "could not remove stale upload files");
    }
}

/// How long a hidden upload file must be untouched before a later run removes it: longer than
/// any run keeps one (an upload in progress keeps touching its file; a staged file is renamed
/// within minutes of its upload).
pub const STALE_UPLOAD_MINUTES: u32 = 6 * 60;

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

    /// Registers `staged`, writes its key, publishes it; removes the staged file when the
    /// registration fails, and revokes the secret (and removes the files) on any failure
    /// after it. `staged` comes from [`stage`] with this pipeline's destination.
    ///
    /// # Errors
    ///
    /// [`PrepareError`]; after registration always [`PrepareError::RolledBack`] or
    /// [`PrepareError::RevokeFailed`].
    pub async fn run(&self, plan: &Plan, staged: Staged) -> Result<Outcome, PrepareError> {
        let registered = self.register(plan).await;
        let created = match registered {
            Ok(created) => created,
            Err(e) => {
                self.discard(staged).await;
                return Err(e);
            }
        };
        let id = created.secret.id.clone();
        tracing::info!(secret_id = %id, "registered");
        match self.after_registration(plan, &created, staged).await {
            Ok(outcome) => Ok(outcome),
            Err(failure) => Err(self.revoke(&id, failure).await),
        }
    }

    /// Removes a staged artefact that will not be registered (best effort).
    pub async fn discard(&self, staged: Staged) {
        let dest = Arc::clone(&self.destination);
        let _ = tokio::task::spawn_blocking(move || discard(&*dest, staged)).await;
    }

    async fn register(&self, plan: &Plan) -> Result<CreateSecretResponse, PrepareError> {
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
        self.services
            .server
            .create_secret(&me.token, &request)
            .await
            .map_err(|source| PrepareError::Register { source })
    }

    async fn after_registration(
        &self,
        plan: &Plan,
        created: &CreateSecretResponse,
        staged: Staged,
    ) -> Result<Outcome, PrepareError> {
        let result = self.register_key_and_publish(plan, created, &staged).await;
        // A failed publish cleaned up after itself; before it, the staged file is all there is.
        if result
            .as_ref()
            .is_err_and(|e| !matches!(e, PrepareError::Ship { .. }))
        {
            self.discard(staged).await;
        }
        result
    }

    async fn register_key_and_publish(
        &self,
        plan: &Plan,
        created: &CreateSecretResponse,
        staged: &Staged,
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
        let summary = *staged.summary();
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
                staged.identity(),
                &KeyRecordMeta {
                    ciphertext: summary,
                    kind: plan.api_kind(),
                    owner: secret.owner.clone(),
                },
            )
            .await
            .map_err(|source| PrepareError::WriteKey { source })?;
        let dest = Arc::clone(&self.destination);
        let (staged_path, ct, ip) = (staged.path.clone(), ciphertext.clone(), info_path.clone());
        let shipped = tokio::task::spawn_blocking(move || {
            dest.publish(&staged_path, &ct, yaml.as_bytes(), &ip)
        })
        .await
        .map_err(|source| PrepareError::Task {
            what: "publishing",
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let staged = plan.staged_remote().unwrap();
        let name = staged.as_str().strip_prefix("/scratch/alice/").unwrap();
        assert!(
            name.starts_with(".jp2a.age.") && name.ends_with(".staged") && !name.contains('/'),
            "{name}"
        );
        assert_ne!(
            plan.staged_remote().unwrap(),
            staged,
            "two runs share a name"
        );
    }
}
