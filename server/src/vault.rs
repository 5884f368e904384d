//! Vault (OpenBao) access with least privilege.
//!
//! The server logs in with its own JWT-SVID (jwt auth, role from config) and holds only the rights
//! of the policy in `deploy/vault/hpcs-server.hcl`: write and delete ACL policies and jwt roles
//! named `hpcs-secret-*`, mint tokens from one token role, destroy key records, and keep its own
//! registry under `<kv-mount>/data/_registry/`. It can never read a key.
//!
//! Per secret `<id>` it manages:
//! - the ACL policy `hpcs-secret-<id>-read`: `read` on exactly `<kv>/data/<id>`;
//! - the jwt role `hpcs-secret-<id>`: `bound_subject` = the reader SPIFFE ID, `user_claim=sub`,
//!   the configured audience, a short token TTL and few uses;
//! - the ACL policy `hpcs-secret-<id>-write`: `create` on exactly `<kv>/data/<id>`, attached to a
//!   one-use, orphan, non-renewable token minted from the token role (see [`writer_policy`]).
//!
//! [`VaultBackend`] is the seam the secrets service uses; [`Vault`] is the real implementation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hpcs_core::api::VaultToken;
use hpcs_core::ids::{RoleName, SecretId, SpiffeId, TrustDomain};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::{Mutex, RwLock};
use url::Url;
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretRequestOptions};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use crate::registry::SecretRecord;

/// Default jwt auth mount.
pub const DEFAULT_AUTH_MOUNT: &str = hpcs_core::config::DEFAULT_VAULT_AUTH_MOUNT;
/// Default jwt role of the server itself.
pub const DEFAULT_SERVER_ROLE: &str = hpcs_core::config::DEFAULT_VAULT_SERVER_ROLE;
/// Default KV version 2 mount holding keys and the registry.
pub const DEFAULT_KV_MOUNT: &str = hpcs_core::config::DEFAULT_VAULT_KV_MOUNT;
/// Default token role from which write-once tokens are minted.
pub const DEFAULT_WRITER_TOKEN_ROLE: &str = hpcs_core::config::DEFAULT_VAULT_TOKEN_ROLE;
/// Default audience of JWT-SVIDs presented to Vault (by the server and by readers).
pub const DEFAULT_VAULT_AUDIENCE: &str = hpcs_core::config::DEFAULT_VAULT_AUDIENCE;
/// Default TTL of a reader's Vault token.
pub const DEFAULT_READER_TOKEN_TTL: Duration = hpcs_core::config::DEFAULT_READER_TOKEN_TTL;
/// Default number of uses of a reader's Vault token (read the key, revoke the token).
pub const DEFAULT_READER_TOKEN_USES: u32 = hpcs_core::config::DEFAULT_READER_TOKEN_USES;
/// Default TTL of an owner's write-once token.
pub const DEFAULT_WRITE_TOKEN_TTL: Duration = hpcs_core::config::DEFAULT_WRITE_TOKEN_TTL;
/// Default timeout of one Vault request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Prefix of every policy and role the server manages.
pub const SECRET_PREFIX: &str = "hpcs-secret-";
/// Path prefix (inside the KV mount) of the server's registry; no secret ID starts with `_`.
pub const REGISTRY_PREFIX: &str = "_registry";

/// The policy that the server's own Vault role carries, with `@PLACEHOLDERS@` (see
/// [`server_policy`]). deploy/vault/setup renders the same file.
pub const SERVER_POLICY_TEMPLATE: &str = include_str!("../../deploy/vault/hpcs-server.hcl");

/// Where Vault is and how the server uses it.
#[derive(Clone, Debug)]
pub struct VaultSettings {
    /// Vault address, `https://...` (plain `http://` only on loopback).
    pub url: Url,
    /// PEM CA bundle for Vault's TLS certificate, if not in the system store.
    pub ca_cert: Option<PathBuf>,
    /// Mount of the jwt auth method (server login and reader roles).
    pub auth_mount: String,
    /// The server's own jwt role.
    pub role: String,
    /// Audience of the JWT-SVIDs presented to Vault, by the server and by readers.
    pub audience: String,
    /// KV version 2 mount for keys and the registry.
    pub kv_mount: String,
    /// Token role for write-once tokens.
    pub writer_token_role: String,
    /// TTL of reader tokens.
    pub reader_token_ttl: Duration,
    /// Uses of reader tokens.
    pub reader_token_num_uses: u32,
    /// TTL of write-once tokens.
    pub write_token_ttl: Duration,
    /// Timeout of each request.
    pub timeout: Duration,
}

