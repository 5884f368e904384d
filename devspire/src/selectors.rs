//! Registration entry selectors: parsing, canonical form, and matching against an attested
//! [`Workload`].
//!
//! Supported, with the same meaning as SPIRE's `unix` workload attestor:
//!
//! | type | value | matches when |
//! |------|-------|--------------|
//! | `unix` | `uid:<n>` | the effective uid is `n` |
//! | `unix` | `user:<name>` | the uid's user name is `name` |
//! | `unix` | `gid:<n>` | the effective gid is `n` |
//! | `unix` | `group:<name>` | the gid's group name is `name` |
//! | `unix` | `supplementary_gid:<n>` | `n` is among the supplementary groups |
//! | `unix` | `supplementary_group:<name>` | a supplementary group is called `name` |
//! | `unix` | `path:<absolute path>` | the executable is at that path |
//! | `unix` | `sha256:<64 hex>` | the executable's SHA-256 is that |
//! | `spiffe_id` | `spiffe://...` | node selector of join-token alias entries; never matches a workload |
//!
//! Any other type or `unix` key is rejected with a message naming it.

use std::fmt;

use hpcs_spire_api::spiffe_id::SpiffeIdError;
use hpcs_spire_api::types::{self, Spiffeid};

use crate::attest::Workload;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    /// The selector type is not one devspire knows.
    #[error(
        "unknown selector type {kind:?}: devspire supports \"unix\" (and \"spiffe_id\" for node entries)"
    )]
    UnknownType {
        /// The rejected type.
        kind: String,
    },
    /// The `unix` selector value has no `key:` prefix.
    #[error("unix selector value {value:?} is not of the form <key>:<value>")]
    MissingKey {
        /// The rejected value.
        value: String,
    },
    /// The `unix` key is unknown.
    #[error(
        "unknown unix selector {key:?}: use uid, user, gid, group, supplementary_gid, supplementary_group, path or sha256"
    )]
    UnknownUnixKey {
        /// The rejected key.
        key: String,
    },
    /// A numeric selector has a non-numeric value.
    #[error("unix:{key} selector value {value:?} is not a number")]
    NotANumber {
        /// The selector key.
        key: &'static str,
        /// The rejected value.
        value: String,
    },
    /// A name selector has an empty or malformed name.
    #[error("unix:{key} selector value {value:?} is not a valid name")]
    BadName {
        /// The selector key.
        key: &'static str,
        /// The rejected value.
        value: String,
    },
    /// `unix:path` needs an absolute path.
    #[error("unix:path selector value {value:?} is not an absolute path")]
    RelativePath {
        /// The rejected value.
        value: String,
    },
    /// `unix:sha256` needs 64 hex digits.
    #[error("unix:sha256 selector value {value:?} is not 64 hexadecimal digits")]
    BadSha256 {
        /// The rejected value.
        value: String,
    },
    /// `spiffe_id` selector with an invalid SPIFFE ID.
    #[error("spiffe_id selector value {value:?} is not a valid SPIFFE ID")]
    BadSpiffeId {
        /// The rejected value.
        value: String,
        /// Why.
        #[source]
        source: SpiffeIdError,
    },
}

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// `unix:...`, produced by workload attestation.
    Unix(UnixSelector),
    /// `spiffe_id:...`, a node selector (join-token alias entries).
    SpiffeId(String),
}

/// A `unix` selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnixSelector {
    /// `uid:<n>`.
    Uid(u32),
    /// `user:<name>`.
    User(String),
    /// `gid:<n>`.
    Gid(u32),
    /// `group:<name>`.
    Group(String),
    /// `supplementary_gid:<n>`.
    SupplementaryGid(u32),
    /// `supplementary_group:<name>`.
    SupplementaryGroup(String),
    /// `path:<absolute path>`.
    Path(String),
    /// `sha256:<lowercase hex>`.
    Sha256(String),
}

impl Selector {
    /// Parses a selector from its type and value, e.g. (`unix`, `uid:1000`).
    ///
    /// # Errors
    ///
    /// A [`SelectorError`] naming what is wrong.
    pub fn parse(kind: &str, value: &str) -> Result<Self, SelectorError> {
        match kind {
            "unix" => UnixSelector::parse(value).map(Self::Unix),
            "spiffe_id" => Spiffeid::from_uri(value)
                .map(|_| Self::SpiffeId(value.to_owned()))
                .map_err(|source| SelectorError::BadSpiffeId {
                    value: value.to_owned(),
                    source,
                }),
            other => Err(SelectorError::UnknownType {
                kind: other.to_owned(),
            }),
        }
    }

