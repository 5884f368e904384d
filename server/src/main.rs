//! `hpcs-server --config server.ini`: the HPCS API server.
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM or SIGINT), 1 on a runtime failure, 2 on a usage
//! or configuration error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// HPCS API server: binds artefact keys in Vault to SPIFFE workload identities.
#[derive(Debug, Parser)]
#[command(name = "hpcs-server", version, about)]
struct Cli {
    /// Server configuration (INI: [server], [spire-server], [spire-agent], [vault]).
    #[arg(long, value_name = "FILE", required_unless_present_any = ["openapi", "verify_audit"])]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    json_logs: bool,
    /// Print the OpenAPI document and exit.
    #[arg(long, conflicts_with_all = ["config", "verify_audit"])]
    openapi: bool,
    /// Verify the hash chain of an audit log and exit (0: intact).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    verify_audit: Option<PathBuf>,
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing requests in flight"),
        _ = int.recv() => tracing::info!("SIGINT: finishing requests in flight"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.openapi {
        let doc = hpcs_server::openapi::document();
        match serde_json::to_string_pretty(&doc) {
            Ok(s) => {
                println!("{s}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(path) = cli.verify_audit {
        return match hpcs_server::audit::verify_file(&path) {
            Ok(n) => {
                println!("{}: {n} records, chain intact", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {:#}", anyhow::Error::from(e));
                ExitCode::FAILURE
            }
        };
    }
    init_tracing(cli.json_logs);
    let Some(config) = cli.config else {
        return ExitCode::from(2);
    };
    let settings = match hpcs_server::config::load(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(hpcs_server::run::run(settings, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if e.is_config() { 2 } else { 1 };
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::from(code)
        }
    }
}
