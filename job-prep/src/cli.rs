//! Command line of `job-prep` (clap derive; the doc comments are the help text).
//!
//! HPCS's `prepare_job.py` flags map as follows: `--config`, `-N/--nodes`, `-p/--partition`,
//! `-t/--time`, `-A/--account`, `-w/--nodelist`, `-s/--workdir`, `-J/--job-name`,
//! `-f/--follow` are unchanged; `-ai` and `-di` (single-dash multi-letter options, which clap
//! cannot parse) become `--application-info`/`--ai` and `--data-info`/`--di`;
//! `-i/--supplementary-input-scripts` and `-o/--supplementary-output-scripts` become
//! `-i/--input-hooks` and `-o/--output-hooks` (fail-closed); `-args "..."`, a string HPCS
//! re-parsed with a shell, becomes `-- ARGS...`, an argument vector passed through unchanged;
//! `-flags` (extra Singularity flags) has no equivalent: the node's admin policy decides the
//! container's settings and environment variables go in `--env-file`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hpcs_core::ids::UserName;

use crate::slurm::JobId;
use crate::spec::WorkDir;

/// Submit an HPCS job to Slurm over SSH, follow it, and fetch its encrypted output.
///
/// Without a subcommand, job-prep checks the application's and data sets' info files and
/// ciphertexts on the cluster, renders a batch script that runs `hpcs-node run` with them,
/// uploads it to the work directory and submits it with `sbatch`, printing the job id. The job's
/// output is encrypted on the compute node to your own age identity (created on first use in
/// your config directory) and decrypted only here, by `fetch-output` or `--fetch-output`.
///
/// Exit codes: 0 success; 1 failure; 2 usage or configuration error. With --follow or
/// --fetch-output: the job's result instead (0 if it completed, its exit status if it failed
/// with one, 1 if it was cancelled, timed out or failed otherwise).
#[derive(Debug, Parser)]
#[command(
    name = "job-prep",
    version,
    about,
    long_about,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// Client config (INI with [supercomputer] and [ssh]; [client] identity-file).
    #[arg(long, global = true, env = "HPCS_CLIENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Cluster user name for SSH (default: [supercomputer] username).
    #[arg(long, global = true, value_name = "USER")]
    pub username: Option<UserName>,

    /// Record an unknown SSH host key in known_hosts instead of refusing it (a changed key is
    /// always refused).
    #[arg(long, global = true)]
    pub accept_new_host_key: bool,

    /// Print results as JSON lines on stdout (a followed job's own stdout then goes to stderr).
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output on stderr (-v debug, -vv trace); HPCS_LOG overrides.
    #[arg(short = 'v', long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Seconds between polls of the job's state and logs while following.
    #[arg(long, global = true, value_name = "SECONDS", default_value = "2", value_parser = parse_poll)]
    pub poll_interval: Duration,

    /// What to do; without a subcommand, submit a job.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Submission flags.
    #[command(flatten)]
    pub submit: SubmitArgs,
}

fn parse_poll(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.1..=600.0).contains(&secs) {
        return Err("expected 0.1 to 600 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a job's state and exit code.
    Status {
        /// Slurm job id.
        job: JobId,
    },
    /// Cancel a job (scancel).
    Cancel {
        /// Slurm job id.
        job: JobId,
    },
    /// Stream a job's stdout and stderr and its state changes until it ends; exit with its
    /// result.
    Follow {
        /// Slurm job id.
        job: JobId,
        /// The job's work directory (default: the one Slurm reports).
        #[arg(short = 's', long, value_name = "REMOTE_DIR")]
        workdir: Option<WorkDir>,
    },
    /// Download a job's encrypted output, verify it, decrypt it with your identity and unpack
    /// it safely into DIR/<JOBID>.
    FetchOutput {
        /// Slurm job id.
        job: JobId,
        /// Local directory to unpack into (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// The job's work directory (default: the one Slurm reports).
        #[arg(short = 's', long, value_name = "REMOTE_DIR")]
        workdir: Option<WorkDir>,
    },
}

/// Flags of a submission.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Number of nodes, N or MIN-MAX [default: 1].
    #[arg(short = 'N', long, value_name = "NODES")]
    pub nodes: Option<String>,

    /// Slurm partition.
    #[arg(short = 'p', long, value_name = "PARTITION", required = true)]
    pub partition: Option<String>,

    /// Time limit: M, M:S, H:M:S, D-H, D-H:M or D-H:M:S.
    #[arg(short = 't', long, value_name = "TIME", required = true)]
    pub time: Option<String>,

    /// Slurm account (project) to charge.
    #[arg(short = 'A', long, value_name = "ACCOUNT")]
    pub account: Option<String>,

    /// Nodes to run on, e.g. `nid[001-004]`; must be among the nodes the artefacts were
    /// prepared for.
    #[arg(short = 'w', long, value_name = "LIST")]
    pub nodelist: Option<String>,

    /// The job's work directory on the cluster (created with mode 0700); logs go to
    /// hpcs-<JOBID>.out/.err there and the sealed output to output/<JOBID>.tar.age.
    #[arg(short = 's', long, value_name = "REMOTE_DIR", required = true)]
    pub workdir: Option<String>,

    /// Info file of the encrypted application image on the cluster (HPCS -ai).
    #[arg(
        long,
        visible_alias = "ai",
        value_name = "REMOTE_INFO",
        required = true
    )]
    pub application_info: Option<String>,

    /// Info file of an encrypted data set on the cluster; repeatable (HPCS -di).
    #[arg(long, visible_alias = "di", value_name = "REMOTE_INFO")]
    pub data_info: Vec<String>,

    /// Local directory of input hooks (executables run on the node after decryption, before
    /// the application; any failure stops the job); uploaded with the job.
    #[arg(short = 'i', long, value_name = "DIR")]
    pub input_hooks: Option<PathBuf>,

    /// Local directory of output hooks (run after the application, before the output is
    /// sealed; any failure releases no output); uploaded with the job.
    #[arg(short = 'o', long, value_name = "DIR")]
    pub output_hooks: Option<PathBuf>,

    /// Local file of NAME=value lines for the container's environment; checked and uploaded
    /// with the job.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,

    /// Slurm job name.
    #[arg(short = 'J', long, value_name = "NAME")]
    pub job_name: Option<String>,

    /// Follow the job: stream its stdout and stderr, report state changes, exit with its
    /// result.
    #[arg(short = 'f', long)]
    pub follow: bool,

    /// After the job ends, fetch, verify, decrypt and unpack its output into DIR/<JOBID>
    /// (implies --follow).
    #[arg(long, value_name = "DIR")]
    pub fetch_output: Option<PathBuf>,

    /// hpcs-node on the compute nodes: an absolute path or a command on their PATH
    /// (default: [supercomputer] hpcs-node, else `hpcs-node`).
    #[arg(long, value_name = "PATH")]
    pub hpcs_node: Option<String>,

    /// Arguments of the application, after `--`; passed to it unchanged, one by one (HPCS
    /// -args).
    #[arg(last = true, value_name = "APP_ARGS")]
    pub args: Vec<String>,
}

