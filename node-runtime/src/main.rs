use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = hpcs_node::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter({
            let mut filter = tracing_subscriber::EnvFilter::try_from_env("HPCS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            // HTTP and Vault client internals never log below info, whatever HPCS_LOG says:
            // their debug output is close to tokens and keys.
            for quiet in [
                "rustify=info",
                "vaultrs=info",
                "hyper=info",
                "h2=info",
                "reqwest=info",
            ] {
                if let Ok(d) = quiet.parse() {
                    filter = filter.add_directive(d);
                }
            }
            filter
        })
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(hpcs_node::cli::execute(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}
