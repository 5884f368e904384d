use clap::Parser;

fn main() -> std::process::ExitCode {
    let _cli = job_prep::cli::Cli::parse();
    std::process::ExitCode::SUCCESS
}
