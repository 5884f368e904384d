//! Encrypt a container image, register its key, ship it to the cluster.

/// Command-line interface.
pub mod cli {
    use clap::Parser;

    /// Encrypt a container image, register its key, ship it to the cluster.
    #[derive(Debug, Parser)]
    #[command(name = "container-prep", version, about)]
    pub struct Cli {}
}
