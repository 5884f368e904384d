//! Validated names and the HPCS SPIFFE ID scheme.
//!
//! Every name that crosses a trust boundary (CLI argument, API body, info file, SPIRE selector,
//! Vault path, file name on shared storage, Slurm script) is one of these newtypes. Each has a
//! private field, so a value that exists has passed validation; `FromStr`, `TryFrom<String>` and
//! serde deserialization all go through the same check, and `Display` prints the canonical form
//! that parses back to an equal value.
//!
//! # Name rules
//!
//! | type | rule | max |
//! |---|---|---|
//! | [`UserName`], [`GroupName`] | `[a-z_][a-z0-9_.-]*` | 32 |
//! | [`NodeName`] | dot-separated labels of `[a-z0-9_-]`, no label starts or ends with `-` | 253 (63 per label) |
//! | [`SecretId`] | `[a-z0-9]`, then `[a-z0-9-]`, not ending in `-` | 64 |
//! | [`ArtefactName`], [`RoleName`] | `[A-Za-z0-9_]`, then `[A-Za-z0-9._-]` | 128 |
//! | [`TrustDomain`] | `[a-z0-9._-]` | 255 |
//!
//! User and group names follow the POSIX portable set as `useradd` enforces it, lowercase only so
//! that one account has one spelling in SPIRE selectors and Vault. We also allow `.` after the
//! first character because directory-backed sites have accounts such as `first.last`; the first
//! character can never be `.`, so no name is `.`, `..` or a hidden file. The trailing `$` that
//! HPCS accepted (Samba machine accounts) is refused: it is a shell metacharacter and no job runs
//! as a machine account. Node names additionally allow `_` because Slurm node names and HPCS did.
//! None of the rules admit `/`, whitespace, quotes, shell metacharacters or `..` (not even inside
//! a name), so every name is safe as a path component and inside a single-quoted shell word.
//!
//! # SPIFFE IDs
//!
//! [`SpiffeId`] implements the SPIFFE ID specification without depending on the `spiffe` crate:
//! scheme `spiffe`, a lowercase trust domain of `[a-z0-9._-]`, path segments of `[A-Za-z0-9._-]`,
//! no empty, `.` or `..` segments, no port, user info, query or fragment, at most 2048 bytes.
//! On top of it the HPCS scheme gives typed IDs:
//!
//! - [`ClientId`] is `spiffe://TD/client/<user>` (the prefix `/client/` is configurable on the
//!   server, see [`ClientPrefix`]); the owner of the secrets it creates.
//! - [`ServerId`] is `spiffe://TD/hpcs/server`.
//! - [`SecretReaderId`] is `spiffe://TD/hpcs/secret/<secret-id>`, the identity that may read one
//!   secret; the server registers it per allowed (node, user or group).
//! - [`AgentId`] is any SPIFFE ID under SPIRE's reserved `/spire/agent/` path. Real SPIRE agent IDs
//!   depend on the node attestor (`join_token`, `x509pop`, ...), so the server maps node names to
//!   agent IDs from its configuration; [`AgentId::devspire`] builds devspire's default scheme.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest SPIFFE ID the specification allows, in bytes.
pub const SPIFFE_ID_MAX_LEN: usize = 2048;
/// Longest trust domain we accept, in bytes (a DNS name).
pub const TRUST_DOMAIN_MAX_LEN: usize = 255;
/// Longest user or group name (the usual `LOGIN_NAME_MAX - 1` of portable systems).
pub const POSIX_NAME_MAX_LEN: usize = 32;
/// Longest node name (a DNS name).
pub const NODE_NAME_MAX_LEN: usize = 253;
/// Longest label of a node name.
pub const NODE_LABEL_MAX_LEN: usize = 63;
/// Longest secret ID.
pub const SECRET_ID_MAX_LEN: usize = 64;
/// Longest artefact or role name. Leaves room for suffixes such as `.info.yaml` and `.age` within
/// the usual 255-byte file name limit.
pub const SAFE_NAME_MAX_LEN: usize = 128;
/// Longest Vault path.
pub const VAULT_PATH_MAX_LEN: usize = 512;
/// Longest remote path (Linux `PATH_MAX`).
pub const REMOTE_PATH_MAX_LEN: usize = 4096;
/// Default path prefix of client SPIFFE IDs.
pub const DEFAULT_CLIENT_PREFIX: &str = "/client/";

const SPIFFE_SCHEME: &str = "spiffe://";
const SERVER_PATH: &str = "/hpcs/server";
const SECRET_READER_PREFIX: &str = "/hpcs/secret/";
const AGENT_PREFIX: &str = "/spire/agent/";
const DEVSPIRE_AGENT_PREFIX: &str = "/spire/agent/devspire/";
/// Longest rejected value quoted back in an error; inputs can be attacker-sized.
const ERROR_VALUE_MAX: usize = 80;

/// Why a string is not a valid name or ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The input is empty.
    #[error("{kind} is empty")]
    Empty {
        /// What was being parsed, e.g. `user name`.
        kind: &'static str,
    },
    /// The input is longer than allowed.
    #[error("{kind} is {len} bytes long, more than the maximum of {max}")]
    TooLong {
        /// What was being parsed.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The input holds a character outside the allowed set.
    #[error("{kind} {value:?} contains {character:?}; {expected}")]
    InvalidChar {
        /// What was being parsed.
        kind: &'static str,
        /// The input (shortened if long).
        value: String,
        /// The first offending character.
        character: char,
        /// The rule, e.g. `allowed are a-z, 0-9, '_', '.' and '-'`.
        expected: &'static str,
    },
    /// The input is built from allowed characters but breaks a structural rule.
    #[error("{kind} {value:?} is invalid: {reason}")]
    Invalid {
        /// What was being parsed.
        kind: &'static str,
        /// The input (shortened if long).
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A valid SPIFFE ID that does not have the shape an HPCS role requires.
    #[error("SPIFFE ID {id:?} is not {kind}: expected {expected}")]
    WrongShape {
        /// The role, e.g. `a client ID`.
        kind: &'static str,
        /// The SPIFFE ID (shortened if long).
        id: String,
        /// The expected shape, e.g. `spiffe://<trust-domain>/client/<user>`.
        expected: &'static str,
    },
}

fn shorten(value: &str) -> String {
    if value.len() <= ERROR_VALUE_MAX {
        return value.to_owned();
    }
    let mut end = ERROR_VALUE_MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &value[..end])
}