impl VaultSettings {
    /// Settings with every default and the given address.
    #[must_use]
    pub fn with_defaults(url: Url) -> Self {
        Self {
            url,
            ca_cert: None,
            auth_mount: DEFAULT_AUTH_MOUNT.to_owned(),
            role: DEFAULT_SERVER_ROLE.to_owned(),
            audience: DEFAULT_VAULT_AUDIENCE.to_owned(),
            kv_mount: DEFAULT_KV_MOUNT.to_owned(),
            writer_token_role: DEFAULT_WRITER_TOKEN_ROLE.to_owned(),
            reader_token_ttl: DEFAULT_READER_TOKEN_TTL,
            reader_token_num_uses: DEFAULT_READER_TOKEN_USES,
            write_token_ttl: DEFAULT_WRITE_TOKEN_TTL,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Errors of Vault operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The Vault client could not be built (bad URL or CA file).
    #[error("failed to set up the Vault client for {url}")]
    Client {
        /// Vault address.
        url: String,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// The server's own JWT-SVID for Vault could not be fetched.
    #[error("failed to fetch the server's JWT-SVID for audience {audience}")]
    FetchSvid {
        /// Audience asked for.
        audience: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Login with the server's role failed.
    #[error("failed to log in to Vault with role {role} on auth mount {mount}")]
    Login {
        /// Role.
        role: String,
        /// Mount.
        mount: String,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// A request failed.
    #[error("Vault request to {op} {path} failed")]
    Request {
        /// What we tried.
        op: &'static str,
        /// API path.
        path: String,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// A request did not finish in time.
    #[error("Vault request to {op} {path} timed out after {timeout:?}")]
    Timeout {
        /// What we tried.
        op: &'static str,
        /// API path.
        path: String,
        /// Limit.
        timeout: Duration,
    },
    /// A check-and-set write lost against a concurrent writer.
    #[error("concurrent change of {path} (check-and-set version {expected} is stale)")]
    Conflict {
        /// API path.
        path: String,
        /// Version we expected.
        expected: u64,
    },
    /// A registry record could not be decoded.
    #[error("registry record {path} is malformed")]
    Decode {
        /// API path.
        path: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

impl VaultError {
    /// Whether retrying later may succeed (Vault unreachable, sealed, overloaded, timing out).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::FetchSvid { .. } | Self::Conflict { .. } => true,
            Self::Request { source, .. } | Self::Login { source, .. } => {
                client_error_transient(source)
            }
            Self::Client { .. } | Self::Decode { .. } => false,
        }
    }

    /// Whether Vault answered 404.
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Request { source, .. } if api_code(source) == Some(404))
    }
}

fn api_code(e: &ClientError) -> Option<u16> {
    match e {
        ClientError::APIError { code, .. } => Some(*code),
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code, .. },
        } => Some(*code),
        _ => None,
    }
}

fn client_error_transient(e: &ClientError) -> bool {
    match api_code(e) {
        // 429: rate limited; 5xx: sealed, standby, overloaded, unreachable behind a proxy.
        Some(code) => code == 429 || code >= 500,
        // No HTTP answer at all: connection refused, reset, TLS or timeout.
        None => matches!(e, ClientError::RestClientError { .. }),
    }
}

/// A source of the server's own JWT-SVIDs (the Workload API in production).
#[async_trait]
pub trait SvidFetcher: Send + Sync + 'static {
    /// A fresh JWT-SVID token for `audience`.
    ///
    /// # Errors
    ///
    /// Whatever prevented fetching it.
    async fn fetch_jwt(
        &self,
        audience: &str,
    ) -> Result<Zeroizing<String>, Box<dyn std::error::Error + Send + Sync>>;
}

#[async_trait]
impl SvidFetcher for spiffe::JwtSource {
    async fn fetch_jwt(
        &self,
        audience: &str,
    ) -> Result<Zeroizing<String>, Box<dyn std::error::Error + Send + Sync>> {
        let svid = self.fetch_jwt_svid([audience]).await?;
        Ok(Zeroizing::new(svid.token().to_owned()))
    }
}

/// How the server authenticates to Vault.
#[derive(Clone)]
pub enum VaultLogin {
    /// jwt auth with the server's JWT-SVID (production).
    Jwt(Arc<dyn SvidFetcher>),
    /// A token obtained elsewhere (tests of the policy with a token that carries exactly the
    /// server policy). Never a root token.
    Token(VaultToken),
}

impl std::fmt::Debug for VaultLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Jwt(_) => f.write_str("VaultLogin::Jwt"),
            Self::Token(_) => f.write_str("VaultLogin::Token(<redacted>)"),
        }
    }
}

