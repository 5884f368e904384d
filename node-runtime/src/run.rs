//! `hpcs-node run`: one confidential job, end to end, cleaned up on every path.
//!
//! Order, and what stops it:
//!
//! 1. Read the info files (untrusted: they only name secrets and files).
//! 2. Open a session: the policy decides on image, network, mounts, extra arguments and GPUs
//!    **before any key is fetched**; a denial names the rule.
//! 3. Fetch each artefact's key (attested); the record's digest and size are the truth, and an
//!    info file that disagrees with its record is refused as swapped.
//! 4. Decrypt the data into the job's private tmpfs directory (verified, safely unpacked) and
//!    stream the image into the engine (verified, tags stripped); nothing runs unless every
//!    ciphertext matched its record.
//! 5. Input hooks, each in the same confinement, with a timeout; any failure: no application.
//! 6. The application, output streamed live.
//! 7. Output hooks; any failure: no output released.
//! 8. The output directory packed, encrypted to the user's recipient, renamed into
//!    `<workdir>/output/<job>.tar.age`.
//! 9. Cleanup, always: containers, image, scratch. A run error and a cleanup error are reported
//!    together. SIGTERM/SIGINT (scancel) cancel the job and still clean up.
//!
//! The privileged side is an [`Executor`]: either an in-process [`Session`] over a (rootless)
//! engine socket ([`LocalExecutor`]) or the root daemon ([`crate::broker::BrokerClient`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hpcs_core::ids::{RoleName, SecretId, SecretReaderId, TrustDomain};
use tokio_util::sync::CancellationToken;

use crate::artefact::{ArtefactError, Expected};
use crate::container::{DockerEngine, ImageStream, OutputSink, StdioSink};
use crate::job::Caller;
use crate::keys::{ArtefactKey, KeyError, KeySource};
use crate::session::{
    HookPhase, OpenRequest, RunWhat, ScratchPaths, Session, SessionConfig, SessionError,
};

/// Largest info file read.
pub const MAX_INFO_BYTES: u64 = 64 * 1024;
/// Exit code after SIGTERM/SIGINT (128 + SIGTERM).
pub const EXIT_CANCELLED: u8 = 143;