impl SubmitArgs {
    /// The first submission flag given, if any (they make no sense with a subcommand).
    #[must_use]
    pub fn first_given(&self) -> Option<&'static str> {
        let given = [
            ("-N/--nodes", self.nodes.is_some()),
            ("-p/--partition", self.partition.is_some()),
            ("-t/--time", self.time.is_some()),
            ("-A/--account", self.account.is_some()),
            ("-w/--nodelist", self.nodelist.is_some()),
            ("-s/--workdir", self.workdir.is_some()),
            ("--application-info", self.application_info.is_some()),
            ("--data-info", !self.data_info.is_empty()),
            ("-i/--input-hooks", self.input_hooks.is_some()),
            ("-o/--output-hooks", self.output_hooks.is_some()),
            ("--env-file", self.env_file.is_some()),
            ("-J/--job-name", self.job_name.is_some()),
            ("-f/--follow", self.follow),
            ("--fetch-output", self.fetch_output.is_some()),
            ("--hpcs-node", self.hpcs_node.is_some()),
            ("-- APP_ARGS", !self.args.is_empty()),
        ];
        given.into_iter().find(|(_, g)| *g).map(|(name, _)| name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn submit_flags_and_hpcs_aliases() {
        let cli = Cli::try_parse_from([
            "job-prep",
            "--config",
            "c.ini",
            "-N",
            "2",
            "-p",
            "debug",
            "-t",
            "10:00",
            "-A",
            "proj",
            "-w",
            "n[1-2]",
            "-s",
            "/scratch/w",
            "--ai",
            "/scratch/app.info.yaml",
            "--di",
            "/scratch/d1.info.yaml",
            "--data-info",
            "/scratch/d2.info.yaml",
            "-i",
            "in",
            "-o",
            "out",
            "-J",
            "name",
            "-f",
            "--",
            "--not-a-flag",
            "-x",
            "a b",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        let s = cli.submit;
        assert_eq!(s.data_info.len(), 2);
        assert_eq!(
            s.application_info.as_deref(),
            Some("/scratch/app.info.yaml")
        );
        assert_eq!(s.args, ["--not-a-flag", "-x", "a b"]);
        assert!(s.follow);
    }

    #[test]
    fn submission_needs_its_flags_but_subcommands_do_not() {
        assert!(Cli::try_parse_from(["job-prep", "--config", "c", "-p", "debug"]).is_err());
        let cli = Cli::try_parse_from(["job-prep", "--config", "c", "status", "12"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Status { .. })));
        let cli = Cli::try_parse_from([
            "job-prep",
            "fetch-output",
            "12",
            "--to",
            "out",
            "--config",
            "c",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::FetchOutput { .. })));
        assert!(Cli::try_parse_from(["job-prep", "status", "12;id"]).is_err());
        let mixed = Cli::try_parse_from(["job-prep", "-p", "x", "status", "12"]).unwrap();
        assert_eq!(mixed.submit.first_given(), Some("-p/--partition"));
        let cli = Cli::try_parse_from(["job-prep", "cancel", "12"]).unwrap();
        assert_eq!(cli.submit.first_given(), None);
    }
}