    /// Parses the API message form.
    ///
    /// # Errors
    ///
    /// See [`Selector::parse`].
    pub fn from_proto(selector: &types::Selector) -> Result<Self, SelectorError> {
        Self::parse(&selector.r#type, &selector.value)
    }

    /// The selector type (`unix` or `spiffe_id`).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unix(_) => "unix",
            Self::SpiffeId(_) => "spiffe_id",
        }
    }

    /// The canonical value, e.g. `uid:1000`.
    #[must_use]
    pub fn value(&self) -> String {
        match self {
            Self::Unix(unix) => unix.to_string(),
            Self::SpiffeId(id) => id.clone(),
        }
    }

    /// The API message form.
    #[must_use]
    pub fn to_proto(&self) -> types::Selector {
        types::Selector {
            r#type: self.kind().to_owned(),
            value: self.value(),
        }
    }

    /// Whether the attested workload has this selector. May hash the executable
    /// (`unix:sha256`), so call it off the async runtime.
    #[must_use]
    pub fn matches(&self, workload: &Workload) -> bool {
        match self {
            Self::SpiffeId(_) => false,
            Self::Unix(unix) => unix.matches(workload),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.value())
    }
}

impl UnixSelector {
    fn parse(value: &str) -> Result<Self, SelectorError> {
        let Some((key, rest)) = value.split_once(':') else {
            return Err(SelectorError::MissingKey {
                value: value.to_owned(),
            });
        };
        let number = |key: &'static str| {
            rest.parse::<u32>().map_err(|_| SelectorError::NotANumber {
                key,
                value: rest.to_owned(),
            })
        };
        let name = |key: &'static str| {
            // User and group names never hold ':' or whitespace (they would break /etc/passwd).
            if rest.is_empty()
                || rest
                    .chars()
                    .any(|c| c == ':' || c.is_whitespace() || c.is_control())
            {
                Err(SelectorError::BadName {
                    key,
                    value: rest.to_owned(),
                })
            } else {
                Ok(rest.to_owned())
            }
        };
        match key {
            "uid" => number("uid").map(Self::Uid),
            "gid" => number("gid").map(Self::Gid),
            "supplementary_gid" => number("supplementary_gid").map(Self::SupplementaryGid),
            "user" => name("user").map(Self::User),
            "group" => name("group").map(Self::Group),
            "supplementary_group" => name("supplementary_group").map(Self::SupplementaryGroup),
            "path" => {
                if rest.starts_with('/') {
                    Ok(Self::Path(rest.to_owned()))
                } else {
                    Err(SelectorError::RelativePath {
                        value: rest.to_owned(),
                    })
                }
            }
            "sha256" => {
                if rest.len() == 64 && rest.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(Self::Sha256(rest.to_ascii_lowercase()))
                } else {
                    Err(SelectorError::BadSha256 {
                        value: rest.to_owned(),
                    })
                }
            }
            other => Err(SelectorError::UnknownUnixKey {
                key: other.to_owned(),
            }),
        }
    }

    fn matches(&self, w: &Workload) -> bool {
        match self {
            Self::Uid(uid) => w.uid == *uid,
            Self::Gid(gid) => w.gid == *gid,
            Self::User(name) => w.user.as_deref() == Some(name.as_str()),
            Self::Group(name) => w.group.as_deref() == Some(name.as_str()),
            Self::SupplementaryGid(gid) => w.supplementary_gids.contains(gid),
            Self::SupplementaryGroup(name) => w.supplementary_groups.iter().any(|g| g == name),
            Self::Path(path) => w
                .path
                .as_deref()
                .is_some_and(|p| p.as_os_str() == path.as_str()),
            Self::Sha256(hash) => w.sha256() == Some(hash.as_str()),
        }
    }
}

impl fmt::Display for UnixSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uid(n) => write!(f, "uid:{n}"),
            Self::User(s) => write!(f, "user:{s}"),
            Self::Gid(n) => write!(f, "gid:{n}"),
            Self::Group(s) => write!(f, "group:{s}"),
            Self::SupplementaryGid(n) => write!(f, "supplementary_gid:{n}"),
            Self::SupplementaryGroup(s) => write!(f, "supplementary_group:{s}"),
            Self::Path(s) => write!(f, "path:{s}"),
            Self::Sha256(s) => write!(f, "sha256:{s}"),
        }
    }
}