/// The parameters of one reader role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaderRole {
    /// Role name, `hpcs-secret-<id>`.
    pub name: RoleName,
    /// The only subject that may log in.
    pub bound_subject: SpiffeId,
    /// The policy its tokens carry, `hpcs-secret-<id>-read`.
    pub policy: RoleName,
}

/// A write-once token and when it expires.
#[derive(Debug)]
pub struct IssuedToken {
    /// The token.
    pub token: VaultToken,
    /// Expiry.
    pub expires_at: OffsetDateTime,
    /// Uses allowed.
    pub num_uses: u32,
}

/// A registry record and its KV version (for check-and-set).
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// KV version 2 version number.
    pub version: u64,
}

/// Name of the reader role of `id`.
#[must_use]
pub fn reader_role_name(id: &SecretId) -> RoleName {
    role_name(format!("{SECRET_PREFIX}{id}"))
}

/// Name of the read policy of `id`.
#[must_use]
pub fn read_policy_name(id: &SecretId) -> RoleName {
    role_name(format!("{SECRET_PREFIX}{id}-read"))
}

/// Name of the write-once policy of `id`.
#[must_use]
pub fn write_policy_name(id: &SecretId) -> RoleName {
    role_name(format!("{SECRET_PREFIX}{id}-write"))
}

fn role_name(s: String) -> RoleName {
    // A secret ID is [a-z0-9-], so the name is always a valid role name.
    RoleName::try_from(s).expect("a secret ID makes a valid role name")
}

/// The read policy of secret `id`: `read` on exactly its KV record, nothing else.
#[must_use]
pub fn reader_policy(kv_mount: &str, id: &SecretId) -> String {
    format!("path \"{kv_mount}/data/{id}\" {{\n  capabilities = [\"read\"]\n}}\n")
}

/// The write-once policy of secret `id`.
///
/// `create` (not `update`) on exactly the record: Vault grants `create` only while the path holds
/// no data, so even a token with uses left cannot overwrite the key; the token role additionally
/// limits the token to one use. No `read`: the owner cannot read back through it.
#[must_use]
pub fn writer_policy(kv_mount: &str, id: &SecretId) -> String {
    format!("path \"{kv_mount}/data/{id}\" {{\n  capabilities = [\"create\"]\n}}\n")
}

/// The server's own policy, rendered from [`SERVER_POLICY_TEMPLATE`].
#[must_use]
pub fn server_policy(settings: &VaultSettings, trust_domain: &TrustDomain) -> String {
    SERVER_POLICY_TEMPLATE
        .replace("@KV_MOUNT@", &settings.kv_mount)
        .replace("@AUTH_MOUNT@", &settings.auth_mount)
        .replace("@WRITER_TOKEN_ROLE@", &settings.writer_token_role)
        .replace("@TRUST_DOMAIN@", trust_domain.as_str())
        .replace("@AUDIENCE@", &settings.audience)
}

