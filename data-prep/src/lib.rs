//! Encrypt an input data directory, register its key, ship it to the cluster.

/// Command-line interface.
pub mod cli {
    use clap::Parser;

    /// Encrypt an input data directory, register its key, ship it to the cluster.
    #[derive(Debug, Parser)]
    #[command(name = "data-prep", version, about)]
    pub struct Cli {}
}
