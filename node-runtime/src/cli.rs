//! Command-line interface of `hpcs-node`, and the glue from parsed flags to the library.
//!
//! Exit codes: `run` exits with the application's exit code when everything else succeeded
//! (0-255); 1 for any failure (policy denial, key refusal, tampering, hook failure, cleanup
//! failure); 2 for usage and configuration errors; 143 after SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use hpcs_core::secret::AgeRecipient;
use tokio_util::sync::CancellationToken;

use crate::policy::{Gpus, NetworkMode, Policy, Request};
use crate::run::{EXIT_CANCELLED, JobPlan, RunError};
use crate::session::SessionConfig;
use crate::settings::NodeSettings;

/// Default node configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/hpcs/node.ini";
/// Default policy file.
pub const DEFAULT_POLICY: &str = "/etc/hpcs/policy.ini";

/// HPCS compute-node runtime: attest, fetch keys, decrypt, run as the user, encrypt output, wipe.
#[derive(Debug, Parser)]
#[command(name = "hpcs-node", version, about)]
pub struct Cli {
    /// Node configuration file.
    #[arg(long, global = true, env = "HPCS_NODE_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Policy file (overrides `[policy] path`).
    #[arg(long, global = true, env = "HPCS_NODE_POLICY")]
    pub policy: Option<PathBuf>,
    /// Subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one confidential job (inside a Slurm job, as the job user).
    Run(Box<RunArgs>),
    /// List the images the admin policy authorises on a node.
    Images(ImagesArgs),
    /// Run the root broker that lets job users reach a rootful engine safely.
    Daemon(DaemonArgs),
}

/// `hpcs-node run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Info file of the encrypted container image.
    #[arg(long, value_name = "FILE")]
    pub application_info: PathBuf,
    /// Info file of an encrypted data set (repeatable); unpacked under /data.
    #[arg(long, value_name = "FILE")]
    pub data_info: Vec<PathBuf>,
    /// Job working directory; the sealed output goes to `<DIR>/output/<job>.tar.age`.
    #[arg(long, value_name = "DIR")]
    pub workdir: PathBuf,
    /// Directory of input hooks (run in name order after decryption, before the app).
    #[arg(long, value_name = "DIR")]
    pub input_hooks: Option<PathBuf>,
    /// Directory of output hooks (run after the app, before output encryption).
    #[arg(long, value_name = "DIR")]
    pub output_hooks: Option<PathBuf>,
    /// age recipient (`age1...`) the output is encrypted to.
    #[arg(long, value_name = "AGE_PUBKEY")]
    pub output_recipient: AgeRecipient,
    /// File of `NAME=value` lines passed into the container.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Network for the container (if the policy allows).
    #[arg(long, value_enum, default_value = "none")]
    pub network: NetworkArg,
    /// GPUs for the container (if the policy allows).
    #[arg(long, value_enum, default_value = "none")]
    pub gpus: GpusArg,
    /// Admin-defined mount to add, by container path (repeatable).
    #[arg(long = "mount", value_name = "PATH")]
    pub mounts: Vec<String>,
    /// Working directory inside the container (if the policy allows).
    #[arg(long, value_name = "PATH")]
    pub container_workdir: Option<String>,
    /// Size of /dev/shm in bytes (if the policy allows).
    #[arg(long, value_name = "BYTES")]
    pub shm_size: Option<i64>,
    /// Ask for a writable root filesystem (if the policy allows).
    #[arg(long)]
    pub writable_rootfs: bool,
    /// Talk to the engine directly (e.g. a rootless Podman socket), ignoring `broker-socket`.
    #[arg(long)]
    pub direct: bool,
    /// Engine socket for direct mode (overrides `[node] engine-socket`).
    #[arg(long, value_name = "SOCKET")]
    pub engine_socket: Option<String>,
    /// Daemon socket (overrides `[node] broker-socket`).
    #[arg(long, value_name = "SOCKET", conflicts_with = "direct")]
    pub broker_socket: Option<PathBuf>,
    /// Arguments of the application (after `--`).
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// Network choice on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum NetworkArg {
    /// Loopback only.
    None,
    /// The node's network.
    Host,
}

/// GPU choice on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GpusArg {
    /// No GPUs.
    None,
    /// All GPUs.
    All,
}

/// `hpcs-node images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Node name (default: `[node] name`, else the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `hpcs-node daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Socket to listen on (overrides `[node] broker-socket`).
    #[arg(long, value_name = "SOCKET")]
    pub socket: Option<PathBuf>,
    /// Root of the proc filesystem (for tests).
    #[arg(long, default_value = "/proc", hide = true)]
    pub proc_root: PathBuf,
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// The error.
    pub error: anyhow::Error,
}

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: e.into(),
    }
}

fn fail(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 1,
        error: e.into(),
    }
}

fn settings(cli: &Cli) -> Result<NodeSettings, Failure> {
    let mut s = crate::settings::load(&cli.config).map_err(usage)?;
    if let Some(p) = &cli.policy {
        s.policy.clone_from(p);
    }
    Ok(s)
}

fn cancel_on_signals() -> Result<CancellationToken, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).map_err(fail)?;
    let mut int = signal(SignalKind::interrupt()).map_err(fail)?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::warn!("SIGTERM: cancelling and cleaning up"),
            _ = int.recv() => tracing::warn!("SIGINT: cancelling and cleaning up"),
        }
        t.cancel();
    });
    Ok(token)
}