/// Checks length and character classes of a simple name.
fn check_name(
    kind: &'static str,
    value: &str,
    max: usize,
    first: fn(char) -> bool,
    rest: fn(char) -> bool,
    expected: &'static str,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            kind,
            len: value.len(),
            max,
        });
    }
    for (i, c) in value.chars().enumerate() {
        let ok = if i == 0 { first(c) } else { rest(c) };
        if !ok {
            return Err(IdError::InvalidChar {
                kind,
                value: shorten(value),
                character: c,
                expected,
            });
        }
    }
    Ok(())
}

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_posix_first(c: char) -> bool {
    c.is_ascii_lowercase() || c == '_'
}

fn is_posix_rest(c: char) -> bool {
    is_lower_alnum(c) || matches!(c, '_' | '.' | '-')
}

fn is_safe_first(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_safe_rest(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn is_trust_domain_char(c: char) -> bool {
    is_lower_alnum(c) || matches!(c, '.' | '_' | '-')
}

fn is_path_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Defines a validated string newtype with the shared trait set.
macro_rules! string_name {
    ($(#[$meta:meta])* $name:ident, $validate:path) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The name as a string slice.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $validate(s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                $validate(&s)?;
                Ok(Self(s))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

fn validate_trust_domain(s: &str) -> Result<(), IdError> {
    check_name(
        "trust domain",
        s,
        TRUST_DOMAIN_MAX_LEN,
        is_trust_domain_char,
        is_trust_domain_char,
        "allowed are lowercase a-z, 0-9, '.', '_' and '-'",
    )
}

fn validate_posix(kind: &'static str, s: &str) -> Result<(), IdError> {
    check_name(
        kind,
        s,
        POSIX_NAME_MAX_LEN,
        is_posix_first,
        is_posix_rest,
        "a name starts with a-z or '_' and continues with a-z, 0-9, '_', '.' or '-'",
    )?;
    no_double_dot(kind, s)
}

/// `..` never appears, not even inside a name, so no name can be mistaken for or spliced into
/// a parent-directory reference.
fn no_double_dot(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.contains("..") {
        return Err(IdError::Invalid {
            kind,
            value: shorten(s),
            reason: "it contains '..'",
        });
    }
    Ok(())
}

fn validate_user(s: &str) -> Result<(), IdError> {
    validate_posix("user name", s)
}

fn validate_group(s: &str) -> Result<(), IdError> {
    validate_posix("group name", s)
}

fn validate_node(s: &str) -> Result<(), IdError> {
    const KIND: &str = "node name";
    check_name(
        KIND,
        s,
        NODE_NAME_MAX_LEN,
        |c| is_lower_alnum(c) || c == '_',
        |c| is_lower_alnum(c) || matches!(c, '_' | '-' | '.'),
        "allowed are lowercase a-z, 0-9, '_', '-' and '.' between labels",
    )?;
    for label in s.split('.') {
        let reason = if label.is_empty() {
            "a label is empty (leading, trailing or doubled '.')"
        } else if label.len() > NODE_LABEL_MAX_LEN {
            "a label is longer than 63 bytes"
        } else if label.starts_with('-') || label.ends_with('-') {
            "a label starts or ends with '-'"
        } else {
            continue;
        };
        return Err(IdError::Invalid {
            kind: KIND,
            value: shorten(s),
            reason,
        });
    }
    Ok(())
}

fn validate_secret_id(s: &str) -> Result<(), IdError> {
    const KIND: &str = "secret ID";
    check_name(
        KIND,
        s,
        SECRET_ID_MAX_LEN,
        is_lower_alnum,
        |c| is_lower_alnum(c) || c == '-',
        "a secret ID starts with a-z or 0-9 and continues with a-z, 0-9 or '-'",
    )?;
    if s.ends_with('-') {
        return Err(IdError::Invalid {
            kind: KIND,
            value: shorten(s),
            reason: "it ends with '-'",
        });
    }
    Ok(())
}

fn validate_artefact(s: &str) -> Result<(), IdError> {
    check_name(
        "artefact name",
        s,
        SAFE_NAME_MAX_LEN,
        is_safe_first,
        is_safe_rest,
        "a name starts with A-Z, a-z, 0-9 or '_' and continues with those, '.' or '-'",
    )?;
    no_double_dot("artefact name", s)
}

fn validate_role(s: &str) -> Result<(), IdError> {
    check_name(
        "role name",
        s,
        SAFE_NAME_MAX_LEN,
        is_safe_first,
        is_safe_rest,
        "a name starts with A-Z, a-z, 0-9 or '_' and continues with those, '.' or '-'",
    )?;
    no_double_dot("role name", s)
}

fn validate_vault_path(s: &str) -> Result<(), IdError> {
    const KIND: &str = "Vault path";
    check_name(
        KIND,
        s,
        VAULT_PATH_MAX_LEN,
        is_safe_first,
        |c| is_safe_rest(c) || c == '/',
        "a path starts with A-Z, a-z, 0-9 or '_' and continues with those, '.', '-' or '/'",
    )?;
    no_double_dot(KIND, s)?;
    for segment in s.split('/') {
        let reason = if segment.is_empty() {
            "it has an empty segment or a trailing '/'"
        } else if segment.starts_with('.') {
            "a segment starts with '.'"
        } else {
            continue;
        };
        return Err(IdError::Invalid {
            kind: KIND,
            value: shorten(s),
            reason,
        });
    }
    Ok(())
}

fn validate_remote_path(s: &str) -> Result<(), IdError> {
    const KIND: &str = "remote path";
    if s.is_empty() {
        return Err(IdError::Empty { kind: KIND });
    }
    if s.len() > REMOTE_PATH_MAX_LEN {
        return Err(IdError::TooLong {
            kind: KIND,
            len: s.len(),
            max: REMOTE_PATH_MAX_LEN,
        });
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(IdError::InvalidChar {
            kind: KIND,
            value: shorten(s),
            character: c,
            expected: "control characters (including newline and NUL) are not allowed",
        });
    }
    let Some(rest) = s.strip_prefix('/') else {
        return Err(IdError::Invalid {
            kind: KIND,
            value: shorten(s),
            reason: "it is not absolute",
        });
    };
    if rest.is_empty() {
        return Ok(());
    }
    for segment in rest.split('/') {
        let reason = match segment {
            "" => "it has an empty component or a trailing '/'",
            "." | ".." => "it has a '.' or '..' component",
            _ => continue,
        };
        return Err(IdError::Invalid {
            kind: KIND,
            value: shorten(s),
            reason,
        });
    }
    Ok(())
}

string_name!(
    /// A SPIFFE trust domain name such as `hpcs.example.org`.
    ///
    /// `FromStr` and serde take the bare name; [`TrustDomain::parse_lenient`] also accepts the
    /// trust domain ID form `spiffe://hpcs.example.org`, as go-spiffe does.
    TrustDomain,
    validate_trust_domain
);

string_name!(
    /// A POSIX user name on the cluster, e.g. `alice`.
    UserName,
    validate_user
);

string_name!(
    /// A POSIX group name on the cluster, e.g. `project_462000031`.
    GroupName,
    validate_group
);

string_name!(
    /// A compute node's host name as Slurm and the SPIRE agent mapping know it, e.g. `nid003044`.
    NodeName,
    validate_node
);

string_name!(
    /// The server-generated identifier of one secret (one artefact key), e.g. a UUID.
    ///
    /// It appears in Vault paths, Vault role and policy names and SPIFFE IDs, hence the narrow
    /// lowercase charset.
    SecretId,
    validate_secret_id
);

string_name!(
    /// The user-chosen name of an encrypted artefact (image or data set), e.g. `jp2a_input`.
    ///
    /// Safe as a single file name: no `/`, no leading `.` or `-`.
    ArtefactName,
    validate_artefact
);

string_name!(
    /// A Vault role or policy name, e.g. `hpcs-secret-<id>`.
    RoleName,
    validate_role
);

string_name!(
    /// A relative Vault API path such as `hpcs/data/secrets/<id>`: segments of
    /// `[A-Za-z0-9._-]`, none empty or starting with `.`, no leading `/`.
    VaultPath,
    validate_vault_path
);

string_name!(
    /// An absolute path on the cluster's storage, e.g. `/scratch/project/alice/data.age`.
    ///
    /// No control characters (so no newline or NUL), no empty, `.` or `..` components, no
    /// trailing `/`. Other characters are allowed: such paths reach shells only single-quoted.
    RemotePath,
    validate_remote_path
);

impl TrustDomain {
    /// Parses a bare trust domain name or a trust domain ID (`spiffe://name`).
    ///
    /// # Errors
    ///
    /// [`IdError`] if the name is empty, too long or has characters outside `[a-z0-9._-]`.
    pub fn parse_lenient(s: &str) -> Result<Self, IdError> {
        s.strip_prefix(SPIFFE_SCHEME).unwrap_or(s).parse()
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>`.
    #[must_use]
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            full: format!("{SPIFFE_SCHEME}{}", self.0),
            trust_domain: self.clone(),
        }
    }
}

impl SecretId {
    /// Generates a fresh random secret ID (a UUID v4 in lowercase hyphenated form).
    #[must_use]
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().hyphenated().to_string())
    }
}

impl RemotePath {
    /// The path as a [`std::path::Path`].
    #[must_use]
    pub fn as_path(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }

    /// The last component, or `None` for `/`.
    #[must_use]
    pub fn file_name(&self) -> Option<&str> {
        self.0.rsplit('/').next().filter(|s| !s.is_empty())
    }

    /// The path with one more component appended.
    ///
    /// # Errors
    ///
    /// [`IdError`] if the result is too long.
    pub fn join(&self, name: &ArtefactName) -> Result<Self, IdError> {
        let joined = if self.0 == "/" {
            format!("/{name}")
        } else {
            format!("{}/{name}", self.0)
        };
        Self::try_from(joined)
    }
}

/// A SPIFFE ID, validated against the SPIFFE ID specification.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    full: String,
    trust_domain: TrustDomain,
}

impl SpiffeId {
    /// Builds `spiffe://<trust_domain><path>` from a trust domain and a path.
    ///
    /// # Errors
    ///
    /// [`IdError`] if `path` is not empty and not a valid SPIFFE path (`/seg/seg`), or the ID is
    /// longer than 2048 bytes.
    pub fn from_parts(trust_domain: &TrustDomain, path: &str) -> Result<Self, IdError> {
        let full = format!("{SPIFFE_SCHEME}{trust_domain}{path}");
        check_spiffe_len(&full)?;
        validate_spiffe_path(&full, path)?;
        Ok(Self {
            full,
            trust_domain: trust_domain.clone(),
        })
    }

    /// The ID as a string, `spiffe://...`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The trust domain.
    #[must_use]
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, empty or starting with `/`.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.full[SPIFFE_SCHEME.len() + self.trust_domain.as_str().len()..]
    }

    /// The path segments (none for a trust domain ID).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path().split('/').skip(1)
    }

    /// Whether this is a trust domain ID (`spiffe://td` with an empty path).
    #[must_use]
    pub fn is_trust_domain_id(&self) -> bool {
        self.path().is_empty()
    }
}

fn check_spiffe_len(full: &str) -> Result<(), IdError> {
    if full.len() > SPIFFE_ID_MAX_LEN {
        return Err(IdError::TooLong {
            kind: "SPIFFE ID",
            len: full.len(),
            max: SPIFFE_ID_MAX_LEN,
        });
    }
    Ok(())
}

fn validate_spiffe_path(full: &str, path: &str) -> Result<(), IdError> {
    const KIND: &str = "SPIFFE ID";
    if path.is_empty() {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(IdError::Invalid {
            kind: KIND,
            value: shorten(full),
            reason: "the path must start with '/'",
        });
    };
    for segment in rest.split('/') {
        match segment {
            "" => {
                return Err(IdError::Invalid {
                    kind: KIND,
                    value: shorten(full),
                    reason: "the path has an empty segment or a trailing '/'",
                });
            }
            "." | ".." => {
                return Err(IdError::Invalid {
                    kind: KIND,
                    value: shorten(full),
                    reason: "the path has a '.' or '..' segment",
                });
            }
            _ => {}
        }
        if let Some(c) = segment.chars().find(|c| !is_path_segment_char(*c)) {
            return Err(IdError::InvalidChar {
                kind: KIND,
                value: shorten(full),
                character: c,
                expected: "path segments allow A-Z, a-z, 0-9, '.', '_' and '-' (no query, fragment or percent-encoding)",
            });
        }
    }
    Ok(())
}

fn parse_spiffe(s: &str) -> Result<SpiffeId, IdError> {
    const KIND: &str = "SPIFFE ID";
    if s.is_empty() {
        return Err(IdError::Empty { kind: KIND });
    }
    check_spiffe_len(s)?;
    let Some(rest) = s.strip_prefix(SPIFFE_SCHEME) else {
        return Err(IdError::Invalid {
            kind: KIND,
            value: shorten(s),
            reason: "it does not start with \"spiffe://\"",
        });
    };
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if td.is_empty() {
        return Err(IdError::Invalid {
            kind: KIND,
            value: shorten(s),
            reason: "the trust domain is empty",
        });
    }
    if let Some(c) = td.chars().find(|c| !is_trust_domain_char(*c)) {
        return Err(IdError::InvalidChar {
            kind: KIND,
            value: shorten(s),
            character: c,
            expected: "the trust domain allows lowercase a-z, 0-9, '.', '_' and '-' (no port, user info or upper case)",
        });
    }
    let trust_domain = TrustDomain::try_from(td)?;
    validate_spiffe_path(s, path)?;
    Ok(SpiffeId {
        full: s.to_owned(),
        trust_domain,
    })
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_spiffe(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        parse_spiffe(&s)
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = IdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        parse_spiffe(s)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.full
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({:?})", self.full)
    }
}

/// The path prefix under which client SPIFFE IDs live, `/client/` by default.
///
/// Starts and ends with `/`, with at least one valid SPIFFE path segment between.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientPrefix(String);

impl ClientPrefix {
    /// The prefix as a string, e.g. `/client/`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ClientPrefix {
    fn default() -> Self {
        Self(DEFAULT_CLIENT_PREFIX.to_owned())
    }
}

impl FromStr for ClientPrefix {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const KIND: &str = "client ID prefix";
        let inner = s
            .strip_prefix('/')
            .and_then(|s| s.strip_suffix('/'))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| IdError::Invalid {
                kind: KIND,
                value: shorten(s),
                reason: "it must start and end with '/' and name at least one segment, e.g. /client/",
            })?;
        validate_spiffe_path(s, &format!("/{inner}")).map_err(|_| IdError::Invalid {
            kind: KIND,
            value: shorten(s),
            reason: "its segments must be non-empty, not '.' or '..', and use A-Z, a-z, 0-9, '.', '_' or '-'",
        })?;
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for ClientPrefix {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ClientPrefix> for String {
    fn from(p: ClientPrefix) -> String {
        p.0
    }
}

impl fmt::Display for ClientPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientPrefix({:?})", self.0)
    }
}

/// Implements the conversions every typed SPIFFE ID shares.
macro_rules! typed_spiffe_id {
    ($name:ident) => {
        impl $name {
            /// The underlying SPIFFE ID.
            #[must_use]
            pub fn as_spiffe_id(&self) -> &SpiffeId {
                &self.id
            }

            /// The ID as a string, `spiffe://...`.
            #[must_use]
            pub fn as_str(&self) -> &str {
                self.id.as_str()
            }

            /// The trust domain.
            #[must_use]
            pub fn trust_domain(&self) -> &TrustDomain {
                self.id.trust_domain()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.id, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.id.as_str())
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::try_from(s.parse::<SpiffeId>()?)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::try_from(SpiffeId::try_from(s)?)
            }
        }

        impl From<$name> for SpiffeId {
            fn from(v: $name) -> SpiffeId {
                v.id
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.id.full
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.id.as_str()
            }
        }
    };
}

/// A client's SPIFFE ID, `spiffe://<td><prefix><user>` (prefix `/client/` by default).
///
/// `FromStr`, `TryFrom` and serde use the default prefix; a server with a configured prefix uses
/// [`ClientId::from_spiffe_id`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientId {
    id: SpiffeId,
    user: UserName,
}

impl ClientId {
    /// `spiffe://<td>/client/<user>`.
    #[must_use]
    pub fn new(trust_domain: &TrustDomain, user: &UserName) -> Self {
        Self::with_prefix(trust_domain, &ClientPrefix::default(), user)
    }

    /// `spiffe://<td><prefix><user>`.
    #[must_use]
    pub fn with_prefix(trust_domain: &TrustDomain, prefix: &ClientPrefix, user: &UserName) -> Self {
        let full = format!("{SPIFFE_SCHEME}{trust_domain}{prefix}{user}");
        Self {
            id: SpiffeId {
                full,
                trust_domain: trust_domain.clone(),
            },
            user: user.clone(),
        }
    }

    /// Interprets a SPIFFE ID as a client ID under `prefix`.
    ///
    /// # Errors
    ///
    /// [`IdError::WrongShape`] if the path is not `<prefix><user>`, or the user name error if
    /// the last segment is not a valid [`UserName`].
    pub fn from_spiffe_id(id: SpiffeId, prefix: &ClientPrefix) -> Result<Self, IdError> {
        let user = id
            .path()
            .strip_prefix(prefix.as_str())
            .filter(|u| !u.contains('/'))
            .ok_or_else(|| IdError::WrongShape {
                kind: "a client ID",
                id: shorten(id.as_str()),
                expected: "spiffe://<trust-domain><client-prefix><user>, by default spiffe://<trust-domain>/client/<user>",
            })?
            .parse::<UserName>()?;
        Ok(Self { id, user })
    }

    /// The cluster user this client acts as.
    #[must_use]
    pub fn user(&self) -> &UserName {
        &self.user
    }
}

impl TryFrom<SpiffeId> for ClientId {
    type Error = IdError;
    fn try_from(id: SpiffeId) -> Result<Self, Self::Error> {
        Self::from_spiffe_id(id, &ClientPrefix::default())
    }
}

typed_spiffe_id!(ClientId);

/// The HPCS server's SPIFFE ID, `spiffe://<td>/hpcs/server`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServerId {
    id: SpiffeId,
}

