//! The user's output identity and fetching a job's encrypted output.
//!
//! Every job's output is encrypted by `hpcs-node` to the public key of the user's own age
//! identity, which lives in the client config directory (`[client] identity-file`, default
//! `$XDG_CONFIG_HOME/hpcs/output-identity.txt` or `~/.config/hpcs/output-identity.txt`),
//! created on first use with mode 0600. One recipient per job; nothing is shared between users.
//!
//! [`fetch_output`] streams `<workdir>/output/<job>.tar.age` from the cluster through the
//! verifying age decryptor straight into [`hpcs_core::archive::unpack_safe`], into a private
//! staging directory next to the destination. Only when the whole ciphertext was authentic and
//! matched the size and SHA-256 the cluster reported is the staging directory renamed to
//! `<dest>/<job>`; on any failure it is removed, so no unauthenticated plaintext stays behind.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use hpcs_client::ssh::{RemoteStat, SshError, SshSession};
use hpcs_core::archive::{ArchiveError, unpack_safe};
use hpcs_core::crypto::{CipherSummary, CryptoError, decrypt_reader};
use hpcs_core::secret::{AgeIdentity, SecretError, load_or_create_identity};
use serde::Serialize;

use crate::remote::ownership_problem;
use crate::slurm::JobId;
use crate::spec::{WorkDir, output_path};

/// File name of the output identity in the config directory.
pub const IDENTITY_FILE_NAME: &str = "output-identity.txt";

/// Errors of the identity and of fetching outputs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    /// Neither `XDG_CONFIG_HOME` nor `HOME` is set.
    #[error(
        "cannot locate the config directory for the output identity: neither XDG_CONFIG_HOME nor HOME is set\nhint: set [client] identity-file"
    )]
    NoConfigDir,
    /// The identity could not be read or created.
    #[error("failed to load or create the output identity {path}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<SecretError>,
    },
    /// A remote operation failed.
    #[error("failed to {op}")]
    Ssh {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: Box<SshError>,
    },
    /// The output file does not exist (yet).
    #[error(
        "job {job} has no output at {path}\nhint: the job may still be running, or hpcs-node failed before sealing the output (see the job's stderr)"
    )]
    NoOutput {
        /// The job.
        job: JobId,
        /// The remote path.
        path: String,
    },
    /// The output file or a directory above it could have been written by someone else.
    #[error("refusing {path}: it {reason}")]
    Untrusted {
        /// The remote path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The destination already holds this job's output.
    #[error("{path} already exists\nhint: remove it or fetch into another directory")]
    Exists {
        /// The local path.
        path: PathBuf,
    },
    /// A local file operation failed.
    #[error("failed to {op} {path}")]
    Local {
        /// The operation.
        op: &'static str,
        /// The local path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Decryption or verification failed.
    #[error("failed to decrypt the output of job {job} ({path})")]
    Decrypt {
        /// The job.
        job: JobId,
        /// The remote path.
        path: String,
        /// The cause.
        #[source]
        source: Box<CryptoError>,
    },
    /// The decrypted archive was refused or could not be unpacked.
    #[error("failed to unpack the output of job {job}")]
    Unpack {
        /// The job.
        job: JobId,
        /// The cause.
        #[source]
        source: Box<ArchiveError>,
    },
}

/// The output identity file: `configured`, else `$XDG_CONFIG_HOME/hpcs/output-identity.txt`,
/// else `~/.config/hpcs/output-identity.txt`.
///
/// # Errors
///
/// [`OutputError::NoConfigDir`].
pub fn identity_path(configured: Option<&Path>) -> Result<PathBuf, OutputError> {
    if let Some(p) = configured {
        return Ok(p.to_owned());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })
        .ok_or(OutputError::NoConfigDir)?;
    Ok(base.join("hpcs").join(IDENTITY_FILE_NAME))
}