/// Everything the secrets service needs from Vault. Implemented by [`Vault`].
#[async_trait]
pub trait VaultBackend: Send + Sync + 'static {
    /// Writes (creates or replaces) ACL policy `name`.
    async fn write_policy(&self, name: &RoleName, hcl: &str) -> Result<(), VaultError>;
    /// Deletes ACL policy `name` (absent is fine).
    async fn delete_policy(&self, name: &RoleName) -> Result<(), VaultError>;
    /// Writes (creates or replaces) a reader jwt role.
    async fn write_reader_role(&self, role: &ReaderRole) -> Result<(), VaultError>;
    /// Deletes jwt role `name` (absent is fine).
    async fn delete_reader_role(&self, name: &RoleName) -> Result<(), VaultError>;
    /// Mints a write-once token carrying only `policy`.
    async fn create_write_token(
        &self,
        policy: &RoleName,
        id: &SecretId,
    ) -> Result<IssuedToken, VaultError>;
    /// Destroys every version and the metadata of the key record of `id` (absent is fine).
    async fn destroy_key(&self, id: &SecretId) -> Result<(), VaultError>;
    /// Reads a registry record.
    async fn read_record(
        &self,
        id: &SecretId,
    ) -> Result<Option<Versioned<SecretRecord>>, VaultError>;
    /// Creates a registry record; fails with [`VaultError::Conflict`] if it exists.
    async fn create_record(&self, record: &SecretRecord) -> Result<u64, VaultError>;
    /// Replaces a registry record if it is still at `version`.
    async fn update_record(&self, record: &SecretRecord, version: u64) -> Result<u64, VaultError>;
    /// Deletes a registry record for good (absent is fine).
    async fn delete_record(&self, id: &SecretId) -> Result<(), VaultError>;
    /// Adds `id` to the index of `owner`'s secrets.
    async fn index_owner(&self, owner: &SpiffeId, id: &SecretId) -> Result<(), VaultError>;
    /// Removes `id` from the index of `owner`'s secrets (absent is fine).
    async fn unindex_owner(&self, owner: &SpiffeId, id: &SecretId) -> Result<(), VaultError>;
    /// IDs in the index of `owner`'s secrets.
    async fn owned(&self, owner: &SpiffeId) -> Result<Vec<SecretId>, VaultError>;
    /// IDs of every registry record.
    async fn all_records(&self) -> Result<Vec<SecretId>, VaultError>;
    /// Readiness: Vault answers and the server's token is valid.
    async fn check(&self) -> Result<(), VaultError>;
    /// Revokes the server's own token, if it logged in (shutdown). Best effort.
    async fn logout(&self) {}
}

struct Session {
    client: Arc<VaultClient>,
    /// When to log in again (before the token expires); `None` for a token we cannot renew.
    renew_at: Option<Instant>,
}

/// The real Vault backend over vaultrs.
pub struct Vault {
    settings: VaultSettings,
    login: VaultLogin,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    session: RwLock<Option<Arc<Session>>>,
    login_lock: Mutex<()>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("url", &self.settings.url.as_str())
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

/// Path of the registry record of `id` inside the KV mount.
#[must_use]
pub fn record_path(id: &SecretId) -> String {
    format!("{REGISTRY_PREFIX}/secrets/{id}")
}

/// Path of the owner index of `owner` inside the KV mount (hashed: SPIFFE IDs have `/`).
#[must_use]
pub fn owner_index_path(owner: &SpiffeId) -> String {
    format!(
        "{REGISTRY_PREFIX}/owners/{}",
        hex::encode(Sha256::digest(owner.as_str().as_bytes()))
    )
}

impl Vault {
    /// A backend that logs in lazily, on first use.
    ///
    /// # Errors
    ///
    /// [`VaultError::Client`] if the settings do not make a client (bad URL, unreadable CA).
    pub fn new(settings: VaultSettings, login: VaultLogin) -> Result<Self, VaultError> {
        // Build one client now so configuration errors surface at startup, not on first request.
        build_client(&settings, "")?;
        Ok(Self {
            settings,
            login,
            metrics: None,
            session: RwLock::new(None),
            login_lock: Mutex::new(()),
        })
    }

    /// Records the latency of every request in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &VaultSettings {
        &self.settings
    }

    async fn session(&self) -> Result<Arc<Session>, VaultError> {
        if let Some(s) = self.session.read().await.as_ref()
            && s.renew_at.is_none_or(|t| Instant::now() < t)
        {
            return Ok(Arc::clone(s));
        }
        let _guard = self.login_lock.lock().await;
        // Another task may have logged in while we waited.
        if let Some(s) = self.session.read().await.as_ref()
            && s.renew_at.is_none_or(|t| Instant::now() < t)
        {
            return Ok(Arc::clone(s));
        }
        let session = Arc::new(self.login().await?);
        *self.session.write().await = Some(Arc::clone(&session));
        Ok(session)
    }

