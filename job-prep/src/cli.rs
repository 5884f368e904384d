//! Command line of `job-prep` and the glue from flags to the library.
//!
//! HPCS spellings: `-ai`/`-di` become `--ai`/`--di` (aliases of `--application-info` and
//! `--data-info`); `-args "..."` becomes `-- ARGS...` (an argument vector, never re-parsed).
//! Exit codes: 0 ok, 1 failure (or the job's failure under `--follow`), 2 usage/config.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use hpcs_client::ssh::{SshSession, SshTarget};
use hpcs_core::info::{ArtefactKind, INFO_FILE_MAX_BYTES, InfoFile};

use crate::slurm::{self, JobId};
use crate::spec::{JobSpec, RawJob};

/// Submit an HPCS Slurm job over SSH and follow it.
#[derive(Debug, Parser)]
#[command(
    name = "job-prep",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Client configuration file.
    #[arg(
        long,
        global = true,
        env = "HPCS_CLIENT_CONFIG",
        default_value = "client.ini"
    )]
    pub config: PathBuf,
    /// Subcommand; without one, submit a job.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Submission flags.
    #[command(flatten)]
    pub submit: SubmitArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a job's state and exit code.
    Status {
        /// Job id.
        job: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job.
    Cancel {
        /// Job id.
        job: String,
    },
    /// Download a finished job's encrypted output, decrypt it with your output identity and
    /// unpack it safely into `<DIR>/<JOBID>/`.
    FetchOutput {
        /// Job id.
        job: String,
        /// The job's working directory on the cluster (`-s/--workdir` of the submission).
        #[arg(short = 's', long)]
        workdir: String,
        /// Local directory to unpack into.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Output identity file (default: `[client] identity-file`, else
        /// `~/.config/hpcs/output-identity.txt`).
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
}

/// Flags of a submission.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Number of nodes.
    #[arg(short = 'N', long, default_value = "1")]
    pub nodes: String,
    /// Partition.
    #[arg(short = 'p', long)]
    pub partition: Option<String>,
    /// Time limit.
    #[arg(short = 't', long, default_value = "00:10:00")]
    pub time: String,
    /// Account.
    #[arg(short = 'A', long)]
    pub account: Option<String>,
    /// Node list.
    #[arg(short = 'w', long)]
    pub nodelist: Option<String>,
    /// Remote working directory (created if missing).
    #[arg(short = 's', long)]
    pub workdir: Option<String>,
    /// Remote info file of the application image (HPCS `-ai`).
    #[arg(long, visible_alias = "ai")]
    pub application_info: Option<String>,
    /// Remote info file of a data set, repeatable (HPCS `-di`).
    #[arg(long, visible_alias = "di")]
    pub data_info: Vec<String>,
    /// Remote input hooks directory.
    #[arg(short = 'i', long)]
    pub input_hooks_dir: Option<String>,
    /// Remote output hooks directory.
    #[arg(short = 'o', long)]
    pub output_hooks_dir: Option<String>,
    /// Remote env file (`NAME=value` lines) for the container.
    #[arg(long)]
    pub env_file: Option<String>,
    /// Job name.
    #[arg(short = 'J', long)]
    pub job_name: Option<String>,
    /// Follow the job: stream its output and exit with its result.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// After the job completed successfully, fetch, decrypt and unpack its output into
    /// `<DIR>/<JOBID>/` (implies --follow).
    #[arg(long, value_name = "DIR")]
    pub fetch_output: Option<PathBuf>,
    /// Print the job id as JSON.
    #[arg(long)]
    pub json: bool,
    /// Path of hpcs-node on the compute nodes.
    #[arg(long, env = "HPCS_NODE_PATH", default_value = "hpcs-node")]
    pub hpcs_node: String,
    /// Identity file (age) for job outputs; default `[client] identity-file` or
    /// `~/.config/hpcs/output-identity.txt`.
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// Application arguments (HPCS `-args`).
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// Runs the CLI; returns the process exit code.
///
/// # Errors
///
/// Any failure, with context; `main` prints it and exits 1.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    let config = hpcs_core::config::load_client(&cli.config)
        .with_context(|| format!("failed to load {}", cli.config.display()))?;
    let target = SshTarget::from_config(&config.supercomputer, &config.ssh);
    let ssh = SshSession::connect(&target)?;
    match cli.command {
        Some(Command::Status { job, json }) => {
            let job: JobId = job.parse()?;
            let st = slurm::status(&ssh, &job)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"job_id": job.to_string(), "state": st.state, "exit_code": st.exit_code})
                );
            } else {
                println!(
                    "{job} {} {}",
                    st.state,
                    st.exit_code.as_deref().unwrap_or("-")
                );
            }
            Ok(0)
        }
        Some(Command::Cancel { job }) => {
            let job: JobId = job.parse()?;
            slurm::cancel(&ssh, &job)?;
            eprintln!("cancelled job {job}");
            Ok(0)
        }
        Some(Command::FetchOutput {
            job,
            workdir,
            to,
            identity,
        }) => {
            let job: JobId = job.parse()?;
            let identity_file = identity_path(identity, config.identity_file.as_deref())?;
            let identity = hpcs_core::secret::read_identity_file(&identity_file)?;
            let dir = fetch_output(&ssh, &job, &workdir, &to, &identity)?;
            println!("{}", dir.display());
            Ok(0)
        }
        None => submit(&ssh, cli.submit, config.identity_file.as_deref()),
    }
}

