//! INI configuration of the client tools, the server and the node runtime.
//!
//! Files are parsed in two steps, as everywhere in HPCS: `serde_ini` decodes the text into raw
//! structs whose fields are all `Option<String>` ([`RawClientConfig`], [`RawServerConfig`],
//! [`RawNodeConfig`]), then `TryFrom` converts them into typed, validated config
//! ([`ClientConfig`], [`ServerConfig`], [`NodeConfig`]) with named defaults. Every error names
//! the file, the line where it helps, the section and the key, and says what was expected.
//!
//! # Syntax
//!
//! - `[section]` headers, `key = value` lines, whole-line comments starting with `;` or `#`,
//!   blank lines. Leading and trailing whitespace is ignored everywhere, and a UTF-8 byte-order
//!   mark is skipped.
//! - Keys are kebab-case; case is ignored (as Python's `configparser` does, so HPCS files parse)
//!   and `_` is read as `-`, so `scratch_dir` and `Scratch-Dir` both mean `scratch-dir` (and
//!   writing both is a duplicate). In free-form sections whose keys are names (`[node-agents]`)
//!   only case is folded. Section names are case-sensitive.
//! - A value may be wrapped in one pair of `"` or `'` quotes, which are removed: HPCS users write
//!   `address = "https://..."`. An empty value (or `""`) means "not set".
//! - A `;` or `#` preceded by whitespace outside quotes starts an inline comment.
//! - Booleans: `true/false`, `yes/no`, `on/off`, `1/0`. Durations: an integer with an optional
//!   unit `ms`, `s`, `m`, `h` or `d` (`30s`, `5m`; a plain number is seconds). Sizes: bytes, or
//!   an integer with `KiB`, `MiB` or `GiB`. Paths: `~/` is the home directory, relative paths are
//!   relative to the directory of the config file.
//!
//! # Strictness
//!
//! Unknown sections, unknown keys, duplicate sections, duplicate keys and keys outside any
//! section are **errors**, never warnings: a typo such as `alow-plain-http` must not silently
//! leave a security setting at a value the admin did not intend. The error suggests the closest
//! known name.
//!
//! # `serde_ini` quirks and how they are handled
//!
//! `serde_ini` 0.2 reports neither line numbers nor which section an unknown key is in, rejects
//! whitespace-only and indented lines, treats a `[x] ` header with trailing space as unclosed,
//! keeps inline comments in values and is case-sensitive for keys. So every file is first scanned
//! line by line with `serde_ini`'s own line parser ([`serde_ini::Parser`]) after trimming each
//! line; that scan finds syntax errors, duplicates and unknown names with their line numbers
//! against the schema read from the raw structs themselves (so adding a field to a raw struct is
//! all it takes to allow a key), strips inline comments, lowercases keys, and hands a normalized
//! text to `serde_ini` for decoding. Raw section structs must have only `Option` fields (a
//! missing key is `None`); a section with free-form keys is a `BTreeMap<String, String>`.
//!
//! # Node to agent mapping (server)
//!
//! The server registers reader entries under the SPIRE agent of each allowed compute node, so it
//! must know every node's agent SPIFFE ID. Real agent IDs depend on the node attestor
//! (`join_token`, `x509pop`, ...), so they are listed explicitly, one key per node, in a section
//! of their own (INI has no nested maps and node names are not known in advance):
//!
//! ```ini
//! [node-agents]
//! nid003044 = spiffe://hpcs.example.org/spire/agent/x509pop/3f8a...
//! ```
//!
//! For schemes where the agent ID is derived from the node name (devspire), `[spire-server]
//! agent-id-template = spiffe://hpcs.test/spire/agent/devspire/{node}` covers every node not
//! listed. A node matched by neither is refused.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::ids::{AgentId, ClientPrefix, IdError, NodeName, TrustDomain, UserName};

/// Largest config file we read.
pub const CONFIG_MAX_BYTES: u64 = 1024 * 1024;

/// Default SSH port on the cluster's login node.
pub const DEFAULT_SSH_PORT: u16 = 22;
/// Default SSH connect timeout.
pub const DEFAULT_SSH_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Default `[ssh] streams`: SSH connections one large transfer is spread over. One libssh2
/// connection is bound by one core's encryption on a fast link; two roughly use a laptop's
/// second core without asking much of the login node (docs/performance.md).
pub const DEFAULT_SSH_STREAMS: usize = 2;

/// Largest accepted `[ssh] streams`: login nodes limit unauthenticated connections
/// (OpenSSH `MaxStartups` defaults to 10).
pub const MAX_SSH_STREAMS: usize = 8;
/// Default timeout of each HTTP request to the HPCS server or Vault.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default JWT-SVID audience of the HPCS server.
pub const DEFAULT_SERVER_AUDIENCE: &str = "hpcs-server";
/// Default JWT-SVID audience used to log in to Vault.
pub const DEFAULT_VAULT_AUDIENCE: &str = "vault";
/// Default mount of Vault's JWT auth method.
pub const DEFAULT_VAULT_AUTH_MOUNT: &str = "jwt";
/// Default mount of the KV v2 engine holding artefact keys.
pub const DEFAULT_VAULT_KV_MOUNT: &str = "hpcs";
/// Default Vault role the server logs in with.
pub const DEFAULT_VAULT_SERVER_ROLE: &str = "hpcs-server";
/// Default Vault token role from which the server mints single-use client write tokens.
pub const DEFAULT_VAULT_TOKEN_ROLE: &str = "hpcs-client-write";
/// Default lifetime of a client's single-use write token.
pub const DEFAULT_WRITE_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);
/// Default lifetime of a node's reader token.
pub const DEFAULT_READER_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);
/// Default number of uses of a node's reader token (one read, one retry).
pub const DEFAULT_READER_TOKEN_USES: u32 = 2;
/// Default listen address of the server (loopback: exposing it is a deliberate choice).
pub const DEFAULT_SERVER_LISTEN: &str = "127.0.0.1:10080";
/// Default cap on request bodies.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024;
/// Default server-side request timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// SPIRE's default server admin socket.
pub const DEFAULT_SPIRE_SERVER_SOCKET: &str = "/tmp/spire-server/private/api.sock";
/// SPIRE's default agent Workload API socket.
pub const DEFAULT_SPIRE_AGENT_SOCKET: &str = "/tmp/spire-agent/public/api.sock";
/// Default per-job scratch root on the node: a root-owned tmpfs on systemd machines, so
/// plaintext never reaches a disk.
pub const DEFAULT_SCRATCH_DIR: &str = "/run/hpcs";
/// Default admin policy file of the node runtime.
pub const DEFAULT_POLICY_FILE: &str = "/etc/hpcs/policy.ini";
/// Default container engine socket on the node.
pub const DEFAULT_ENGINE_SOCKET: &str = "/var/run/docker.sock";
/// Default timeout of each input or output hook on the node.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Placeholder for the node name in `agent-id-template`.
pub const AGENT_TEMPLATE_NODE: &str = "{node}";

/// Errors of loading configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is larger than [`CONFIG_MAX_BYTES`] or not UTF-8.
    #[error("config file {path} is not a text file of at most {CONFIG_MAX_BYTES} bytes")]
    NotText {
        /// The file.
        path: PathBuf,
    },
    /// A line is not a section header, `key = value`, comment or blank.
    #[error("{path}:{line}: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A section this program does not know.
    #[error("{path}:{line}: unknown section [{section}]; {help}")]
    UnknownSection {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The section.
        section: String,
        /// `did you mean [x]?` and the known sections.
        help: String,
    },
    /// A key this section does not know.
    #[error("{path}:{line}: unknown key `{key}` in [{section}]; {help}")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The section.
        section: String,
        /// The key.
        key: String,
        /// `did you mean `x`?` and the known keys.
        help: String,
    },
    /// A section or key appears twice.
    #[error("{path}:{line}: duplicate {what} (first on line {first_line})")]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// 1-based line number of the repetition.
        line: usize,
        /// `section [x]` or `key `k` in [x]`.
        what: String,
        /// 1-based line number of the first occurrence.
        first_line: usize,
    },
    /// `serde_ini` rejected the normalized text (not expected after the line scan).
    #[error("failed to decode config file {path}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_ini::de::Error,
    },
    /// A required section is missing.
    #[error("{path}: missing section [{section}]")]
    MissingSection {
        /// The file.
        path: PathBuf,
        /// The section.
        section: &'static str,
    },
    /// A required key is missing.
    #[error("{path}: missing key `{key}` in [{section}]")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The section.
        section: &'static str,
        /// The key.
        key: &'static str,
    },
    /// A value has the wrong format.
    #[error("{path}:{line}: [{section}] {key} = {value:?}: expected {expected}")]
    InvalidValue {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The section.
        section: &'static str,
        /// The key.
        key: String,
        /// The value as written (quotes removed, shortened if long).
        value: String,
        /// What was expected.
        expected: String,
    },
    /// A value is not a valid name or ID.
    #[error("{path}:{line}: [{section}] {key}: invalid value")]
    InvalidId {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The section.
        section: &'static str,
        /// The key.
        key: String,
        /// Why.
        #[source]
        source: Box<IdError>,
    },
    /// Settings that are valid alone but not together.
    #[error("{path}: {reason}")]
    Conflict {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Raw structs: what serde_ini decodes. Every field is optional; validation comes after.
// ---------------------------------------------------------------------------------------------

/// Raw `[spire-server]` of the client (HPCS keys).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawClientSpireServer {
    /// Host of the SPIRE server (HPCS; informational).
    pub address: Option<String>,
    /// Port of the SPIRE server (HPCS; informational).
    pub port: Option<String>,
    /// Trust domain.
    pub trust_domain: Option<String>,
}

/// Raw `[hpcs-server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawHpcsServer {
    /// Base URL of the HPCS server API.
    pub url: Option<String>,
    /// JWT-SVID audience the server expects.
    pub audience: Option<String>,
    /// Timeout of each request.
    pub timeout: Option<String>,
}

/// Raw `[vault]` of the client.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawClientVault {
    /// Base URL of Vault.
    pub url: Option<String>,
    /// CA certificate (PEM) to trust for Vault's TLS.
    pub ca_cert: Option<String>,
    /// Timeout of each request.
    pub timeout: Option<String>,
}

/// Raw `[supercomputer]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSupercomputer {
    /// Login node host name or address.
    pub address: Option<String>,
    /// The user's account on the cluster.
    pub username: Option<String>,
    /// Path of `hpcs-node` on the compute nodes (job-prep).
    pub hpcs_node: Option<String>,
}

/// Raw `[ssh]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSsh {
    /// Private key file.
    pub key: Option<String>,
    /// known_hosts file.
    pub known_hosts: Option<String>,
    /// Port.
    pub port: Option<String>,
    /// Trust and record unknown host keys on first connection.
    pub accept_new_host_keys: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Option<String>,
    /// Connections per large transfer.
    pub streams: Option<String>,
}

/// Raw `[spire-agent]` (all three configs).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSpireAgent {
    /// Workload API socket of the local SPIRE agent.
    pub socket_path: Option<String>,
}

/// Raw `[client]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawClientSection {
    /// The user's age identity file for job outputs.
    pub identity_file: Option<String>,
}

