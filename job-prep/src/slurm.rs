//! Slurm over SSH: `sbatch --parsable`, `scontrol show job`, `sacct`, `scancel`.
//!
//! Every command is an argument vector quoted by the SSH layer. Job state comes from
//! `scontrol show job -o` while the controller remembers the job (`MinJobAge`, 300 s by
//! default), then from `sacct` if accounting is enabled; `squeue` is not used because it forgets
//! finished jobs at the same time as `scontrol` and does not report exit codes.

use std::fmt;
use std::str::FromStr;

use hpcs_client::ssh::{SshError, SshSession};
use serde::Serialize;

/// Errors talking to Slurm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlurmError {
    /// The SSH layer failed.
    #[error("failed to reach the login node")]
    Ssh(#[source] Box<SshError>),
    /// A Slurm command is not on the login node's PATH.
    #[error(
        "{program} not found on the login node\nhint: is Slurm installed there, and on the PATH of non-interactive SSH sessions?"
    )]
    MissingCommand {
        /// The program.
        program: &'static str,
    },
    /// `sbatch` refused the job.
    #[error("sbatch refused the job (exit {status}): {stderr}")]
    Sbatch {
        /// Exit status.
        status: i32,
        /// Its stderr.
        stderr: String,
    },
    /// `sbatch` answered something that is not a job id.
    #[error("sbatch printed {0:?} instead of a job id")]
    BadJobId(String),
    /// A job id is not numeric.
    #[error("invalid job id {0:?}: expected digits")]
    InvalidJobId(String),
    /// `scontrol` failed for another reason than an unknown job.
    #[error("scontrol show job {job} failed (exit {status}): {stderr}")]
    Scontrol {
        /// The job.
        job: JobId,
        /// Exit status.
        status: i32,
        /// Its stderr.
        stderr: String,
    },
    /// `scancel` refused.
    #[error("scancel {job} failed (exit {status}): {stderr}")]
    Scancel {
        /// The job.
        job: JobId,
        /// Exit status.
        status: i32,
        /// Its stderr.
        stderr: String,
    },
}

impl From<SshError> for SlurmError {
    fn from(e: SshError) -> Self {
        Self::Ssh(Box::new(e))
    }
}

/// A numeric Slurm job id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct JobId(String);

impl FromStr for JobId {
    type Err = SlurmError;
    fn from_str(s: &str) -> Result<Self, SlurmError> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SlurmError::InvalidJobId(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<JobId> for String {
    fn from(j: JobId) -> Self {
        j.0
    }
}

impl JobId {
    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A job state as Slurm names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
#[non_exhaustive]
pub enum JobState {
    /// Queued.
    Pending,
    /// Allocated, being set up.
    Configuring,
    /// Running.
    Running,
    /// Finished, resources being released.
    Completing,
    /// Suspended.
    Suspended,
    /// Requeued.
    Requeued,
    /// Finished with exit code 0.
    Completed,
    /// Finished with a non-zero exit code or other failure.
    Failed,
    /// Cancelled by a user or an administrator.
    Cancelled,
    /// Reached its time limit.
    Timeout,
    /// A node failed.
    NodeFail,
    /// Out of memory.
    OutOfMemory,
    /// Preempted.
    Preempted,
    /// The node failed to boot.
    BootFail,
    /// Missed its deadline.
    Deadline,
    /// Neither `scontrol` nor `sacct` knows the job (any more).
    Unknown,
    /// A state this version does not know.
    Other(String),
}

impl JobState {
    /// Parses Slurm's spelling; `CANCELLED by 2001` (sacct) is `CANCELLED`.
    #[must_use]
    pub fn parse(s: &str) -> Self {
        let word = s.split_whitespace().next().unwrap_or("");
        match word.trim_end_matches('+') {
            "PENDING" => Self::Pending,
            "CONFIGURING" => Self::Configuring,
            "RUNNING" => Self::Running,
            "COMPLETING" => Self::Completing,
            "SUSPENDED" => Self::Suspended,
            "REQUEUED" | "REQUEUE_FED" | "REQUEUE_HOLD" => Self::Requeued,
            "COMPLETED" => Self::Completed,
            "FAILED" => Self::Failed,
            "CANCELLED" => Self::Cancelled,
            "TIMEOUT" => Self::Timeout,
            "NODE_FAIL" => Self::NodeFail,
            "OUT_OF_MEMORY" => Self::OutOfMemory,
            "PREEMPTED" => Self::Preempted,
            "BOOT_FAIL" => Self::BootFail,
            "DEADLINE" => Self::Deadline,
            "" | "UNKNOWN" => Self::Unknown,
            other => Self::Other(other.to_owned()),
        }
    }

    /// Slurm's spelling.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Pending => "PENDING",
            Self::Configuring => "CONFIGURING",
            Self::Running => "RUNNING",
            Self::Completing => "COMPLETING",
            Self::Suspended => "SUSPENDED",
            Self::Requeued => "REQUEUED",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
            Self::Timeout => "TIMEOUT",
            Self::NodeFail => "NODE_FAIL",
            Self::OutOfMemory => "OUT_OF_MEMORY",
            Self::Preempted => "PREEMPTED",
            Self::BootFail => "BOOT_FAIL",
            Self::Deadline => "DEADLINE",
            Self::Unknown => "UNKNOWN",
            Self::Other(s) => s,
        }
    }

    /// Has the job ended (or been forgotten)? Unknown states other than the listed ones count
    /// as ended, so a follower never waits forever on a state it cannot interpret.
    #[must_use]
    pub fn is_terminal(&self) -> bool {
        !matches!(
            self,
            Self::Pending
                | Self::Configuring
                | Self::Running
                | Self::Completing
                | Self::Suspended
                | Self::Requeued
        ) && !matches!(self, Self::Other(s) if matches!(s.as_str(), "RESIZING" | "SIGNALING" | "STAGE_OUT" | "STOPPED" | "RESV_DEL_HOLD"))
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<JobState> for String {
    fn from(s: JobState) -> Self {
        s.as_str().to_owned()
    }
}

/// `ExitCode=N:S`: the batch script's exit status and the signal that ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExitCode {
    /// Exit status (0-255).
    pub code: u8,
    /// Terminating signal, 0 if none.
    pub signal: u8,
}

impl FromStr for ExitCode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (c, sig) = s.split_once(':').ok_or(())?;
        Ok(Self {
            code: c.parse().map_err(|_| ())?,
            signal: sig.parse().map_err(|_| ())?,
        })
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.code, self.signal)
    }
}