impl ServerId {
    /// `spiffe://<td>/hpcs/server`.
    #[must_use]
    pub fn new(trust_domain: &TrustDomain) -> Self {
        Self {
            id: SpiffeId {
                full: format!("{SPIFFE_SCHEME}{trust_domain}{SERVER_PATH}"),
                trust_domain: trust_domain.clone(),
            },
        }
    }
}

impl TryFrom<SpiffeId> for ServerId {
    type Error = IdError;
    fn try_from(id: SpiffeId) -> Result<Self, Self::Error> {
        if id.path() != SERVER_PATH {
            return Err(IdError::WrongShape {
                kind: "the HPCS server ID",
                id: shorten(id.as_str()),
                expected: "spiffe://<trust-domain>/hpcs/server",
            });
        }
        Ok(Self { id })
    }
}

typed_spiffe_id!(ServerId);

/// The SPIFFE ID allowed to read one secret, `spiffe://<td>/hpcs/secret/<secret-id>`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretReaderId {
    id: SpiffeId,
    secret: SecretId,
}

impl SecretReaderId {
    /// `spiffe://<td>/hpcs/secret/<secret-id>`.
    #[must_use]
    pub fn new(trust_domain: &TrustDomain, secret: &SecretId) -> Self {
        Self {
            id: SpiffeId {
                full: format!("{SPIFFE_SCHEME}{trust_domain}{SECRET_READER_PREFIX}{secret}"),
                trust_domain: trust_domain.clone(),
            },
            secret: secret.clone(),
        }
    }

