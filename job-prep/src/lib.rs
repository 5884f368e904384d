//! Submit an HPCS Slurm job over SSH, follow it, fetch and decrypt its output.

/// Command-line interface.
pub mod cli {
    use clap::Parser;

    /// Submit an HPCS Slurm job over SSH, follow it, fetch and decrypt its output.
    #[derive(Debug, Parser)]
    #[command(name = "job-prep", version, about)]
    pub struct Cli {}
}
