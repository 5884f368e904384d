use clap::Parser;

fn main() -> std::process::ExitCode {
    let _cli = devspire::cli::Cli::parse();
    std::process::ExitCode::SUCCESS
}
