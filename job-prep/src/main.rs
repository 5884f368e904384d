use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = job_prep::cli::Cli::parse();
    match job_prep::cli::run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
