//! Command-line interface of `hpcs-node`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Default node configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/hpcs/node.ini";
/// Default policy file.
pub const DEFAULT_POLICY: &str = "/etc/hpcs/policy.ini";

/// HPCS compute-node runtime: attest, fetch keys, decrypt, run as the user, encrypt output, wipe.
#[derive(Debug, Parser)]
#[command(name = "hpcs-node", version, about)]
pub struct Cli {
    /// Subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the images the admin policy authorises on a node.
    Images(ImagesArgs),
}

/// `hpcs-node images`.
#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Policy file.
    #[arg(long, env = "HPCS_NODE_POLICY", default_value = DEFAULT_POLICY)]
    pub policy: PathBuf,
    /// Node name (default: this host's name).
    #[arg(long)]
    pub node: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}
