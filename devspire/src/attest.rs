//! Workload attestation from a unix socket peer, as SPIRE's `unix` workload attestor does.
//!
//! The kernel reports the peer's uid, gid and pid (`SO_PEERCRED`); from the pid we read
//! `/proc/<pid>/status` (supplementary groups, and the uid again to catch a pid that was reused
//! by another user's process), `/proc/<pid>/exe` (executable path, and its SHA-256 on demand),
//! and resolve user and group names through the system's user database. A process that is gone
//! by then fails attestation. Everything here blocks: call it from `spawn_blocking`.

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::unistd::{Gid, Group, Uid, User};
use sha2::{Digest as _, Sha256};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The connection carries no peer credentials (not a unix socket).
    #[error("the connection has no peer credentials")]
    NoPeerCredentials,
    /// The kernel did not report the peer's pid.
    #[error("the peer's process ID is unknown")]
    NoPid,
    /// `/proc/<pid>/status` could not be read (typically: the process exited).
    #[error("failed to read the status of process {pid}")]
    ReadStatus {
        /// The peer's pid.
        pid: i32,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `/proc/<pid>/status` lacks or garbles a line we need.
    #[error("unexpected {field} line in the status of process {pid}")]
    ParseStatus {
        /// The peer's pid.
        pid: i32,
        /// The line's key (`Uid`, `Groups`).
        field: &'static str,
    },
    /// The process behind the pid no longer runs as the connecting uid (pid reused, or setuid).
    #[error("process {pid} runs as uid {proc_uid}, but uid {peer_uid} connected")]
    IdentityChanged {
        /// The peer's pid.
        pid: i32,
        /// The uid the kernel reported for the connection.
        peer_uid: u32,
        /// The effective uid `/proc` reports now.
        proc_uid: u32,
    },
}

/// What attestation learnt about a workload process.
#[derive(Debug)]
pub struct Workload {
    /// Process ID.
    pub pid: i32,
    /// Effective uid at connect time.
    pub uid: u32,
    /// Effective gid at connect time.
    pub gid: u32,
    /// User name of `uid`, when the user database knows it.
    pub user: Option<String>,
    /// Group name of `gid`, when the group database knows it.
    pub group: Option<String>,
    /// Supplementary group IDs (`Groups:` in `/proc/<pid>/status`).
    pub supplementary_gids: Vec<u32>,
    /// Names of the supplementary groups the group database knows.
    pub supplementary_groups: Vec<String>,
    /// Executable path (`/proc/<pid>/exe`), when readable.
    pub path: Option<PathBuf>,
    exe: PathBuf,
    sha256: OnceLock<Option<String>>,
}

impl Workload {
    /// Hex SHA-256 of the executable, computed on first use (it reads the whole binary).
    /// `None` when the executable cannot be read any more.
    pub fn sha256(&self) -> Option<&str> {
        self.sha256
            .get_or_init(|| hash_file(&self.exe).ok())
            .as_deref()
    }

    /// A workload with the given facts, for tests of selector matching.
    #[doc(hidden)]
    #[must_use]
    pub fn for_tests(uid: u32, gid: u32, user: Option<&str>, groups: &[(u32, &str)]) -> Self {
        Self {
            pid: 0,
            uid,
            gid,
            user: user.map(str::to_owned),
            group: None,
            supplementary_gids: groups.iter().map(|(gid, _)| *gid).collect(),
            supplementary_groups: groups.iter().map(|(_, name)| (*name).to_owned()).collect(),
            path: Some(PathBuf::from("/usr/bin/true")),
            exe: PathBuf::from("/nonexistent"),
            sha256: OnceLock::from(Some("ab".repeat(32))),
        }
    }
}

/// Attests the process `pid` that connected as `uid`/`gid`.
///
/// # Errors
///
/// An [`AttestError`] when the process is gone or no longer runs as `uid`.
pub fn attest(pid: i32, uid: u32, gid: u32) -> Result<Workload, AttestError> {
    attest_in(Path::new("/proc"), pid, uid, gid)
}

fn attest_in(proc_root: &Path, pid: i32, uid: u32, gid: u32) -> Result<Workload, AttestError> {
    let dir = proc_root.join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status"))
        .map_err(|source| AttestError::ReadStatus { pid, source })?;
    let proc_uid = status_ids(&status, "Uid")
        .and_then(|ids| ids.get(1).copied())
        .ok_or(AttestError::ParseStatus { pid, field: "Uid" })?;
    if proc_uid != uid {
        return Err(AttestError::IdentityChanged {
            pid,
            peer_uid: uid,
            proc_uid,
        });
    }
    let supplementary_gids = status_ids(&status, "Groups").ok_or(AttestError::ParseStatus {
        pid,
        field: "Groups",
    })?;
    let exe = dir.join("exe");
    let path = std::fs::read_link(&exe).ok();
    // An unknown user or group yields no name selector, as in SPIRE.
    let user = User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let group = group_name(gid);
    let supplementary_groups = supplementary_gids
        .iter()
        .filter_map(|gid| group_name(*gid))
        .collect();
    Ok(Workload {
        pid,
        uid,
        gid,
        user,
        group,
        supplementary_gids,
        supplementary_groups,
        path,
        exe,
        sha256: OnceLock::new(),
    })
}

fn group_name(gid: u32) -> Option<String> {
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}

/// The numbers on the `<key>:` line of a `/proc/<pid>/status` file.
fn status_ids(status: &str, key: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|line| {
        line.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
    })?;
    line.split_whitespace().map(|n| n.parse().ok()).collect()
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        let status = "Name:\tx\nUid:\t1000\t1001\t1002\t1003\nGid:\t5\t5\t5\t5\nGroups:\t27 100 \n";
        assert_eq!(
            status_ids(status, "Uid"),
            Some(vec![1000, 1001, 1002, 1003])
        );
        assert_eq!(status_ids(status, "Groups"), Some(vec![27, 100]));
        assert_eq!(status_ids("Groups:\t\n", "Groups"), Some(vec![]));
        assert_eq!(status_ids("Uid:\tx\n", "Uid"), None);
        assert_eq!(status_ids("", "Uid"), None);
    }

    #[test]
    fn attests_own_process() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let workload = attest(pid, uid, gid).unwrap();
        assert_eq!(workload.uid, uid);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(workload.path.as_deref(), Some(exe.as_path()));
        let expected = hash_file(&exe).unwrap();
        assert_eq!(workload.sha256(), Some(expected.as_str()));
    }

    #[test]
    fn uid_mismatch_and_missing_process_fail() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let err = attest(pid, uid.wrapping_add(1), 0).unwrap_err();
        assert!(matches!(err, AttestError::IdentityChanged { .. }), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = attest_in(dir.path(), 4242, 0, 0).unwrap_err();
        assert!(
            matches!(err, AttestError::ReadStatus { pid: 4242, .. }),
            "{err}"
        );
    }
}
