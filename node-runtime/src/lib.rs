//! HPCS compute-node runtime: attest, fetch keys, decrypt, run as the user, encrypt output, wipe.

/// Command-line interface.
pub mod cli {
    use clap::Parser;

    /// HPCS compute-node runtime: attest, fetch keys, decrypt, run as the user, encrypt output, wipe.
    #[derive(Debug, Parser)]
    #[command(name = "hpcs-node", version, about)]
    pub struct Cli {}
}