/// Loads the identity at `path`, creating it (mode 0600, parents 0700) on first use. Returns the
/// identity and whether it was created.
///
/// # Errors
///
/// [`OutputError::Identity`] (unreadable, group/world-accessible, malformed).
pub fn load_identity(path: &Path) -> Result<(AgeIdentity, bool), OutputError> {
    load_or_create_identity(path).map_err(|source| OutputError::Identity {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// What [`fetch_output`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fetched {
    /// The job.
    pub job_id: JobId,
    /// The remote ciphertext.
    pub remote: String,
    /// Its size in bytes.
    pub ciphertext_bytes: u64,
    /// Its SHA-256, as verified while decrypting.
    pub sha256: String,
    /// The local directory holding the job's output files.
    pub output_dir: PathBuf,
    /// Entries unpacked.
    pub entries: u64,
    /// Bytes of file content unpacked.
    pub bytes: u64,
}

fn ssh_err(op: impl Into<String>) -> impl FnOnce(SshError) -> OutputError {
    let op = op.into();
    move |source| OutputError::Ssh {
        op,
        source: Box::new(source),
    }
}

/// Checks that `path` on the cluster belongs to the user and nobody else can write it; returns
/// its size. `st` is its stat if already known, else it is read here.
fn check_owned(
    ssh: &SshSession,
    path: &str,
    st: Option<RemoteStat>,
    uid: u32,
    want_dir: bool,
) -> Result<u64, OutputError> {
    let untrusted = |reason: String| OutputError::Untrusted {
        path: path.to_owned(),
        reason,
    };
    let st = match st {
        Some(st) => st,
        None => ssh
            .stat(path)
            .map_err(ssh_err(format!("stat {path}")))?
            .ok_or_else(|| untrusted("does not exist".into()))?,
    };
    match ownership_problem(&st, uid, want_dir) {
        Some(problem) => Err(untrusted(problem)),
        None => Ok(st.size),
    }
}

/// Downloads, verifies, decrypts and safely unpacks job `job`'s output into `<dest>/<job>`.
///
/// The remote file, the `output` directory and the work directory must belong to the SSH user
/// and be writable by nobody else: age authenticates the data but not who encrypted it, and
/// anyone can encrypt to a public key, so a file someone else could have replaced is refused.
///
/// # Errors
///
/// [`OutputError`]; on error nothing is left under `dest` but what was there before.
pub fn fetch_output(
    ssh: &SshSession,
    job: &JobId,
    workdir: &WorkDir,
    dest: &Path,
    identity: &AgeIdentity,
) -> Result<Fetched, OutputError> {
    let remote = output_path(workdir, job.as_str());
    let uid = ssh
        .remote_uid()
        .map_err(ssh_err("read the remote uid (id -u)"))?;
    let Some(remote_st) = ssh
        .stat(&remote)
        .map_err(ssh_err(format!("stat {remote}")))?
    else {
        return Err(OutputError::NoOutput {
            job: job.clone(),
            path: remote,
        });
    };
    check_owned(ssh, workdir.as_str(), None, uid, true)?;
    check_owned(ssh, &workdir.join("output"), None, uid, true)?;
    let size = check_owned(ssh, &remote, Some(remote_st), uid, false)?;
    let sha256 = ssh
        .sha256(&remote)
        .map_err(ssh_err(format!("compute the sha256 of {remote}")))?;
    let expected = CipherSummary { sha256, size };

    let local = |op, path: &Path| {
        let path = path.to_owned();
        move |source| OutputError::Local { op, path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dest)
        .map_err(local("create", dest))?;
    let final_dir = dest.join(job.as_str());
    if final_dir.symlink_metadata().is_ok() {
        return Err(OutputError::Exists { path: final_dir });
    }
    let staging = dest.join(format!(".{job}.partial-{}", uuid::Uuid::new_v4().simple()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(local("create", &staging))?;

    let result = (|| {
        let reader = ssh
            .open_read(&remote)
            .map_err(ssh_err(format!("open {remote}")))?;
        let decrypt_err = |source| OutputError::Decrypt {
            job: job.clone(),
            path: remote.clone(),
            source: Box::new(source),
        };
        let mut plain = decrypt_reader(reader, identity, Some(expected)).map_err(decrypt_err)?;
        let unpacked = match unpack_safe(&mut plain, &staging) {
            Ok(u) => u,
            // A read error under the archive reader is usually the decryptor's verdict.
            Err(ArchiveError::Read { source }) => {
                return Err(match CryptoError::from_io(source) {
                    Ok(crypto) => decrypt_err(crypto),
                    Err(io) => OutputError::Unpack {
                        job: job.clone(),
                        source: Box::new(ArchiveError::Read { source: io }),
                    },
                });
            }
            Err(source) => {
                return Err(OutputError::Unpack {
                    job: job.clone(),
                    source: Box::new(source),
                });
            }
        };
        // The tar reader stops at the end-of-archive marker; the rest of the stream must still
        // be read for the final authentication tag and the digest check.
        let mut sink = [0u8; 64 * 1024];
        while plain.read_checked(&mut sink).map_err(decrypt_err)? != 0 {}
        Ok(unpacked)
    })();
    let unpacked = match result {
        Ok(u) => u,
        Err(e) => {
            // Plaintext that was not (yet) authenticated must not stay behind.
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if let Err(source) = std::fs::rename(&staging, &final_dir) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(OutputError::Local {
            op: "rename the verified output to",
            path: final_dir,
            source,
        });
    }
    Ok(Fetched {
        job_id: job.clone(),
        remote,
        ciphertext_bytes: size,
        sha256: expected.sha256.to_string(),
        output_dir: final_dir,
        entries: unpacked.entries,
        bytes: unpacked.file_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_identity_path_wins() {
        assert_eq!(
            identity_path(Some(Path::new("/x/id.txt"))).unwrap(),
            PathBuf::from("/x/id.txt")
        );
        // Without configuration the default is under the user's config directory.
        if let Ok(p) = identity_path(None) {
            assert!(p.ends_with("hpcs/output-identity.txt"), "{}", p.display());
        }
    }

    #[test]
    fn identity_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/hpcs").join(IDENTITY_FILE_NAME);
        let (a, created) = load_identity(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o077, 0);
        let (b, created) = load_identity(&path).unwrap();
        assert!(!created);
        assert_eq!(a.to_public(), b.to_public());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_identity(&path).unwrap_err();
        assert!(matches!(err, OutputError::Identity { .. }), "{err}");
    }
}