/// Downloads `<workdir>/output/<job>.tar.age`, decrypts it with `identity` and unpacks it into
/// `<to>/<job>/`. The ciphertext is staged in a 0600 file next to the destination; plaintext is
/// unpacked into `<to>/<job>.partial` and renamed into place only when decryption and unpacking
/// both succeeded, so a tampered or truncated output never leaves a plausible-looking result.
///
/// # Errors
///
/// SSH failures, a missing output, decryption failures (wrong identity, tampering, truncation)
/// and unsafe archive entries.
pub fn fetch_output(
    ssh: &SshSession,
    job: &JobId,
    workdir: &str,
    to: &Path,
    identity: &hpcs_core::secret::AgeIdentity,
) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt as _;

    if workdir.contains('\0') || !workdir.starts_with('/') {
        bail!("--workdir {workdir:?}: expected an absolute path on the cluster");
    }
    let remote = format!("{}/output/{job}.tar.age", workdir.trim_end_matches('/'));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(to)
        .with_context(|| format!("failed to create {}", to.display()))?;
    let final_dir = to.join(job.to_string());
    if final_dir.exists() {
        bail!(
            "{} exists already\nhint: move it away or choose another --to",
            final_dir.display()
        );
    }
    let staged = to.join(format!(".{job}.tar.age.part"));
    let partial = to.join(format!("{job}.partial"));
    let result = (|| -> anyhow::Result<()> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged)
            .with_context(|| format!("failed to create {}", staged.display()))?;
        let bytes = ssh
            .download(&remote, std::io::BufWriter::new(file))
            .with_context(|| format!("failed to download the output of job {job}"))?;
        eprintln!("downloaded {remote} ({bytes} bytes)");
        let cipher = std::fs::File::open(&staged)
            .with_context(|| format!("failed to open {}", staged.display()))?;
        let reader =
            hpcs_core::crypto::decrypt_reader(std::io::BufReader::new(cipher), identity, None)
                .with_context(|| format!("failed to decrypt {remote} with your output identity"))?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&partial)
            .with_context(|| format!("failed to create {}", partial.display()))?;
        let summary = hpcs_core::archive::unpack_safe(reader, &partial)
            .with_context(|| format!("failed to decrypt and unpack the output of job {job}"))?;
        std::fs::rename(&partial, &final_dir)
            .with_context(|| format!("failed to move the output to {}", final_dir.display()))?;
        eprintln!(
            "unpacked {} entries ({} bytes) into {}",
            summary.entries,
            summary.file_bytes,
            final_dir.display()
        );
        Ok(())
    })();
    let _ = std::fs::remove_file(&staged);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    result.map(|()| final_dir)
}