    /// The secret this ID may read.
    #[must_use]
    pub fn secret_id(&self) -> &SecretId {
        &self.secret
    }
}

impl TryFrom<SpiffeId> for SecretReaderId {
    type Error = IdError;
    fn try_from(id: SpiffeId) -> Result<Self, Self::Error> {
        let secret = id
            .path()
            .strip_prefix(SECRET_READER_PREFIX)
            .ok_or_else(|| IdError::WrongShape {
                kind: "a secret reader ID",
                id: shorten(id.as_str()),
                expected: "spiffe://<trust-domain>/hpcs/secret/<secret-id>",
            })?
            .parse::<SecretId>()?;
        Ok(Self { id, secret })
    }
}

typed_spiffe_id!(SecretReaderId);

/// A SPIRE agent's SPIFFE ID: any SPIFFE ID under SPIRE's reserved `/spire/agent/` path.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentId {
    id: SpiffeId,
}

impl AgentId {
    /// devspire's agent ID scheme, `spiffe://<td>/spire/agent/devspire/<node>`.
    #[must_use]
    pub fn devspire(trust_domain: &TrustDomain, node: &NodeName) -> Self {
        Self {
            id: SpiffeId {
                full: format!("{SPIFFE_SCHEME}{trust_domain}{DEVSPIRE_AGENT_PREFIX}{node}"),
                trust_domain: trust_domain.clone(),
            },
        }
    }
}

