//! Following a job: its stdout and stderr as they are written, and its state changes, until it
//! ends.
//!
//! The job's output files are read over SFTP from the last offset on every poll (they live in
//! the job's work directory, which the login node sees), so bytes appear in order and none are
//! repeated; the state comes from [`slurm::status`]. When the job ends, the files are drained
//! once more, because Slurm may flush the last bytes after the state change.

use std::io::Write;
use std::time::Duration;

use hpcs_client::ssh::{SshError, SshSession};

use crate::slurm::{self, JobId, JobStatus, SlurmError};

/// Default time between polls: Slurm asks users not to query the controller in tight loops.
pub const DEFAULT_POLL: Duration = Duration::from_secs(2);

/// Largest chunk read from a log file in one SFTP read.
const CHUNK: u64 = 1024 * 1024;

/// Errors while following a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FollowError {
    /// Asking Slurm failed.
    #[error("failed to query job {job}")]
    Status {
        /// The job.
        job: JobId,
        /// The cause.
        #[source]
        source: Box<SlurmError>,
    },
    /// Reading a log file failed.
    #[error("failed to read {path} of job {job}")]
    ReadLog {
        /// The job.
        job: JobId,
        /// The remote file.
        path: String,
        /// The cause.
        #[source]
        source: Box<SshError>,
    },
    /// Writing the job's output locally failed (e.g. a closed pipe).
    #[error("failed to write the output of job {job}")]
    Write {
        /// The job.
        job: JobId,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Where the job's output goes and where state changes are reported.
pub struct Sinks<'a> {
    /// Receives the job's stdout bytes.
    pub stdout: &'a mut dyn Write,
    /// Receives the job's stderr bytes.
    pub stderr: &'a mut dyn Write,
    /// Called with every new state (the first status included).
    pub on_state: &'a mut dyn FnMut(&JobStatus),
}

impl std::fmt::Debug for Sinks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sinks").finish_non_exhaustive()
    }
}

/// A growing remote file and how much of it was already passed on.
struct Tail {
    path: Option<String>,
    offset: u64,
}

impl Tail {
    fn pump(
        &mut self,
        ssh: &SshSession,
        job: &JobId,
        sink: &mut dyn Write,
    ) -> Result<(), FollowError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        loop {
            let chunk =
                ssh.read_from(path, self.offset, CHUNK)
                    .map_err(|source| FollowError::ReadLog {
                        job: job.clone(),
                        path: path.clone(),
                        source: Box::new(source),
                    })?;
            if chunk.is_empty() {
                break;
            }
            self.offset += chunk.len() as u64;
            sink.write_all(&chunk)
                .and_then(|()| sink.flush())
                .map_err(|source| FollowError::Write {
                    job: job.clone(),
                    source,
                })?;
            if (chunk.len() as u64) < CHUNK {
                break;
            }
        }
        Ok(())
    }
}

/// Follows `job` until it ends and returns its final status. `stdout` and `stderr` are the
/// remote log files to stream when Slurm does not report them itself.
///
/// # Errors
///
/// [`FollowError`]; the job itself keeps running on the cluster whatever happens here.
pub fn follow(
    ssh: &SshSession,
    job: &JobId,
    stdout: Option<String>,
    stderr: Option<String>,
    poll: Duration,
    sinks: &mut Sinks<'_>,
) -> Result<JobStatus, FollowError> {
    let status_err = |source| FollowError::Status {
        job: job.clone(),
        source: Box::new(source),
    };
    let mut out = Tail {
        path: stdout,
        offset: 0,
    };
    let mut err = Tail {
        path: stderr,
        offset: 0,
    };
    let mut last: Option<(slurm::JobState, Option<String>)> = None;
    loop {
        let st = slurm::status(ssh, job).map_err(status_err)?;
        // Without known log files (re-attaching to a job), Slurm's own are used once it reports
        // them expanded; a file named for stdout and stderr at once is streamed once.
        if let Some(p) = st.stdout.as_ref().filter(|p| !p.contains('%')) {
            out.path.get_or_insert_with(|| p.clone());
        }
        if let Some(p) = st.stderr.as_ref().filter(|p| !p.contains('%')) {
            err.path.get_or_insert_with(|| p.clone());
        }
        if err.path == out.path {
            err.path = None;
        }
        let key = (st.state.clone(), st.reason.clone());
        if last.as_ref() != Some(&key) {
            (sinks.on_state)(&st);
            last = Some(key);
        }
        out.pump(ssh, job, sinks.stdout)?;
        err.pump(ssh, job, sinks.stderr)?;
        if st.state.is_terminal() {
            std::thread::sleep(poll.min(Duration::from_millis(500)));
            out.pump(ssh, job, sinks.stdout)?;
            err.pump(ssh, job, sinks.stderr)?;
            return Ok(st);
        }
        // Between polls the session is idle; the keepalive keeps NAT and firewalls from
        // dropping it during long queue waits.
        let _ = ssh.keepalive();
        std::thread::sleep(poll);
    }
}
