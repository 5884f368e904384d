use clap::Parser;

fn main() -> std::process::ExitCode {
    let _cli = hpcs_server::cli::Cli::parse();
    std::process::ExitCode::SUCCESS
}