impl TryFrom<SpiffeId> for AgentId {
    type Error = IdError;
    fn try_from(id: SpiffeId) -> Result<Self, Self::Error> {
        if id
            .path()
            .strip_prefix(AGENT_PREFIX)
            .is_none_or(str::is_empty)
        {
            return Err(IdError::WrongShape {
                kind: "a SPIRE agent ID",
                id: shorten(id.as_str()),
                expected: "spiffe://<trust-domain>/spire/agent/<attestor>/...",
            });
        }
        Ok(Self { id })
    }
}

typed_spiffe_id!(AgentId);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    fn td() -> TrustDomain {
        "hpcs.test".parse().unwrap()
    }

    #[rstest]
    #[case("alice")]
    #[case("_svc")]
    #[case("first.last")]
    #[case("a-b_c9")]
    #[case("abcdefghijklmnopqrstuvwxyz012345")]
    fn user_names_ok(#[case] s: &str) {
        let u: UserName = s.parse().unwrap();
        assert_eq!(u.to_string(), s);
        let g: GroupName = s.parse().unwrap();
        assert_eq!(g.as_str(), s);
    }

    #[rstest]
    #[case("", "user name is empty")]
    #[case(
        "abcdefghijklmnopqrstuvwxyz0123456",
        "user name is 33 bytes long, more than the maximum of 32"
    )]
    #[case("Alice", "user name \"Alice\" contains 'A'")]
    #[case("1alice", "contains '1'")]
    #[case(".alice", "contains '.'")]
    #[case("-alice", "contains '-'")]
    #[case("al ice", "contains ' '")]
    #[case("al/ice", "contains '/'")]
    #[case("machine$", "contains '$'")]
    #[case("a;rm", "contains ';'")]
    #[case("a`b`", "contains '`'")]
    #[case("a\nb", "contains '\\n'")]
    #[case("..", "contains '.'")]
    #[case("ålice", "contains 'å'")]
    #[case("a..b", "it contains '..'")]
    fn user_names_bad(#[case] s: &str, #[case] msg: &str) {
        let err = s.parse::<UserName>().unwrap_err().to_string();
        assert!(err.contains(msg), "{err:?} does not contain {msg:?}");
    }

    #[rstest]
    #[case("nid003044")]
    #[case("node-1.cluster.example")]
    #[case("cn_01")]
    #[case("localhost")]
    #[case("0node")]
    fn node_names_ok(#[case] s: &str) {
        assert_eq!(s.parse::<NodeName>().unwrap().as_str(), s);
    }

    #[rstest]
    #[case("", "node name is empty")]
    #[case("-node", "contains '-'")]
    #[case("node-", "a label starts or ends with '-'")]
    #[case("a.-b", "a label starts or ends with '-'")]
    #[case("a..b", "a label is empty")]
    #[case("a.", "a label is empty")]
    #[case(".a", "contains '.'")]
    #[case("Node1", "contains 'N'")]
    #[case("nid[001-003]", "contains '['")]
    #[case("a b", "contains ' '")]
    #[case("a/b", "contains '/'")]
    fn node_names_bad(#[case] s: &str, #[case] msg: &str) {
        let err = s.parse::<NodeName>().unwrap_err().to_string();
        assert!(err.contains(msg), "{err:?} does not contain {msg:?}");
    }

    #[test]
    fn node_label_too_long() {
        let s = format!("{}.b", "a".repeat(64));
        let err = s.parse::<NodeName>().unwrap_err().to_string();
        assert!(err.contains("longer than 63"), "{err}");
        let ok = format!("{}.b", "a".repeat(63));
        ok.parse::<NodeName>().unwrap();
    }

    #[rstest]
    #[case("0b7e5c1e-8a7c-4c39-9a59-2f5d8d1f3b6a")]
    #[case("abc")]
    #[case("7")]
    fn secret_ids_ok(#[case] s: &str) {
        assert_eq!(s.parse::<SecretId>().unwrap().as_str(), s);
    }

    #[rstest]
    #[case("", "secret ID is empty")]
    #[case("-abc", "contains '-'")]
    #[case("abc-", "it ends with '-'")]
    #[case("ABC", "contains 'A'")]
    #[case("a_b", "contains '_'")]
    #[case("a.b", "contains '.'")]
    #[case("a/b", "contains '/'")]
    fn secret_ids_bad(#[case] s: &str, #[case] msg: &str) {
        let err = s.parse::<SecretId>().unwrap_err().to_string();
        assert!(err.contains(msg), "{err:?} does not contain {msg:?}");
    }

    #[test]
    fn generated_secret_ids_are_valid_and_distinct() {
        let a = SecretId::generate();
        let b = SecretId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().parse::<SecretId>().unwrap(), a);
        assert_eq!(a.as_str().len(), 36);
    }

    #[rstest]
    #[case("jp2a_input")]
    #[case("Image-1.2.tar")]
    #[case("_x")]
    #[case("a.b.c")]
    fn artefact_names_ok(#[case] s: &str) {
        assert_eq!(s.parse::<ArtefactName>().unwrap().as_str(), s);
    }

    #[rstest]
    #[case("", "is empty")]
    #[case(".hidden", "contains '.'")]
    #[case("..", "contains '.'")]
    #[case("-rf", "contains '-'")]
    #[case("a/b", "contains '/'")]
    #[case("a b", "contains ' '")]
    #[case("a$b", "contains '$'")]
    #[case("a'b", "contains '\\''")]
    #[case("a*", "contains '*'")]
    #[case("a\\b", "contains '\\\\'")]
    #[case("a..b", "it contains '..'")]
    #[case("x..", "it contains '..'")]
    fn artefact_names_bad(#[case] s: &str, #[case] msg: &str) {
        let err = s.parse::<ArtefactName>().unwrap_err().to_string();
        assert!(err.contains(msg), "{err:?} does not contain {msg:?}");
    }

    #[test]
    fn artefact_name_length_cap() {
        "a".repeat(128).parse::<ArtefactName>().unwrap();
        let err = "a".repeat(129).parse::<ArtefactName>().unwrap_err();
        assert_eq!(
            err,
            IdError::TooLong {
                kind: "artefact name",
                len: 129,
                max: 128
            }
        );
    }

    #[rstest]
    #[case("hpcs/data/secrets/abc", true)]
    #[case("secret/x", true)]
    #[case("/hpcs/x", false)]
    #[case("hpcs//x", false)]
    #[case("hpcs/x/", false)]
    #[case("hpcs/../x", false)]
    #[case("hpcs/.x", false)]
    #[case("hpcs/x..y", false)]
    #[case("hpcs/x y", false)]
    #[case("hpcs/x?list=1", false)]
    fn vault_paths(#[case] s: &str, #[case] ok: bool) {
        assert_eq!(s.parse::<VaultPath>().is_ok(), ok, "{s}");
    }

    #[rstest]
    #[case("/scratch/project_1/alice/data.age", true)]
    #[case("/", true)]
    #[case("/with space/x", true)]
    #[case("relative/x", false)]
    #[case("/a/../b", false)]
    #[case("/a/./b", false)]
    #[case("/a//b", false)]
    #[case("/a/", false)]
    #[case("/a\nb", false)]
    #[case("/a\0b", false)]
    #[case("", false)]
    fn remote_paths(#[case] s: &str, #[case] ok: bool) {
        assert_eq!(s.parse::<RemotePath>().is_ok(), ok, "{s:?}");
    }

    #[test]
    fn remote_path_join_and_file_name() {
        let dir: RemotePath = "/scratch/alice".parse().unwrap();
        let name: ArtefactName = "data.age".parse().unwrap();
        let joined = dir.join(&name).unwrap();
        assert_eq!(joined.as_str(), "/scratch/alice/data.age");
        assert_eq!(joined.file_name(), Some("data.age"));
        let root: RemotePath = "/".parse().unwrap();
        assert_eq!(root.join(&name).unwrap().as_str(), "/data.age");
        assert_eq!(root.file_name(), None);
    }

    #[rstest]
    #[case("hpcs.test", "hpcs.test")]
    #[case("spiffe://hpcs.test", "hpcs.test")]
    #[case("a_b-c.0", "a_b-c.0")]
    fn trust_domain_lenient(#[case] s: &str, #[case] want: &str) {
        assert_eq!(TrustDomain::parse_lenient(s).unwrap().as_str(), want);
    }

    #[rstest]
    #[case("HPCS")]
    #[case("hpcs.test:8081")]
    #[case("user@hpcs")]
    #[case("")]
    #[case("spiffe://hpcs.test")]
    fn trust_domain_bad(#[case] s: &str) {
        s.parse::<TrustDomain>().unwrap_err();
    }

    #[rstest]
    #[case("spiffe://hpcs.test", "hpcs.test", "")]
    #[case("spiffe://hpcs.test/client/alice", "hpcs.test", "/client/alice")]
    #[case("spiffe://a-b_c.0/A.b_c-9", "a-b_c.0", "/A.b_c-9")]
    #[case("spiffe://td/...", "td", "/...")]
    fn spiffe_ok(#[case] s: &str, #[case] td: &str, #[case] path: &str) {
        let id: SpiffeId = s.parse().unwrap();
        assert_eq!(id.trust_domain().as_str(), td);
        assert_eq!(id.path(), path);
        assert_eq!(id.to_string(), s);
        assert_eq!(id.is_trust_domain_id(), path.is_empty());
    }

    #[rstest]
    #[case("", "SPIFFE ID is empty")]
    #[case("http://hpcs.test/x", "does not start with \"spiffe://\"")]
    #[case("SPIFFE://hpcs.test/x", "does not start with \"spiffe://\"")]
    #[case("spiffe:///x", "the trust domain is empty")]
    #[case("spiffe://", "the trust domain is empty")]
    #[case("spiffe://HPCS/x", "contains 'H'")]
    #[case("spiffe://hpcs:443/x", "contains ':'")]
    #[case("spiffe://u@hpcs/x", "contains '@'")]
    #[case("spiffe://hpcs/", "empty segment or a trailing '/'")]
    #[case("spiffe://hpcs//x", "empty segment")]
    #[case("spiffe://hpcs/x/", "trailing '/'")]
    #[case("spiffe://hpcs/./x", "'.' or '..' segment")]
    #[case("spiffe://hpcs/x/..", "'.' or '..' segment")]
    #[case("spiffe://hpcs/x?y=1", "contains '?'")]
    #[case("spiffe://hpcs/x#frag", "contains '#'")]
    #[case("spiffe://hpcs/x%20y", "contains '%'")]
    #[case("spiffe://hpcs/x y", "contains ' '")]
    #[case("spiffe://hpcs?x", "contains '?'")]
    fn spiffe_bad(#[case] s: &str, #[case] msg: &str) {
        let err = s.parse::<SpiffeId>().unwrap_err().to_string();
        assert!(err.contains(msg), "{err:?} does not contain {msg:?}");
    }

    #[test]
    fn spiffe_length_limit() {
        let base = "spiffe://td/";
        let ok = format!("{base}{}", "a".repeat(SPIFFE_ID_MAX_LEN - base.len()));
        ok.parse::<SpiffeId>().unwrap();
        let long = format!("{ok}a");
        let err = long.parse::<SpiffeId>().unwrap_err();
        assert!(matches!(err, IdError::TooLong { len: 2049, .. }), "{err}");
    }

    #[test]
    fn error_values_are_shortened() {
        let long = format!("/{}\n", "a".repeat(200));
        let err = long.parse::<RemotePath>().unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
        assert!(err.contains("..."), "{err}");
    }

    #[test]
    fn client_id_scheme() {
        let alice: UserName = "alice".parse().unwrap();
        let id = ClientId::new(&td(), &alice);
        assert_eq!(id.as_str(), "spiffe://hpcs.test/client/alice");
        assert_eq!(id.user(), &alice);
        let parsed: ClientId = id.as_str().parse().unwrap();
        assert_eq!(parsed, id);

        let prefix: ClientPrefix = "/users/laptop/".parse().unwrap();
        let custom = ClientId::with_prefix(&td(), &prefix, &alice);
        assert_eq!(custom.as_str(), "spiffe://hpcs.test/users/laptop/alice");
        let spiffe: SpiffeId = custom.as_str().parse().unwrap();
        assert_eq!(
            ClientId::from_spiffe_id(spiffe.clone(), &prefix).unwrap(),
            custom
        );
        let err = ClientId::try_from(spiffe).unwrap_err();
        assert!(matches!(err, IdError::WrongShape { .. }), "{err}");
    }

    #[rstest]
    #[case("spiffe://hpcs.test/client", "is not a client ID")]
    #[case("spiffe://hpcs.test/client/alice/extra", "is not a client ID")]
    #[case("spiffe://hpcs.test/hpcs/server", "is not a client ID")]
    #[case("spiffe://hpcs.test/client/Alice", "user name \"Alice\" contains 'A'")]
    fn client_id_bad(#[case] s: &str, #[case] msg: &str) {
        let err = s.parse::<ClientId>().unwrap_err().to_string();
        assert!(err.contains(msg), "{err:?} does not contain {msg:?}");
    }

    #[rstest]
    #[case("client")]
    #[case("/client")]
    #[case("client/")]
    #[case("/")]
    #[case("//")]
    #[case("/a//b/")]
    #[case("/../")]
    #[case("/a b/")]
    fn client_prefix_bad(#[case] s: &str) {
        s.parse::<ClientPrefix>().unwrap_err();
    }

    #[test]
    fn server_secret_agent_ids() {
        let server = ServerId::new(&td());
        assert_eq!(server.as_str(), "spiffe://hpcs.test/hpcs/server");
        assert_eq!(server.as_str().parse::<ServerId>().unwrap(), server);
        "spiffe://hpcs.test/hpcs/server/x"
            .parse::<ServerId>()
            .unwrap_err();

        let secret: SecretId = "abc-123".parse().unwrap();
        let reader = SecretReaderId::new(&td(), &secret);
        assert_eq!(reader.as_str(), "spiffe://hpcs.test/hpcs/secret/abc-123");
        let back: SecretReaderId = reader.as_str().parse().unwrap();
        assert_eq!(back.secret_id(), &secret);
        "spiffe://hpcs.test/hpcs/secret/ABC"
            .parse::<SecretReaderId>()
            .unwrap_err();
        "spiffe://hpcs.test/hpcs/secret/a/b"
            .parse::<SecretReaderId>()
            .unwrap_err();

        let node: NodeName = "node1".parse().unwrap();
        let agent = AgentId::devspire(&td(), &node);
        assert_eq!(
            agent.as_str(),
            "spiffe://hpcs.test/spire/agent/devspire/node1"
        );
        assert_eq!(agent.as_str().parse::<AgentId>().unwrap(), agent);
        "spiffe://hpcs.test/spire/agent/x509pop/0a1b"
            .parse::<AgentId>()
            .unwrap();
        "spiffe://hpcs.test/spire/agent"
            .parse::<AgentId>()
            .unwrap_err();
        "spiffe://hpcs.test/node1".parse::<AgentId>().unwrap_err();
    }

    #[test]
    fn serde_validates() {
        let id: ClientId = serde_json::from_str("\"spiffe://hpcs.test/client/alice\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://hpcs.test/client/alice\""
        );
        let err = serde_json::from_str::<UserName>("\"../etc\"").unwrap_err();
        assert!(err.to_string().contains("user name"), "{err}");
        serde_json::from_str::<SpiffeId>("\"spiffe://x/../y\"").unwrap_err();
        let u: Vec<NodeName> = serde_json::from_str("[\"a\",\"b\"]").unwrap();
        assert_eq!(u.len(), 2);
    }

    #[test]
    fn trust_domain_id() {
        assert_eq!(td().id().as_str(), "spiffe://hpcs.test");
        assert!(td().id().is_trust_domain_id());
    }

    #[test]
    fn spiffe_from_parts_and_segments() {
        let id = SpiffeId::from_parts(&td(), "/a/b.c").unwrap();
        assert_eq!(id.segments().collect::<Vec<_>>(), ["a", "b.c"]);
        SpiffeId::from_parts(&td(), "a").unwrap_err();
        SpiffeId::from_parts(&td(), "/a/../b").unwrap_err();
        assert_eq!(SpiffeId::from_parts(&td(), "").unwrap(), td().id());
    }

    proptest! {
        #[test]
        fn prop_user_round_trip(s in "[a-z_][a-z0-9_.-]{0,31}".prop_filter("no ..", |s| !s.contains(".."))) {
            let u: UserName = s.parse().unwrap();
            prop_assert_eq!(u.to_string(), s);
            let json = serde_json::to_string(&u).unwrap();
            prop_assert_eq!(serde_json::from_str::<UserName>(&json).unwrap(), u);
        }

        #[test]
        fn prop_node_round_trip(s in "[a-z0-9_]([a-z0-9_-]{0,20}[a-z0-9_])?(\\.[a-z0-9]{1,10}){0,3}") {
            prop_assert_eq!(s.parse::<NodeName>().unwrap().to_string(), s);
        }

        #[test]
        fn prop_artefact_round_trip(
            s in "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}".prop_filter("no ..", |s| !s.contains("..")),
        ) {
            prop_assert_eq!(s.parse::<ArtefactName>().unwrap().to_string(), s);
        }

        #[test]
        fn prop_spiffe_round_trip(
            td in "[a-z0-9._-]{1,30}",
            segs in proptest::collection::vec("[A-Za-z0-9_-][A-Za-z0-9._-]{0,10}", 0..5),
        ) {
            let s = format!("spiffe://{td}{}", segs.iter().map(|s| format!("/{s}")).collect::<String>());
            let id: SpiffeId = s.parse().unwrap();
            prop_assert_eq!(id.to_string(), s);
            prop_assert_eq!(id.segments().count(), segs.len());
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        }

        /// Whatever the input, parsing never panics, and what parses prints back unchanged and
        /// holds none of the characters that could escape a path or a shell word.
        #[test]
        fn prop_arbitrary_input(s in "\\PC{0,40}|[a-z./ $;'\"-]{0,12}") {
            if let Ok(id) = s.parse::<SpiffeId>() {
                prop_assert_eq!(id.as_str(), s.as_str());
            }
            for v in [
                s.parse::<UserName>().map(String::from),
                s.parse::<GroupName>().map(String::from),
                s.parse::<NodeName>().map(String::from),
                s.parse::<SecretId>().map(String::from),
                s.parse::<ArtefactName>().map(String::from),
            ]
            .into_iter()
            .flatten()
            {
                prop_assert_eq!(&v, &s);
                prop_assert!(!v.contains(['/', ' ', '$', ';', '\'', '"']));
                prop_assert!(v != "." && v != "..");
                prop_assert!(!v.starts_with(['-', '.']));
                prop_assert!(!v.contains(".."));
            }
        }
    }
}
