use std::process::ExitCode;

use clap::Parser as _;
use job_prep::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    hpcs_client::logging::init("job_prep", cli.verbose);
    match job_prep::run::run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}
