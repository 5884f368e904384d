use std::process::ExitCode;

use clap::Parser;
use data_prep::cli::Cli;
use data_prep::run::{human, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(data_prep::EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(report) => {
            if cli.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: cannot print the result: {e}");
                        return ExitCode::from(data_prep::EXIT_FAILURE);
                    }
                }
            } else {
                print!("{}", human(&report));
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

fn init_tracing(verbose: u8) {
    let ours = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HPCS_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "warn,data_prep={ours},hpcs_client={ours},hpcs_core={ours}"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