/// Execute the parsed command; returns the process exit code.
///
/// # Errors
///
/// A [`Failure`] carrying the exit code to use and the error to print.
pub async fn execute(cli: Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Images(args) => {
            let policy = match &cli.policy {
                Some(p) => p.clone(),
                None => settings(&cli)?.policy,
            };
            let node = match &args.node {
                Some(n) => n.clone(),
                None => crate::settings::load(&cli.config)
                    .map(|s| s.name)
                    .unwrap_or_else(|_| crate::images::local_node_name()),
            };
            let text = crate::images::list(&policy, &node, args.json).map_err(usage)?;
            print!("{text}");
            Ok(0)
        }
        Command::Daemon(args) => daemon(&cli, args).await,
        Command::Run(args) => run(&cli, args).await,
    }
}

async fn run(cli: &Cli, args: &RunArgs) -> Result<u8, Failure> {
    let s = settings(cli)?;
    let mut env = crate::run::slurm_env();
    if let Some(f) = &args.env_file {
        env.extend(crate::run::read_env_file(f).map_err(usage)?);
    }
    let job_id = std::env::var("SLURM_JOB_ID")
        .ok()
        .filter(|j| crate::job::is_job_id(j))
        .unwrap_or_else(|| format!("local-{}", std::process::id()));
    let plan = JobPlan {
        app_info: args.application_info.clone(),
        data_infos: args.data_info.clone(),
        workdir: args.workdir.clone(),
        input_hooks: args.input_hooks.clone(),
        output_hooks: args.output_hooks.clone(),
        recipient: args.output_recipient.clone(),
        env,
        args: args.args.clone(),
        request: Request {
            network: Some(match args.network {
                NetworkArg::None => NetworkMode::None,
                NetworkArg::Host => NetworkMode::Host,
            }),
            gpus: Some(match args.gpus {
                GpusArg::None => Gpus::None,
                GpusArg::All => Gpus::All,
            }),
            mounts: args.mounts.clone(),
            workdir: args.container_workdir.clone(),
            shm_size: args.shm_size,
            writable_rootfs: args.writable_rootfs,
        },
        job_id,
        trust_domain: s.trust_domain.clone(),
    };
    let cancel = cancel_on_signals()?;
    let broker = if args.direct {
        None
    } else {
        args.broker_socket
            .clone()
            .or_else(|| s.broker_socket.clone())
    };
    let result = match broker {
        Some(socket) => {
            let mut exec = crate::broker::BrokerClient::connect(&socket)
                .await
                .map_err(fail)?;
            crate::run::run_job(&mut exec, &plan, &s.keys, cancel).await
        }
        None => {
            let socket = args
                .engine_socket
                .clone()
                .unwrap_or_else(|| s.engine_socket.clone());
            let policy = Arc::new(Policy::load(&s.policy).map_err(usage)?);
            let caller = crate::job::Caller::this_process().map_err(fail)?;
            let engine = Arc::new(
                crate::container::DockerEngine::connect(&socket)
                    .await
                    .map_err(fail)?,
            );
            let config = SessionConfig {
                node: s.name.clone(),
                scratch_root: s.scratch_dir.clone(),
                require_tmpfs: s.require_tmpfs,
                policy,
                hook_timeout: s.hook_timeout,
                privileged: false,
            };
            let mut exec = crate::run::LocalExecutor::new(engine, config, caller);
            crate::run::run_job(&mut exec, &plan, &s.keys, cancel).await
        }
    };
    match result {
        Ok(outcome) => {
            tracing::info!(output = %outcome.output.display(), "output sealed");
            Ok(u8::try_from(outcome.app_exit.clamp(0, 255)).unwrap_or(1))
        }
        Err(RunError::Cancelled) => Err(Failure {
            code: EXIT_CANCELLED,
            error: RunError::Cancelled.into(),
        }),
        Err(e) => Err(fail(e)),
    }
}

async fn daemon(cli: &Cli, args: &DaemonArgs) -> Result<u8, Failure> {
    let s = settings(cli)?;
    let socket = args
        .socket
        .clone()
        .or_else(|| s.broker_socket.clone())
        .ok_or_else(|| {
            usage(anyhow::anyhow!(
                "no [node] broker-socket configured and no --socket given"
            ))
        })?;
    let engine_socket = s.engine_socket.clone();
    // Validate the policy now, so a broken file fails the start rather than every job.
    let policy = Arc::new(Policy::load(&s.policy).map_err(usage)?);
    let engine = Arc::new(
        crate::container::DockerEngine::connect(&engine_socket)
            .await
            .map_err(fail)?,
    );
    let config = crate::broker::DaemonConfig {
        policy_path: s.policy.clone(),
        session: SessionConfig {
            node: s.name.clone(),
            scratch_root: s.scratch_dir.clone(),
            require_tmpfs: s.require_tmpfs,
            policy,
            hook_timeout: s.hook_timeout,
            privileged: true,
        },
        proc_root: args.proc_root.clone(),
    };
    std::fs::create_dir_all(&s.scratch_dir).map_err(fail)?;
    // Nothing of a crashed predecessor may outlive it: its containers, images and plaintext.
    match crate::broker::sweep(&engine, &s.scratch_dir).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(n, "removed job directories left by a previous daemon"),
        Err(e) => tracing::error!(error = %e, "could not sweep leftovers of a previous daemon"),
    }
    let listener = crate::broker::bind(&socket)
        .with_context(|| format!("binding {}", socket.display()))
        .map_err(fail)?;
    let shutdown = cancel_on_signals()?;
    tracing::info!(socket = %socket.display(), node = %s.name, "hpcs-node daemon listening");
    crate::broker::serve(listener, engine, config, shutdown).await;
    let _ = std::fs::remove_file(&socket);
    Ok(0)
}