fn identity_path(flag: Option<PathBuf>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag.or_else(|| config.map(Path::to_owned)) {
        return Ok(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("neither XDG_CONFIG_HOME nor HOME is set")?;
    let dir = base.join("hpcs");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("failed to create {}", dir.display()))?;
    Ok(dir.join("output-identity.txt"))
}

use std::os::unix::fs::DirBuilderExt as _;

fn check_info(ssh: &SshSession, path: &str, want_image: bool) -> anyhow::Result<InfoFile> {
    let bytes = ssh.read_small(path, INFO_FILE_MAX_BYTES)?;
    let info = InfoFile::from_slice(&bytes, Path::new(path))?;
    let is_image = matches!(info.kind, ArtefactKind::Image(_));
    if is_image != want_image {
        bail!(
            "info file {path} describes a {} artefact, expected {}",
            info.kind.as_str(),
            if want_image { "an image" } else { "a data set" }
        );
    }
    let ct = info.path_at_rest.to_string();
    let size = ssh.file_size(&ct)?;
    if size != info.ciphertext.size {
        bail!(
            "ciphertext {ct} has {size} bytes, its info file {path} says {}",
            info.ciphertext.size
        );
    }
    let digest = ssh.sha256(&ct)?;
    if digest != info.ciphertext.sha256 {
        bail!(
            "ciphertext {ct} has sha256 {digest}, its info file {path} says {}",
            info.ciphertext.sha256
        );
    }
    Ok(info)
}

fn submit(ssh: &SshSession, a: SubmitArgs, config_identity: Option<&Path>) -> anyhow::Result<u8> {
    let (Some(partition), Some(workdir), Some(application_info)) =
        (a.partition, a.workdir, a.application_info)
    else {
        bail!("--partition, --workdir and --application-info are required to submit a job");
    };
    let identity_file = identity_path(a.identity, config_identity)?;
    let (identity, created) = hpcs_core::secret::load_or_create_identity(&identity_file)?;
    if created {
        eprintln!("created output identity {}", identity_file.display());
    }
    let spec = JobSpec::new(RawJob {
        name: a.job_name,
        nodes: a.nodes,
        partition,
        time: a.time,
        account: a.account,
        nodelist: a.nodelist,
        workdir,
        application_info,
        data_info: a.data_info,
        input_hooks: a.input_hooks_dir,
        output_hooks: a.output_hooks_dir,
        env_file: a.env_file,
        output_recipient: identity.to_public().as_str().to_owned(),
        hpcs_node: a.hpcs_node,
        args: a.args,
    })?;
    check_info(ssh, spec.application_info.as_ref(), true)?;
    for d in &spec.data_info {
        check_info(ssh, d.as_ref(), false)?;
    }
    let script = crate::script::render(&spec)?;
    ssh.mkdir_p(&spec.workdir, 0o700)?;
    let remote = format!(
        "{}/hpcs-job-{}-{}.sh",
        spec.workdir,
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    ssh.upload(script.as_bytes(), &remote, 0o700, |_| {})?;
    let job = slurm::submit(ssh, &remote)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"job_id": job.to_string(), "script": remote})
        );
    } else {
        println!("{job}");
    }
    if !a.follow && a.fetch_output.is_none() {
        return Ok(0);
    }
    let code = follow(ssh, &job, &spec.workdir)?;
    if code == 0
        && let Some(to) = &a.fetch_output
    {
        let dir = fetch_output(ssh, &job, &spec.workdir, to, &identity)?;
        println!("{}", dir.display());
    }
    Ok(code)
}

/// Streams the job's stdout and stderr and reports state changes until it ends; returns 0 if it
/// completed with exit code 0, else 1.
///
/// # Errors
///
/// SSH and Slurm failures.
pub fn follow(ssh: &SshSession, job: &JobId, workdir: &str) -> anyhow::Result<u8> {
    let out_path = format!("{workdir}/hpcs-{job}.out");
    let err_path = format!("{workdir}/hpcs-{job}.err");
    let (mut out_off, mut err_off) = (0u64, 0u64);
    let mut last_state = String::new();
    let pump = |out_off: &mut u64, err_off: &mut u64| -> anyhow::Result<()> {
        let o = ssh.read_from(&out_path, *out_off, 1 << 20)?;
        *out_off += o.len() as u64;
        std::io::stdout().write_all(&o)?;
        std::io::stdout().flush()?;
        let e = ssh.read_from(&err_path, *err_off, 1 << 20)?;
        *err_off += e.len() as u64;
        std::io::stderr().write_all(&e)?;
        Ok(())
    };
    loop {
        let st = slurm::status(ssh, job)?;
        if st.state != last_state {
            eprintln!("job {job}: {}", st.state);
            last_state.clone_from(&st.state);
        }
        pump(&mut out_off, &mut err_off)?;
        if st.is_terminal() {
            // Slurm may flush the last bytes after the state change.
            std::thread::sleep(Duration::from_millis(300));
            pump(&mut out_off, &mut err_off)?;
            eprintln!(
                "job {job} finished: {} (exit code {})",
                st.state,
                st.exit_code.as_deref().unwrap_or("unknown")
            );
            return Ok(if st.succeeded() { 0 } else { 1 });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