/// What Slurm reports about a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobStatus {
    /// The job.
    pub job_id: JobId,
    /// Its state.
    pub state: JobState,
    /// Exit code, once known.
    pub exit_code: Option<ExitCode>,
    /// Why it is pending or how it ended (`Reason=`), if Slurm says.
    pub reason: Option<String>,
    /// `WorkDir=`.
    pub work_dir: Option<String>,
    /// `StdOut=`.
    pub stdout: Option<String>,
    /// `StdErr=`.
    pub stderr: Option<String>,
    /// Where the state came from: `scontrol`, `sacct` or `none`.
    pub source: &'static str,
}

impl JobStatus {
    fn unknown(job: &JobId) -> Self {
        Self {
            job_id: job.clone(),
            state: JobState::Unknown,
            exit_code: None,
            reason: None,
            work_dir: None,
            stdout: None,
            stderr: None,
            source: "none",
        }
    }

    /// Did the job complete successfully?
    #[must_use]
    pub fn succeeded(&self) -> bool {
        self.state == JobState::Completed
            && self.exit_code.is_none_or(|e| e.code == 0 && e.signal == 0)
    }

    /// The exit code job-prep reports for a finished job: 0 if it completed, the job's exit
    /// status if it failed with one, 1 otherwise (cancelled, timed out, node failure, unknown).
    #[must_use]
    pub fn process_exit_code(&self) -> u8 {
        if self.succeeded() {
            return 0;
        }
        match self.exit_code {
            Some(e) if self.state == JobState::Failed && e.code != 0 => e.code,
            _ => 1,
        }
    }

    /// `STATE`, plus `(exit N:S)` and `[reason]` when known.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut s = self.state.to_string();
        if let Some(e) = self.exit_code.filter(|_| self.state.is_terminal()) {
            s.push_str(&format!(" (exit code {e})"));
        }
        if let Some(r) = self.reason.as_deref().filter(|r| *r != "None") {
            s.push_str(&format!(" [{r}]"));
        }
        s
    }
}

