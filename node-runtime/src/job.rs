//! Who is asking and for which Slurm job, established from sources the caller cannot forge.
//!
//! The daemon learns the caller's uid, gid and pid from the socket (`SO_PEERCRED`), the
//! supplementary groups from root-owned `/proc/<pid>/status`, and the Slurm job from root-owned
//! `/proc/<pid>/cgroup` (Slurm's `proctrack/cgroup` puts every job step in
//! `.../job_<id>/step_<x>/...`). It never reads the caller's environment: `SLURM_JOB_ID` is just a
//! variable the user can set. With `proctrack/linuxproc` (no job cgroups) the daemon refuses
//! callers unless the policy says `require-job-cgroup = false`, a setting for test clusters.
//!
//! In direct mode (rootless engine, no daemon) there is no privilege to protect, so the runtime
//! describes its own process and takes the job id from its environment.

use std::collections::BTreeSet;
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

use crate::policy::Subject;

/// Errors of establishing the caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// `/proc/<pid>/...` could not be read.
    #[error("failed to read {path}")]
    ReadProc {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The process changed identity or vanished between connecting and being examined.
    #[error("process {pid} does not match the connection's credentials")]
    PidMismatch {
        /// The pid.
        pid: i32,
    },
    /// A uid or gid has no account on this node.
    #[error("no account for {what} on this node")]
    NoAccount {
        /// `uid N` or `gid N`.
        what: String,
    },
    /// The caller is root or in group root.
    #[error("refusing to run containers for uid/gid 0")]
    Root,
    /// The caller is not inside a Slurm job cgroup and the policy requires one.
    #[error(
        "caller (pid {pid}) is not inside a Slurm job cgroup\nhint: the node needs \
         proctrack/cgroup, or (test clusters only) require-job-cgroup = false in the policy"
    )]
    NoJobCgroup {
        /// The pid.
        pid: i32,
    },
}

/// The Slurm job a caller belongs to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Job {
    /// Numeric job id.
    pub id: String,
    /// The job's cgroup path (to use as the container's cgroup parent), when known.
    pub cgroup: Option<String>,
}

/// The job user, as established by the runtime (direct mode) or the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Numeric uid (never 0).
    pub uid: u32,
    /// Numeric primary gid (never 0).
    pub gid: u32,
    /// Supplementary gids (without the primary gid).
    pub groups: Vec<u32>,
    /// User name.
    pub user: String,
    /// Home directory (for the synthesised passwd line).
    pub home: String,
    /// Names of the primary and supplementary groups that have names.
    pub group_names: BTreeSet<String>,
    /// The Slurm job, if known.
    pub job: Option<Job>,
}

impl Caller {
    /// The policy subject.
    #[must_use]
    pub fn subject(&self) -> Subject {
        Subject {
            user: self.user.clone(),
            groups: self.group_names.clone(),
        }
    }

    /// Build from numeric ids, resolving names through the node's account database.
    ///
    /// # Errors
    ///
    /// [`JobError::Root`] or [`JobError::NoAccount`].
    pub fn from_ids(
        uid: u32,
        gid: u32,
        groups: &[u32],
        job: Option<Job>,
    ) -> Result<Self, JobError> {
        if uid == 0 || gid == 0 || groups.contains(&0) {
            return Err(JobError::Root);
        }
        let user = User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .ok_or_else(|| JobError::NoAccount {
                what: format!("uid {uid}"),
            })?;
        let mut group_names = BTreeSet::new();
        let mut supplementary = Vec::new();
        for g in std::iter::once(gid).chain(groups.iter().copied()) {
            if let Ok(Some(group)) = Group::from_gid(Gid::from_raw(g)) {
                group_names.insert(group.name);
            }
            if g != gid && !supplementary.contains(&g) {
                supplementary.push(g);
            }
        }
        Ok(Self {
            uid,
            gid,
            groups: supplementary,
            user: user.name,
            home: user.dir.to_string_lossy().into_owned(),
            group_names,
            job,
        })
    }

    /// Describe this process (direct mode): ids from the kernel, job from `SLURM_JOB_ID`.
    ///
    /// # Errors
    ///
    /// As [`Caller::from_ids`].
    pub fn this_process() -> Result<Self, JobError> {
        let groups: Vec<u32> = nix::unistd::getgroups()
            .unwrap_or_default()
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok();
        let job = std::env::var("SLURM_JOB_ID")
            .ok()
            .filter(|j| is_job_id(j))
            .map(|id| Job {
                cgroup: cgroup
                    .as_deref()
                    .and_then(|c| parse_job_cgroup(c).map(|(_, p)| p)),
                id,
            });
        Self::from_ids(
            Uid::current().as_raw(),
            Gid::current().as_raw(),
            &groups,
            job,
        )
    }

