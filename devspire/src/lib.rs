//! DEVELOPMENT AND TEST ONLY: a SPIRE-compatible Workload API, Server API subset and OIDC discovery.

/// Command-line interface.
pub mod cli {
    use clap::Parser;

    /// DEVELOPMENT AND TEST ONLY: a SPIRE-compatible Workload API, Server API subset and OIDC discovery.
    #[derive(Debug, Parser)]
    #[command(name = "devspire", version, about)]
    pub struct Cli {}
}
