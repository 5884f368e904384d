//! The validated plan for `devspire serve`, built once from the parsed flags.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::ids::{AgentName, IdError, TrustDomain};

/// Default JWT-SVID lifetime (SPIRE's default is 5 minutes too).
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// Default X.509-SVID lifetime (SPIRE's default is 1 hour too).
pub const DEFAULT_X509_TTL: Duration = Duration::from_secs(3600);
/// Accepted JWT-SVID lifetimes, in seconds.
pub const JWT_TTL_RANGE: std::ops::RangeInclusive<u64> = 10..=7 * 24 * 3600;
/// Accepted X.509-SVID lifetimes, in seconds.
pub const X509_TTL_RANGE: std::ops::RangeInclusive<u64> = 60..=365 * 24 * 3600;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `--agent` is not `NAME=PATH`.
    #[error("--agent {spec:?} is not of the form NAME=SOCKET_PATH")]
    AgentSpec {
        /// The rejected value.
        spec: String,
    },
    /// A bad agent name.
    #[error("--agent {spec:?}")]
    AgentName {
        /// The rejected value.
        spec: String,
        /// Why.
        #[source]
        source: IdError,
    },
    /// Two agents share a name.
    #[error("agent name {name:?} is used twice")]
    DuplicateAgent {
        /// The name.
        name: String,
    },
    /// Two sockets share a path.
    #[error("socket path {path} is used twice")]
    DuplicateSocket {
        /// The path.
        path: PathBuf,
    },
    /// No agent.
    #[error("at least one --agent NAME=SOCKET_PATH is required")]
    NoAgents,
    /// A TTL out of range.
    #[error("{flag} {value} is out of range ({min} to {max} seconds)")]
    Ttl {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: u64,
        /// Minimum.
        min: u64,
        /// Maximum.
        max: u64,
    },
    /// The issuer is not an http(s) URL.
    #[error(
        "--oidc-issuer {issuer:?} must be an http:// or https:// URL without query or fragment"
    )]
    Issuer {
        /// The rejected value.
        issuer: String,
    },
}

/// `NAME=SOCKET_PATH` from `--agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    /// Agent name.
    pub name: AgentName,
    /// Workload API socket path.
    pub socket: PathBuf,
}

impl FromStr for AgentSpec {
    type Err = ConfigError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let Some((name, socket)) = spec.split_once('=').filter(|(_, s)| !s.is_empty()) else {
            return Err(ConfigError::AgentSpec {
                spec: spec.to_owned(),
            });
        };
        let name = name.parse().map_err(|source| ConfigError::AgentName {
            spec: spec.to_owned(),
            source,
        })?;
        Ok(Self {
            name,
            socket: PathBuf::from(socket),
        })
    }
}

/// One simulated agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Agent name.
    pub name: AgentName,
    /// Workload API socket path.
    pub socket: PathBuf,
    /// Agent SPIFFE ID, `spiffe://<td>/spire/agent/devspire/<name>`.
    pub id: String,
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of `entries.json` and `keys.json`.
    pub state_dir: PathBuf,
    /// Trust domain.
    pub trust_domain: TrustDomain,
    /// Admin socket (SPIRE Server API subset + devspire admin).
    pub admin_socket: PathBuf,
    /// OIDC discovery listen address (port 0: any free port).
    pub oidc_listen: SocketAddr,
    /// Issuer URL override; default `http://<bound address>`.
    pub oidc_issuer: Option<String>,
    /// Agents.
    pub agents: Vec<AgentConfig>,
    /// Default JWT-SVID lifetime.
    pub jwt_ttl: Duration,
    /// Default X.509-SVID lifetime.
    pub x509_ttl: Duration,
}

/// Raw inputs of [`Config::new`].
#[derive(Debug, Clone)]
pub struct RawConfig {
    /// See [`Config`].
    pub state_dir: PathBuf,
    /// See [`Config`].
    pub trust_domain: TrustDomain,
    /// See [`Config`].
    pub admin_socket: PathBuf,
    /// See [`Config`].
    pub oidc_listen: SocketAddr,
    /// See [`Config`].
    pub oidc_issuer: Option<String>,
    /// See [`Config`].
    pub agents: Vec<AgentSpec>,
    /// Seconds.
    pub jwt_ttl: u64,
    /// Seconds.
    pub x509_ttl: u64,
}

