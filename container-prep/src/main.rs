use std::process::ExitCode;

use clap::Parser;
use container_prep::cli::Cli;
use container_prep::run::{human, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    hpcs_client::logging::init("container_prep", cli.verbose);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(container_prep::EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(report) => {
            if cli.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: cannot print the result: {e}");
                        return ExitCode::from(container_prep::EXIT_FAILURE);
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