/// Raw client configuration, one field per section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawClientConfig {
    /// `[spire-server]`.
    pub spire_server: Option<RawClientSpireServer>,
    /// `[hpcs-server]`.
    pub hpcs_server: Option<RawHpcsServer>,
    /// `[vault]`.
    pub vault: Option<RawClientVault>,
    /// `[supercomputer]`.
    pub supercomputer: Option<RawSupercomputer>,
    /// `[ssh]`.
    pub ssh: Option<RawSsh>,
    /// `[spire-agent]`.
    pub spire_agent: Option<RawSpireAgent>,
    /// `[client]`.
    pub client: Option<RawClientSection>,
}

/// Raw `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawServerSection {
    /// Listen address.
    pub listen: Option<String>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<String>,
    /// TLS private key (PEM).
    pub tls_key: Option<String>,
    /// Serve plain HTTP (behind a TLS-terminating proxy only).
    pub allow_plain_http: Option<String>,
    /// JWT-SVID audience callers must present.
    pub audience: Option<String>,
    /// Audit log file.
    pub audit_log: Option<String>,
    /// Path prefix of client SPIFFE IDs.
    pub client_id_prefix: Option<String>,
    /// Cap on request bodies.
    pub max_body_bytes: Option<String>,
    /// Per-request timeout.
    pub request_timeout: Option<String>,
}

/// Raw `[spire-server]` of the server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawServerSpireServer {
    /// Trust domain.
    pub trust_domain: Option<String>,
    /// SPIRE server admin API socket.
    pub socket_path: Option<String>,
    /// Agent SPIFFE ID of nodes not in `[node-agents]`, with `{node}`.
    pub agent_id_template: Option<String>,
}

/// Raw `[vault]` of the server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawServerVault {
    /// Base URL.
    pub url: Option<String>,
    /// CA certificate (PEM).
    pub ca_cert: Option<String>,
    /// JWT auth mount.
    pub auth_mount: Option<String>,
    /// Role the server logs in with.
    pub server_role: Option<String>,
    /// JWT-SVID audience for Vault logins.
    pub audience: Option<String>,
    /// KV v2 mount.
    pub kv_mount: Option<String>,
    /// Token role for client write tokens.
    pub token_role: Option<String>,
    /// Lifetime of client write tokens.
    pub write_token_ttl: Option<String>,
    /// Lifetime of node reader tokens.
    pub reader_token_ttl: Option<String>,
    /// Uses of node reader tokens.
    pub reader_token_uses: Option<String>,
    /// Lifetime of secrets and their SPIRE entries (unset: until revoked).
    pub secret_ttl: Option<String>,
    /// Timeout of each request.
    pub timeout: Option<String>,
}

/// Raw server configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawServerConfig {
    /// `[server]`.
    pub server: Option<RawServerSection>,
    /// `[spire-server]`.
    pub spire_server: Option<RawServerSpireServer>,
    /// `[node-agents]`: node name to agent SPIFFE ID.
    pub node_agents: Option<BTreeMap<String, String>>,
    /// `[spire-agent]`.
    pub spire_agent: Option<RawSpireAgent>,
    /// `[vault]`.
    pub vault: Option<RawServerVault>,
}

/// Raw `[node]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawNodeSection {
    /// This node's name.
    pub name: Option<String>,
    /// Root of per-job scratch directories.
    pub scratch_dir: Option<String>,
    /// Container engine API socket.
    pub engine_socket: Option<String>,
    /// Root broker socket.
    pub broker_socket: Option<String>,
    /// Timeout of each hook.
    pub hook_timeout: Option<String>,
    /// Refuse a scratch directory that is not on tmpfs.
    pub require_tmpfs: Option<String>,
}

/// Raw `[policy]` of the node.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawNodePolicy {
    /// The admin policy file.
    pub path: Option<String>,
}

/// Raw `[spire-agent]` of the node.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawNodeSpireAgent {
    /// Workload API socket of the node's SPIRE agent.
    pub socket_path: Option<String>,
    /// The trust domain the node's readers belong to.
    pub trust_domain: Option<String>,
}

/// Raw `[vault]` of the node.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawNodeVault {
    /// Base URL.
    pub url: Option<String>,
    /// CA certificate (PEM).
    pub ca_cert: Option<String>,
    /// JWT auth mount.
    pub auth_mount: Option<String>,
    /// KV v2 mount.
    pub kv_mount: Option<String>,
    /// JWT-SVID audience for Vault logins.
    pub audience: Option<String>,
    /// Timeout of each request.
    pub timeout: Option<String>,
}

/// Raw node configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawNodeConfig {
    /// `[node]`.
    pub node: Option<RawNodeSection>,
    /// `[policy]`.
    pub policy: Option<RawNodePolicy>,
    /// `[vault]`.
    pub vault: Option<RawNodeVault>,
    /// `[spire-agent]`.
    pub spire_agent: Option<RawNodeSpireAgent>,
}

/// A raw config together with where it came from, ready for `TryFrom` into typed config.
#[derive(Debug)]
pub struct RawIni<T> {
    /// The decoded sections.
    pub raw: T,
    path: PathBuf,
    base_dir: PathBuf,
    lines: BTreeMap<(String, String), usize>,
    section_lines: BTreeMap<String, usize>,
}

impl<T: DeserializeOwned> RawIni<T> {
    /// Reads and decodes the file at `path`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`], [`ConfigError::NotText`] and everything [`RawIni::parse`] returns.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let mut buf = Vec::new();
        File::open(path)
            .map_err(read_err)?
            .take(CONFIG_MAX_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(read_err)?;
        if buf.len() as u64 > CONFIG_MAX_BYTES {
            return Err(ConfigError::NotText {
                path: path.to_owned(),
            });
        }
        let text = String::from_utf8(buf).map_err(|_| ConfigError::NotText {
            path: path.to_owned(),
        })?;
        Self::parse(&text, path)
    }

    /// Decodes INI text; `origin` names the file in errors and anchors relative paths.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Syntax`], [`ConfigError::UnknownSection`], [`ConfigError::UnknownKey`],
    /// [`ConfigError::Duplicate`] or [`ConfigError::Decode`].
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let schema = schema_of::<T>();
        let scanned = scan(text, origin, &schema)?;
        let raw = serde_ini::from_str::<T>(&scanned.normalized).map_err(|source| {
            ConfigError::Decode {
                path: origin.to_owned(),
                source,
            }
        })?;
        Ok(Self {
            raw,
            path: origin.to_owned(),
            base_dir: origin.parent().map(Path::to_owned).unwrap_or_default(),
            lines: scanned.lines,
            section_lines: scanned.section_lines,
        })
    }

    /// The file this config came from.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

// ---------------------------------------------------------------------------------------------
// Schema discovery: walk a raw struct with a deserializer that records field names.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum SectionSchema {
    Keys(&'static [&'static str]),
    AnyKeys,
}

