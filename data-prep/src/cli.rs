//! Command-line interface.

use std::path::PathBuf;

use clap::{ArgGroup, Parser};
use hpcs_core::ids::{ArtefactName, GroupName, NodeName, RemotePath, UserName};

/// Tar an input directory, encrypt it, register its key with the HPCS server, and ship it to
/// the cluster.
///
/// The directory is packed as a deterministic tar stream (relative names, symlinks stored as
/// symlinks and never followed out of the tree, FIFOs, sockets and devices refused), encrypted
/// with a fresh age key as it streams, and the ciphertext plus `<name>.info.yaml` are uploaded
/// over SSH to --data-path-at-rest. The key goes to Vault with a single-use credential from the
/// server; only the named users and groups on the named compute nodes can read it.
///
/// Exit codes: 0 ok, 1 failure (nothing left registered), 2 usage or config error,
/// 3 failure after which a secret may still be registered.
#[derive(Debug, Parser)]
#[command(name = "data-prep", version, about, long_about)]
#[command(group(ArgGroup::new("readers").required(true).multiple(true).args(["users", "groups"])))]
pub struct Cli {
    /// Client config (INI with [spire-server], [hpcs-server], [vault], [supercomputer], [ssh]).
    #[arg(long, env = "HPCS_CLIENT_CONFIG", value_name = "FILE")]
    pub config: PathBuf,

    /// The input directory.
    #[arg(short = 'i', long, value_name = "DIR")]
    pub input_data: PathBuf,

    /// Cluster users allowed to read the key (comma-separated).
    #[arg(short = 'u', long, value_delimiter = ',', value_name = "LIST")]
    pub users: Vec<UserName>,

    /// Cluster groups allowed to read the key (comma-separated).
    #[arg(short = 'g', long, value_delimiter = ',', value_name = "LIST")]
    pub groups: Vec<GroupName>,

    /// Compute nodes on which the key may be read (comma-separated).
    #[arg(
        short = 'c',
        long,
        value_delimiter = ',',
        required = true,
        value_name = "LIST"
    )]
    pub compute_nodes: Vec<NodeName>,

    /// Directory on the cluster for the ciphertext and the info file (absolute).
    #[arg(long, value_name = "REMOTE_DIR")]
    pub data_path_at_rest: RemotePath,

    /// Cluster user name for SSH (default: [supercomputer] username).
    #[arg(long, value_name = "USER")]
    pub username: Option<UserName>,

    /// Artefact name: file names `<name>.age` and `<name>.info.yaml` (default: the directory's
    /// name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<ArtefactName>,

    /// Record an unknown SSH host key in known_hosts instead of refusing it (a changed key is
    /// always refused).
    #[arg(long)]
    pub accept_new_host_key: bool,

    /// Check the directory and print the plan; register, write and upload nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// More logging on stderr (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn readers_are_required() {
        let base = [
            "data-prep",
            "--config",
            "c.ini",
            "-i",
            "in",
            "-c",
            "node1",
            "--data-path-at-rest",
            "/scratch/a",
        ];
        assert!(Cli::try_parse_from(base).is_err());
        let cli = Cli::try_parse_from(base.iter().copied().chain(["-g", "proj,other"])).unwrap();
        assert_eq!(cli.groups.len(), 2);
    }
}
