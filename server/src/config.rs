//! Typed, validated server settings.
//!
//! The INI file (`[server]`, `[spire-server]`, `[node-agents]`, `[spire-agent]`, `[vault]`) is
//! parsed and validated key by key by `hpcs_core::config::load_server`; [`Settings::from_core`]
//! turns the result into what the server runs with and checks what only the server cares about:
//! plain HTTP only on a loopback address, an audit log, agent IDs in our trust domain.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hpcs_core::config::ServerConfig;
use hpcs_core::ids::{ClientPrefix, NodeName, SpiffeId, TrustDomain};

use crate::secrets::{AgentMap, NODE_PLACEHOLDER};
use crate::vault::VaultSettings;

/// Interval of the expiry sweep.
pub const DEFAULT_EXPIRY_SWEEP: Duration = Duration::from_secs(60);

/// How the API is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS with this certificate chain and key (PEM).
    Tls {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// Plain HTTP: bearer tokens cross the wire in clear. Only on a loopback address.
    PlainHttp,
}

/// Everything the server runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// TLS or plain HTTP.
    pub transport: Transport,
    /// Audience callers' JWT-SVIDs must carry.
    pub audience: String,
    /// Audit log path.
    pub audit_log: PathBuf,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Deadline of one request.
    pub request_timeout: Duration,
    /// Our trust domain.
    pub trust_domain: TrustDomain,
    /// Path prefix of client IDs.
    pub client_prefix: ClientPrefix,
    /// SPIRE server admin socket.
    pub spire_admin_socket: PathBuf,
    /// Timeout of one SPIRE call.
    pub spire_timeout: Duration,
    /// Compute node name to SPIRE agent ID.
    pub agents: AgentMap,
    /// The server's own Workload API socket.
    pub workload_socket: PathBuf,
    /// Vault.
    pub vault: VaultSettings,
    /// How often expired secrets are revoked (`None`: never).
    pub expiry_sweep: Option<Duration>,
    /// Longest lifetime of a secret (`None`: until revoked).
    pub secret_ttl: Option<Duration>,
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Plain HTTP on a non-loopback address.
    #[error(
        "[server] allow-plain-http is only allowed on a loopback address, not {listen}\nhint: set tls-cert and tls-key, or listen on 127.0.0.1 behind a TLS-terminating proxy on the same host"
    )]
    PlainHttpNotLoopback {
        /// The address.
        listen: SocketAddr,
    },
    /// No audit log.
    #[error("[server] audit-log is required: every decision is audited")]
    NoAuditLog,
    /// A body limit that does not fit in memory addresses.
    #[error("[server] max-body-bytes = {0} is too large")]
    BodyLimit(u64),
    /// An agent ID outside our trust domain or not an agent path.
    #[error(
        "[spire-server] agent ID {agent} of node {node} is not a SPIRE agent ID in trust domain {trust_domain}"
    )]
    ForeignAgent {
        /// Node.
        node: String,
        /// Agent ID.
        agent: String,
        /// Our trust domain.
        trust_domain: TrustDomain,
    },
    /// The agent ID template does not make agent IDs.
    #[error(
        "[spire-server] agent-id-template {template:?} must contain {{node}} and make SPIRE agent IDs spiffe://{trust_domain}/spire/agent/..."
    )]
    BadAgentTemplate {
        /// Template.
        template: String,
        /// Our trust domain.
        trust_domain: TrustDomain,
    },
    /// Nothing to register secrets for.
    #[error("[spire-server] no compute node is mapped to a SPIRE agent")]
    NoAgents,
}