type Schema = Vec<(&'static str, SectionSchema)>;

fn schema_of<T: DeserializeOwned>() -> Schema {
    let mut schema = Vec::new();
    // The walk drives T's visitor with empty sections; its result is irrelevant.
    let _ = T::deserialize(schema_walk::Top(&mut schema));
    schema
}

mod schema_walk {
    //! A deserializer that feeds a struct's visitor its own field names, so the visitor asks
    //! each section type for its fields in turn. Nothing is read from any input.

    use serde::de::value::{Error, StrDeserializer};
    use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};

    use super::{Schema, SectionSchema};

    pub(super) struct Top<'a>(pub(super) &'a mut Schema);

    impl<'de> de::Deserializer<'de> for Top<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(de::Error::custom("config root must be a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_map(Sections {
                fields,
                next: 0,
                out: self.0,
            })
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }

    struct Sections<'a> {
        fields: &'static [&'static str],
        next: usize,
        out: &'a mut Schema,
    }

    impl<'de> MapAccess<'de> for Sections<'_> {
        type Error = Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Error> {
            let Some(name) = self.fields.get(self.next) else {
                return Ok(None);
            };
            let key: StrDeserializer<'_, Error> = name.into_deserializer();
            seed.deserialize(key).map(Some)
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
            let name = self.fields[self.next];
            self.next += 1;
            let mut found = None;
            let value = seed.deserialize(Section(&mut found))?;
            if let Some(schema) = found {
                self.out.push((name, schema));
            }
            Ok(value)
        }
    }

    struct Section<'a>(&'a mut Option<SectionSchema>);

    impl<'de> de::Deserializer<'de> for Section<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(de::Error::custom("config sections must be structs or maps"))
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_some(self)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            *self.0 = Some(SectionSchema::Keys(fields));
            visitor.visit_map(Empty)
        }

        fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            *self.0 = Some(SectionSchema::AnyKeys);
            visitor.visit_map(Empty)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf unit unit_struct newtype_struct seq tuple tuple_struct
            enum identifier ignored_any
        }
    }

    struct Empty;

    impl<'de> MapAccess<'de> for Empty {
        type Error = Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            _: K,
        ) -> Result<Option<K::Value>, Error> {
            Ok(None)
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, _: V) -> Result<V::Value, Error> {
            Err(de::Error::custom("no values"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Line scan: syntax, duplicates, unknown names, normalization.
// ---------------------------------------------------------------------------------------------

struct Scanned {
    normalized: String,
    lines: BTreeMap<(String, String), usize>,
    section_lines: BTreeMap<String, usize>,
}

fn scan(text: &str, path: &Path, schema: &Schema) -> Result<Scanned, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Scanned {
        normalized: String::with_capacity(text.len()),
        lines: BTreeMap::new(),
        section_lines: BTreeMap::new(),
    };
    let mut current: Option<(String, &SectionSchema)> = None;
    for (idx, raw_line) in text.lines().enumerate() {
        let line = idx + 1;
        let mut trimmed = raw_line.trim();
        if trimmed.starts_with('[') {
            // `[vault] ; comment`, as configparser accepts.
            trimmed = strip_inline_comment(trimmed);
        }
        let syntax = |reason: String| ConfigError::Syntax {
            path: path.to_owned(),
            line,
            reason,
        };
        if trimmed.contains('\0') {
            return Err(syntax("NUL character".into()));
        }
        let item = serde_ini::Parser::from_str(trimmed)
            .next()
            .transpose()
            .map_err(|e| {
                syntax(format!(
                    "{e}; expected `[section]`, `key = value` or a `;` comment"
                ))
            })?;
        match item {
            None | Some(serde_ini::Item::Empty | serde_ini::Item::Comment { .. }) => {}
            Some(serde_ini::Item::Section { name }) => {
                let name = name.trim().to_owned();
                let Some((_, section_schema)) = schema.iter().find(|(n, _)| *n == name) else {
                    let names: Vec<&str> = schema.iter().map(|(n, _)| *n).collect();
                    let suggestion = suggest(&name, &names)
                        .map(|s| format!("did you mean [{s}]? "))
                        .unwrap_or_default();
                    let expected = names
                        .iter()
                        .map(|n| format!("[{n}]"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(ConfigError::UnknownSection {
                        path: path.to_owned(),
                        line,
                        section: name,
                        help: format!("{suggestion}expected one of {expected}"),
                    });
                };
                if let Some(first_line) = out.section_lines.get(&name) {
                    return Err(ConfigError::Duplicate {
                        path: path.to_owned(),
                        line,
                        what: format!("section [{name}]"),
                        first_line: *first_line,
                    });
                }
                out.section_lines.insert(name.clone(), line);
                out.normalized.push_str(&format!("[{name}]\n"));
                current = Some((name, section_schema));
            }
            Some(serde_ini::Item::Value { key, value }) => {
                let mut key = key.trim().to_ascii_lowercase();
                if let Some((_, SectionSchema::Keys(_))) = &current {
                    key = key.replace('_', "-");
                }
                if key.is_empty() {
                    return Err(syntax("empty key before `=`".into()));
                }
                let Some((section, section_schema)) = &current else {
                    return Err(syntax(format!(
                        "key `{key}` is outside any section; put it under a `[section]` header"
                    )));
                };
                if let SectionSchema::Keys(keys) = section_schema
                    && !keys.contains(&key.as_str())
                {
                    let suggestion = suggest(&key, keys)
                        .map(|s| format!("did you mean `{s}`? "))
                        .unwrap_or_default();
                    let expected = keys
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(ConfigError::UnknownKey {
                        path: path.to_owned(),
                        line,
                        section: section.clone(),
                        key,
                        help: format!("{suggestion}expected one of {expected}"),
                    });
                }
                let slot = (section.clone(), key.clone());
                if let Some(first_line) = out.lines.get(&slot) {
                    return Err(ConfigError::Duplicate {
                        path: path.to_owned(),
                        line,
                        what: format!("key `{key}` in [{section}]"),
                        first_line: *first_line,
                    });
                }
                out.lines.insert(slot, line);
                let value = strip_inline_comment(value.trim());
                out.normalized.push_str(&format!("{key} = {value}\n"));
            }
        }
    }
    Ok(out)
}

/// Cuts a `;` or `#` comment that follows whitespace, outside a quoted value.
fn strip_inline_comment(value: &str) -> &str {
    let bytes = value.as_bytes();
    if let Some(&q @ (b'"' | b'\'')) = bytes.first()
        && let Some(end) = value[1..].find(q as char)
    {
        let after = &value[end + 2..];
        let trimmed = after.trim_start();
        if trimmed.is_empty() || trimmed.starts_with([';', '#']) && after.len() > trimmed.len() {
            return &value[..end + 2];
        }
        // Text after the closing quote: not a quoted value after all, fall through.
    }
    for (i, w) in bytes.windows(2).enumerate() {
        if w[0].is_ascii_whitespace() && matches!(w[1], b';' | b'#') {
            return value[..i].trim_end();
        }
    }
    value
}

/// The closest known name, if it is plausibly a typo.
fn suggest(input: &str, known: &[&'static str]) -> Option<&'static str> {
    let normalized = input.replace('_', "-").to_ascii_lowercase();
    let close = known
        .iter()
        .map(|k| (edit_distance(&normalized, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k);
    // `socket` for `socket-path`, `ca` for `ca-cert`: a shortened spelling of one known key.
    close.or_else(|| {
        let mut prefixed = known
            .iter()
            .filter(|k| k.starts_with(&format!("{normalized}-")));
        match (prefixed.next(), prefixed.next()) {
            (Some(k), None) => Some(*k),
            _ => None,
        }
    })
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------------
// Value conversion helpers.
// ---------------------------------------------------------------------------------------------

/// Removes one pair of matching surrounding quotes.
fn unquote(value: &str) -> &str {
    let v = value.trim();
    for q in ['"', '\''] {
        if v.len() >= 2
            && let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q))
        {
            return inner;
        }
    }
    v
}

/// Parses `30s`, `5m`, `250ms`, `1h`, `2d` or a plain number of seconds; zero is refused.
///
/// # Errors
///
/// A description of the expected format.
pub fn parse_duration(s: &str) -> Result<Duration, &'static str> {
    const EXPECTED: &str = "a positive duration such as 30s, 5m, 1h, 250ms or a number of seconds";
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| EXPECTED)?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or(EXPECTED)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or(EXPECTED)?),
        "d" => Duration::from_secs(n.checked_mul(86_400).ok_or(EXPECTED)?),
        _ => return Err(EXPECTED),
    };
    if d.is_zero() {
        return Err(EXPECTED);
    }
    Ok(d)
}

/// Parses a configparser-style boolean.
///
/// # Errors
///
/// A description of the accepted spellings.
pub fn parse_bool(s: &str) -> Result<bool, &'static str> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("true or false (also yes/no, on/off, 1/0)"),
    }
}

/// Parses a byte size: a number, or a number with `KiB`, `MiB` or `GiB`.
///
/// # Errors
///
/// A description of the expected format.
pub fn parse_size(s: &str) -> Result<u64, &'static str> {
    const EXPECTED: &str = "a positive size in bytes, or with KiB, MiB or GiB (e.g. 64KiB)";
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| EXPECTED)?;
    let mult: u64 = match unit.trim() {
        "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(EXPECTED),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err(EXPECTED),
        Some(v) => Ok(v),
    }
}

/// Access to one section's values with error context.
struct Sec<'a, T> {
    ini: &'a RawIni<T>,
    name: &'static str,
}

impl<T> RawIni<T> {
    fn sec(&self, name: &'static str) -> Sec<'_, T> {
        Sec { ini: self, name }
    }

    fn conflict(&self, reason: String) -> ConfigError {
        ConfigError::Conflict {
            path: self.path.clone(),
            reason,
        }
    }

    fn missing_section(&self, section: &'static str) -> ConfigError {
        ConfigError::MissingSection {
            path: self.path.clone(),
            section,
        }
    }
}

impl<T> Sec<'_, T> {
    fn line(&self, key: &str) -> usize {
        self.ini
            .lines
            .get(&(self.name.to_owned(), key.to_owned()))
            .or_else(|| self.ini.section_lines.get(self.name))
            .copied()
            .unwrap_or(0)
    }

    /// The unquoted value, `None` when absent or empty.
    fn get<'v>(&self, value: &'v Option<String>) -> Option<&'v str> {
        value.as_deref().map(unquote).filter(|v| !v.is_empty())
    }

    fn require<V>(&self, key: &'static str, value: Option<V>) -> Result<V, ConfigError> {
        value.ok_or_else(|| ConfigError::MissingKey {
            path: self.ini.path.clone(),
            section: self.name,
            key,
        })
    }

    fn invalid(&self, key: &str, value: &str, expected: impl Into<String>) -> ConfigError {
        ConfigError::InvalidValue {
            path: self.ini.path.clone(),
            line: self.line(key),
            section: self.name,
            key: key.to_owned(),
            value: value.chars().take(120).collect(),
            expected: expected.into(),
        }
    }

    fn with<V, E: Into<String>>(
        &self,
        key: &'static str,
        value: &Option<String>,
        parse: impl FnOnce(&str) -> Result<V, E>,
    ) -> Result<Option<V>, ConfigError> {
        self.get(value)
            .map(|v| parse(v).map_err(|e| self.invalid(key, v, e)))
            .transpose()
    }

    fn id<V: std::str::FromStr<Err = IdError>>(
        &self,
        key: &str,
        value: &Option<String>,
    ) -> Result<Option<V>, ConfigError> {
        self.get(value)
            .map(|v| {
                v.parse().map_err(|source| ConfigError::InvalidId {
                    path: self.ini.path.clone(),
                    line: self.line(key),
                    section: self.name,
                    key: key.to_owned(),
                    source: Box::new(source),
                })
            })
            .transpose()
    }

    fn trust_domain(
        &self,
        key: &'static str,
        value: &Option<String>,
    ) -> Result<TrustDomain, ConfigError> {
        let td = self
            .get(value)
            .map(|v| {
                TrustDomain::parse_lenient(v).map_err(|source| ConfigError::InvalidId {
                    path: self.ini.path.clone(),
                    line: self.line(key),
                    section: self.name,
                    key: key.to_owned(),
                    source: Box::new(source),
                })
            })
            .transpose()?;
        self.require(key, td)
    }

    fn bool(&self, key: &'static str, value: &Option<String>) -> Result<Option<bool>, ConfigError> {
        self.with(key, value, parse_bool)
    }

    fn duration(
        &self,
        key: &'static str,
        value: &Option<String>,
    ) -> Result<Option<Duration>, ConfigError> {
        self.with(key, value, parse_duration)
    }

    fn port(&self, key: &'static str, value: &Option<String>) -> Result<Option<u16>, ConfigError> {
        self.with(key, value, |v| match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err("a port number from 1 to 65535"),
        })
    }

    fn url(&self, key: &'static str, value: &Option<String>) -> Result<Option<Url>, ConfigError> {
        self.with(key, value, |v| {
            let url = Url::parse(v).map_err(|e| format!("an http(s) URL ({e})"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err("an http:// or https:// URL with a host".to_owned());
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err("a URL without user name or password".to_owned());
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err("a base URL without query or fragment".to_owned());
            }
            Ok(url)
        })
    }

    fn host(
        &self,
        key: &'static str,
        value: &Option<String>,
    ) -> Result<Option<String>, ConfigError> {
        self.with(key, value, |v| {
            url::Host::parse(v)
                .ok()
                .filter(|_| !v.contains(['/', ':', '@', ' ']) || v.starts_with('['))
                .map(|_| v.to_owned())
                .ok_or("a host name or IP address (IPv6 in [brackets]), without scheme or port")
        })
    }

    fn path(
        &self,
        key: &'static str,
        value: &Option<String>,
    ) -> Result<Option<PathBuf>, ConfigError> {
        self.with(key, value, |v| resolve_path(v, &self.ini.base_dir))
    }

    fn size(&self, key: &'static str, value: &Option<String>) -> Result<Option<u64>, ConfigError> {
        self.with(key, value, parse_size)
    }

    /// A Vault mount or role name: `[A-Za-z0-9_-]` segments, no leading or trailing `/`.
    fn vault_name(
        &self,
        key: &'static str,
        value: &Option<String>,
    ) -> Result<Option<String>, ConfigError> {
        self.with(key, value, |v| {
            let ok = v.split('/').all(|seg| {
                !seg.is_empty()
                    && seg
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                    && !seg.starts_with('.')
            });
            if ok {
                Ok(v.to_owned())
            } else {
                Err("a Vault name of A-Z, a-z, 0-9, '_', '-' and '.' (mounts may contain '/')")
            }
        })
    }

    fn audience(
        &self,
        key: &'static str,
        value: &Option<String>,
    ) -> Result<Option<String>, ConfigError> {
        self.with(key, value, |v| {
            if v.chars().all(|c| c.is_ascii_graphic()) && !v.contains(',') {
                Ok(v.to_owned())
            } else {
                Err("a single audience without spaces or commas")
            }
        })
    }
}

/// Expands `~/` and anchors relative paths at the config file's directory.
fn resolve_path(value: &str, base_dir: &Path) -> Result<PathBuf, String> {
    if value.contains('\0') {
        return Err("a path without NUL characters".into());
    }
    if let Some(rest) = value.strip_prefix("~/") {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or("an absolute path (`~/` needs HOME, which is not set)")?;
        return Ok(PathBuf::from(home).join(rest));
    }
    if value.starts_with('~') {
        return Err("a path; `~user/` is not supported, write the absolute path".into());
    }
    let path = Path::new(value);
    Ok(if path.is_absolute() {
        path.to_owned()
    } else {
        base_dir.join(path)
    })
}