    async fn invalidate(&self, stale: &Arc<Session>) {
        let mut guard = self.session.write().await;
        if guard.as_ref().is_some_and(|s| Arc::ptr_eq(s, stale)) {
            *guard = None;
        }
    }

    async fn login(&self) -> Result<Session, VaultError> {
        match &self.login {
            VaultLogin::Token(token) => Ok(Session {
                client: Arc::new(build_client(&self.settings, token.expose())?),
                renew_at: None,
            }),
            VaultLogin::Jwt(fetcher) => {
                let audience = &self.settings.audience;
                let jwt = tokio::time::timeout(self.settings.timeout, fetcher.fetch_jwt(audience))
                    .await
                    .map_err(|_| VaultError::FetchSvid {
                        audience: audience.clone(),
                        source: "timed out".into(),
                    })?
                    .map_err(|source| VaultError::FetchSvid {
                        audience: audience.clone(),
                        source,
                    })?;
                let anon = build_client(&self.settings, "")?;
                let started = Instant::now();
                let login_err = |source| VaultError::Login {
                    role: self.settings.role.clone(),
                    mount: self.settings.auth_mount.clone(),
                    source,
                };
                let auth = tokio::time::timeout(
                    self.settings.timeout,
                    vaultrs::auth::oidc::login(
                        &anon,
                        &self.settings.auth_mount,
                        &jwt,
                        Some(self.settings.role.clone()),
                    ),
                )
                .await
                .map_err(|_| VaultError::Timeout {
                    op: "log in",
                    path: format!("auth/{}/login", self.settings.auth_mount),
                    timeout: self.settings.timeout,
                })?
                .map_err(login_err)?;
                let token = Zeroizing::new(auth.client_token);
                // Log in again at two thirds of the lease, so a request never carries an
                // expired token.
                let renew_at = (auth.lease_duration > 0)
                    .then(|| started + Duration::from_secs(auth.lease_duration) * 2 / 3);
                tracing::info!(
                    role = %self.settings.role,
                    lease_secs = auth.lease_duration,
                    "logged in to Vault"
                );
                Ok(Session {
                    client: Arc::new(build_client(&self.settings, &token)?),
                    renew_at,
                })
            }
        }
    }

