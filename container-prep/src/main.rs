use clap::Parser;

fn main() -> std::process::ExitCode {
    let _cli = container_prep::cli::Cli::parse();
    std::process::ExitCode::SUCCESS
}