/// Strips `unix://` / `unix:` from a socket address so sockets are always paths.
fn socket_path(value: &str, base_dir: &Path) -> Result<PathBuf, String> {
    let stripped = value
        .strip_prefix("unix://")
        .or_else(|| value.strip_prefix("unix:"))
        .unwrap_or(value);
    if stripped.contains("://") {
        return Err("a unix socket path (optionally prefixed with unix://)".into());
    }
    resolve_path(stripped, base_dir)
}

fn socket<T>(
    sec: &Sec<'_, T>,
    key: &'static str,
    value: &Option<String>,
) -> Result<Option<PathBuf>, ConfigError> {
    sec.with(key, value, |v| socket_path(v, &sec.ini.base_dir))
}

// ---------------------------------------------------------------------------------------------
// Typed configs.
// ---------------------------------------------------------------------------------------------

/// `[spire-agent]`: the local SPIRE agent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpireAgentConfig {
    /// Workload API socket (`socket-path`; `unix://` prefix accepted).
    pub socket_path: PathBuf,
}

impl SpireAgentConfig {
    fn from_raw<T>(
        ini: &RawIni<T>,
        raw_socket: &Option<String>,
        default: Option<&str>,
    ) -> Result<Option<Self>, ConfigError> {
        let sec = ini.sec("spire-agent");
        let socket_path = match socket(&sec, "socket-path", raw_socket)? {
            Some(p) => Some(p),
            None => default.map(PathBuf::from),
        };
        Ok(socket_path.map(|socket_path| Self { socket_path }))
    }
}

/// Client `[spire-server]` (HPCS keys).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientSpireServer {
    /// `trust-domain` (required).
    pub trust_domain: TrustDomain,
    /// `address`: SPIRE server host (HPCS compatibility; not needed with a local agent).
    pub address: Option<String>,
    /// `port`: SPIRE server port (HPCS compatibility).
    pub port: Option<u16>,
}

/// `[hpcs-server]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HpcsServerConfig {
    /// `url` (required): base URL of the API.
    pub url: Url,
    /// `audience`: JWT-SVID audience, default [`DEFAULT_SERVER_AUDIENCE`].
    pub audience: String,
    /// `timeout`: per request, default [`DEFAULT_HTTP_TIMEOUT`].
    pub timeout: Duration,
}

/// Client `[vault]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientVaultConfig {
    /// `url` (required).
    pub url: Url,
    /// `ca-cert`: extra CA (PEM) for Vault's TLS.
    pub ca_cert: Option<PathBuf>,
    /// `timeout`: per request, default [`DEFAULT_HTTP_TIMEOUT`].
    pub timeout: Duration,
}

/// `[supercomputer]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SupercomputerConfig {
    /// `address` (required): login node host.
    pub address: String,
    /// `username` (required): the user's account on the cluster.
    pub username: UserName,
    /// `hpcs-node`: the node runtime as the batch script calls it, an absolute path on the
    /// compute nodes or a command name looked up on their `PATH`; unset means `hpcs-node`.
    pub hpcs_node: Option<String>,
}

/// `[ssh]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SshConfig {
    /// `key`: private key file; unset means the SSH agent or the default key files.
    pub key: Option<PathBuf>,
    /// `known-hosts`: unset means `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    /// `port`, default [`DEFAULT_SSH_PORT`].
    pub port: u16,
    /// `accept-new-host-keys`, default false: unknown host keys are refused.
    pub accept_new_host_keys: bool,
    /// `connect-timeout`, default [`DEFAULT_SSH_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// `streams`, default [`DEFAULT_SSH_STREAMS`], at most [`MAX_SSH_STREAMS`]: SSH connections
    /// an upload or download of at least 8 MiB is spread over (1 turns this off).
    pub streams: usize,
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            key: None,
            known_hosts: None,
            port: DEFAULT_SSH_PORT,
            accept_new_host_keys: false,
            connect_timeout: DEFAULT_SSH_CONNECT_TIMEOUT,
            streams: DEFAULT_SSH_STREAMS,
        }
    }
}

/// Client configuration (`hpcs-client.conf` / `client.ini`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// `[spire-server]` (required).
    pub spire_server: ClientSpireServer,
    /// `[hpcs-server]` (required).
    pub hpcs_server: HpcsServerConfig,
    /// `[vault]` (required).
    pub vault: ClientVaultConfig,
    /// `[supercomputer]` (required).
    pub supercomputer: SupercomputerConfig,
    /// `[ssh]` (optional).
    pub ssh: SshConfig,
    /// `[spire-agent] socket-path`; unset means `SPIFFE_ENDPOINT_SOCKET` from the environment.
    pub spire_agent: Option<SpireAgentConfig>,
    /// `[client] identity-file`: the age identity for job outputs; unset means the tool's
    /// default location in the user's config directory.
    pub identity_file: Option<PathBuf>,
}

impl TryFrom<RawIni<RawClientConfig>> for ClientConfig {
    type Error = ConfigError;

    fn try_from(ini: RawIni<RawClientConfig>) -> Result<Self, ConfigError> {
        let raw = &ini.raw;

        let spire_server = {
            let s = ini.sec("spire-server");
            let r = raw
                .spire_server
                .as_ref()
                .ok_or_else(|| ini.missing_section("spire-server"))?;
            ClientSpireServer {
                trust_domain: s.trust_domain("trust-domain", &r.trust_domain)?,
                address: s.host("address", &r.address)?,
                port: s.port("port", &r.port)?,
            }
        };

        let hpcs_server = {
            let s = ini.sec("hpcs-server");
            let r = raw
                .hpcs_server
                .as_ref()
                .ok_or_else(|| ini.missing_section("hpcs-server"))?;
            HpcsServerConfig {
                url: s.require("url", s.url("url", &r.url)?)?,
                audience: s
                    .audience("audience", &r.audience)?
                    .unwrap_or_else(|| DEFAULT_SERVER_AUDIENCE.to_owned()),
                timeout: s
                    .duration("timeout", &r.timeout)?
                    .unwrap_or(DEFAULT_HTTP_TIMEOUT),
            }
        };

        let vault = {
            let s = ini.sec("vault");
            let r = raw
                .vault
                .as_ref()
                .ok_or_else(|| ini.missing_section("vault"))?;
            ClientVaultConfig {
                url: s.require("url", s.url("url", &r.url)?)?,
                ca_cert: s.path("ca-cert", &r.ca_cert)?,
                timeout: s
                    .duration("timeout", &r.timeout)?
                    .unwrap_or(DEFAULT_HTTP_TIMEOUT),
            }
        };

        let supercomputer = {
            let s = ini.sec("supercomputer");
            let r = raw
                .supercomputer
                .as_ref()
                .ok_or_else(|| ini.missing_section("supercomputer"))?;
            SupercomputerConfig {
                address: s.require("address", s.host("address", &r.address)?)?,
                username: s.require("username", s.id("username", &r.username)?)?,
                hpcs_node: s.with("hpcs-node", &r.hpcs_node, remote_command)?,
            }
        };

        let ssh = match &raw.ssh {
            None => SshConfig::default(),
            Some(r) => {
                let s = ini.sec("ssh");
                SshConfig {
                    key: s.path("key", &r.key)?,
                    known_hosts: s.path("known-hosts", &r.known_hosts)?,
                    port: s.port("port", &r.port)?.unwrap_or(DEFAULT_SSH_PORT),
                    accept_new_host_keys: s
                        .bool("accept-new-host-keys", &r.accept_new_host_keys)?
                        .unwrap_or(false),
                    connect_timeout: s
                        .duration("connect-timeout", &r.connect_timeout)?
                        .unwrap_or(DEFAULT_SSH_CONNECT_TIMEOUT),
                    streams: s
                        .with("streams", &r.streams, |v| match v.parse::<usize>() {
                            Ok(n) if (1..=MAX_SSH_STREAMS).contains(&n) => Ok(n),
                            _ => Err(format!(
                                "a number of connections from 1 to {MAX_SSH_STREAMS}"
                            )),
                        })?
                        .unwrap_or(DEFAULT_SSH_STREAMS),
                }
            }
        };

        let spire_agent = SpireAgentConfig::from_raw(
            &ini,
            &raw.spire_agent.as_ref().and_then(|r| r.socket_path.clone()),
            None,
        )?;
        let identity_file = match &raw.client {
            Some(r) => ini.sec("client").path("identity-file", &r.identity_file)?,
            None => None,
        };

        Ok(Self {
            spire_server,
            hpcs_server,
            vault,
            supercomputer,
            ssh,
            spire_agent,
            identity_file,
        })
    }
}

impl ClientConfig {
    /// Parses client config text; `origin` names the file in errors and anchors relative paths.
    ///
    /// # Errors
    ///
    /// Any [`ConfigError`].
    pub fn from_ini_str(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        RawIni::<RawClientConfig>::parse(text, origin)?.try_into()
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerSection {
    /// `listen`, default [`DEFAULT_SERVER_LISTEN`].
    pub listen: SocketAddr,
    /// `tls-cert` and `tls-key`; `None` only when `allow-plain-http` is set.
    pub tls: Option<TlsFiles>,
    /// `allow-plain-http`, default false.
    pub allow_plain_http: bool,
    /// `audience`, default [`DEFAULT_SERVER_AUDIENCE`].
    pub audience: String,
    /// `audit-log`: append-only JSON lines; optional here, required by hpcs-server.
    pub audit_log: Option<PathBuf>,
    /// `client-id-prefix`, default `/client/`.
    pub client_id_prefix: ClientPrefix,
    /// `max-body-bytes`, default [`DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: u64,
    /// `request-timeout`, default [`DEFAULT_REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
}

/// A TLS certificate chain and key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Server `[spire-server]` and `[node-agents]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerSpireConfig {
    /// `trust-domain` (required).
    pub trust_domain: TrustDomain,
    /// `socket-path`: admin API socket, default [`DEFAULT_SPIRE_SERVER_SOCKET`].
    pub socket_path: PathBuf,
    /// `[node-agents]`: explicit agent ID per node.
    pub node_agents: BTreeMap<NodeName, AgentId>,
    /// `agent-id-template`: agent ID of other nodes, with `{node}`.
    pub agent_id_template: Option<String>,
}

impl ServerSpireConfig {
    /// The agent SPIFFE ID of `node`: its `[node-agents]` entry, else the template, else `None`
    /// (the node is unknown and must be refused).
    #[must_use]
    pub fn agent_id(&self, node: &NodeName) -> Option<AgentId> {
        if let Some(id) = self.node_agents.get(node) {
            return Some(id.clone());
        }
        let template = self.agent_id_template.as_ref()?;
        template
            .replace(AGENT_TEMPLATE_NODE, node.as_str())
            .parse()
            .ok()
    }
}

/// Server `[vault]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerVaultConfig {
    /// `url` (required).
    pub url: Url,
    /// `ca-cert`.
    pub ca_cert: Option<PathBuf>,
    /// `auth-mount`, default [`DEFAULT_VAULT_AUTH_MOUNT`].
    pub auth_mount: String,
    /// `server-role` (HPCS name), default [`DEFAULT_VAULT_SERVER_ROLE`].
    pub server_role: String,
    /// `audience`, default [`DEFAULT_VAULT_AUDIENCE`].
    pub audience: String,
    /// `kv-mount`, default [`DEFAULT_VAULT_KV_MOUNT`].
    pub kv_mount: String,
    /// `token-role`, default [`DEFAULT_VAULT_TOKEN_ROLE`].
    pub token_role: String,
    /// `write-token-ttl`, default [`DEFAULT_WRITE_TOKEN_TTL`].
    pub write_token_ttl: Duration,
    /// `reader-token-ttl`, default [`DEFAULT_READER_TOKEN_TTL`].
    pub reader_token_ttl: Duration,
    /// `reader-token-uses`, default [`DEFAULT_READER_TOKEN_USES`].
    pub reader_token_uses: u32,
    /// `secret-ttl`: unset means secrets live until revoked.
    pub secret_ttl: Option<Duration>,
    /// `timeout`, default [`DEFAULT_HTTP_TIMEOUT`].
    pub timeout: Duration,
}

