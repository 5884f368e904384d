//! What job-prep checks and writes on the cluster before it submits.
//!
//! - [`check_artefact`]: reads an info file over SFTP (size-capped, strictly parsed: it sits on
//!   shared storage and is untrusted), checks its kind, and checks that the ciphertext it names
//!   is a regular file with the recorded size and SHA-256 (`sha256sum` on the login node).
//! - [`prepare_workdir`]: creates the work directory (0700) and refuses one that someone else
//!   owns or can write, since the job's logs and sealed output land there.
//! - [`upload_submission`]: the batch script, env file and hooks, into a fresh 0700 directory.

use hpcs_client::ssh::{RemoteStat, SshError, SshSession};
use hpcs_core::ids::RemotePath;
use hpcs_core::info::{INFO_FILE_MAX_BYTES, InfoError, InfoFile};

use crate::spec::{HookDir, JobSpec, Layout, WorkDir};

/// What an info file must describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// `--application-info`: a container image.
    Image,
    /// `--data-info`: a data set.
    Data,
}

impl Expect {
    fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Data => "data",
        }
    }
}

/// Errors of the remote checks and uploads.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// A remote operation failed.
    #[error("failed to {op}")]
    Ssh {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: Box<SshError>,
    },
    /// The info file is invalid.
    #[error("invalid info file on the cluster")]
    Info(#[source] Box<InfoError>),
    /// The info file describes the wrong kind of artefact.
    #[error("info file {path} describes {found} artefact {name}, but {flag} needs {expected}")]
    WrongKind {
        /// The info file.
        path: RemotePath,
        /// The artefact name.
        name: String,
        /// `image` or `data`.
        found: &'static str,
        /// `image` or `data`.
        expected: &'static str,
        /// The flag.
        flag: &'static str,
    },
    /// The ciphertext is missing or not a regular file.
    #[error("ciphertext {path} named by {info} {reason}")]
    Ciphertext {
        /// The ciphertext.
        path: RemotePath,
        /// The info file.
        info: RemotePath,
        /// What is wrong.
        reason: String,
    },
    /// The ciphertext's size or digest differs from the info file.
    #[error(
        "ciphertext {path} does not match {info}: {what} is {actual}, the info file says {expected}\nhint: the file was changed or replaced after it was prepared; prepare it again"
    )]
    Mismatch {
        /// The ciphertext.
        path: RemotePath,
        /// The info file.
        info: RemotePath,
        /// `size` or `sha256`.
        what: &'static str,
        /// Found on the cluster.
        actual: String,
        /// Recorded.
        expected: String,
    },
    /// The work directory is not safe to use.
    #[error("work directory {path} {reason}")]
    Workdir {
        /// The directory.
        path: String,
        /// What is wrong, with a hint.
        reason: String,
    },
    /// A local file to upload could not be read.
    #[error("failed to read {path}")]
    ReadLocal {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn ssh_err(op: impl Into<String>) -> impl FnOnce(SshError) -> RemoteError {
    let op = op.into();
    move |source| RemoteError::Ssh {
        op,
        source: Box::new(source),
    }
}

/// Reads and validates the info file at `path` and checks its ciphertext on the cluster.
///
/// # Errors
///
/// [`RemoteError`] naming the file and what is wrong.
pub fn check_artefact(
    ssh: &SshSession,
    path: &RemotePath,
    expect: Expect,
) -> Result<InfoFile, RemoteError> {
    let bytes = ssh
        .read_small(path.as_str(), INFO_FILE_MAX_BYTES)
        .map_err(ssh_err(format!("read info file {path}")))?;
    let info =
        InfoFile::from_slice(&bytes, path.as_path()).map_err(|e| RemoteError::Info(Box::new(e)))?;
    let found = info.kind.as_str();
    if found != expect.as_str() {
        return Err(RemoteError::WrongKind {
            path: path.clone(),
            name: info.name.to_string(),
            found,
            expected: expect.as_str(),
            flag: match expect {
                Expect::Image => "--application-info",
                Expect::Data => "--data-info",
            },
        });
    }
    let ct = &info.path_at_rest;
    let st = ssh
        .stat(ct.as_str())
        .map_err(ssh_err(format!("stat {ct}")))?
        .ok_or_else(|| RemoteError::Ciphertext {
            path: ct.clone(),
            info: path.clone(),
            reason: "does not exist".into(),
        })?;
    if !st.is_file() {
        return Err(RemoteError::Ciphertext {
            path: ct.clone(),
            info: path.clone(),
            reason: "is not a regular file".into(),
        });
    }
    let mismatch = |what, actual: String, expected: String| RemoteError::Mismatch {
        path: ct.clone(),
        info: path.clone(),
        what,
        actual,
        expected,
    };
    if st.size != info.ciphertext.size {
        return Err(mismatch(
            "size",
            st.size.to_string(),
            info.ciphertext.size.to_string(),
        ));
    }
    let sha = ssh
        .sha256(ct.as_str())
        .map_err(ssh_err(format!("compute the sha256 of {ct}")))?;
    if sha != info.ciphertext.sha256 {
        return Err(mismatch(
            "sha256",
            sha.to_string(),
            info.ciphertext.sha256.to_string(),
        ));
    }
    Ok(info)
}

/// Why `st` cannot count as written by the user `uid` alone, if it cannot: not a directory
/// (`want_dir`) or regular file, owned by someone else, or writable by group or others. Shared
/// by the work directory check before submitting and the output check before fetching.
pub(crate) fn ownership_problem(st: &RemoteStat, uid: u32, want_dir: bool) -> Option<String> {
    if want_dir && !st.is_dir() {
        return Some("is not a directory".into());
    }
    if !want_dir && !st.is_file() {
        return Some("is not a regular file".into());
    }
    if st.uid != Some(uid) {
        return Some(format!(
            "is owned by uid {}, not by you (uid {uid})",
            st.uid.map_or_else(|| "unknown".into(), |u| u.to_string())
        ));
    }
    if st.perm() & 0o022 != 0 {
        return Some(format!(
            "is writable by group or others (mode {:o})",
            st.perm()
        ));
    }
    None
}

/// Creates the work directory if needed (mode 0700) and checks it belongs to the SSH user and
/// is writable by nobody else. Returns a warning when others can read or enter it.
///
/// # Errors
///
/// [`RemoteError::Workdir`] or [`RemoteError::Ssh`].
pub fn prepare_workdir(
    ssh: &SshSession,
    workdir: &WorkDir,
    uid: u32,
) -> Result<Option<String>, RemoteError> {
    let path = workdir.as_str();
    ssh.mkdir_p(path, 0o700)
        .map_err(ssh_err(format!("create work directory {path}")))?;
    let bad = |reason: String| RemoteError::Workdir {
        path: path.to_owned(),
        reason,
    };
    let st = ssh
        .stat(path)
        .map_err(ssh_err(format!("stat {path}")))?
        .ok_or_else(|| bad("vanished after it was created".into()))?;
    if let Some(problem) = ownership_problem(&st, uid, true) {
        return Err(bad(format!(
            "{problem}\nhint: the job's script and sealed output land there; use a directory of your own that only you can write (chmod go-w) for -s/--workdir"
        )));
    }
    Ok((st.perm() & 0o055 != 0).then(|| {
        format!(
            "work directory {path} is readable by group or others (mode {:o}); the job's logs will be too",
            st.perm()
        )
    }))
}

fn upload_hooks(ssh: &SshSession, hooks: &HookDir, remote_dir: &str) -> Result<(), RemoteError> {
    ssh.mkdir_p(remote_dir, 0o700)
        .map_err(ssh_err(format!("create {remote_dir}")))?;
    for (name, local) in &hooks.hooks {
        let file = std::fs::File::open(local).map_err(|source| RemoteError::ReadLocal {
            path: local.clone(),
            source,
        })?;
        let remote = format!("{remote_dir}/{name}");
        ssh.upload(file, &remote, 0o700, |_| {})
            .map_err(ssh_err(format!(
                "upload hook {} to {remote}",
                local.display()
            )))?;
    }
    Ok(())
}

/// Uploads everything the job needs into the layout's fresh submission directory; the script
/// goes last, so a script on the cluster always has its files.
///
/// # Errors
///
/// [`RemoteError::Ssh`] (including an existing submission directory), or
/// [`RemoteError::ReadLocal`].
pub fn upload_submission(
    ssh: &SshSession,
    spec: &JobSpec,
    layout: &Layout,
    script: &str,
) -> Result<(), RemoteError> {
    // mkdir without -p: a fresh name that already exists is refused rather than reused.
    ssh.exec_ok(&["mkdir", "-m", "700", "--", layout.submit_dir.as_str()])
        .map_err(ssh_err(format!("create {}", layout.submit_dir)))?;
    if let (Some(env), Some(remote)) = (&spec.env_file, &layout.env_file) {
        ssh.upload(env.render().as_bytes(), remote, 0o600, |_| {})
            .map_err(ssh_err(format!(
                "upload env file {} to {remote}",
                env.source.display()
            )))?;
    }
    if let (Some(h), Some(remote)) = (&spec.input_hooks, &layout.input_hooks) {
        upload_hooks(ssh, h, remote)?;
    }
    if let (Some(h), Some(remote)) = (&spec.output_hooks, &layout.output_hooks) {
        upload_hooks(ssh, h, remote)?;
    }
    ssh.upload(script.as_bytes(), &layout.script, 0o700, |_| {})
        .map_err(ssh_err(format!(
            "upload the batch script to {}",
            layout.script
        )))?;
    Ok(())
}

/// Removes a submission directory after a failed submission (best effort).
pub fn remove_submission(ssh: &SshSession, layout: &Layout) {
    let _ = ssh.exec(&["rm", "-rf", "--", layout.submit_dir.as_str()]);
}