    /// Runs one request with the current session; after a 403 with jwt login, logs in again and
    /// retries once (the token may have been revoked or expired early).
    async fn call<T, F, Fut>(&self, op: &'static str, path: &str, f: F) -> Result<T, VaultError>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut retried = false;
        loop {
            let session = self.session().await?;
            let started = Instant::now();
            let result =
                tokio::time::timeout(self.settings.timeout, f(Arc::clone(&session.client))).await;
            if let Some(m) = &self.metrics {
                m.observe(
                    "hpcs_backend_duration_seconds",
                    &[("backend", "vault"), ("op", op)],
                    started.elapsed(),
                );
            }
            let result = result.map_err(|_| VaultError::Timeout {
                op,
                path: path.to_owned(),
                timeout: self.settings.timeout,
            })?;
            match result {
                Ok(v) => return Ok(v),
                Err(e)
                    if !retried
                        && api_code(&e) == Some(403)
                        && matches!(self.login, VaultLogin::Jwt(_)) =>
                {
                    tracing::warn!(
                        op,
                        path,
                        "Vault refused the server's token; logging in again"
                    );
                    self.invalidate(&session).await;
                    retried = true;
                }
                Err(source) => {
                    return Err(VaultError::Request {
                        op,
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
    }

    fn kv_api_path(&self, kind: &str, path: &str) -> String {
        format!("{}/{kind}/{path}", self.settings.kv_mount)
    }

    async fn kv_read<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<Versioned<T>>, VaultError> {
        let api = self.kv_api_path("data", path);
        let mount = self.settings.kv_mount.clone();
        let res = self
            .call("read", &api, |c| {
                let endpoint = ReadSecretRequest::builder()
                    .mount(mount.clone())
                    .path(path)
                    .build()
                    .expect("all fields set");
                async move { vaultrs::api::exec_with_result(c.as_ref(), endpoint).await }
            })
            .await;
        match res {
            Ok(r) => {
                let value =
                    serde_json::from_value(r.data).map_err(|source| VaultError::Decode {
                        path: api.clone(),
                        source,
                    })?;
                Ok(Some(Versioned {
                    value,
                    version: r.metadata.version,
                }))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn kv_write<T: Serialize + Sync>(
        &self,
        path: &str,
        value: &T,
        cas: Option<u64>,
    ) -> Result<u64, VaultError> {
        let api = self.kv_api_path("data", path);
        let mount = &self.settings.kv_mount;
        let res = self
            .call("write", &api, |c| async move {
                match cas {
                    Some(v) => {
                        let cas = u32::try_from(v).unwrap_or(u32::MAX);
                        vaultrs::kv2::set_with_options(
                            c.as_ref(),
                            mount,
                            path,
                            value,
                            SetSecretRequestOptions { cas },
                        )
                        .await
                    }
                    None => vaultrs::kv2::set(c.as_ref(), mount, path, value).await,
                }
            })
            .await;
        match res {
            Ok(meta) => Ok(meta.version),
            // KV v2 answers 400 when the check-and-set version does not match; every other
            // part of this request is ours and well-formed.
            Err(VaultError::Request { source, .. })
                if cas.is_some() && api_code(&source) == Some(400) =>
            {
                Err(VaultError::Conflict {
                    path: api,
                    expected: cas.unwrap_or_default(),
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn kv_destroy(&self, path: &str) -> Result<(), VaultError> {
        let api = self.kv_api_path("metadata", path);
        let mount = &self.settings.kv_mount;
        ignore_not_found(
            self.call("destroy", &api, |c| async move {
                vaultrs::kv2::delete_metadata(c.as_ref(), mount, path).await
            })
            .await,
        )
    }

    async fn kv_list(&self, path: &str) -> Result<Vec<String>, VaultError> {
        let api = self.kv_api_path("metadata", path);
        let mount = &self.settings.kv_mount;
        match self
            .call("list", &api, |c| async move {
                vaultrs::kv2::list(c.as_ref(), mount, path).await
            })
            .await
        {
            Ok(keys) => Ok(keys),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

/// A POST of a JSON body to an API path, for requests whose exact body shape matters.
struct JsonPost {
    path: String,
    body: serde_json::Value,
}

impl rustify::Endpoint for JsonPost {
    type Response = ();
    const REQUEST_BODY_TYPE: rustify::enums::RequestType = rustify::enums::RequestType::JSON;
    const RESPONSE_BODY_TYPE: rustify::enums::ResponseType = rustify::enums::ResponseType::JSON;

    fn path(&self) -> String {
        self.path.clone()
    }

    fn method(&self) -> rustify::enums::RequestMethod {
        rustify::enums::RequestMethod::POST
    }

    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        serde_json::to_vec(&self.body)
            .map(Some)
            .map_err(|e| rustify::errors::ClientError::DataParseError { source: e.into() })
    }
}

fn ignore_not_found(r: Result<(), VaultError>) -> Result<(), VaultError> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

fn build_client(settings: &VaultSettings, token: &str) -> Result<VaultClient, VaultError> {
    let err = |source| VaultError::Client {
        url: settings.url.to_string(),
        source,
    };
    let mut b = VaultClientSettingsBuilder::default();
    // Explicit values throughout: vaultrs would otherwise fall back to VAULT_* environment
    // variables, and a stray VAULT_SKIP_VERIFY must not switch TLS verification off.
    b.address(settings.url.as_str())
        .token(token)
        .timeout(Some(settings.timeout))
        .verify(true)
        .ca_certs(
            settings
                .ca_cert
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>(),
        );
    let built = b.build().map_err(|e| {
        err(ClientError::FileNotFoundError {
            path: e.to_string(),
        })
    })?;
    VaultClient::new(built).map_err(err)
}

#[async_trait]
impl VaultBackend for Vault {
    async fn write_policy(&self, name: &RoleName, hcl: &str) -> Result<(), VaultError> {
        let path = format!("sys/policy/{name}");
        self.call("write policy", &path, |c| async move {
            vaultrs::sys::policy::set(c.as_ref(), name.as_str(), hcl).await
        })
        .await
    }

    async fn delete_policy(&self, name: &RoleName) -> Result<(), VaultError> {
        let path = format!("sys/policy/{name}");
        ignore_not_found(
            self.call("delete policy", &path, |c| async move {
                vaultrs::sys::policy::delete(c.as_ref(), name.as_str()).await
            })
            .await,
        )
    }

    async fn write_reader_role(&self, role: &ReaderRole) -> Result<(), VaultError> {
        let mount = &self.settings.auth_mount;
        let path = format!("auth/{mount}/role/{}", role.name);
        let s = &self.settings;
        // List parameters go as single strings: the server policy pins them with
        // allowed_parameters, which matches strings, not JSON arrays (see hpcs-server.hcl).
        let body = serde_json::json!({
            "role_type": "jwt",
            "user_claim": "sub",
            "bound_subject": role.bound_subject.as_str(),
            "bound_audiences": s.audience,
            "token_policies": role.policy.as_str(),
            "token_ttl": format!("{}s", s.reader_token_ttl.as_secs()),
            "token_max_ttl": format!("{}s", s.reader_token_ttl.as_secs()),
            "token_num_uses": s.reader_token_num_uses,
            "token_type": "service",
        });
        let api_path = format!("/{path}");
        self.call("write role", &path, |c| {
            let endpoint = JsonPost {
                path: api_path.clone(),
                body: body.clone(),
            };
            async move { vaultrs::api::exec_with_empty(c.as_ref(), endpoint).await }
        })
        .await
    }

    async fn delete_reader_role(&self, name: &RoleName) -> Result<(), VaultError> {
        let mount = &self.settings.auth_mount;
        let path = format!("auth/{mount}/role/{name}");
        ignore_not_found(
            self.call("delete role", &path, |c| async move {
                vaultrs::auth::oidc::role::delete(c.as_ref(), mount, name.as_str()).await
            })
            .await,
        )
    }

    async fn create_write_token(
        &self,
        policy: &RoleName,
        id: &SecretId,
    ) -> Result<IssuedToken, VaultError> {
        let role = &self.settings.writer_token_role;
        let path = format!("auth/token/create/{role}");
        let ttl = self.settings.write_token_ttl;
        let started = OffsetDateTime::now_utc();
        let auth = self
            .call("create token", &path, |c| async move {
                let mut opts = vaultrs::api::token::requests::CreateRoleTokenRequest::builder();
                opts.policies(vec![policy.to_string()])
                    .ttl(format!("{}s", ttl.as_secs()))
                    .num_uses(1_u64)
                    .no_default_policy(true)
                    .renewable(false)
                    .display_name(format!("write-{id}"))
                    .meta(std::collections::HashMap::from([(
                        "secret_id".to_owned(),
                        id.to_string(),
                    )]));
                vaultrs::token::new_role(c.as_ref(), role, Some(&mut opts)).await
            })
            .await?;
        let lease = Duration::from_secs(auth.lease_duration);
        Ok(IssuedToken {
            token: VaultToken::new(auth.client_token),
            expires_at: started + lease,
            num_uses: 1,
        })
    }

    async fn destroy_key(&self, id: &SecretId) -> Result<(), VaultError> {
        self.kv_destroy(id.as_str()).await
    }

    async fn read_record(
        &self,
        id: &SecretId,
    ) -> Result<Option<Versioned<SecretRecord>>, VaultError> {
        self.kv_read(&record_path(id)).await
    }

    async fn create_record(&self, record: &SecretRecord) -> Result<u64, VaultError> {
        self.kv_write(&record_path(&record.id), record, Some(0))
            .await
    }

    async fn update_record(&self, record: &SecretRecord, version: u64) -> Result<u64, VaultError> {
        self.kv_write(&record_path(&record.id), record, Some(version))
            .await
    }

    async fn delete_record(&self, id: &SecretId) -> Result<(), VaultError> {
        self.kv_destroy(&record_path(id)).await
    }

    async fn index_owner(&self, owner: &SpiffeId, id: &SecretId) -> Result<(), VaultError> {
        let path = format!("{}/{id}", owner_index_path(owner));
        let entry = serde_json::json!({ "owner": owner.as_str() });
        self.kv_write(&path, &entry, None).await.map(|_| ())
    }

    async fn unindex_owner(&self, owner: &SpiffeId, id: &SecretId) -> Result<(), VaultError> {
        self.kv_destroy(&format!("{}/{id}", owner_index_path(owner)))
            .await
    }

    async fn owned(&self, owner: &SpiffeId) -> Result<Vec<SecretId>, VaultError> {
        let keys = self.kv_list(&owner_index_path(owner)).await?;
        Ok(keys.into_iter().filter_map(|k| k.parse().ok()).collect())
    }

    async fn all_records(&self) -> Result<Vec<SecretId>, VaultError> {
        let keys = self.kv_list(&format!("{REGISTRY_PREFIX}/secrets")).await?;
        Ok(keys.into_iter().filter_map(|k| k.parse().ok()).collect())
    }

    async fn check(&self) -> Result<(), VaultError> {
        self.call("look up", "auth/token/lookup-self", |c| async move {
            vaultrs::token::lookup_self(c.as_ref()).await.map(|_| ())
        })
        .await
    }

    async fn logout(&self) {
        // Only tokens we obtained by logging in are ours to revoke.
        if !matches!(self.login, VaultLogin::Jwt(_)) {
            return;
        }
        let Some(session) = self.session.write().await.take() else {
            return;
        };
        let revoke = tokio::time::timeout(
            self.settings.timeout,
            vaultrs::token::revoke_self(session.client.as_ref()),
        )
        .await;
        match revoke {
            Ok(Ok(())) => tracing::info!("revoked the server's Vault token"),
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::error::chain(&e), "could not revoke the server's Vault token");
            }
            Err(_) => tracing::warn!("revoking the server's Vault token timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> SecretId {
        "0b7c3b1e-2f4a-4c1d-9e8f-7a6b5c4d3e2f".parse().unwrap()
    }

    #[test]
    fn names_follow_the_prefix() {
        assert_eq!(
            reader_role_name(&id()).as_str(),
            "hpcs-secret-0b7c3b1e-2f4a-4c1d-9e8f-7a6b5c4d3e2f"
        );
        assert!(read_policy_name(&id()).as_str().ends_with("-read"));
        assert!(write_policy_name(&id()).as_str().ends_with("-write"));
    }

    #[test]
    fn policies_name_exactly_one_path() {
        let r = reader_policy("hpcs", &id());
        assert_eq!(
            r,
            "path \"hpcs/data/0b7c3b1e-2f4a-4c1d-9e8f-7a6b5c4d3e2f\" {\n  capabilities = [\"read\"]\n}\n"
        );
        let w = writer_policy("hpcs", &id());
        assert!(w.contains("[\"create\"]") && !w.contains("update") && !w.contains("read"));
    }

    #[test]
    fn server_policy_has_no_placeholders_left() {
        let s = VaultSettings::with_defaults("http://127.0.0.1:8200".parse().unwrap());
        let p = server_policy(&s, &"hpcs.test".parse().unwrap());
        assert!(!p.contains('@'), "{p}");
        assert!(p.contains("path \"sys/policy/hpcs-secret-*\""));
        assert!(p.contains("spiffe://hpcs.test/hpcs/secret/*"));
        assert!(!p.contains("sudo"));
    }

    #[test]
    fn registry_paths_never_collide_with_keys() {
        // Secret IDs start with [a-z0-9], registry paths with '_'.
        assert!(record_path(&id()).starts_with("_registry/secrets/"));
        let owner: SpiffeId = "spiffe://hpcs.test/client/alice".parse().unwrap();
        let p = owner_index_path(&owner);
        assert!(p.starts_with("_registry/owners/") && !p.contains("spiffe"));
    }

    #[test]
    fn login_debug_redacts_token() {
        let l = VaultLogin::Token(VaultToken::new("s.secret".into()));
        assert!(!format!("{l:?}").contains("secret\""));
        assert!(!format!("{l:?}").contains("s.secret"));
    }
}
