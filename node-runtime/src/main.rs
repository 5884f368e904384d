use clap::Parser;

fn main() -> std::process::ExitCode {
    let _cli = hpcs_node::cli::Cli::parse();
    std::process::ExitCode::SUCCESS
}
