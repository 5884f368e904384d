//! Command-line interface.

use std::path::PathBuf;

use clap::{ArgGroup, Parser};
use hpcs_core::ids::{ArtefactName, GroupName, NodeName, RemotePath, UserName};

/// Encrypt a container image, register its key with the HPCS server, and ship it to the
/// cluster.
///
/// The image is exported from the local Docker engine (or read from a `docker save` archive),
/// encrypted with a fresh age key as it streams, and the ciphertext plus `<name>.info.yaml` are
/// uploaded over SSH to --data-path-at-rest. The key goes to Vault with a single-use credential
/// from the server; only the named users and groups on the named compute nodes can read it.
///
/// Exit codes: 0 ok, 1 failure (nothing left registered), 2 usage or config error,
/// 3 failure after which a secret may still be registered.
#[derive(Debug, Parser)]
#[command(name = "container-prep", version, about, long_about)]
#[command(group(ArgGroup::new("input").required(true).args(["base_oci_image", "image_archive"])))]
#[command(group(ArgGroup::new("readers").required(true).multiple(true).args(["users", "groups"])))]
pub struct Cli {
    /// Client config (INI with [spire-server], [hpcs-server], [vault], [supercomputer], [ssh]).
    #[arg(long, env = "HPCS_CLIENT_CONFIG", value_name = "FILE")]
    pub config: PathBuf,

    /// Image in the local Docker engine, e.g. `jp2a:latest` or an image ID.
    #[arg(short = 'b', long, value_name = "IMAGE")]
    pub base_oci_image: Option<String>,

    /// A `docker save` archive to encrypt instead of exporting from the engine.
    #[arg(long, value_name = "FILE")]
    pub image_archive: Option<PathBuf>,

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

    /// Artefact name: file names `<name>.age` and `<name>.info.yaml` (default: from the image).
    #[arg(long, value_name = "NAME")]
    pub name: Option<ArtefactName>,

    /// Docker engine socket (default: DOCKER_HOST or the engine's default socket).
    #[arg(long, env = "DOCKER_HOST", value_name = "URL")]
    pub docker_host: Option<String>,

    /// Record an unknown SSH host key in known_hosts instead of refusing it (a changed key is
    /// always refused).
    #[arg(long)]
    pub accept_new_host_key: bool,

    /// Print the plan and check the inputs; register, write and upload nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// More logging on stderr (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// An artefact name derived from an image reference: `repo/name:tag` -> `name_tag`.
#[must_use]
pub fn default_name(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    let mut out: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    while out.starts_with(['.', '-', '_']) {
        out.remove(0);
    }
    if out.is_empty() {
        out.push_str("image");
    }
    out
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
    fn names_from_images() {
        assert_eq!(default_name("registry.example.org/ns/jp2a:1.0"), "jp2a_1.0");
        assert_eq!(default_name("sha256:abc"), "sha256_abc");
        assert_eq!(default_name("..."), "image");
    }

    #[test]
    fn parses_hpcs_style_flags() {
        let cli = Cli::try_parse_from([
            "container-prep",
            "--config",
            "c.ini",
            "-b",
            "alpine:3",
            "-u",
            "alice,bob",
            "-c",
            "node1",
            "--data-path-at-rest",
            "/scratch/a",
        ])
        .unwrap();
        assert_eq!(cli.users.len(), 2);
        assert!(
            Cli::try_parse_from([
                "container-prep",
                "--config",
                "c",
                "-c",
                "n",
                "-u",
                "a",
                "--data-path-at-rest",
                "/x"
            ])
            .is_err(),
            "an input is required"
        );
    }
}