/// Server configuration (`server.ini`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// `[server]`.
    pub server: ServerSection,
    /// `[spire-server]` (required) and `[node-agents]`.
    pub spire: ServerSpireConfig,
    /// `[spire-agent]`, default socket [`DEFAULT_SPIRE_AGENT_SOCKET`].
    pub spire_agent: SpireAgentConfig,
    /// `[vault]` (required).
    pub vault: ServerVaultConfig,
}

impl TryFrom<RawIni<RawServerConfig>> for ServerConfig {
    type Error = ConfigError;

    fn try_from(ini: RawIni<RawServerConfig>) -> Result<Self, ConfigError> {
        let raw = &ini.raw;
        let empty_server = RawServerSection::default();
        let server = {
            let s = ini.sec("server");
            let r = raw.server.as_ref().unwrap_or(&empty_server);
            let listen = s
                .with("listen", &r.listen, |v| {
                    v.parse::<SocketAddr>()
                        .map_err(|_| "an IP address and port such as 127.0.0.1:10080 or [::]:10080")
                })?
                .unwrap_or_else(|| {
                    DEFAULT_SERVER_LISTEN
                        .parse()
                        .expect("the default listen address parses")
                });
            let allow_plain_http = s
                .bool("allow-plain-http", &r.allow_plain_http)?
                .unwrap_or(false);
            let tls = match (
                s.path("tls-cert", &r.tls_cert)?,
                s.path("tls-key", &r.tls_key)?,
            ) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                (None, None) => None,
                _ => {
                    return Err(
                        ini.conflict("[server] tls-cert and tls-key must be set together".into())
                    );
                }
            };
            if tls.is_none() && !allow_plain_http {
                return Err(ini.conflict(
                    "[server] has no tls-cert and tls-key; set both, or set allow-plain-http = true \
                     only when a TLS-terminating proxy on the same host fronts the server"
                        .into(),
                ));
            }
            ServerSection {
                listen,
                tls,
                allow_plain_http,
                audience: s
                    .audience("audience", &r.audience)?
                    .unwrap_or_else(|| DEFAULT_SERVER_AUDIENCE.to_owned()),
                audit_log: s.path("audit-log", &r.audit_log)?,
                client_id_prefix: s
                    .id("client-id-prefix", &r.client_id_prefix)?
                    .unwrap_or_default(),
                max_body_bytes: s
                    .size("max-body-bytes", &r.max_body_bytes)?
                    .unwrap_or(DEFAULT_MAX_BODY_BYTES),
                request_timeout: s
                    .duration("request-timeout", &r.request_timeout)?
                    .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            }
        };

        let spire = {
            let s = ini.sec("spire-server");
            let r = raw
                .spire_server
                .as_ref()
                .ok_or_else(|| ini.missing_section("spire-server"))?;
            let trust_domain = s.trust_domain("trust-domain", &r.trust_domain)?;
            let socket_path = socket(&s, "socket-path", &r.socket_path)?
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SPIRE_SERVER_SOCKET));
            let agent_id_template = s.with("agent-id-template", &r.agent_id_template, |v| {
                if v.matches(AGENT_TEMPLATE_NODE).count() != 1 {
                    return Err("a SPIRE agent ID containing {node} once, e.g. spiffe://td/spire/agent/devspire/{node}".to_owned());
                }
                let sample = v.replace(AGENT_TEMPLATE_NODE, "node-1");
                let id: AgentId = sample.parse().map_err(|e: IdError| {
                    format!("a SPIRE agent ID containing {{node}} once ({e})")
                })?;
                if id.trust_domain() != &trust_domain {
                    return Err(format!("an agent ID in trust domain {trust_domain}"));
                }
                Ok(v.to_owned())
            })?;
            let a = ini.sec("node-agents");
            let mut node_agents = BTreeMap::new();
            for (node, agent) in raw.node_agents.iter().flatten() {
                let node_name: NodeName =
                    node.parse().map_err(|source| ConfigError::InvalidId {
                        path: ini.path.clone(),
                        line: a.line(node),
                        section: "node-agents",
                        key: node.clone(),
                        source: Box::new(source),
                    })?;
                let agent_id: AgentId = a.require("<node>", a.id(node, &Some(agent.clone()))?)?;
                if agent_id.trust_domain() != &trust_domain {
                    return Err(a.invalid(
                        node,
                        agent_id.as_str(),
                        format!("an agent ID in trust domain {trust_domain}"),
                    ));
                }
                node_agents.insert(node_name, agent_id);
            }
            ServerSpireConfig {
                trust_domain,
                socket_path,
                node_agents,
                agent_id_template,
            }
        };

        let spire_agent = SpireAgentConfig::from_raw(
            &ini,
            &raw.spire_agent.as_ref().and_then(|r| r.socket_path.clone()),
            Some(DEFAULT_SPIRE_AGENT_SOCKET),
        )?
        .expect("a default socket is given");

        let vault = {
            let s = ini.sec("vault");
            let r = raw
                .vault
                .as_ref()
                .ok_or_else(|| ini.missing_section("vault"))?;
            ServerVaultConfig {
                url: s.require("url", s.url("url", &r.url)?)?,
                ca_cert: s.path("ca-cert", &r.ca_cert)?,
                auth_mount: s
                    .vault_name("auth-mount", &r.auth_mount)?
                    .unwrap_or_else(|| DEFAULT_VAULT_AUTH_MOUNT.to_owned()),
                server_role: s
                    .vault_name("server-role", &r.server_role)?
                    .unwrap_or_else(|| DEFAULT_VAULT_SERVER_ROLE.to_owned()),
                audience: s
                    .audience("audience", &r.audience)?
                    .unwrap_or_else(|| DEFAULT_VAULT_AUDIENCE.to_owned()),
                kv_mount: s
                    .vault_name("kv-mount", &r.kv_mount)?
                    .unwrap_or_else(|| DEFAULT_VAULT_KV_MOUNT.to_owned()),
                token_role: s
                    .vault_name("token-role", &r.token_role)?
                    .unwrap_or_else(|| DEFAULT_VAULT_TOKEN_ROLE.to_owned()),
                write_token_ttl: s
                    .duration("write-token-ttl", &r.write_token_ttl)?
                    .unwrap_or(DEFAULT_WRITE_TOKEN_TTL),
                reader_token_ttl: s
                    .duration("reader-token-ttl", &r.reader_token_ttl)?
                    .unwrap_or(DEFAULT_READER_TOKEN_TTL),
                reader_token_uses: s
                    .with("reader-token-uses", &r.reader_token_uses, |v| {
                        match v.parse::<u32>() {
                            Ok(n) if n > 0 => Ok(n),
                            _ => Err("a positive number of uses"),
                        }
                    })?
                    .unwrap_or(DEFAULT_READER_TOKEN_USES),
                secret_ttl: s.duration("secret-ttl", &r.secret_ttl)?,
                timeout: s
                    .duration("timeout", &r.timeout)?
                    .unwrap_or(DEFAULT_HTTP_TIMEOUT),
            }
        };

        Ok(Self {
            server,
            spire,
            spire_agent,
            vault,
        })
    }
}

impl ServerConfig {
    /// Parses server config text; `origin` names the file in errors and anchors relative paths.
    ///
    /// # Errors
    ///
    /// Any [`ConfigError`].
    pub fn from_ini_str(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        RawIni::<RawServerConfig>::parse(text, origin)?.try_into()
    }
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeSection {
    /// `name`: unset means the host name, resolved by the runtime.
    pub name: Option<NodeName>,
    /// `scratch-dir`, default [`DEFAULT_SCRATCH_DIR`] (tmpfs).
    pub scratch_dir: PathBuf,
    /// `engine-socket`, default [`DEFAULT_ENGINE_SOCKET`].
    pub engine_socket: PathBuf,
    /// `broker-socket`: the root broker (`hpcs-node daemon`), if used.
    pub broker_socket: Option<PathBuf>,
    /// `hook-timeout`, default [`DEFAULT_HOOK_TIMEOUT`].
    pub hook_timeout: Duration,
    /// `require-tmpfs`, default true: refuse a scratch directory that is not on tmpfs.
    pub require_tmpfs: bool,
}

/// Node `[vault]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeVaultConfig {
    /// `url` (required).
    pub url: Url,
    /// `ca-cert`.
    pub ca_cert: Option<PathBuf>,
    /// `auth-mount`, default [`DEFAULT_VAULT_AUTH_MOUNT`].
    pub auth_mount: String,
    /// `kv-mount`, default [`DEFAULT_VAULT_KV_MOUNT`].
    pub kv_mount: String,
    /// `audience`, default [`DEFAULT_VAULT_AUDIENCE`].
    pub audience: String,
    /// `timeout`, default [`DEFAULT_HTTP_TIMEOUT`].
    pub timeout: Duration,
}

/// Node configuration (`/etc/hpcs/node.ini`). The admin policy is a separate file owned by the
/// node runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeConfig {
    /// `[node]`.
    pub node: NodeSection,
    /// `[policy] path`, default [`DEFAULT_POLICY_FILE`].
    pub policy_file: PathBuf,
    /// `[vault]` (required).
    pub vault: NodeVaultConfig,
    /// `[spire-agent] socket-path`, default [`DEFAULT_SPIRE_AGENT_SOCKET`].
    pub spire_agent: SpireAgentConfig,
    /// `[spire-agent] trust-domain` (required): reader IDs outside it are refused.
    pub trust_domain: TrustDomain,
}

impl TryFrom<RawIni<RawNodeConfig>> for NodeConfig {
    type Error = ConfigError;