fn check_ttl(
    flag: &'static str,
    value: u64,
    range: &std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    if range.contains(&value) {
        Ok(Duration::from_secs(value))
    } else {
        Err(ConfigError::Ttl {
            flag,
            value,
            min: *range.start(),
            max: *range.end(),
        })
    }
}

impl Config {
    /// Validates the raw inputs.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the flag at fault.
    pub fn new(raw: RawConfig) -> Result<Self, ConfigError> {
        if raw.agents.is_empty() {
            return Err(ConfigError::NoAgents);
        }
        let mut names = HashSet::new();
        let mut sockets = HashSet::from([raw.admin_socket.clone()]);
        let mut agents = Vec::with_capacity(raw.agents.len());
        for spec in raw.agents {
            if !names.insert(spec.name.clone()) {
                return Err(ConfigError::DuplicateAgent {
                    name: spec.name.to_string(),
                });
            }
            if !sockets.insert(spec.socket.clone()) {
                return Err(ConfigError::DuplicateSocket { path: spec.socket });
            }
            agents.push(AgentConfig {
                id: raw.trust_domain.agent_id(&spec.name),
                name: spec.name,
                socket: spec.socket,
            });
        }
        if let Some(issuer) = &raw.oidc_issuer {
            let scheme_ok = issuer.starts_with("http://") || issuer.starts_with("https://");
            if !scheme_ok || issuer.contains(['?', '#', ' ']) {
                return Err(ConfigError::Issuer {
                    issuer: issuer.clone(),
                });
            }
        }
        Ok(Self {
            state_dir: raw.state_dir,
            trust_domain: raw.trust_domain,
            admin_socket: raw.admin_socket,
            oidc_listen: raw.oidc_listen,
            oidc_issuer: raw.oidc_issuer,
            agents,
            jwt_ttl: check_ttl("--jwt-ttl", raw.jwt_ttl, &JWT_TTL_RANGE)?,
            x509_ttl: check_ttl("--x509-ttl", raw.x509_ttl, &X509_TTL_RANGE)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(agents: &[&str]) -> RawConfig {
        RawConfig {
            state_dir: "/tmp/s".into(),
            trust_domain: "hpcs.test".parse().unwrap(),
            admin_socket: "/tmp/admin.sock".into(),
            oidc_listen: "127.0.0.1:0".parse().unwrap(),
            oidc_issuer: None,
            agents: agents.iter().map(|a| a.parse().unwrap()).collect(),
            jwt_ttl: 300,
            x509_ttl: 3600,
        }
    }

    #[test]
    fn builds_agent_ids() {
        let config = Config::new(raw(&["node1=/tmp/n1.sock", "node2=/tmp/n2.sock"])).unwrap();
        assert_eq!(
            config.agents[1].id,
            "spiffe://hpcs.test/spire/agent/devspire/node2"
        );
    }

    #[test]
    fn rejects_bad_plans() {
        let msg = |r: RawConfig| Config::new(r).unwrap_err().to_string();
        assert!(msg(raw(&[])).contains("at least one --agent"));
        assert!(msg(raw(&["a=/x", "a=/y"])).contains("used twice"));
        assert!(msg(raw(&["a=/x", "b=/x"])).contains("used twice"));
        assert!(msg(raw(&["a=/tmp/admin.sock"])).contains("used twice"));
        let mut r = raw(&["a=/x"]);
        r.jwt_ttl = 1;
        assert!(msg(r).contains("--jwt-ttl 1 is out of range"));
        let mut r = raw(&["a=/x"]);
        r.oidc_issuer = Some("ftp://x".into());
        assert!(msg(r).contains("--oidc-issuer"));
        assert!(
            "node1"
                .parse::<AgentSpec>()
                .unwrap_err()
                .to_string()
                .contains("NAME=SOCKET_PATH")
        );
        assert!("node1=".parse::<AgentSpec>().is_err());
        assert!(
            "Node=/x"
                .parse::<AgentSpec>()
                .unwrap_err()
                .to_string()
                .contains("--agent")
        );
    }
}