/// Errors of a job run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// An info file is unreadable or malformed.
    #[error("invalid info file {path}: {message}")]
    Info {
        /// Path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An info file failed the shared parser's checks.
    #[error(transparent)]
    InfoFile(#[from] hpcs_core::info::InfoError),
    /// The env file is unreadable or malformed.
    #[error(transparent)]
    EnvFile(#[from] hpcs_core::envfile::EnvFileError),
    /// The privileged side refused or failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A key could not be fetched.
    #[error("failed to fetch the key of {artefact}")]
    Key {
        /// Info file.
        artefact: String,
        /// Cause.
        #[source]
        source: KeyError,
    },
    /// The info file and the Vault record disagree.
    #[error(
        "info file {path} does not match its key record ({what}); refusing a swapped or tampered artefact"
    )]
    Swapped {
        /// Path.
        path: PathBuf,
        /// What differs.
        what: &'static str,
    },
    /// Decrypting or unpacking failed.
    #[error("failed to decrypt {artefact}")]
    Decrypt {
        /// Info file.
        artefact: String,
        /// Cause.
        #[source]
        source: Box<ArtefactError>,
    },
    /// Hooks could not be staged.
    #[error("failed to stage hooks from {dir}")]
    StageHooks {
        /// The directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A hook failed.
    #[error("{phase} hook {name} exited with {code}; {consequence}")]
    HookFailed {
        /// Phase.
        phase: &'static str,
        /// Hook.
        name: String,
        /// Exit code.
        code: i64,
        /// What was prevented.
        consequence: &'static str,
    },
    /// Sealing the output failed.
    #[error("failed to seal the output")]
    Seal(#[source] Box<ArtefactError>),
    /// A blocking task died.
    #[error("internal task failed")]
    Join(#[source] tokio::task::JoinError),
    /// SIGTERM or SIGINT.
    #[error("cancelled by signal")]
    Cancelled,
    /// The run failed and so did cleanup.
    #[error("{run}; cleanup also failed: {cleanup}")]
    WithCleanup {
        /// The run error.
        run: Box<RunError>,
        /// The cleanup error.
        cleanup: ExecError,
    },
    /// Only cleanup failed.
    #[error("cleanup failed")]
    Cleanup(#[source] ExecError),
}

/// Errors of the privileged side, whichever it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The in-process session failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The engine could not be reached.
    #[error(transparent)]
    Engine(#[from] crate::container::EngineError),
    /// The daemon refused or failed.
    #[error("{message}")]
    Broker {
        /// Stable kind.
        kind: String,
        /// Its message.
        message: String,
    },
    /// The daemon connection failed.
    #[error("connection to the hpcs-node daemon at {socket} failed")]
    BrokerIo {
        /// Socket.
        socket: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Used out of order.
    #[error("{0}")]
    State(&'static str),
}

impl ExecError {
    /// Whether this is a policy denial.
    #[must_use]
    pub fn is_denied(&self) -> bool {
        match self {
            Self::Session(e) => e.kind() == "denied",
            Self::Broker { kind, .. } => kind == "denied",
            _ => false,
        }
    }
}

/// The privileged side of a job run.
pub trait Executor: Send {
    /// Policy decision and scratch creation.
    fn open(
        &mut self,
        req: &OpenRequest,
    ) -> impl Future<Output = Result<ScratchPaths, ExecError>> + Send;
    /// Load the image from a plaintext stream; returns its id.
    fn load_image(
        &mut self,
        plaintext: ImageStream,
    ) -> impl Future<Output = Result<String, ExecError>> + Send;
    /// Run the app or a hook; returns the exit code.
    fn run(
        &mut self,
        what: &RunWhat,
        sink: &mut (dyn OutputSink + '_),
    ) -> impl Future<Output = Result<i64, ExecError>> + Send;
    /// Remove everything; safe to call after a cancelled operation.
    fn close(&mut self) -> impl Future<Output = Result<(), ExecError>> + Send;
}

/// Direct mode: a [`Session`] in this process, for an engine the user may use (rootless Podman).
#[derive(Debug)]
pub struct LocalExecutor {
    engine: Arc<DockerEngine>,
    config: SessionConfig,
    caller: Caller,
    session: Option<Session<DockerEngine>>,
}

impl LocalExecutor {
    /// A new executor for `caller`.
    #[must_use]
    pub fn new(engine: Arc<DockerEngine>, config: SessionConfig, caller: Caller) -> Self {
        Self {
            engine,
            config,
            caller,
            session: None,
        }
    }

    fn session(&mut self) -> Result<&mut Session<DockerEngine>, ExecError> {
        self.session
            .as_mut()
            .ok_or(ExecError::State("session not open"))
    }
}

impl Executor for LocalExecutor {
    async fn open(&mut self, req: &OpenRequest) -> Result<ScratchPaths, ExecError> {
        let s = Session::open(
            self.engine.clone(),
            self.config.clone(),
            self.caller.clone(),
            req,
        )?;
        let paths = s.scratch().clone();
        self.session = Some(s);
        Ok(paths)
    }
    async fn load_image(&mut self, plaintext: ImageStream) -> Result<String, ExecError> {
        Ok(self.session()?.load_image(plaintext).await?)
    }
    async fn run(
        &mut self,
        what: &RunWhat,
        sink: &mut (dyn OutputSink + '_),
    ) -> Result<i64, ExecError> {
        Ok(self.session()?.run(what, sink).await?)
    }
    async fn close(&mut self) -> Result<(), ExecError> {
        match self.session.as_mut() {
            Some(s) => Ok(s.close().await?),
            None => Ok(()),
        }
    }
}

/// What the info file says (untrusted).
#[derive(Debug, Clone)]
pub struct ArtefactRef {
    /// The info file.
    pub info_path: PathBuf,
    /// `image` or `data`.
    pub kind: &'static str,
    /// Artefact name (for images: the name the policy's name rules see).
    pub name: String,
    /// Image id the info file claims (images only); must equal what the engine reports.
    pub image_digest: Option<String>,
    /// Ciphertext path.
    pub path_at_rest: PathBuf,
    /// The secret.
    pub secret: SecretId,
    /// The reader SPIFFE ID.
    pub reader: SecretReaderId,
    /// Vault jwt role.
    pub role: RoleName,
    /// KV path inside the mount.
    pub kv_path: String,
    /// sha256 the info file claims (compared with the record, never trusted).
    pub claimed_sha256: [u8; 32],
}

/// Read an info file with the shared parser ([`hpcs_core::info::InfoFile`]) and check it
/// against this node: the reader ID must be in `trust_domain` and `secret_path` must name that
/// secret inside `kv_mount`. Everything in it stays a claim; it only says what to ask for.
///
/// # Errors
///
/// [`RunError::Info`] naming the field.
pub fn read_info(
    path: &Path,
    trust_domain: &TrustDomain,
    kv_mount: &str,
) -> Result<ArtefactRef, RunError> {
    let bad = |message: String| RunError::Info {
        path: path.to_owned(),
        message,
    };
    let info = hpcs_core::info::InfoFile::read(path)?;
    if info.reader_id.trust_domain() != trust_domain {
        return Err(bad(format!(
            "spiffeID is not in trust domain {trust_domain}"
        )));
    }
    let secret = info.secret_id().clone();
    // `secret_path` is `<mount>/data/<path>` (the API path) or `<mount>/<path>`; the path must end
    // with the secret id, so a file cannot point the reader identity at a different record.
    let full = info.secret_path.to_string();
    let kv_path = full
        .strip_prefix(&format!("{kv_mount}/data/"))
        .or_else(|| full.strip_prefix(&format!("{kv_mount}/")))
        .ok_or_else(|| bad(format!("secret_path is not in the KV mount {kv_mount}")))?
        .to_owned();
    if kv_path.rsplit('/').next() != Some(secret.as_str()) {
        return Err(bad(
            "secret_path does not name the secret in spiffeID".into()
        ));
    }
    let image_digest = match &info.kind {
        hpcs_core::info::ArtefactKind::Image(meta) => Some(meta.digest.to_string()),
        _ => None,
    };
    Ok(ArtefactRef {
        info_path: path.to_owned(),
        kind: info.kind.as_str(),
        name: info.name.to_string(),
        image_digest,
        path_at_rest: info.path_at_rest.as_path().to_owned(),
        secret,
        reader: info.reader_id.clone(),
        role: info.access_role.clone(),
        kv_path,
        claimed_sha256: *info.ciphertext.sha256.as_bytes(),
    })
}

/// Reads an env file (the uploaded copy on shared storage: untrusted) by the rules of
/// [`hpcs_core::envfile`], as the `NAME=value` strings the engine takes.
///
/// # Errors
///
/// [`RunError::EnvFile`] naming the file and line.
pub fn read_env_file(path: &Path) -> Result<Vec<String>, RunError> {
    let vars = hpcs_core::envfile::read(path)?;
    Ok(vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// The `SLURM_*` variables of this process, passed into the container.
#[must_use]
pub fn slurm_env() -> Vec<String> {
    let mut v: Vec<String> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("SLURM_") && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .filter(|(_, v)| !v.contains('\0'))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    v.sort();
    v
}

/// A validated job.
#[derive(Debug, Clone)]
pub struct JobPlan {
    /// Application (image) info file.
    pub app_info: PathBuf,
    /// Data info files.
    pub data_infos: Vec<PathBuf>,
    /// Job working directory (shared storage).
    pub workdir: PathBuf,
    /// Input hooks directory.
    pub input_hooks: Option<PathBuf>,
    /// Output hooks directory.
    pub output_hooks: Option<PathBuf>,
    /// Recipient of the output.
    pub recipient: hpcs_core::secret::AgeRecipient,
    /// Container environment (`SLURM_*` and the env file).
    pub env: Vec<String>,
    /// Application arguments.
    pub args: Vec<String>,
    /// Container settings asked for.
    pub request: crate::policy::Request,
    /// Job id used for the output file name.
    pub job_id: String,
    /// Trust domain of the reader IDs.
    pub trust_domain: TrustDomain,
}

/// The outcome of a run that got as far as the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The application's exit code.
    pub app_exit: i64,
    /// Where the sealed output went.
    pub output: PathBuf,
}

/// Run a job: see the module docs. Cleanup runs on every path, including cancellation.
///
/// # Errors
///
/// [`RunError`]; when cleanup fails too, [`RunError::WithCleanup`] carries both.
pub async fn run_job<X: Executor>(
    exec: &mut X,
    plan: &JobPlan,
    keys: &KeySource,
    cancel: CancellationToken,
) -> Result<Outcome, RunError> {
    let result = tokio::select! {
        r = steps(exec, plan, keys) => r,
        () = cancel.cancelled() => Err(RunError::Cancelled),
    };
    // The steps future is gone; whatever it left running is removed now.
    let cleanup = exec.close().await;
    match (result, cleanup) {
        (Ok(o), Ok(())) => Ok(o),
        (Ok(_), Err(c)) => Err(RunError::Cleanup(c)),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => Err(RunError::WithCleanup {
            run: Box::new(e),
            cleanup: c,
        }),
    }
}

async fn steps<X: Executor>(
    exec: &mut X,
    plan: &JobPlan,
    keys: &KeySource,
) -> Result<Outcome, RunError> {
    let app = read_info(&plan.app_info, &plan.trust_domain, &keys.kv_mount)?;
    if app.kind != "image" {
        return Err(RunError::Info {
            path: app.info_path,
            message: format!("kind is {:?}, not image", app.kind),
        });
    }
    let data = plan
        .data_infos
        .iter()
        .map(|p| {
            let d = read_info(p, &plan.trust_domain, &keys.kv_mount)?;
            if d.kind != "data" {
                return Err(RunError::Info {
                    path: p.clone(),
                    message: format!("kind is {:?}, not data", d.kind),
                });
            }
            Ok(d)
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Policy first: nothing is fetched for a request the node would refuse.
    let open = OpenRequest {
        image: app.name.clone(),
        image_digest: app.image_digest.clone(),
        request: plan.request.clone(),
        env: plan.env.clone(),
    };
    let scratch = exec.open(&open).await?;
    tracing::info!(scratch = %scratch.root.display(), "session open");

    let app_key = fetch_key(keys, &app, "image").await?;
    let mut data_keys = Vec::new();
    for d in &data {
        data_keys.push(fetch_key(keys, d, "data").await?);
    }

    for (d, key) in data.iter().zip(data_keys) {
        let path = d.path_at_rest.clone();
        let dest = scratch.data.clone();
        let expected = Expected {
            sha256: key.sha256,
            size: key.size,
        };
        let label = d.info_path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let reader = crate::artefact::open_verified(&path, &key.identity, expected)?;
            crate::artefact::unpack_data(reader, &dest)
        })
        .await
        .map_err(RunError::Join)?
        .map_err(|source| RunError::Decrypt {
            artefact: label,
            source: Box::new(source),
        })?;
    }

    let (mut writer, stream) = crate::image::channel();
    let path = app.path_at_rest.clone();
    let expected = Expected {
        sha256: app_key.sha256,
        size: app_key.size,
    };
    let producer = tokio::task::spawn_blocking(move || {
        let result =
            crate::artefact::open_verified(&path, &app_key.identity, expected).and_then(|mut r| {
                std::io::copy(&mut r, &mut writer)
                    .and_then(|_| std::io::Write::flush(&mut writer))
                    .map_err(|source| ArtefactError::Io {
                        op: "decrypt",
                        path: path.clone(),
                        source,
                    })
            });
        if let Err(e) = &result {
            writer.fail(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e.to_string(),
            ));
        }
        result
    });
    let loaded = exec.load_image(stream).await;
    let produced = producer.await.map_err(RunError::Join)?;
    // When the engine side stopped reading first, the producer only saw a closed pipe: the
    // engine's error is the cause. Otherwise a producer failure (decryption, digest) is.
    let pipe_closed = matches!(&produced, Err(ArtefactError::Io { source, .. })
        if source.kind() == std::io::ErrorKind::BrokenPipe);
    let image = match (loaded, produced) {
        (Err(e), Err(_)) if pipe_closed => return Err(e.into()),
        (_, Err(source)) => {
            return Err(RunError::Decrypt {
                artefact: app.info_path.display().to_string(),
                source: Box::new(source),
            });
        }
        (loaded, Ok(_)) => loaded?,
    };
    if app.image_digest.as_deref().is_some_and(|d| d != image) {
        return Err(RunError::Swapped {
            path: app.info_path.clone(),
            what: "image digest",
        });
    }
    tracing::info!(%image, "image loaded and authorised");

    let input_hooks = stage_hooks(plan.input_hooks.as_deref(), &scratch.hooks.join("input"))?;
    let output_hooks = stage_hooks(plan.output_hooks.as_deref(), &scratch.hooks.join("output"))?;
    let mut sink = StdioSink;
    for name in input_hooks {
        let code = exec
            .run(
                &RunWhat::Hook {
                    phase: HookPhase::Input,
                    name: name.clone(),
                },
                &mut sink,
            )
            .await?;
        if code != 0 {
            return Err(RunError::HookFailed {
                phase: "input",
                name,
                code,
                consequence: "the application was not run",
            });
        }
    }
    let app_exit = exec
        .run(
            &RunWhat::App {
                args: plan.args.clone(),
            },
            &mut sink,
        )
        .await?;
    tracing::info!(app_exit, "application finished");
    for name in output_hooks {
        let code = exec
            .run(
                &RunWhat::Hook {
                    phase: HookPhase::Output,
                    name: name.clone(),
                },
                &mut sink,
            )
            .await?;
        if code != 0 {
            return Err(RunError::HookFailed {
                phase: "output",
                name,
                code,
                consequence: "no output was released",
            });
        }
    }
    let src = scratch.output.clone();
    let recipient = plan.recipient.to_string();
    let out_dir = plan.workdir.join("output");
    let name = format!("{}.tar.age", plan.job_id);
    let output = tokio::task::spawn_blocking(move || {
        crate::artefact::seal_output(&src, &recipient, &out_dir, &name)
    })
    .await
    .map_err(RunError::Join)?
    .map_err(|e| RunError::Seal(Box::new(e)))?;
    Ok(Outcome { app_exit, output })
}

async fn fetch_key(keys: &KeySource, a: &ArtefactRef, kind: &str) -> Result<ArtefactKey, RunError> {
    let key = keys
        .fetch(&a.reader, &a.role, &a.kv_path)
        .await
        .map_err(|source| RunError::Key {
            artefact: a.info_path.display().to_string(),
            source,
        })?;
    if key.kind.as_deref().is_some_and(|k| k != kind) {
        return Err(RunError::Swapped {
            path: a.info_path.clone(),
            what: "kind",
        });
    }
    if a.claimed_sha256 != key.sha256 {
        return Err(RunError::Swapped {
            path: a.info_path.clone(),
            what: "sha256",
        });
    }
    Ok(key)
}

/// Copy the executable regular files of `src` into `dest` (the job's hooks directory); returns
/// their names in the order they run (byte order of names).
fn stage_hooks(src: Option<&Path>, dest: &Path) -> Result<Vec<String>, RunError> {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(src) = src else {
        return Ok(Vec::new());
    };
    let err = |source| RunError::StageHooks {
        dir: src.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(src).map_err(err)? {
        let entry = entry.map_err(err)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let meta = std::fs::metadata(entry.path()).map_err(err)?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(err(std::io::Error::other(format!(
                "hook name {name:?} has unsupported characters"
            ))));
        }
        let target = dest.join(&name);
        std::fs::copy(entry.path(), &target).map_err(err)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o500)).map_err(err)?;
        names.push(name);
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("env");
        std::fs::write(&p, "# c\n\nA=1\nexport B=x=y\n").expect("w");
        assert_eq!(read_env_file(&p).expect("env"), ["A=1", "B=x=y"]);
        std::fs::write(&p, "1A=1\n").expect("w");
        assert!(
            read_env_file(&p)
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
        std::fs::write(&p, "NOEQ\n").expect("w");
        assert!(read_env_file(&p).is_err());
    }

    #[test]
    fn info_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let td: TrustDomain = "hpcs.test".parse().expect("td");
        let p = dir.path().join("app.info.yaml");
        let sha = "ab".repeat(32);
        let good = format!(
            "info:\n  version: 1\n  kind: image\n  name: tool\n  path_at_rest: /scratch/app.tar.age\n  \
             secret_path: hpcs/data/abc123\n  access_role: hpcs-secret-abc123\n  checksum: {sha}\n  \
             spiffeID: spiffe://hpcs.test/hpcs/secret/abc123\n  sha256: {sha}\n  size: 10\n  \
             owner: spiffe://hpcs.test/client/alice\n  created: 2026-01-31T12:00:00Z\n  \
             secret_id: abc123\n  image:\n    digest: sha256:{}\n",
            "c".repeat(64)
        );
        std::fs::write(&p, &good).expect("w");
        let a = read_info(&p, &td, "hpcs").expect("info");
        assert_eq!(a.kv_path, "abc123");
        assert_eq!(a.kind, "image");
        assert_eq!(a.path_at_rest, PathBuf::from("/scratch/app.tar.age"));
        assert_eq!(a.name, "tool");
        assert_eq!(a.image_digest, Some(format!("sha256:{}", "c".repeat(64))));
        assert!(
            read_info(&p, &"other.td".parse().expect("td"), "hpcs")
                .unwrap_err()
                .to_string()
                .contains("trust domain")
        );
        assert!(
            read_info(&p, &td, "kv2")
                .unwrap_err()
                .to_string()
                .contains("not in the KV mount kv2")
        );
        for (bad, want) in [
            (
                good.replace(
                    "secret_path: hpcs/data/abc123",
                    "secret_path: hpcs/data/other",
                ),
                "secret_path",
            ),
            (
                good.replace("hpcs/secret/abc123", "client/alice"),
                "spiffeID",
            ),
            (
                good.replace("access_role: hpcs-secret-abc123", "access_role: ../x"),
                "access_role",
            ),
        ] {
            std::fs::write(&p, bad).expect("w");
            let err = read_info(&p, &td, "hpcs").unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