    fn try_from(ini: RawIni<RawNodeConfig>) -> Result<Self, ConfigError> {
        let raw = &ini.raw;
        let empty_node = RawNodeSection::default();
        let node = {
            let s = ini.sec("node");
            let r = raw.node.as_ref().unwrap_or(&empty_node);
            NodeSection {
                name: s.id("name", &r.name)?,
                scratch_dir: s
                    .path("scratch-dir", &r.scratch_dir)?
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_SCRATCH_DIR)),
                engine_socket: socket(&s, "engine-socket", &r.engine_socket)?
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_ENGINE_SOCKET)),
                broker_socket: socket(&s, "broker-socket", &r.broker_socket)?,
                hook_timeout: s
                    .duration("hook-timeout", &r.hook_timeout)?
                    .unwrap_or(DEFAULT_HOOK_TIMEOUT),
                require_tmpfs: s.bool("require-tmpfs", &r.require_tmpfs)?.unwrap_or(true),
            }
        };
        let policy_file = match &raw.policy {
            Some(r) => ini.sec("policy").path("path", &r.path)?,
            None => None,
        }
        .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY_FILE));
        let trust_domain = {
            let s = ini.sec("spire-agent");
            let r = raw
                .spire_agent
                .as_ref()
                .ok_or_else(|| ini.missing_section("spire-agent"))?;
            s.trust_domain("trust-domain", &r.trust_domain)?
        };
        let vault = {
            let s = ini.sec("vault");
            let r = raw
                .vault
                .as_ref()
                .ok_or_else(|| ini.missing_section("vault"))?;
            NodeVaultConfig {
                url: s.require("url", s.url("url", &r.url)?)?,
                ca_cert: s.path("ca-cert", &r.ca_cert)?,
                auth_mount: s
                    .vault_name("auth-mount", &r.auth_mount)?
                    .unwrap_or_else(|| DEFAULT_VAULT_AUTH_MOUNT.to_owned()),
                kv_mount: s
                    .vault_name("kv-mount", &r.kv_mount)?
                    .unwrap_or_else(|| DEFAULT_VAULT_KV_MOUNT.to_owned()),
                audience: s
                    .audience("audience", &r.audience)?
                    .unwrap_or_else(|| DEFAULT_VAULT_AUDIENCE.to_owned()),
                timeout: s
                    .duration("timeout", &r.timeout)?
                    .unwrap_or(DEFAULT_HTTP_TIMEOUT),
            }
        };
        let spire_agent = SpireAgentConfig::from_raw(
            &ini,
            &raw.spire_agent.as_ref().and_then(|r| r.socket_path.clone()),
            Some(DEFAULT_SPIRE_AGENT_SOCKET),
        )?
        .expect("a default socket is given");
        Ok(Self {
            node,
            policy_file,
            vault,
            spire_agent,
            trust_domain,
        })
    }
}

impl NodeConfig {
    /// Parses node config text; `origin` names the file in errors and anchors relative paths.
    ///
    /// # Errors
    ///
    /// Any [`ConfigError`].
    pub fn from_ini_str(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        RawIni::<RawNodeConfig>::parse(text, origin)?.try_into()
    }
}

/// Loads and validates a client config file.
///
/// # Errors
///
/// Any [`ConfigError`], naming the file, line, section and key.
pub fn load_client(path: &Path) -> Result<ClientConfig, ConfigError> {
    RawIni::<RawClientConfig>::load(path)?.try_into()
}

/// What [`check_remote_command`] accepts.
pub const REMOTE_COMMAND_RULE: &str =
    "an absolute path or a command name of [A-Za-z0-9_./+-], without . or .. components";

/// Checks a program on the cluster (`[supercomputer] hpcs-node`, job-prep's `--hpcs-node`): an
/// absolute path or a bare command name, of characters that need no quoting anywhere
/// (`[A-Za-z0-9_./+-]`), without `.` or `..` components, at most 4096 bytes.
///
/// # Errors
///
/// [`REMOTE_COMMAND_RULE`] when `v` breaks it.
pub fn check_remote_command(v: &str) -> Result<(), &'static str> {
    let charset = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '+' | '-'));
    let shape = v.starts_with('/') || !v.contains('/');
    let components = v
        .split('/')
        .skip(1)
        .all(|c| !c.is_empty() && c != "." && c != "..");
    if v.is_empty() || v.len() > 4096 || !charset || !shape || !components || v == "." || v == ".."
    {
        return Err(REMOTE_COMMAND_RULE);
    }
    Ok(())
}

fn remote_command(v: &str) -> Result<String, &'static str> {
    check_remote_command(v).map(|()| v.to_owned())
}

/// Loads and validates a server config file.
///
/// # Errors
///
/// Any [`ConfigError`], naming the file, line, section and key.
pub fn load_server(path: &Path) -> Result<ServerConfig, ConfigError> {
    RawIni::<RawServerConfig>::load(path)?.try_into()
}

/// Loads and validates a node config file.
///
/// # Errors
///
/// Any [`ConfigError`], naming the file, line, section and key.
pub fn load_node(path: &Path) -> Result<NodeConfig, ConfigError> {
    RawIni::<RawNodeConfig>::load(path)?.try_into()
}

impl fmt::Display for SectionSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Keys(keys) => write!(f, "{}", keys.join(", ")),
            Self::AnyKeys => f.write_str("<any>"),
        }
    }
}