/// Parses the one-line output of `scontrol show job -o ID`. Values may contain spaces (paths,
/// commands): a word that does not start a new `Key=` continues the previous value.
#[must_use]
pub fn parse_scontrol(job: &JobId, text: &str) -> JobStatus {
    let mut fields: Vec<(String, String)> = Vec::new();
    for word in text.split(' ') {
        let key = word.split_once('=').map(|(k, _)| k).filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '_'))
                && k.starts_with(|c: char| c.is_ascii_uppercase())
        });
        match (key, fields.last_mut()) {
            (Some(k), _) => fields.push((k.to_owned(), word[k.len() + 1..].to_owned())),
            (None, Some((_, v))) => {
                v.push(' ');
                v.push_str(word);
            }
            (None, None) => {}
        }
    }
    let get = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim_end_matches('\n').to_owned())
            .filter(|v| !v.is_empty() && v != "(null)")
    };
    JobStatus {
        job_id: job.clone(),
        state: get("JobState").map_or(JobState::Unknown, |s| JobState::parse(&s)),
        exit_code: get("ExitCode").and_then(|e| e.parse().ok()),
        reason: get("Reason"),
        work_dir: get("WorkDir"),
        stdout: get("StdOut"),
        stderr: get("StdErr"),
        source: "scontrol",
    }
}

/// Parses `sacct -j ID -X -n -P -o JobID,State,ExitCode,WorkDir` (`|`-separated, no header).
#[must_use]
pub fn parse_sacct(job: &JobId, text: &str) -> Option<JobStatus> {
    let line = text
        .lines()
        .find(|l| l.split('|').next() == Some(job.as_str()))?;
    let cols: Vec<&str> = line.splitn(4, '|').collect();
    Some(JobStatus {
        job_id: job.clone(),
        state: JobState::parse(cols.get(1).copied().unwrap_or("")),
        exit_code: cols.get(2).and_then(|e| e.parse().ok()),
        reason: None,
        work_dir: cols
            .get(3)
            .map(|s| (*s).to_owned())
            .filter(|s| !s.is_empty()),
        stdout: None,
        stderr: None,
        source: "sacct",
    })
}

/// Submits the remote batch script `script` with `sbatch --parsable`.
///
/// # Errors
///
/// [`SlurmError::MissingCommand`] if sbatch is not on the remote PATH, [`SlurmError::Sbatch`],
/// [`SlurmError::BadJobId`], [`SlurmError::Ssh`].
pub fn submit(ssh: &SshSession, script: &str) -> Result<JobId, SlurmError> {
    let out = ssh.exec(&["sbatch", "--parsable", "--", script])?;
    // 127: the remote shell did not find the command (as for scontrol and scancel below).
    if out.status == 127 {
        return Err(SlurmError::MissingCommand { program: "sbatch" });
    }
    if out.status != 0 {
        return Err(SlurmError::Sbatch {
            status: out.status,
            stderr: out.stderr_text(),
        });
    }
    let text = out.stdout_text();
    // `--parsable` prints `id` or `id;cluster`.
    let id = text.trim().split(';').next().unwrap_or("");
    id.parse().map_err(|_| SlurmError::BadJobId(text.clone()))
}

/// The job's current status: `scontrol`, then `sacct` once the controller has forgotten the
/// job, else [`JobState::Unknown`].
///
/// # Errors
///
/// [`SlurmError::Ssh`], [`SlurmError::MissingCommand`] (scontrol), [`SlurmError::Scontrol`].
pub fn status(ssh: &SshSession, job: &JobId) -> Result<JobStatus, SlurmError> {
    let out = ssh.exec(&["scontrol", "show", "job", "-o", job.as_str()])?;
    if out.status == 0 {
        return Ok(parse_scontrol(job, &out.stdout_text()));
    }
    let stderr = out.stderr_text();
    if out.status == 127 {
        return Err(SlurmError::MissingCommand {
            program: "scontrol",
        });
    }
    if !stderr.contains("Invalid job id") {
        return Err(SlurmError::Scontrol {
            job: job.clone(),
            status: out.status,
            stderr,
        });
    }
    // Forgotten by the controller: ask accounting, which may be disabled or absent.
    let acct = ssh.exec(&[
        "sacct",
        "-j",
        job.as_str(),
        "-X",
        "-n",
        "-P",
        "-o",
        "JobID,State,ExitCode,WorkDir",
    ])?;
    if acct.status == 0
        && let Some(st) = parse_sacct(job, &acct.stdout_text())
    {
        return Ok(st);
    }
    Ok(JobStatus::unknown(job))
}

