//! Validated names and the SPIFFE ID scheme devspire uses for its own identities.
//!
//! - Trust domain: a SPIFFE trust domain name such as `hpcs.test`.
//! - Agent name: a simulated compute node, e.g. `node1`; `[a-z0-9._-]`, at most 64 bytes.
//! - Agent SPIFFE ID: `spiffe://<td>/spire/agent/devspire/<name>`. Registration entries whose
//!   `parent_id` is this ID are served on that agent's Workload API socket, as SPIRE serves an
//!   entry only through the agent named by its parent ID.
//! - Server SPIFFE ID: `spiffe://<td>/spire/server`.

use std::fmt;
use std::str::FromStr;

use hpcs_spire_api::spiffe_id::{self, SpiffeIdError};

/// Path prefix of every devspire agent SPIFFE ID.
pub const AGENT_PATH_PREFIX: &str = "/spire/agent/devspire/";

/// Path of the SPIRE server's own SPIFFE ID.
pub const SERVER_PATH: &str = "/spire/server";

/// Longest accepted agent name, in bytes.
pub const MAX_AGENT_NAME_LEN: usize = 64;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The trust domain name is invalid.
    #[error("invalid trust domain {name:?}")]
    TrustDomain {
        /// The rejected name.
        name: String,
        /// Why.
        #[source]
        source: SpiffeIdError,
    },
    /// The agent name is invalid.
    #[error(
        "invalid agent name {name:?}: use 1 to {MAX_AGENT_NAME_LEN} of a-z, 0-9, '.', '-', '_' (not '.' or '..')"
    )]
    AgentName {
        /// The rejected name.
        name: String,
    },
}

/// A validated trust domain name (no scheme).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// The name, e.g. `hpcs.test`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's SPIFFE ID, e.g. `spiffe://hpcs.test`; the key of bundle maps.
    #[must_use]
    pub fn id(&self) -> String {
        format!("{}{}", spiffe_id::SCHEME_PREFIX, self.0)
    }

    /// The SPIFFE ID of a path in this trust domain. `path` must start with `/`.
    #[must_use]
    pub fn id_with_path(&self, path: &str) -> String {
        format!("{}{}{path}", spiffe_id::SCHEME_PREFIX, self.0)
    }

    /// The SPIRE server's SPIFFE ID.
    #[must_use]
    pub fn server_id(&self) -> String {
        self.id_with_path(SERVER_PATH)
    }

    /// The SPIFFE ID of the devspire agent called `name`.
    #[must_use]
    pub fn agent_id(&self, name: &AgentName) -> String {
        self.id_with_path(&format!("{AGENT_PATH_PREFIX}{}", name.0))
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        // Accept `spiffe://td` too: it is what people copy from SPIRE configs.
        let bare = name.strip_prefix(spiffe_id::SCHEME_PREFIX).unwrap_or(name);
        spiffe_id::validate_trust_domain(bare).map_err(|source| IdError::TrustDomain {
            name: name.to_owned(),
            source,
        })?;
        Ok(Self(bare.to_owned()))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated agent (simulated node) name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentName(String);

impl AgentName {
    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AgentName {
    type Err = IdError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let valid = !name.is_empty()
            && name.len() <= MAX_AGENT_NAME_LEN
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_'));
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(IdError::AgentName {
                name: name.to_owned(),
            })
        }
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn agent_id_scheme() {
        let td: TrustDomain = "hpcs.test".parse().unwrap();
        let name: AgentName = "node1".parse().unwrap();
        assert_eq!(
            td.agent_id(&name),
            "spiffe://hpcs.test/spire/agent/devspire/node1"
        );
        assert_eq!(td.server_id(), "spiffe://hpcs.test/spire/server");
        assert_eq!(td.id(), "spiffe://hpcs.test");
        let td2: TrustDomain = "spiffe://hpcs.test".parse().unwrap();
        assert_eq!(td2, td);
    }

    #[rstest]
    #[case("")]
    #[case(".")]
    #[case("..")]
    #[case("Node1")]
    #[case("node/1")]
    #[case("node 1")]
    fn bad_agent_names(#[case] name: &str) {
        let err = name.parse::<AgentName>().unwrap_err();
        assert!(err.to_string().contains("invalid agent name"), "{err}");
    }

    #[rstest]
    #[case("")]
    #[case("Upper.test")]
    #[case("td:1")]
    fn bad_trust_domains(#[case] name: &str) {
        assert!(name.parse::<TrustDomain>().is_err());
    }
}
