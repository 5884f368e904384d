//! Request and response types of the HPCS server API (JSON, versioned under [`API_V1`]).
//!
//! Every `/api/v1` call carries a JWT-SVID as `Authorization: Bearer <token>` with the server's
//! audience ([`DEFAULT_AUDIENCE`] unless configured otherwise).
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | `POST` | [`SECRETS_PATH`] | [`CreateSecretRequest`] | 201 [`CreateSecretResponse`] |
//! | `GET` | [`SECRETS_PATH`] | | 200 [`ListSecretsResponse`] (the caller's own) |
//! | `GET` | `/api/v1/secrets/{id}` | | 200 [`SecretInfo`] |
//! | `PATCH` | `/api/v1/secrets/{id}` | [`UpdateSecretRequest`] | 200 [`SecretInfo`] |
//! | `DELETE` | `/api/v1/secrets/{id}` | | 204 |
//! | `GET` | [`OPENAPI_PATH`] | | 200 the OpenAPI document |
//!
//! Every failure answers with an [`ErrorBody`]: a stable [`ErrorKind`] and a human-readable,
//! client-safe `detail`. Authentication and authorisation failures carry the same detail, and a
//! secret that exists but belongs to someone else is reported exactly like one that does not
//! exist.
//!
//! With the `openapi` feature the types implement `utoipa::ToSchema`, so the server generates its
//! OpenAPI document from these definitions.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::ids::{ArtefactName, GroupName, NodeName, RoleName, SecretId, SpiffeId, UserName};

/// Path prefix of version 1 of the API.
pub const API_V1: &str = "/api/v1";
/// The collection of secrets.
pub const SECRETS_PATH: &str = "/api/v1/secrets";
/// The OpenAPI document of the API.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";
/// Liveness probe (no authentication, no body of interest).
pub const HEALTHZ_PATH: &str = "/healthz";
/// Readiness probe: SPIRE server socket, Vault and trust bundle.
pub const READYZ_PATH: &str = "/readyz";
/// Prometheus metrics in the text exposition format.
pub const METRICS_PATH: &str = "/metrics";
/// The JWT-SVID audience the server expects unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = "hpcs-server";
/// Largest number of users plus groups one secret may name.
pub const MAX_READERS: usize = 256;
/// Largest number of compute nodes one secret may name.
pub const MAX_COMPUTE_NODES: usize = 1024;

/// The path of one secret, `/api/v1/secrets/<id>`.
#[must_use]
pub fn secret_path(id: &SecretId) -> String {
    format!("{SECRETS_PATH}/{id}")
}

/// What an artefact is: a container image or an input data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ArtefactKind {
    /// A container image (an OCI or docker-archive tarball).
    Image,
    /// An input data set (a tar archive of a directory).
    Data,
}

impl ArtefactKind {
    /// `image` or `data`, as on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Data => "data",
        }
    }
}

impl fmt::Display for ArtefactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may read a secret: cluster users and groups (on the secret's compute nodes).
///
/// Sets, so the wire form is sorted and free of duplicates whatever the caller sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Readers {
    /// POSIX user names.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>, example = json!(["alice"])))]
    pub users: BTreeSet<UserName>,
    /// POSIX group names (matched as supplementary groups of the job's process).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>, example = json!(["hpcs-users"])))]
    pub groups: BTreeSet<GroupName>,
}

impl Readers {
    /// Whether no user and no group is named.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }

    /// Number of users plus groups.
    #[must_use]
    pub fn len(&self) -> usize {
        self.users.len() + self.groups.len()
    }
}

/// `POST /api/v1/secrets`: register the key of one encrypted artefact.
///
/// The caller becomes the owner. The key itself is not in this request: the answer carries a
/// single-use credential with which the caller writes it to Vault directly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSecretRequest {
    /// Image or data.
    pub kind: ArtefactKind,
    /// The artefact's name (informational; not unique).
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "jp2a_input"))]
    pub name: ArtefactName,
    /// Users and groups that may read the key on the compute nodes. At least one.
    pub readers: Readers,
    /// Compute nodes on which the readers may read the key. At least one.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>, example = json!(["node1"])))]
    pub compute_nodes: BTreeSet<NodeName>,
    /// When access ends (RFC 3339). Absent: until revoked.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub expires_at: Option<OffsetDateTime>,
}