/// Cancels the job (`scancel`).
///
/// # Errors
///
/// [`SlurmError::Ssh`], [`SlurmError::MissingCommand`], [`SlurmError::Scancel`] with
/// scancel's own message (unknown job, someone else's job).
pub fn cancel(ssh: &SshSession, job: &JobId) -> Result<(), SlurmError> {
    // Without --verbose, scancel 22.05 says nothing and exits 0 for an unknown job; with it,
    // every refusal is an `error:` line on stderr (the exit status stays 0).
    let out = ssh.exec(&["scancel", "--verbose", "--", job.as_str()])?;
    if out.status == 127 {
        return Err(SlurmError::MissingCommand { program: "scancel" });
    }
    let stderr = out.stderr_text();
    if out.status != 0 || stderr.contains("error:") {
        let stderr = stderr
            .lines()
            .filter(|l| l.contains("error"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(SlurmError::Scancel {
            job: job.clone(),
            status: out.status,
            stderr,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn job() -> JobId {
        "7".parse().unwrap()
    }

    #[test]
    fn parses_scontrol_line() {
        let s = parse_scontrol(
            &job(),
            "JobId=7 JobName=x UserId=alice(2001) GroupId=alice(2001) MCS_label=N/A Priority=1 \
             JobState=FAILED Reason=NonZeroExitCode Dependency=(null) ExitCode=3:0 \
             Command=/home/alice/my job/job.sh WorkDir=/home/alice/my job \
             StdErr=/home/alice/my job/hpcs-7.err StdIn=/dev/null StdOut=/home/alice/my job/hpcs-7.out Power=\n",
        );
        assert_eq!(s.state, JobState::Failed);
        assert_eq!(s.exit_code, Some(ExitCode { code: 3, signal: 0 }));
        assert_eq!(s.reason.as_deref(), Some("NonZeroExitCode"));
        assert_eq!(s.work_dir.as_deref(), Some("/home/alice/my job"));
        assert_eq!(s.stdout.as_deref(), Some("/home/alice/my job/hpcs-7.out"));
        assert_eq!(s.stderr.as_deref(), Some("/home/alice/my job/hpcs-7.err"));
        assert!(s.state.is_terminal());
        assert!(!s.succeeded());
        assert_eq!(s.process_exit_code(), 3);
        assert_eq!(s.describe(), "FAILED (exit code 3:0) [NonZeroExitCode]");
    }

    #[rstest]
    #[case(
        "JobState=RUNNING Reason=None ExitCode=0:0",
        JobState::Running,
        false,
        1
    )]
    #[case("JobState=PENDING Reason=Priority", JobState::Pending, false, 1)]
    #[case("JobState=COMPLETED ExitCode=0:0", JobState::Completed, true, 0)]
    #[case("JobState=CANCELLED ExitCode=0:15", JobState::Cancelled, true, 1)]
    #[case("JobState=TIMEOUT ExitCode=0:0", JobState::Timeout, true, 1)]
    #[case("JobState=FAILED ExitCode=0:9", JobState::Failed, true, 1)]
    #[case("JobState=COMPLETING ExitCode=0:0", JobState::Completing, false, 1)]
    #[case("nothing useful", JobState::Unknown, true, 1)]
    fn states(
        #[case] line: &str,
        #[case] state: JobState,
        #[case] terminal: bool,
        #[case] code: u8,
    ) {
        let s = parse_scontrol(&job(), line);
        assert_eq!(s.state, state);
        assert_eq!(s.state.is_terminal(), terminal);
        if terminal {
            assert_eq!(s.process_exit_code(), code);
        }
    }

    #[test]
    fn parses_sacct() {
        let s = parse_sacct(&job(), "7|CANCELLED by 2001|0:15|/scratch/a\n").unwrap();
        assert_eq!(s.state, JobState::Cancelled);
        assert_eq!(
            s.exit_code,
            Some(ExitCode {
                code: 0,
                signal: 15
            })
        );
        assert_eq!(s.work_dir.as_deref(), Some("/scratch/a"));
        assert_eq!(s.source, "sacct");
        assert!(parse_sacct(&job(), "8|COMPLETED|0:0|/x\n").is_none());
        assert!(parse_sacct(&job(), "").is_none());
    }

    #[rstest]
    #[case("123", true)]
    #[case("12;rm", false)]
    #[case("", false)]
    #[case("12_1", false)]
    #[case("-1", false)]
    fn job_ids(#[case] s: &str, #[case] ok: bool) {
        assert_eq!(s.parse::<JobId>().is_ok(), ok);
    }

    #[test]
    fn missing_sbatch_has_a_hint() {
        let e = SlurmError::MissingCommand { program: "sbatch" }.to_string();
        assert!(
            e.starts_with("sbatch not found on the login node\nhint: "),
            "{e}"
        );
    }
}