/// Whether every selector matches the workload (an empty list never matches: SPIRE rejects
/// entries without selectors, and an entry must never match everyone by accident).
#[must_use]
pub fn all_match(selectors: &[Selector], workload: &Workload) -> bool {
    !selectors.is_empty() && selectors.iter().all(|s| s.matches(workload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("unix", "uid:1000", "unix:uid:1000")]
    #[case("unix", "user:alice", "unix:user:alice")]
    #[case("unix", "gid:0", "unix:gid:0")]
    #[case("unix", "group:hpcs-users", "unix:group:hpcs-users")]
    #[case("unix", "supplementary_gid:27", "unix:supplementary_gid:27")]
    #[case(
        "unix",
        "supplementary_group:hpcs-alice-proj",
        "unix:supplementary_group:hpcs-alice-proj"
    )]
    #[case("unix", "path:/usr/bin/hpcs-node", "unix:path:/usr/bin/hpcs-node")]
    #[case("unix", "path:/a:b", "unix:path:/a:b")]
    #[case("unix", &format!("sha256:{}", "AB".repeat(32)), &format!("unix:sha256:{}", "ab".repeat(32)))]
    #[case(
        "spiffe_id",
        "spiffe://td/spire/agent/join_token/x",
        "spiffe_id:spiffe://td/spire/agent/join_token/x"
    )]
    fn parses_and_prints(#[case] kind: &str, #[case] value: &str, #[case] printed: &str) {
        let selector = Selector::parse(kind, value).unwrap();
        assert_eq!(selector.to_string(), printed);
        let again = Selector::from_proto(&selector.to_proto()).unwrap();
        assert_eq!(again, selector);
    }

    #[rstest]
    #[case("k8s", "ns:default", "unknown selector type \"k8s\"")]
    #[case("", "uid:1", "unknown selector type \"\"")]
    #[case("unix", "uid", "not of the form <key>:<value>")]
    #[case("unix", "pid:1", "unknown unix selector \"pid\"")]
    #[case(
        "unix",
        "uid:alice",
        "unix:uid selector value \"alice\" is not a number"
    )]
    #[case("unix", "gid:-1", "is not a number")]
    #[case("unix", "user:", "unix:user selector value \"\" is not a valid name")]
    #[case("unix", "group:a b", "is not a valid name")]
    #[case("unix", "path:bin/x", "not an absolute path")]
    #[case("unix", "sha256:abc", "not 64 hexadecimal digits")]
    #[case("spiffe_id", "spiffe://TD/x", "not a valid SPIFFE ID")]
    fn rejects_bad_selectors(#[case] kind: &str, #[case] value: &str, #[case] message: &str) {
        let err = Selector::parse(kind, value).unwrap_err().to_string();
        assert!(err.contains(message), "{err}");
    }

    #[test]
    fn matching() {
        let w = Workload::for_tests(
            1000,
            100,
            Some("alice"),
            &[(100, "hpcs-users"), (200, "proj")],
        );
        let yes = |v: &str| Selector::parse("unix", v).unwrap().matches(&w);
        assert!(yes("uid:1000"));
        assert!(!yes("uid:1001"));
        assert!(yes("user:alice"));
        assert!(!yes("user:bob"));
        assert!(yes("gid:100"));
        assert!(
            !yes("group:hpcs-users"),
            "primary group name is unknown in this workload"
        );
        assert!(yes("supplementary_gid:200"));
        assert!(yes("supplementary_group:proj"));
        assert!(!yes("supplementary_group:other"));
        assert!(yes("path:/usr/bin/true"));
        assert!(!yes("path:/usr/bin/false"));
        assert!(yes(&format!("sha256:{}", "ab".repeat(32))));
        assert!(!yes(&format!("sha256:{}", "cd".repeat(32))));
        let node = Selector::parse("spiffe_id", "spiffe://td/x").unwrap();
        assert!(!node.matches(&w));

        let sel = |v: &str| Selector::parse("unix", v).unwrap();
        assert!(all_match(
            &[sel("uid:1000"), sel("supplementary_group:proj")],
            &w
        ));
        assert!(!all_match(
            &[sel("uid:1000"), sel("supplementary_group:x")],
            &w
        ));
        assert!(!all_match(&[], &w));
    }
}