/// `PATCH /api/v1/secrets/{id}`: add or remove readers and compute nodes.
///
/// Removals apply after additions; naming the same user, group or node in both removes it. The
/// result must still name at least one reader and one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateSecretRequest {
    /// Users and groups to add.
    #[serde(default)]
    pub add_readers: Readers,
    /// Users and groups to remove.
    #[serde(default)]
    pub remove_readers: Readers,
    /// Compute nodes to add.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub add_compute_nodes: BTreeSet<NodeName>,
    /// Compute nodes to remove.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub remove_compute_nodes: BTreeSet<NodeName>,
}

impl UpdateSecretRequest {
    /// Whether the request changes nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.add_readers.is_empty()
            && self.remove_readers.is_empty()
            && self.add_compute_nodes.is_empty()
            && self.remove_compute_nodes.is_empty()
    }
}

/// Life-cycle state of a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SecretState {
    /// Registered; readers can read the key.
    Active,
    /// A revocation started and did not finish (a backend was unavailable); repeat the DELETE.
    /// Reader access may already be partly removed.
    Revoking,
}

/// Where the key lives in Vault and how readers reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VaultLocation {
    /// The KV version 2 mount, e.g. `hpcs`.
    #[cfg_attr(feature = "openapi", schema(example = "hpcs"))]
    pub kv_mount: String,
    /// The key's path inside the mount (the secret ID); the API path is
    /// `<kv_mount>/data/<kv_path>`.
    #[cfg_attr(
        feature = "openapi",
        schema(example = "2b0d6c1e-0d6f-4a7e-9f8b-0c1d2e3f4a5b")
    )]
    pub kv_path: String,
    /// The Vault jwt auth role a reader logs in with.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub role: RoleName,
    /// The jwt auth mount of that role, e.g. `jwt`.
    pub auth_mount: String,
    /// The audience a reader's JWT-SVID must carry to log in with that role.
    pub audience: String,
}

/// One registered secret, as its owner sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretInfo {
    /// The server-generated secret ID.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: SecretId,
    /// Image or data.
    pub kind: ArtefactKind,
    /// The artefact's name.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub name: ArtefactName,
    /// The client SPIFFE ID that registered the secret.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "spiffe://hpcs.example.org/client/alice"))]
    pub owner: SpiffeId,
    /// Who may read the key.
    pub readers: Readers,
    /// Where.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub compute_nodes: BTreeSet<NodeName>,
    /// The SPIFFE ID of every workload allowed to read the key,
    /// `spiffe://<trust-domain>/hpcs/secret/<id>`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub reader_id: SpiffeId,
    /// Vault coordinates of the key.
    pub vault: VaultLocation,
    /// Life-cycle state.
    pub state: SecretState,
    /// When it was registered (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: OffsetDateTime,
    /// When access ends, if ever (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub expires_at: Option<OffsetDateTime>,
}

/// A Vault token, sent to the owner exactly once. Never printed; zeroized on drop.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VaultToken(#[serde(with = "zeroizing_string")] Zeroizing<String>);

impl VaultToken {
    /// Wraps a token string.
    #[must_use]
    pub fn new(token: String) -> Self {
        Self(Zeroizing::new(token))
    }

