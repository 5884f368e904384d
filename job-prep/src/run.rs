//! The glue from parsed flags to the library: load the config, connect, act, report.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use hpcs_client::ssh::{SshSession, SshTarget};
use hpcs_core::config::ClientConfig;
use serde_json::json;

use crate::cli::{Cli, Command, SubmitArgs};
use crate::follow::{self, Sinks};
use crate::output::{self, Fetched};
use crate::remote::{self, Expect};
use crate::script;
use crate::slurm::{self, JobId, JobStatus};
use crate::spec::{self, DEFAULT_HPCS_NODE, JobSpec, Layout, RawJob, WorkDir};

/// Exit code of a failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

/// A failure with the exit code to use.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// What went wrong, with context.
    pub error: anyhow::Error,
}

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        error: e.into(),
    }
}

fn fail(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: EXIT_FAILURE,
        error: e.into(),
    }
}

/// Runs the command; returns the process exit code.
///
/// # Errors
///
/// A [`Failure`] with its exit code (1 failure, 2 usage or configuration).
pub fn run(cli: &Cli) -> Result<u8, Failure> {
    if cli.command.is_some()
        && let Some(flag) = cli.submit.first_given()
    {
        return Err(usage(anyhow::anyhow!(
            "{flag} is a submission flag; it cannot be combined with a subcommand"
        )));
    }
    let config_path = cli.config.clone().ok_or_else(|| {
        usage(anyhow::anyhow!(
            "no client config: pass --config FILE or set HPCS_CLIENT_CONFIG"
        ))
    })?;
    let config = hpcs_core::config::load_client(&config_path).map_err(usage)?;
    let mut target = SshTarget::from_config(&config.supercomputer, &config.ssh);
    if let Some(user) = &cli.username {
        target.user = user.to_string();
    }
    target.accept_new = target.accept_new || cli.accept_new_host_key;
    let ctx = Ctx {
        cli,
        config: &config,
        target,
    };
    match &cli.command {
        None => ctx.submit(&cli.submit),
        Some(Command::Status { job }) => ctx.status(job),
        Some(Command::Cancel { job }) => ctx.cancel(job),
        Some(Command::Follow { job, workdir }) => ctx.follow_cmd(job, workdir.as_ref()),
        Some(Command::FetchOutput { job, to, workdir }) => ctx.fetch_cmd(job, to, workdir.as_ref()),
    }
}

struct Ctx<'a> {
    cli: &'a Cli,
    config: &'a ClientConfig,
    target: SshTarget,
}

/// Prints one JSON document on its own line.
fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