/// Known keys per section of a raw config type, for documentation and tooling
/// (`<any>` marks free-form sections).
#[must_use]
pub fn known_keys<T: DeserializeOwned>() -> BTreeMap<&'static str, String> {
    schema_of::<T>()
        .into_iter()
        .map(|(section, schema)| (section, schema.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn origin() -> &'static Path {
        Path::new("/etc/hpcs/test.ini")
    }

    /// The example from HPCS's client configuration documentation, verbatim.
    const HPCS_CLIENT: &str = "[spire-server]
address = localhost
port = 31147
trust-domain = hpcs

[hpcs-server]
url = http://localhost:10080

[vault]
url = http://localhost:8200

[supercomputer]
address = lumi.csc.fi
username = etellier
";

    const SERVER: &str = "[server]
listen = 0.0.0.0:10443
tls-cert = tls/cert.pem
tls-key = /etc/hpcs/tls/key.pem
audit-log = /var/log/hpcs/audit.jsonl
max-body-bytes = 1MiB
request-timeout = 10s

[spire-server]
trust-domain = hpcs.test
socket-path = unix:///run/spire/server.sock
agent-id-template = spiffe://hpcs.test/spire/agent/devspire/{node}

[node-agents]
nid003044 = spiffe://hpcs.test/spire/agent/x509pop/3f8a

[spire-agent]
socket-path = /run/spire/agent.sock

[vault]
url = https://vault.example:8200
reader-token-uses = 3
secret-ttl = 30d
";

    const NODE: &str = "[node]
name = node1
hook_timeout = 90

[vault]
url = http://127.0.0.1:8200

[spire-agent]
trust-domain = hpcs.test
";

    #[test]
    fn hpcs_client_example_parses() {
        let c = ClientConfig::from_ini_str(HPCS_CLIENT, origin()).unwrap();
        assert_eq!(c.spire_server.trust_domain.as_str(), "hpcs");
        assert_eq!(c.spire_server.address.as_deref(), Some("localhost"));
        assert_eq!(c.spire_server.port, Some(31147));
        assert_eq!(c.hpcs_server.url.as_str(), "http://localhost:10080/");
        assert_eq!(c.hpcs_server.audience, DEFAULT_SERVER_AUDIENCE);
        assert_eq!(c.hpcs_server.timeout, DEFAULT_HTTP_TIMEOUT);
        assert_eq!(c.vault.url.as_str(), "http://localhost:8200/");
        assert_eq!(c.supercomputer.address, "lumi.csc.fi");
        assert_eq!(c.supercomputer.username.as_str(), "etellier");
        assert_eq!(c.supercomputer.hpcs_node, None);
        assert_eq!(c.ssh, SshConfig::default());
        assert!(!c.ssh.accept_new_host_keys);
        assert_eq!(c.spire_agent, None);
        assert_eq!(c.identity_file, None);
    }

    #[test]
    fn client_quotes_comments_case_and_extras() {
        let text = "\u{feff}; HPCS client
[spire-server]
  trust-domain = \"spiffe://hpcs.test\"   ; quoted, lenient
Address = 'login.example.org'

[hpcs-server] ; the API
url = \"https://hpcs.example.org:10443/api\"
timeout = 5m

[vault]
url=https://vault.example.org
ca-cert = ca.pem

[supercomputer]
address = 10.0.0.1
username = alice # inline comment

[ssh]
key = ~/.ssh/id_ed25519
known-hosts = /etc/ssh/known
port = 2222
accept-new-host-keys = yes
connect-timeout = 1500ms
streams = 4

[spire-agent]
socket-path = unix:/tmp/agent.sock

[client]
identity-file = \"\"
";
        // SAFETY of the test: HOME is read, never set, by the code under test.
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        let c = ClientConfig::from_ini_str(text, origin()).unwrap();
        assert_eq!(c.spire_server.trust_domain.as_str(), "hpcs.test");
        assert_eq!(c.spire_server.address.as_deref(), Some("login.example.org"));
        assert_eq!(
            c.hpcs_server.url.as_str(),
            "https://hpcs.example.org:10443/api"
        );
        assert_eq!(c.hpcs_server.timeout, Duration::from_secs(300));
        assert_eq!(c.vault.ca_cert, Some(PathBuf::from("/etc/hpcs/ca.pem")));
        assert_eq!(c.supercomputer.username.as_str(), "alice");
        assert_eq!(c.ssh.key, Some(home.join(".ssh/id_ed25519")));
        assert_eq!(c.ssh.port, 2222);
        assert!(c.ssh.accept_new_host_keys);
        assert_eq!(c.ssh.connect_timeout, Duration::from_millis(1500));
        assert_eq!(c.ssh.streams, 4);
        assert_eq!(
            c.spire_agent.unwrap().socket_path,
            PathBuf::from("/tmp/agent.sock")
        );
        assert_eq!(c.identity_file, None);
    }

    #[test]
    fn server_example_parses() {
        let c = ServerConfig::from_ini_str(SERVER, origin()).unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:10443".parse().unwrap());
        let tls = c.server.tls.as_ref().unwrap();
        assert_eq!(tls.cert, PathBuf::from("/etc/hpcs/tls/cert.pem"));
        assert_eq!(tls.key, PathBuf::from("/etc/hpcs/tls/key.pem"));
        assert!(!c.server.allow_plain_http);
        assert_eq!(c.server.audience, "hpcs-server");
        assert_eq!(c.server.client_id_prefix.as_str(), "/client/");
        assert_eq!(c.server.max_body_bytes, 1 << 20);
        assert_eq!(c.server.request_timeout, Duration::from_secs(10));
        assert_eq!(c.spire.trust_domain.as_str(), "hpcs.test");
        assert_eq!(c.spire.socket_path, PathBuf::from("/run/spire/server.sock"));
        let n1: NodeName = "nid003044".parse().unwrap();
        let n2: NodeName = "node2".parse().unwrap();
        assert_eq!(
            c.spire.agent_id(&n1).unwrap().as_str(),
            "spiffe://hpcs.test/spire/agent/x509pop/3f8a"
        );
        assert_eq!(
            c.spire.agent_id(&n2).unwrap().as_str(),
            "spiffe://hpcs.test/spire/agent/devspire/node2"
        );
        assert_eq!(
            c.spire_agent.socket_path,
            PathBuf::from("/run/spire/agent.sock")
        );
        assert_eq!(c.vault.auth_mount, "jwt");
        assert_eq!(c.vault.kv_mount, "hpcs");
        assert_eq!(c.vault.server_role, "hpcs-server");
        assert_eq!(c.vault.audience, "vault");
        assert_eq!(c.vault.token_role, DEFAULT_VAULT_TOKEN_ROLE);
        assert_eq!(c.vault.reader_token_uses, 3);
        assert_eq!(c.vault.reader_token_ttl, DEFAULT_READER_TOKEN_TTL);
        assert_eq!(c.vault.secret_ttl, Some(Duration::from_secs(30 * 86_400)));
    }

    #[test]
    fn server_without_template_refuses_unknown_nodes() {
        let text = "[server]\nallow-plain-http = true\n[spire-server]\ntrust-domain = td\n\
                    [vault]\nurl = http://127.0.0.1:8200\n";
        let c = ServerConfig::from_ini_str(text, origin()).unwrap();
        assert_eq!(c.server.listen, DEFAULT_SERVER_LISTEN.parse().unwrap());
        assert!(c.server.tls.is_none());
        assert_eq!(
            c.spire.socket_path,
            PathBuf::from(DEFAULT_SPIRE_SERVER_SOCKET)
        );
        assert_eq!(c.spire.agent_id(&"n1".parse().unwrap()), None);
        assert_eq!(
            c.spire_agent.socket_path,
            PathBuf::from(DEFAULT_SPIRE_AGENT_SOCKET)
        );
    }

    #[test]
    fn node_example_parses() {
        let c = NodeConfig::from_ini_str(NODE, origin()).unwrap();
        assert_eq!(c.node.name.as_ref().unwrap().as_str(), "node1");
        assert_eq!(c.node.scratch_dir, PathBuf::from(DEFAULT_SCRATCH_DIR));
        assert_eq!(c.node.engine_socket, PathBuf::from(DEFAULT_ENGINE_SOCKET));
        assert_eq!(c.node.broker_socket, None);
        assert_eq!(c.node.hook_timeout, Duration::from_secs(90));
        assert_eq!(c.vault.kv_mount, "hpcs");
        assert_eq!(c.vault.audience, "vault");
        assert_eq!(
            c.spire_agent.socket_path,
            PathBuf::from(DEFAULT_SPIRE_AGENT_SOCKET)
        );
        assert!(c.node.require_tmpfs);
        assert_eq!(c.policy_file, PathBuf::from(DEFAULT_POLICY_FILE));
        assert_eq!(c.trust_domain.as_str(), "hpcs.test");
        let minimal = NodeConfig::from_ini_str(
            "[vault]\nurl = http://v:1\n[spire-agent]\ntrust-domain = td\n",
            origin(),
        )
        .unwrap();
        assert_eq!(minimal.node.name, None);
        let full = NodeConfig::from_ini_str(
            "[node]\nscratch_dir = /dev/shm/hpcs\nrequire_tmpfs = no\n\
             engine_socket = unix:///run/user/1000/podman/podman.sock\n\
             broker-socket = /run/hpcs-node.sock\n[policy]\npath = policy.ini\n\
             [vault]\nurl = http://v:1\nca-cert = /etc/hpcs/ca.pem\n\
             [spire-agent]\nsocket-path = /run/spire/agent.sock\ntrust_domain = td\n",
            origin(),
        )
        .unwrap();
        assert_eq!(full.node.scratch_dir, PathBuf::from("/dev/shm/hpcs"));
        assert!(!full.node.require_tmpfs);
        assert_eq!(
            full.node.engine_socket,
            PathBuf::from("/run/user/1000/podman/podman.sock")
        );
        assert_eq!(
            full.node.broker_socket,
            Some(PathBuf::from("/run/hpcs-node.sock"))
        );
        assert_eq!(full.policy_file, PathBuf::from("/etc/hpcs/policy.ini"));
        assert_eq!(full.vault.ca_cert, Some(PathBuf::from("/etc/hpcs/ca.pem")));
    }

    fn with_line(base: &str, section: &str, line: &str) -> String {
        base.replace(&format!("[{section}]\n"), &format!("[{section}]\n{line}\n"))
    }

    #[rstest]
    #[case::unknown_section(format!("{HPCS_CLIENT}[vualt]\nurl = x\n"), "test.ini:15: unknown section [vualt]; did you mean [vault]? expected one of [spire-server]")]
    #[case::unknown_key(
        with_line(HPCS_CLIENT, "supercomputer", "adress = x"),
        "test.ini:13: unknown key `adress` in [supercomputer]; did you mean `address`? expected one of `address`, `username`"
    )]
    #[case::underscore_dup(format!("{HPCS_CLIENT}[ssh]\nconnect_timeout = 3s\nConnect-Timeout = 4s\n"), "test.ini:17: duplicate key `connect-timeout` in [ssh] (first on line 16)")]
    #[case::no_streams(format!("{HPCS_CLIENT}[ssh]\nstreams = 0\n"), "streams")]
    #[case::too_many_streams(format!("{HPCS_CLIENT}[ssh]\nstreams = 9\n"), "a number of connections from 1 to 8")]
    #[case::typo_key(format!("{HPCS_CLIENT}[ssh]\nconect_timeout = 3s\n"), "unknown key `conect-timeout` in [ssh]; did you mean `connect-timeout`?")]
    #[case::duplicate_key(
        with_line(HPCS_CLIENT, "vault", "url = http://x"),
        "test.ini:11: duplicate key `url` in [vault] (first on line 10)"
    )]
    #[case::duplicate_section(format!("{HPCS_CLIENT}[vault]\n"), "test.ini:15: duplicate section [vault] (first on line 9)")]
    #[case::key_outside(format!("url = x\n{HPCS_CLIENT}"), "test.ini:1: key `url` is outside any section")]
    #[case::no_equals(
        with_line(HPCS_CLIENT, "vault", "verify"),
        "test.ini:10: INI syntax error: variable assignment missing '='; expected `[section]`, `key = value` or a `;` comment"
    )]
    #[case::header_junk(format!("{HPCS_CLIENT}[ssh] x\n"), "test.ini:15: INI syntax error: section missing ']'")]
    #[case::unclosed(format!("{HPCS_CLIENT}[ssh\n"), "test.ini:15: INI syntax error: section missing ']'")]
    #[case::missing_section(HPCS_CLIENT.replace("[vault]\nurl = http://localhost:8200\n", ""), "test.ini: missing section [vault]")]
    #[case::missing_key(HPCS_CLIENT.replace("username = etellier\n", ""), "test.ini: missing key `username` in [supercomputer]")]
    #[case::empty_required(HPCS_CLIENT.replace("username = etellier", "username = \"\""), "missing key `username` in [supercomputer]")]
    #[case::bad_port(HPCS_CLIENT.replace("port = 31147", "port = 70000"), "test.ini:3: [spire-server] port = \"70000\": expected a port number from 1 to 65535")]
    #[case::port_word(HPCS_CLIENT.replace("port = 31147", "port = port"), "expected a port number")]
    #[case::bad_url(HPCS_CLIENT.replace("http://localhost:8200", "localhost:8200"), "[vault] url = \"localhost:8200\": expected an http:// or https:// URL")]
    #[case::ftp_url(HPCS_CLIENT.replace("http://localhost:8200", "ftp://localhost"), "expected an http:// or https:// URL")]
    #[case::url_creds(HPCS_CLIENT.replace("http://localhost:8200", "https://u:p@vault"), "without user name or password")]
    #[case::bad_user(HPCS_CLIENT.replace("username = etellier", "username = Etellier"), "test.ini:14: [supercomputer] username: invalid value: user name \"Etellier\" contains 'E'")]
    #[case::bad_td(HPCS_CLIENT.replace("trust-domain = hpcs", "trust-domain = HPCS"), "[spire-server] trust-domain: invalid value")]
    #[case::bad_host(HPCS_CLIENT.replace("address = lumi.csc.fi", "address = ssh://lumi"), "[supercomputer] address = \"ssh://lumi\": expected a host name")]
    #[case::bad_bool(format!("{HPCS_CLIENT}[ssh]\naccept-new-host-keys = maybe\n"), "[ssh] accept-new-host-keys = \"maybe\": expected true or false")]
    #[case::bad_duration(format!("{HPCS_CLIENT}[ssh]\nconnect-timeout = 0s\n"), "expected a positive duration")]
    #[case::bad_duration_unit(format!("{HPCS_CLIENT}[ssh]\nconnect-timeout = 5 minutes\n"), "expected a positive duration")]
    #[case::tilde_user(format!("{HPCS_CLIENT}[ssh]\nkey = ~bob/key\n"), "`~user/` is not supported")]
    #[case::nul(format!("{HPCS_CLIENT}[ssh]\nkey = a\0b\n"), "NUL character")]
    #[case::hpcs_node_relative(
        with_line(HPCS_CLIENT, "supercomputer", "hpcs-node = bin/hpcs-node"),
        "[supercomputer] hpcs-node = \"bin/hpcs-node\": expected an absolute path or a command name"
    )]
    #[case::hpcs_node_space(
        with_line(HPCS_CLIENT, "supercomputer", "hpcs-node = /opt/hpcs node"),
        "expected an absolute path or a command name"
    )]
    #[case::hpcs_node_dots(
        with_line(HPCS_CLIENT, "supercomputer", "hpcs-node = /opt/../bin/x"),
        "without . or .. components"
    )]
    #[case::hpcs_node_shell(
        with_line(HPCS_CLIENT, "supercomputer", "hpcs-node = $(id)"),
        "expected an absolute path or a command name"
    )]
    fn client_errors(#[case] text: String, #[case] msg: &str) {
        let err = ClientConfig::from_ini_str(&text, origin()).unwrap_err();
        let full = chain(&err);
        assert!(full.contains(msg), "{full:?}\n  does not contain {msg:?}");
        assert!(full.contains("/etc/hpcs/test.ini"), "{full}");
    }

    const SERVER_MIN: &str = "[server]