    /// The token, for the `X-Vault-Token` header. Do not log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for VaultToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VaultToken(<redacted>)")
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for VaultToken {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("A Vault token (secret)."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for VaultToken {}

mod zeroizing_string {
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub(super) fn serialize<S: Serializer>(v: &Zeroizing<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Zeroizing<String>, D::Error> {
        String::deserialize(d).map(Zeroizing::new)
    }
}

/// The credential with which the owner writes the key to Vault.
///
/// A Vault token that may `create` exactly `<kv_mount>/data/<kv_path>` and nothing else, usable
/// for one request, not renewable, without Vault's default policy. A second write and any read
/// are refused. The key never passes through the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WriteCredential {
    /// The token (`X-Vault-Token`).
    pub token: VaultToken,
    /// The KV version 2 mount.
    pub kv_mount: String,
    /// The path inside the mount to write.
    pub kv_path: String,
    /// Number of requests the token allows (1).
    pub num_uses: u32,
    /// When the token expires (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: OffsetDateTime,
}

/// Answer to `POST /api/v1/secrets` (status 201).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateSecretResponse {
    /// The registered secret.
    pub secret: SecretInfo,
    /// The single-use credential for writing the key.
    pub write_credential: WriteCredential,
}

/// Answer to `GET /api/v1/secrets`: the caller's own secrets, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ListSecretsResponse {
    /// The secrets.
    pub secrets: Vec<SecretInfo>,
}

/// Stable machine-readable error classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// 400: the request is malformed or invalid; `detail` says what to fix.
    BadRequest,
    /// 401: no valid credential.
    Unauthorized,
    /// 403: the credential is valid but does not allow this.
    Forbidden,
    /// 404: no such resource (or not yours).
    NotFound,
    /// 405: the method is not allowed on this path.
    MethodNotAllowed,
    /// 409: a concurrent change won; retry.
    Conflict,
    /// 413: the request body is too large.
    PayloadTooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 503: a backend (SPIRE or Vault) is unavailable; nothing was changed. Retry later.
    Unavailable,
    /// 504: the request took too long.
    Timeout,
    /// 500: an internal error (logged on the server).
    Internal,
    /// A kind this client does not know (sent by a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    /// The HTTP status code that carries this kind.
    #[must_use]
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::Unavailable => 503,
            Self::Timeout => 504,
            Self::Internal | Self::Unknown => 500,
        }
    }

    /// The kind as on the wire (`bad_request`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Internal => "internal",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Stable error class.
    pub kind: ErrorKind,
    /// What went wrong, for humans; never contains internals.
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn sample_info() -> SecretInfo {
        SecretInfo {
            id: "2b0d6c1e-0d6f-4a7e-9f8b-0c1d2e3f4a5b".parse().unwrap(),
            kind: ArtefactKind::Image,
            name: "jp2a".parse().unwrap(),
            owner: "spiffe://hpcs.test/client/alice".parse().unwrap(),
            readers: Readers {
                users: ["alice".parse().unwrap()].into(),
                groups: BTreeSet::new(),
            },
            compute_nodes: ["node1".parse().unwrap()].into(),
            reader_id: "spiffe://hpcs.test/hpcs/secret/2b0d6c1e-0d6f-4a7e-9f8b-0c1d2e3f4a5b"
                .parse()
                .unwrap(),
            vault: VaultLocation {
                kv_mount: "hpcs".into(),
                kv_path: "2b0d6c1e-0d6f-4a7e-9f8b-0c1d2e3f4a5b".into(),
                role: "hpcs-secret-2b0d6c1e-0d6f-4a7e-9f8b-0c1d2e3f4a5b"
                    .parse()
                    .unwrap(),
                auth_mount: "jwt".into(),
                audience: "vault".into(),
            },
            state: SecretState::Active,
            created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            expires_at: None,
        }
    }

    #[test]
    fn create_request_parses_minimal_body() {
        let req: CreateSecretRequest = serde_json::from_str(
            r#"{"kind":"data","name":"in","readers":{"users":["bob","alice","bob"]},"compute_nodes":["node1"]}"#,
        )
        .unwrap();
        assert_eq!(req.kind, ArtefactKind::Data);
        let users: Vec<_> = req.readers.users.iter().map(UserName::as_str).collect();
        assert_eq!(users, ["alice", "bob"]);
        assert!(req.readers.groups.is_empty());
        assert_eq!(req.expires_at, None);
    }

    #[test]
    fn create_request_parses_expiry() {
        let req: CreateSecretRequest = serde_json::from_str(
            r#"{"kind":"image","name":"x","readers":{"groups":["g"]},"compute_nodes":["n"],"expires_at":"2030-01-02T03:04:05Z"}"#,
        )
        .unwrap();
        assert_eq!(
            req.expires_at.unwrap().unix_timestamp(),
            OffsetDateTime::parse(
                "2030-01-02T03:04:05Z",
                &time::format_description::well_known::Rfc3339
            )
            .unwrap()
            .unix_timestamp()
        );
    }

    #[rstest]
    #[case::unknown_field(
        r#"{"kind":"image","name":"x","readers":{},"compute_nodes":[],"owner":"me"}"#,
        "unknown field `owner`"
    )]
    #[case::bad_kind(
        r#"{"kind":"iso","name":"x","readers":{},"compute_nodes":[]}"#,
        "unknown variant `iso`"
    )]
    #[case::bad_user(
        r#"{"kind":"image","name":"x","readers":{"users":["Root;rm"]},"compute_nodes":[]}"#,
        "user name"
    )]
    #[case::bad_node(
        r#"{"kind":"image","name":"x","readers":{},"compute_nodes":["a/b"]}"#,
        "node name"
    )]
    #[case::missing_nodes(
        r#"{"kind":"image","name":"x","readers":{}}"#,
        "missing field `compute_nodes`"
    )]
    #[case::bad_expiry(
        r#"{"kind":"image","name":"x","readers":{},"compute_nodes":[],"expires_at":"tomorrow"}"#,
        "'year' component"
    )]
    fn create_request_rejects(#[case] body: &str, #[case] needle: &str) {
        let err = serde_json::from_str::<CreateSecretRequest>(body)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
    }

    #[test]
    fn update_request_defaults_to_empty() {
        let req: UpdateSecretRequest = serde_json::from_str("{}").unwrap();
        assert!(req.is_empty());
        let req: UpdateSecretRequest =
            serde_json::from_str(r#"{"remove_compute_nodes":["node2"]}"#).unwrap();
        assert!(!req.is_empty());
    }

    #[test]
    fn secret_info_round_trips() {
        let info = sample_info();
        let json = serde_json::to_string(&info).unwrap();
        assert!(
            json.contains(r#""created_at":"2023-11-14T22:13:20Z""#),
            "{json}"
        );
        assert!(json.contains(r#""state":"active""#), "{json}");
        let back: SecretInfo = serde_json::from_str(&json).unwrap();
        assert_eq!(back, info);
    }

    #[test]
    fn vault_token_never_prints() {
        let cred = WriteCredential {
            token: VaultToken::new("s.verysecret".into()),
            kv_mount: "hpcs".into(),
            kv_path: "x".into(),
            num_uses: 1,
            expires_at: OffsetDateTime::UNIX_EPOCH,
        };
        let debug = format!("{cred:?}");
        assert!(!debug.contains("verysecret"), "{debug}");
        let json = serde_json::to_string(&cred).unwrap();
        assert!(json.contains(r#""token":"s.verysecret""#), "{json}");
        let back: WriteCredential = serde_json::from_str(&json).unwrap();
        assert_eq!(back.token.expose(), "s.verysecret");
    }

    #[rstest]
    #[case(ErrorKind::BadRequest, 400, "bad_request")]
    #[case(ErrorKind::Unauthorized, 401, "unauthorized")]
    #[case(ErrorKind::NotFound, 404, "not_found")]
    #[case(ErrorKind::PayloadTooLarge, 413, "payload_too_large")]
    #[case(ErrorKind::Unavailable, 503, "unavailable")]
    fn error_kinds_are_stable(#[case] kind: ErrorKind, #[case] status: u16, #[case] wire: &str) {
        assert_eq!(kind.status(), status);
        assert_eq!(kind.as_str(), wire);
        let body = serde_json::to_string(&ErrorBody {
            kind,
            detail: "d".into(),
        })
        .unwrap();
        assert_eq!(body, format!(r#"{{"kind":"{wire}","detail":"d"}}"#));
    }

    #[test]
    fn unknown_error_kind_from_newer_server_parses() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"kind":"rate_limited","detail":"slow down"}"#).unwrap();
        assert_eq!(body.kind, ErrorKind::Unknown);
    }

    #[test]
    fn secret_path_joins_id() {
        let id: SecretId = "abc".parse().unwrap();
        assert_eq!(secret_path(&id), "/api/v1/secrets/abc");
    }
}