    /// Describe a peer process of the daemon from root-owned `/proc` files.
    ///
    /// `uid`, `gid` and `pid` come from `SO_PEERCRED`; `/proc/<pid>/status` must agree on the
    /// uid, so a recycled pid is detected as long as it belongs to somebody else.
    ///
    /// # Errors
    ///
    /// [`JobError`] naming the problem.
    pub fn from_peer(
        proc_root: &Path,
        uid: u32,
        gid: u32,
        pid: i32,
        require_job_cgroup: bool,
    ) -> Result<Self, JobError> {
        let read = |name: &str| {
            let path = proc_root.join(pid.to_string()).join(name);
            std::fs::read_to_string(&path).map_err(|source| JobError::ReadProc {
                path: path.display().to_string(),
                source,
            })
        };
        let status = read("status")?;
        let (real_uid, groups) = parse_status(&status).ok_or(JobError::PidMismatch { pid })?;
        if real_uid != uid {
            return Err(JobError::PidMismatch { pid });
        }
        let cgroup = read("cgroup")?;
        let job = match parse_job_cgroup(&cgroup) {
            Some((id, path)) => {
                // In cgroup v1 Slurm also records the uid: it must be the caller's.
                if path.contains("/uid_") && !path.contains(&format!("/uid_{uid}/")) {
                    return Err(JobError::PidMismatch { pid });
                }
                Some(Job {
                    id,
                    cgroup: Some(path),
                })
            }
            None if require_job_cgroup => return Err(JobError::NoJobCgroup { pid }),
            None => {
                tracing::warn!(
                    pid,
                    "caller is not in a Slurm job cgroup; allowed by policy (test setting)"
                );
                None
            }
        };
        Self::from_ids(uid, gid, &groups, job)
    }
}

/// Is `s` a plausible Slurm job id (digits, optionally `_N` for array tasks)?
#[must_use]
pub fn is_job_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.split('_').count() <= 2
        && s.split('_')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The real uid and the supplementary groups from `/proc/<pid>/status`.
#[must_use]
pub fn parse_status(status: &str) -> Option<(u32, Vec<u32>)> {
    let mut uid = None;
    let mut groups = Vec::new();
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Uid:") {
            uid = rest.split_whitespace().next().and_then(|u| u.parse().ok());
        } else if let Some(rest) = line.strip_prefix("Groups:") {
            groups = rest
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect();
        }
    }
    uid.map(|u| (u, groups))
}

/// The Slurm job id and job cgroup path from `/proc/<pid>/cgroup` (v1 or v2), e.g.
/// `0::/system.slice/slurmstepd.scope/job_12/step_batch/user/task_0` gives
/// `("12", "/system.slice/slurmstepd.scope/job_12")`.
#[must_use]
pub fn parse_job_cgroup(cgroup: &str) -> Option<(String, String)> {
    // Prefer the unified (v2) line, then v1 controllers in a stable order.
    let mut lines: Vec<(usize, &str)> = cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let rank = match controllers {
                "" => 0,
                c if c.split(',').any(|c| c == "memory") => 1,
                c if c.split(',').any(|c| c == "freezer") => 2,
                _ => 3,
            };
            Some((rank, path))
        })
        .collect();
    lines.sort_by_key(|(rank, _)| *rank);
    lines.into_iter().find_map(|(_, path)| {
        let mut prefix = String::new();
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            prefix.push('/');
            prefix.push_str(comp);
            if let Some(id) = comp.strip_prefix("job_")
                && is_job_id(id)
            {
                return Some((id.to_owned(), prefix));
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("0::/system.slice/slurmstepd.scope/job_12/step_batch/user/task_0", Some(("12", "/system.slice/slurmstepd.scope/job_12")))]
    #[case("12:pids:/\n4:memory:/slurm/uid_2001/job_7/step_0/task_0\n0::/", Some(("7", "/slurm/uid_2001/job_7")))]
    #[case("4:freezer:/slurm/uid_2001/job_9/step_batch\n", Some(("9", "/slurm/uid_2001/job_9")))]
    #[case("0::/user.slice/user-2001.slice/session-3.scope\n", None)]
    #[case("0::/job_x/y\n", None)]
    #[case("0::/myjob_12/y\n", None)]
    #[case("garbage", None)]
    fn job_cgroups(#[case] text: &str, #[case] want: Option<(&str, &str)>) {
        assert_eq!(
            parse_job_cgroup(text),
            want.map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[rstest]
    #[case("123", true)]
    #[case("123_4", true)]
    #[case("", false)]
    #[case("12a", false)]
    #[case("1_2_3", false)]
    #[case("_1", false)]
    fn job_ids(#[case] s: &str, #[case] ok: bool) {
        assert_eq!(is_job_id(s), ok);
    }

    #[test]
    fn status_lines() {
        let s = "Name:\tsh\nUid:\t2001\t2001\t2001\t2001\nGid:\t2001\t2001\t2001\t2001\nGroups:\t2001 3000 \n";
        assert_eq!(parse_status(s), Some((2001, vec![2001, 3000])));
        assert_eq!(parse_status("Name: x\n"), None);
    }

    #[test]
    fn fake_proc_tree() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("77");
        std::fs::create_dir(&p).expect("mkdir");
        std::fs::write(p.join("status"), "Uid:\t1\t1\t1\t1\nGroups:\t1\n").expect("w");
        std::fs::write(p.join("cgroup"), "0::/user.slice\n").expect("w");
        // Uid mismatch with the connection: refused.
        assert!(matches!(
            Caller::from_peer(dir.path(), 2, 2, 77, false),
            Err(JobError::PidMismatch { pid: 77 })
        ));
        // No job cgroup while the policy requires one: refused.
        assert!(matches!(
            Caller::from_peer(dir.path(), 1, 1, 77, true),
            Err(JobError::NoJobCgroup { pid: 77 })
        ));
        // v1 job cgroup of another uid: refused.
        std::fs::write(p.join("cgroup"), "4:memory:/slurm/uid_5/job_3/step_0\n").expect("w");
        assert!(matches!(
            Caller::from_peer(dir.path(), 1, 1, 77, true),
            Err(JobError::PidMismatch { .. })
        ));
        // Root is never served.
        assert!(matches!(
            Caller::from_ids(0, 5, &[], None),
            Err(JobError::Root)
        ));
        assert!(matches!(
            Caller::from_ids(5, 5, &[0], None),
            Err(JobError::Root)
        ));
    }
}