allow-plain-http = true
[spire-server]
trust-domain = hpcs.test
[vault]
url = http://127.0.0.1:8200
";

    #[rstest]
    #[case::no_tls(SERVER_MIN.replace("allow-plain-http = true", ""), "[server] has no tls-cert and tls-key; set both, or set allow-plain-http = true")]
    #[case::plain_false(SERVER_MIN.replace("allow-plain-http = true", "allow-plain-http = off"), "has no tls-cert and tls-key")]
    #[case::typo_plain(SERVER_MIN.replace("allow-plain-http", "alow-plain-http"), "unknown key `alow-plain-http` in [server]; did you mean `allow-plain-http`?")]
    #[case::half_tls(
        with_line(SERVER_MIN, "server", "tls-cert = c.pem"),
        "tls-cert and tls-key must be set together"
    )]
    #[case::bad_listen(
        with_line(SERVER_MIN, "server", "listen = localhost:80"),
        "[server] listen = \"localhost:80\": expected an IP address and port"
    )]
    #[case::bad_prefix(
        with_line(SERVER_MIN, "server", "client-id-prefix = client"),
        "[server] client-id-prefix: invalid value: client ID prefix \"client\" is invalid"
    )]
    #[case::bad_size(
        with_line(SERVER_MIN, "server", "max-body-bytes = 1MB"),
        "expected a positive size in bytes"
    )]
    #[case::bad_node(format!("{SERVER_MIN}[node-agents]\nnode- = spiffe://hpcs.test/spire/agent/x/1\n"), "[node-agents] node-: invalid value: node name \"node-\" is invalid: a label starts or ends with '-'")]
    #[case::bad_node_chars(format!("{SERVER_MIN}[node-agents]\nnode/1 = spiffe://hpcs.test/spire/agent/x/1\n"), "[node-agents] node/1: invalid value: node name \"node/1\" contains '/'")]
    #[case::bad_agent(format!("{SERVER_MIN}[node-agents]\nnode1 = spiffe://hpcs.test/node1\n"), "test.ini:8: [node-agents] node1: invalid value: SPIFFE ID \"spiffe://hpcs.test/node1\" is not a SPIRE agent ID")]
    #[case::agent_td(format!("{SERVER_MIN}[node-agents]\nnode1 = spiffe://other/spire/agent/x/1\n"), "expected an agent ID in trust domain hpcs.test")]
    #[case::dup_node(format!("{SERVER_MIN}[node-agents]\nn1 = spiffe://hpcs.test/spire/agent/x/1\nN1 = spiffe://hpcs.test/spire/agent/x/2\n"), "duplicate key `n1` in [node-agents]")]
    #[case::template_no_node(
        with_line(
            SERVER_MIN,
            "spire-server",
            "agent-id-template = spiffe://hpcs.test/spire/agent/x"
        ),
        "containing {node} once"
    )]
    #[case::template_bad(
        with_line(
            SERVER_MIN,
            "spire-server",
            "agent-id-template = spiffe://hpcs.test/agents/{node}"
        ),
        "is not a SPIRE agent ID"
    )]
    #[case::template_td(
        with_line(
            SERVER_MIN,
            "spire-server",
            "agent-id-template = spiffe://x/spire/agent/d/{node}"
        ),
        "an agent ID in trust domain hpcs.test"
    )]
    #[case::bad_mount(
        with_line(SERVER_MIN, "vault", "kv-mount = /hpcs"),
        "[vault] kv-mount = \"/hpcs\": expected a Vault name"
    )]
    #[case::bad_uses(
        with_line(SERVER_MIN, "vault", "reader-token-uses = 0"),
        "expected a positive number of uses"
    )]
    #[case::bad_audience(
        with_line(SERVER_MIN, "server", "audience = a, b"),
        "expected a single audience"
    )]
    #[case::missing_td(SERVER_MIN.replace("trust-domain = hpcs.test", ""), "missing key `trust-domain` in [spire-server]")]
    #[case::hpcs_server_keys(
        with_line(SERVER_MIN, "spire-server", "pre-command = \"\""),
        "unknown key `pre-command` in [spire-server]"
    )]
    fn server_errors(#[case] text: String, #[case] msg: &str) {
        let err = ServerConfig::from_ini_str(&text, origin()).unwrap_err();
        let full = chain(&err);
        assert!(full.contains(msg), "{full:?}\n  does not contain {msg:?}");
    }

    #[rstest]
    #[case::no_vault(
        "[node]\nname = n1\n[spire-agent]\ntrust-domain = td\n",
        "missing section [vault]"
    )]
    #[case::no_td(
        "[vault]\nurl = http://v\n[spire-agent]\n",
        "missing key `trust-domain` in [spire-agent]"
    )]
    #[case::no_agent("[vault]\nurl = http://v\n", "missing section [spire-agent]")]
    #[case::bad_tmpfs(
        "[node]\nrequire-tmpfs = sometimes\n[vault]\nurl = http://v\n",
        "[node] require-tmpfs = \"sometimes\": expected true or false"
    )]
    #[case::bad_name(
        "[node]\nname = n_1.-x\n[vault]\nurl = http://v\n",
        "[node] name: invalid value"
    )]
    #[case::short_key(
        "[vault]\nurl = http://v\nca = /x\n[spire-agent]\ntrust-domain = td\n",
        "unknown key `ca` in [vault]; did you mean `ca-cert`?"
    )]
    #[case::short_socket(
        "[vault]\nurl = http://v\n[spire-agent]\nsocket = /x\n",
        "unknown key `socket` in [spire-agent]; did you mean `socket-path`?"
    )]
    #[case::policy(
        "[policy]\nfile = x\n[vault]\nurl = http://v\n",
        "unknown key `file` in [policy]; expected one of `path`"
    )]
    #[case::bad_socket(
        "[node]\nengine-socket = tcp://1.2.3.4:2375\n[vault]\nurl = http://v\n",
        "expected a unix socket path"
    )]
    fn node_errors(#[case] text: &str, #[case] msg: &str) {
        let err = NodeConfig::from_ini_str(text, origin()).unwrap_err();
        let full = chain(&err);
        assert!(full.contains(msg), "{full:?}\n  does not contain {msg:?}");
    }

    fn chain(err: &dyn std::error::Error) -> String {
        let mut s = err.to_string();
        let mut source = err.source();
        while let Some(e) = source {
            s.push_str(": ");
            s.push_str(&e.to_string());
            source = e.source();
        }
        s
    }

    #[rstest]
    #[case("30", 30_000)]
    #[case("30s", 30_000)]
    #[case("5m", 300_000)]
    #[case("2h", 7_200_000)]
    #[case("1d", 86_400_000)]
    #[case("250ms", 250)]
    #[case(" 7 s ", 7_000)]
    fn durations(#[case] s: &str, #[case] ms: u128) {
        assert_eq!(parse_duration(s).unwrap().as_millis(), ms);
    }

    #[rstest]
    #[case("")]
    #[case("0")]
    #[case("-1s")]
    #[case("1.5s")]
    #[case("5 minutes")]
    #[case("1w")]
    #[case("99999999999999999999")]
    #[case("999999999999999999d")]
    fn durations_bad(#[case] s: &str) {
        parse_duration(s).unwrap_err();
    }

    #[rstest]
    #[case("true", true)]
    #[case("Yes", true)]
    #[case("ON", true)]
    #[case("1", true)]
    #[case("false", false)]
    #[case("no", false)]
    #[case("off", false)]
    #[case("0", false)]
    fn bools(#[case] s: &str, #[case] want: bool) {
        assert_eq!(parse_bool(s).unwrap(), want);
    }

    #[rstest]
    #[case("65536", 65_536)]
    #[case("64KiB", 65_536)]
    #[case("1MiB", 1 << 20)]
    #[case("2GiB", 2 << 30)]
    fn sizes(#[case] s: &str, #[case] want: u64) {
        assert_eq!(parse_size(s).unwrap(), want);
    }

    #[rstest]
    #[case("plain", "plain")]
    #[case("a ; comment", "a")]
    #[case("a\t# comment", "a")]
    #[case("a;b", "a;b")]
    #[case("https://x/#frag", "https://x/#frag")]
    #[case("\"a ; b\" ; comment", "\"a ; b\"")]
    #[case("'a # b'", "'a # b'")]
    #[case("\"a\" b ; c", "\"a\" b")]
    fn inline_comments(#[case] value: &str, #[case] want: &str) {
        assert_eq!(strip_inline_comment(value), want);
    }

    #[rstest]
    #[case("\"x\"", "x")]
    #[case("'x'", "x")]
    #[case("\"x'", "\"x'")]
    #[case("\"", "\"")]
    #[case("\"\"", "")]
    #[case("x", "x")]
    fn unquoting(#[case] value: &str, #[case] want: &str) {
        assert_eq!(unquote(value), want);
    }

    #[test]
    fn schema_is_read_from_raw_structs() {
        let keys = known_keys::<RawServerConfig>();
        assert_eq!(keys["node-agents"], "<any>");
        assert!(keys["server"].contains("allow-plain-http"));
        assert!(keys["vault"].contains("reader-token-uses"));
        let client = known_keys::<RawClientConfig>();
        assert_eq!(
            client.keys().copied().collect::<Vec<_>>(),
            [
                "client",
                "hpcs-server",
                "spire-agent",
                "spire-server",
                "ssh",
                "supercomputer",
                "vault"
            ]
        );
        assert_eq!(client["supercomputer"], "address, username, hpcs-node");
    }

    #[test]
    fn load_from_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("client.ini");
        std::fs::write(
            &path,
            HPCS_CLIENT.replace("[supercomputer]", "[ssh]\nkey = id\n[supercomputer]"),
        )
        .unwrap();
        let c = load_client(&path).unwrap();
        assert_eq!(c.ssh.key, Some(tmp.path().join("id")));
        let err = load_client(&tmp.path().join("missing.ini")).unwrap_err();
        assert!(err.to_string().contains("missing.ini"), "{err}");
        let server = tmp.path().join("server.ini");
        std::fs::write(&server, SERVER).unwrap();
        assert_eq!(
            load_server(&server).unwrap().server.tls.unwrap().cert,
            tmp.path().join("tls/cert.pem")
        );
        let node = tmp.path().join("node.ini");
        std::fs::write(&node, NODE).unwrap();
        load_node(&node).unwrap();
        let big = tmp.path().join("big.ini");
        std::fs::write(&big, vec![b';'; CONFIG_MAX_BYTES as usize + 1]).unwrap();
        let err = load_node(&big).unwrap_err();
        assert!(matches!(err, ConfigError::NotText { .. }), "{err}");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Arbitrary text never panics the parser, whatever it is.
            #[test]
            fn prop_never_panics(text in "(\\[[a-z-]{0,12}\\]|[a-z-]{1,10} ?= ?[ -~]{0,20}|[;#][ -~]{0,10}| *|[ -~]{0,20})(\n(\\[[a-z-]{0,12}\\]|[a-z-]{1,10} ?= ?[ -~]{0,20}|[;#][ -~]{0,10}| *|[ -~]{0,20})){0,12}") {
                let _ = ClientConfig::from_ini_str(&text, origin());
                let _ = ServerConfig::from_ini_str(&text, origin());
                let _ = NodeConfig::from_ini_str(&text, origin());
            }

            /// Values written back with quotes, comments, spacing and key case variations parse to
            /// the same config.
            #[test]
            fn prop_formatting_does_not_matter(
                quote in prop_oneof![Just(""), Just("\""), Just("'")],
                pad in " {0,3}",
                upper: bool,
                comment: bool,
                port in 1u16..,
                user in "[a-z_][a-z0-9_-]{0,20}",
            ) {
                let key = |k: &str| if upper { k.to_uppercase() } else { k.to_owned() };
                let tail = if comment { " ; note" } else { "" };
                let text = format!(
                    "[spire-server]\n{pad}{}{pad}={pad}{quote}hpcs{quote}{tail}\n{}={quote}{port}{quote}\n\
                     [hpcs-server]\nurl = {quote}http://h:1{quote}\n[vault]\nurl = http://v:2\n\
                     [supercomputer]\naddress = {quote}login{quote}\n{} = {quote}{user}{quote}{tail}\n",
                    key("trust-domain"), key("port"), key("username"),
                );
                let c = ClientConfig::from_ini_str(&text, origin()).unwrap();
                prop_assert_eq!(c.spire_server.port, Some(port));
                prop_assert_eq!(c.supercomputer.username.as_str(), user.as_str());
                prop_assert_eq!(c.spire_server.trust_domain.as_str(), "hpcs");
            }
        }
    }
}
