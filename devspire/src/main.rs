//! `devspire` binary (DEVELOPMENT AND TEST ONLY): parse flags, set up logging, run, map the
//! result to an exit code (0 ok, 1 failure, 2 usage or configuration error).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use devspire::cli::{ApiCommand, Cli, Command, EntryCommand};
use devspire::config::Config;
use devspire::server::Server;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => match Config::new(args.into_raw()) {
            Ok(config) => runtime.block_on(serve(config)),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        },
        Command::Rotate(args) => runtime.block_on(rotate(&args)),
        Command::Api(command) => runtime.block_on(api(command)),
        Command::Entry(EntryCommand::Create {
            admin_socket,
            spiffe_id,
            parent_id,
            selectors,
        }) => runtime.block_on(async {
            let id =
                devspire::client::create_entry(&admin_socket, &spiffe_id, &parent_id, &selectors)
                    .await?;
            println!("{id}");
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("failed to watch SIGHUP")?;
    let server = Server::bind(config)
        .await
        .context("failed to start devspire")?;
    let shared = server.shared();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            if let Err(e) = devspire::admin::rotate(&shared).await {
                tracing::error!(error = %format!("{:#}", anyhow::Error::new(e)), "SIGHUP rotation failed");
            }
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
    };
    server.serve(shutdown).await.context("devspire failed")
}

async fn rotate(args: &devspire::cli::RotateArgs) -> anyhow::Result<()> {
    let response = devspire::client::rotate(&args.admin_socket).await?;
    if args.json {
        let keys: Vec<_> = response
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kid": k.kid, "created_at": k.created_at,
                    "retire_after": k.retire_after, "active": k.active,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "active_kid": response.active_kid, "keys": keys })
        );
    } else {
        println!("{}", response.active_kid);
    }
    Ok(())
}

async fn api(command: ApiCommand) -> anyhow::Result<()> {
    match command {
        ApiCommand::FetchJwt {
            socket,
            audiences,
            spiffe_id,
            json,
        } => {
            let svids =
                devspire::client::fetch_jwt(&socket, &audiences, spiffe_id.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string(&svids)?);
            } else {
                for svid in svids {
                    println!("{} {}", svid.spiffe_id, svid.token);
                }
            }
        }
        ApiCommand::FetchX509 { socket, json } => {
            let svids = devspire::client::fetch_x509(&socket).await?;
            if json {
                println!("{}", serde_json::to_string(&svids)?);
            } else {
                for svid in svids {
                    println!("{}", svid.spiffe_id);
                }
            }
        }
    }
    Ok(())
}
