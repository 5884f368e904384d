//! HPCS API server: binds artefact keys in Vault to SPIFFE workload identities.

/// Command-line interface.
pub mod cli {
    use clap::Parser;

    /// HPCS API server: binds artefact keys in Vault to SPIFFE workload identities.
    #[derive(Debug, Parser)]
    #[command(name = "hpcs-server", version, about)]
    pub struct Cli {}
}
