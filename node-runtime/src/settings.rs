//! `/etc/hpcs/node.ini`, as the runtime uses it: [`hpcs_core::config::load_node`] (which parses
//! and validates the file, naming file, line, section and key on errors) turned into the parts
//! the runtime's modules take.
//!
//! ```ini
//! [node]
//! name = node1                        ; default: the host name
//! scratch-dir = /run/hpcs             ; must be tmpfs unless require-tmpfs = false
//! require-tmpfs = true
//! engine-socket = /var/run/docker.sock ; the rootful engine (daemon) or a rootless Podman socket
//! broker-socket = /run/hpcs-node.sock ; when set, `hpcs-node run` goes through the daemon
//! hook-timeout = 5m                   ; per hook
//!
//! [policy]
//! path = /etc/hpcs/policy.ini
//!
//! [vault]
//! url = https://vault.example.org:8200
//! ca-cert = /etc/hpcs/vault-ca.pem    ; optional
//! auth-mount = jwt
//! kv-mount = hpcs
//! audience = vault
//!
//! [spire-agent]
//! socket-path = /run/spire/agent/public/api.sock
//! trust-domain = example.org
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use hpcs_core::config::ConfigError;
use hpcs_core::ids::TrustDomain;

use crate::keys::KeySource;

/// The node configuration in the runtime's terms.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Node name for image rules.
    pub name: String,
    /// Scratch root.
    pub scratch_dir: PathBuf,
    /// Refuse non-tmpfs scratch.
    pub require_tmpfs: bool,
    /// Engine socket.
    pub engine_socket: String,
    /// Daemon socket.
    pub broker_socket: Option<PathBuf>,
    /// Per-hook timeout.
    pub hook_timeout: Duration,
    /// Policy file.
    pub policy: PathBuf,
    /// Trust domain of reader IDs.
    pub trust_domain: TrustDomain,
    /// Agent and Vault.
    pub keys: KeySource,
}

/// Load `path` with the shared node config loader.
///
/// # Errors
///
/// [`ConfigError`] naming the file, section and key.
pub fn load(path: &Path) -> Result<NodeSettings, Box<ConfigError>> {
    let c = hpcs_core::config::load_node(path).map_err(Box::new)?;
    Ok(NodeSettings {
        name: c
            .node
            .name
            .as_ref()
            .map_or_else(crate::images::local_node_name, ToString::to_string),
        scratch_dir: c.node.scratch_dir.clone(),
        require_tmpfs: c.node.require_tmpfs,
        engine_socket: c.node.engine_socket.display().to_string(),
        broker_socket: c.node.broker_socket.clone(),
        hook_timeout: c.node.hook_timeout,
        policy: c.policy_file.clone(),
        trust_domain: c.trust_domain.clone(),
        keys: KeySource {
            agent_socket: c.spire_agent.socket_path.clone(),
            vault_url: c.vault.url.to_string().trim_end_matches('/').to_owned(),
            vault_ca: c.vault.ca_cert.clone(),
            auth_mount: c.vault.auth_mount.clone(),
            kv_mount: c.vault.kv_mount.clone(),
            audience: c.vault.audience.clone(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ini_through_core() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("node.ini");
        std::fs::write(
            &p,
            "[node]\nname = node1\nscratch-dir = /dev/shm/hpcs\nhook-timeout = 5\n\
             broker-socket = /run/hpcs.sock\n[policy]\npath = /etc/hpcs/policy.ini\n\
             [vault]\nurl = http://127.0.0.1:8200\n[spire-agent]\nsocket-path = /tmp/a.sock\n\
             trust-domain = hpcs.test\n",
        )
        .expect("write");
        let s = load(&p).expect("load");
        assert_eq!(s.name, "node1");
        assert_eq!(s.scratch_dir, PathBuf::from("/dev/shm/hpcs"));
        assert_eq!(s.hook_timeout, Duration::from_secs(5));
        assert_eq!(s.keys.vault_url, "http://127.0.0.1:8200");
        assert_eq!(s.broker_socket, Some(PathBuf::from("/run/hpcs.sock")));
        assert!(s.require_tmpfs);
        std::fs::write(&p, "[node]\nbogus = 1\n").expect("write");
        assert!(load(&p).is_err());
    }

    #[test]
    fn shipped_examples_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/node");
        let s = load(&root.join("node.ini")).expect("deploy/node/node.ini");
        assert_eq!(s.broker_socket, Some(PathBuf::from("/run/hpcs-node.sock")));
        let p =
            crate::policy::Policy::load(&root.join("policy.ini")).expect("deploy/node/policy.ini");
        assert_eq!(p.images_for_node("node1").count(), 2);
    }
}