impl Ctx<'_> {
    fn connect(&self) -> Result<SshSession, Failure> {
        tracing::debug!(host = %self.target.host, port = self.target.port, user = %self.target.user, "connecting");
        SshSession::connect(&self.target).map_err(fail)
    }

    fn identity(&self) -> Result<hpcs_core::secret::AgeIdentity, Failure> {
        let path = output::identity_path(self.config.identity_file.as_deref()).map_err(usage)?;
        let (identity, created) = output::load_identity(&path).map_err(fail)?;
        if created {
            eprintln!(
                "created your output identity {} (mode 0600); job outputs are encrypted to {}",
                path.display(),
                identity.to_public()
            );
        }
        Ok(identity)
    }

    fn submit(&self, a: &SubmitArgs) -> Result<u8, Failure> {
        let hpcs_node = a
            .hpcs_node
            .clone()
            .or_else(|| self.config.supercomputer.hpcs_node.clone())
            .unwrap_or_else(|| DEFAULT_HPCS_NODE.to_owned());
        let spec = JobSpec::new(RawJob {
            name: a.job_name.clone(),
            nodes: a.nodes.clone().unwrap_or_else(|| "1".to_owned()),
            partition: a.partition.clone().unwrap_or_default(),
            time: a.time.clone().unwrap_or_default(),
            account: a.account.clone(),
            nodelist: a.nodelist.clone(),
            workdir: a.workdir.clone().unwrap_or_default(),
            application_info: a.application_info.clone().unwrap_or_default(),
            data_info: a.data_info.clone(),
            input_hooks: a.input_hooks.clone(),
            output_hooks: a.output_hooks.clone(),
            env_file: a.env_file.clone(),
            hpcs_node,
            args: a.args.clone(),
        })
        .map_err(usage)?;
        let identity = self.identity()?;
        let stamp = format!(
            "{}-{}",
            time::OffsetDateTime::now_utc()
                .format(time::macros::format_description!(
                    "[year][month][day]T[hour][minute][second]"
                ))
                .map_err(fail)?,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let layout = Layout::new(&spec, &stamp, identity.to_public()).map_err(fail)?;
        let script = script::render(&spec, &layout).map_err(fail)?;

        let ssh = self.connect()?;
        remote::check_artefact(&ssh, &spec.application_info, Expect::Image).map_err(fail)?;
        for d in &spec.data_info {
            remote::check_artefact(&ssh, d, Expect::Data).map_err(fail)?;
        }
        let uid = ssh
            .remote_uid()
            .context("failed to read the remote uid")
            .map_err(fail)?;
        if let Some(warning) = remote::prepare_workdir(&ssh, &spec.workdir, uid).map_err(fail)? {
            eprintln!("warning: {warning}");
        }
        remote::upload_submission(&ssh, &spec, &layout, &script).map_err(fail)?;
        let job = match slurm::submit(&ssh, &layout.script) {
            Ok(job) => job,
            Err(e) => {
                remote::remove_submission(&ssh, &layout);
                return Err(fail(e));
            }
        };
        let stdout = spec::stdout_path(&spec.workdir, job.as_str());
        let stderr = spec::stderr_path(&spec.workdir, job.as_str());
        let sealed = spec::output_path(&spec.workdir, job.as_str());
        if self.cli.json {
            print_json(&json!({
                "job_id": job,
                "workdir": spec.workdir.as_str(),
                "script": layout.script,
                "stdout": stdout,
                "stderr": stderr,
                "output": sealed,
                "output_recipient": layout.recipient.to_string(),
            }));
        } else {
            println!("{job}");
        }
        let _ = std::io::stdout().flush();
        if !a.follow && a.fetch_output.is_none() {
            return Ok(0);
        }
        let status = self.follow(&ssh, &job, Some(stdout), Some(stderr))?;
        if let Some(dest) = &a.fetch_output {
            self.fetch_after(&ssh, &job, &spec.workdir, dest, &identity, &status)?;
        }
        Ok(status.process_exit_code())
    }

    /// Follows the job, reporting states on stderr; prints the final status as JSON with --json.
    fn follow(
        &self,
        ssh: &SshSession,
        job: &JobId,
        stdout: Option<String>,
        stderr: Option<String>,
    ) -> Result<JobStatus, Failure> {
        let mut out = std::io::stdout();
        let mut err = std::io::stderr();
        let mut err2 = std::io::stderr();
        let mut on_state = |st: &JobStatus| eprintln!("job {}: {}", st.job_id, st.describe());
        let mut sinks = Sinks {
            // With --json, stdout carries only JSON lines.
            stdout: if self.cli.json { &mut err2 } else { &mut out },
            stderr: &mut err,
            on_state: &mut on_state,
        };
        let status = follow::follow(ssh, job, stdout, stderr, self.cli.poll_interval, &mut sinks)
            .with_context(|| {
                format!(
                    "stopped following job {job}; it keeps running on the cluster (`job-prep follow {job}` re-attaches, `job-prep cancel {job}` stops it)"
                )
            })
            .map_err(fail)?;
        if self.cli.json {
            print_json(&json!({ "status": status }));
        }
        Ok(status)
    }

    fn fetch_after(
        &self,
        ssh: &SshSession,
        job: &JobId,
        workdir: &WorkDir,
        dest: &Path,
        identity: &hpcs_core::secret::AgeIdentity,
        status: &JobStatus,
    ) -> Result<(), Failure> {
        match output::fetch_output(ssh, job, workdir, dest, identity) {
            Ok(f) => {
                self.report_fetched(&f);
                Ok(())
            }
            // A job that failed before sealing has no output: its state is the news.
            Err(output::OutputError::NoOutput { .. }) if !status.succeeded() => {
                eprintln!("job {job} left no output to fetch");
                Ok(())
            }
            Err(e) => Err(fail(e)),
        }
    }

    fn report_fetched(&self, f: &Fetched) {
        if self.cli.json {
            print_json(&json!({ "fetched": f }));
        } else {
            eprintln!(
                "job {}: output verified and decrypted into {} ({} entries, {} bytes)",
                f.job_id,
                f.output_dir.display(),
                f.entries,
                f.bytes
            );
        }
    }

    fn status(&self, job: &JobId) -> Result<u8, Failure> {
        let ssh = self.connect()?;
        let st = slurm::status(&ssh, job).map_err(fail)?;
        if self.cli.json {
            print_json(&serde_json::to_value(&st).map_err(fail)?);
        } else {
            println!("{} {}", st.job_id, st.describe());
        }
        Ok(0)
    }

    fn cancel(&self, job: &JobId) -> Result<u8, Failure> {
        let ssh = self.connect()?;
        slurm::cancel(&ssh, job).map_err(fail)?;
        if self.cli.json {
            print_json(&json!({ "job_id": job, "cancelled": true }));
        } else {
            eprintln!("cancel requested for job {job}");
        }
        Ok(0)
    }

    /// The job's work directory: the flag, else what Slurm reports.
    fn workdir_of(
        &self,
        ssh: &SshSession,
        job: &JobId,
        flag: Option<&WorkDir>,
    ) -> Result<WorkDir, Failure> {
        if let Some(w) = flag {
            return Ok(w.clone());
        }
        let st = slurm::status(ssh, job).map_err(fail)?;
        let w = st.work_dir.ok_or_else(|| {
            fail(anyhow::anyhow!(
                "Slurm no longer knows job {job}'s work directory\nhint: pass it with -s/--workdir"
            ))
        })?;
        w.parse()
            .with_context(|| format!("job {job}'s work directory is not one job-prep uses"))
            .map_err(fail)
    }

    fn follow_cmd(&self, job: &JobId, workdir: Option<&WorkDir>) -> Result<u8, Failure> {
        let ssh = self.connect()?;
        let (out, err) = match workdir {
            Some(w) => (
                Some(spec::stdout_path(w, job.as_str())),
                Some(spec::stderr_path(w, job.as_str())),
            ),
            None => (None, None),
        };
        let status = self.follow(&ssh, job, out, err)?;
        Ok(status.process_exit_code())
    }

    fn fetch_cmd(&self, job: &JobId, to: &Path, workdir: Option<&WorkDir>) -> Result<u8, Failure> {
        let identity = self.identity()?;
        let ssh = self.connect()?;
        let workdir = self.workdir_of(&ssh, job, workdir)?;
        let fetched = output::fetch_output(&ssh, job, &workdir, to, &identity).map_err(fail)?;
        self.report_fetched(&fetched);
        if !self.cli.json {
            println!("{}", fetched.output_dir.display());
        }
        Ok(0)
    }
}
