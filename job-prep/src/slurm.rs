//! Slurm commands over SSH: `sbatch --parsable`, `scontrol show job`, `scancel`.

use hpcs_client::ssh::{SshError, SshSession};

/// Errors talking to Slurm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlurmError {
    /// The SSH layer failed.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// `sbatch` is not on the login node's PATH.
    #[error(
        "sbatch not found on the login node\nhint: is Slurm installed there, and on the remote PATH of non-interactive shells?"
    )]
    MissingSbatch,
    /// `sbatch` answered something that is not a job id.
    #[error("sbatch printed {0:?} instead of a job id")]
    BadJobId(String),
    /// A job id given by the user is not numeric.
    #[error("invalid job id {0:?}: expected digits")]
    InvalidJobId(String),
}

/// A numeric Slurm job id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobId(String);

impl std::str::FromStr for JobId {
    type Err = SlurmError;
    fn from_str(s: &str) -> Result<Self, SlurmError> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SlurmError::InvalidJobId(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// State and exit code as `scontrol show job` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    /// `JobState`, e.g. `PENDING`, `RUNNING`, `COMPLETED`; `UNKNOWN` once Slurm forgot the job.
    pub state: String,
    /// `ExitCode`, e.g. `0:0`.
    pub exit_code: Option<String>,
}

impl JobStatus {
    /// Is the job finished?
    #[must_use]
    pub fn is_terminal(&self) -> bool {
        !matches!(
            self.state.as_str(),
            "PENDING"
                | "RUNNING"
                | "CONFIGURING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "RESIZING"
                | "SIGNALING"
                | "STAGE_OUT"
        )
    }

    /// Did the job succeed?
    #[must_use]
    pub fn succeeded(&self) -> bool {
        self.state == "COMPLETED" && self.exit_code.as_deref().is_none_or(|c| c == "0:0")
    }
}

/// Parses the one-line output of `scontrol show job -o`.
#[must_use]
pub fn parse_scontrol(text: &str) -> JobStatus {
    let field = |key: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_owned)
    };
    JobStatus {
        state: field("JobState=").unwrap_or_else(|| "UNKNOWN".into()),
        exit_code: field("ExitCode="),
    }
}

/// Submits `script` (a remote path) with `sbatch --parsable`.
///
/// # Errors
///
/// [`SlurmError`].
pub fn submit(ssh: &SshSession, script: &str) -> Result<JobId, SlurmError> {
    if !ssh.has_command("sbatch")? {
        return Err(SlurmError::MissingSbatch);
    }
    let out = ssh.exec_ok(&["sbatch", "--parsable", "--", script])?;
    let text = out.stdout_text();
    // `--parsable` prints `id` or `id;cluster`.
    let id = text.trim().split(';').next().unwrap_or("");
    id.parse().map_err(|_| SlurmError::BadJobId(text.clone()))
}

/// The job's current status.
///
/// # Errors
///
/// [`SlurmError::Ssh`].
pub fn status(ssh: &SshSession, job: &JobId) -> Result<JobStatus, SlurmError> {
    let id = job.to_string();
    let out = ssh.exec(&["scontrol", "show", "job", "-o", id.as_str()])?;
    if out.status != 0 {
        // Slurm forgot the job (MinJobAge) or never knew it.
        return Ok(JobStatus {
            state: "UNKNOWN".into(),
            exit_code: None,
        });
    }
    Ok(parse_scontrol(&out.stdout_text()))
}

/// Cancels the job.
///
/// # Errors
///
/// [`SlurmError::Ssh`] (including `scancel`'s own refusal).
pub fn cancel(ssh: &SshSession, job: &JobId) -> Result<(), SlurmError> {
    let id = job.to_string();
    ssh.exec_ok(&["scancel", "--", id.as_str()])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scontrol_line() {
        let s = parse_scontrol(
            "JobId=7 JobName=x UserId=alice(2001) JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0\n",
        );
        assert_eq!(s.state, "FAILED");
        assert_eq!(s.exit_code.as_deref(), Some("3:0"));
        assert!(s.is_terminal());
        assert!(!s.succeeded());
        assert!(!parse_scontrol("JobState=RUNNING").is_terminal());
        assert!(parse_scontrol("JobState=COMPLETED ExitCode=0:0").succeeded());
    }

    #[test]
    fn job_ids_are_digits() {
        assert!("123".parse::<JobId>().is_ok());
        assert!("12;rm".parse::<JobId>().is_err());
        assert!("".parse::<JobId>().is_err());
    }
}