impl Settings {
    /// Checks combinations of settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the section and what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.transport == Transport::PlainHttp && !self.listen.ip().is_loopback() {
            return Err(ConfigError::PlainHttpNotLoopback {
                listen: self.listen,
            });
        }
        if self.agents.is_empty() {
            return Err(ConfigError::NoAgents);
        }
        let agent_ok = |agent: &SpiffeId| {
            agent.trust_domain() == &self.trust_domain && agent.path().starts_with("/spire/agent/")
        };
        for (node, agent) in &self.agents.explicit {
            if !agent_ok(agent) {
                return Err(ConfigError::ForeignAgent {
                    node: node.to_string(),
                    agent: agent.to_string(),
                    trust_domain: self.trust_domain.clone(),
                });
            }
        }
        if let Some(t) = &self.agents.template {
            let probe: NodeName = "node".parse().expect("valid node name");
            match self.agents.resolve(&probe) {
                Some(agent) if t.contains(NODE_PLACEHOLDER) && agent_ok(&agent) => {}
                _ => {
                    return Err(ConfigError::BadAgentTemplate {
                        template: t.clone(),
                        trust_domain: self.trust_domain.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Settings that work but weaken security; the server logs each at startup.
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.transport == Transport::PlainHttp {
            out.push(format!(
                "serving the API over PLAIN HTTP on {}: bearer tokens and write credentials cross the wire unencrypted; use only for loopback tests",
                self.listen
            ));
        }
        let url = &self.vault.url;
        let loopback_host = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        if url.scheme() == "http" && !loopback_host {
            out.push(format!(
                "Vault at {url} is reached over plain HTTP: the server's Vault token crosses the network unencrypted; use https:// unless this is an isolated container network"
            ));
        }
        out
    }
}

impl Settings {
    /// Builds settings from the parsed configuration file and validates them.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for what the file parser does not check.
    pub fn from_core(cfg: ServerConfig) -> Result<Self, ConfigError> {
        let server = cfg.server;
        let transport = match server.tls {
            Some(tls) => Transport::Tls {
                cert: tls.cert,
                key: tls.key,
            },
            None => Transport::PlainHttp,
        };
        let v = cfg.vault;
        let settings = Self {
            listen: server.listen,
            transport,
            audience: server.audience,
            audit_log: server.audit_log.ok_or(ConfigError::NoAuditLog)?,
            max_body_bytes: usize::try_from(server.max_body_bytes)
                .map_err(|_| ConfigError::BodyLimit(server.max_body_bytes))?,
            request_timeout: server.request_timeout,
            trust_domain: cfg.spire.trust_domain,
            client_prefix: server.client_id_prefix,
            spire_admin_socket: cfg.spire.socket_path,
            spire_timeout: v.timeout,
            agents: AgentMap {
                explicit: cfg
                    .spire
                    .node_agents
                    .into_iter()
                    .map(|(node, agent)| (node, SpiffeId::from(agent)))
                    .collect(),
                template: cfg.spire.agent_id_template,
            },
            workload_socket: cfg.spire_agent.socket_path,
            vault: VaultSettings {
                url: v.url,
                ca_cert: v.ca_cert,
                auth_mount: v.auth_mount,
                role: v.server_role,
                audience: v.audience,
                kv_mount: v.kv_mount,
                writer_token_role: v.token_role,
                reader_token_ttl: v.reader_token_ttl,
                reader_token_num_uses: v.reader_token_uses,
                write_token_ttl: v.write_token_ttl,
                timeout: v.timeout,
            },
            expiry_sweep: Some(DEFAULT_EXPIRY_SWEEP),
            secret_ttl: v.secret_ttl,
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// Errors of loading the configuration file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file does not parse or a key is invalid.
    #[error(transparent)]
    File(#[from] hpcs_core::config::ConfigError),
    /// The settings parse but do not work for the server.
    #[error("{path}: invalid server configuration")]
    Invalid {
        /// File.
        path: PathBuf,
        /// Why.
        #[source]
        source: ConfigError,
    },
}

/// Loads and validates the server configuration file.
///
/// # Errors
///
/// [`LoadError`] naming the file, section and key.
pub fn load(path: &Path) -> Result<Settings, LoadError> {
    let cfg = hpcs_core::config::load_server(path)?;
    Settings::from_core(cfg).map_err(|source| LoadError::Invalid {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const GOOD: &str = "\
[server]
listen = 127.0.0.1:10080
allow-plain-http = true
audit-log = /tmp/audit.jsonl

[spire-server]
trust-domain = \"hpcs.test\"
socket-path = /run/spire/api.sock
agent-id-template = spiffe://hpcs.test/spire/agent/x509pop/cn/{node}

[node-agents]
node1 = spiffe://hpcs.test/spire/agent/devspire/node1

[spire-agent]
socket-path = /run/spire/agent.sock

[vault]
url = http://127.0.0.1:8200
kv-mount = secrets
";

    fn settings(text: &str) -> Result<Settings, String> {
        let cfg =
            ServerConfig::from_ini_str(text, Path::new("server.ini")).map_err(|e| e.to_string())?;
        Settings::from_core(cfg).map_err(|e| e.to_string())
    }

    #[test]
    fn good_file_gives_settings_with_defaults() {
        let s = settings(GOOD).unwrap();
        assert_eq!(s.transport, Transport::PlainHttp);
        assert_eq!(s.audience, "hpcs-server");
        assert_eq!(s.vault.kv_mount, "secrets");
        assert_eq!(s.vault.auth_mount, "jwt");
        assert_eq!(s.vault.audience, "vault");
        let n1: NodeName = "node1".parse().unwrap();
        assert_eq!(
            s.agents.resolve(&n1).unwrap().as_str(),
            "spiffe://hpcs.test/spire/agent/devspire/node1"
        );
        let other: NodeName = "nid001".parse().unwrap();
        assert_eq!(
            s.agents.resolve(&other).unwrap().as_str(),
            "spiffe://hpcs.test/spire/agent/x509pop/cn/nid001"
        );
        assert_eq!(s.warnings().len(), 1, "plain HTTP is warned about");
    }

    #[rstest]
    #[case::plain_on_all_interfaces(
        "listen = 127.0.0.1:10080",
        "listen = 0.0.0.0:10080",
        "only allowed on a loopback address"
    )]
    #[case::no_audit_log("audit-log = /tmp/audit.jsonl", "", "audit-log is required")]
    #[case::no_agents(
        "agent-id-template = spiffe://hpcs.test/spire/agent/x509pop/cn/{node}",
        "",
        "node1"
    )]
    fn unusable_settings_are_refused(#[case] from: &str, #[case] to: &str, #[case] needle: &str) {
        let text = GOOD.replacen(from, to, 1);
        let text = if needle == "node1" {
            text.replace("node1 = spiffe://hpcs.test/spire/agent/devspire/node1", "")
        } else {
            text
        };
        let err = settings(&text).unwrap_err();
        let expected = if needle == "node1" {
            "no compute node is mapped"
        } else {
            needle
        };
        assert!(err.contains(expected), "{err:?} lacks {expected:?}");
    }

    #[test]
    fn tls_pair_selects_tls_without_warning() {
        let text = GOOD.replace(
            "allow-plain-http = true",
            "tls-cert = /etc/c.pem\ntls-key = /etc/k.pem",
        );
        let s = settings(&text).unwrap();
        assert!(matches!(s.transport, Transport::Tls { .. }));
        assert!(s.warnings().is_empty());
    }
}
