use clap::Parser;

fn main() -> std::process::ExitCode {
    let _cli = data_prep::cli::Cli::parse();
    std::process::ExitCode::SUCCESS
}
