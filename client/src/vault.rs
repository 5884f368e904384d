//! Writing an artefact's key record to Vault with the single-use credential from the server.
//!
//! The server's answer to a registration carries a token that may `create` exactly one KV v2
//! path, once. So this module makes exactly one request with it: the write. No lookup, no
//! preflight, no retry with the same token (a refused request spends it too).
//!
//! The record (field names shared with the node runtime, which reads it):
//! `age_identity` (the age X25519 secret key), `sha256` and `size` of the ciphertext, `kind`
//! (`image`/`data`) and `owner` (the client SPIFFE ID).

use std::time::Duration;

use hpcs_core::api::{ArtefactKind, WriteCredential};
use hpcs_core::crypto::CipherSummary;
use hpcs_core::ids::SpiffeId;
use hpcs_core::secret::AgeIdentity;
use url::Url;
use zeroize::Zeroizing;

/// Errors of writing the key record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The CA certificate could not be read or parsed.
    #[error("failed to load the Vault CA certificate {path}")]
    CaCert {
        /// File.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The HTTP client could not be built.
    #[error("failed to set up the HTTP client for Vault")]
    Build {
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The KV path from the server is not usable.
    #[error("the server returned an unusable Vault path {mount}/{path}")]
    BadPath {
        /// Mount.
        mount: String,
        /// Path.
        path: String,
    },
    /// The request did not get an answer.
    #[error("failed to write the key record to {url}")]
    Send {
        /// URL.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// Vault refused the write.
    #[error(
        "Vault refused to write the key record {mount}/data/{path} (status {status}): {detail}"
    )]
    Refused {
        /// Mount.
        mount: String,
        /// Path.
        path: String,
        /// HTTP status.
        status: u16,
        /// Vault's error messages.
        detail: String,
    },
    /// The record could not be serialized.
    #[error("failed to serialize the key record")]
    Serialize {
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// What the key record holds besides the identity.
#[derive(Debug, Clone)]
pub struct KeyRecordMeta {
    /// Ciphertext digest and size.
    pub ciphertext: CipherSummary,
    /// Image or data.
    pub kind: ArtefactKind,
    /// The owner's SPIFFE ID.
    pub owner: SpiffeId,
}

/// Writes key records to one Vault.
#[derive(Debug, Clone)]
pub struct KeyWriter {
    http: reqwest::Client,
    base: Url,
}

impl KeyWriter {
    /// A writer for Vault at `base`, trusting `ca_cert` (PEM) in addition to the system roots.
    ///
    /// # Errors
    ///
    /// [`VaultError::CaCert`], [`VaultError::Build`].
    pub fn new(
        base: Url,
        ca_cert: Option<&std::path::Path>,
        timeout: Duration,
    ) -> Result<Self, VaultError> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout);
        if let Some(path) = ca_cert {
            let ca_err = |source: Box<dyn std::error::Error + Send + Sync>| VaultError::CaCert {
                path: path.to_owned(),
                source,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(Box::new(e)))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| ca_err(Box::new(e)))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|source| VaultError::Build { source })?;
        Ok(Self { http, base })
    }

    /// Writes the key record with the single-use `credential`: one request, never retried.
    ///
    /// # Errors
    ///
    /// [`VaultError::BadPath`], [`VaultError::Send`], [`VaultError::Refused`].
    #[tracing::instrument(skip_all, fields(mount = %credential.kv_mount, path = %credential.kv_path))]
    pub async fn write(
        &self,
        credential: &WriteCredential,
        identity: &AgeIdentity,
        meta: &KeyRecordMeta,
    ) -> Result<(), VaultError> {
        let bad_path = || VaultError::BadPath {
            mount: credential.kv_mount.clone(),
            path: credential.kv_path.clone(),
        };
        let safe = |s: &str| {
            !s.is_empty()
                && s.split('/').all(|seg| {
                    !seg.is_empty()
                        && !seg.starts_with('.')
                        && seg
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                })
        };
        if !safe(&credential.kv_mount) || !safe(&credential.kv_path) {
            return Err(bad_path());
        }
        let url = self
            .base
            .join(&format!(
                "v1/{}/data/{}",
                credential.kv_mount, credential.kv_path
            ))
            .map_err(|_| bad_path())?;
        let secret = identity.to_secret_string();
        // reqwest copies the body into its own buffer, which is not wiped; ours is.
        let body = Zeroizing::new(
            serde_json::to_vec(&serde_json::json!({
                "data": {
                    "age_identity": secret.expose_secret(),
                    "sha256": meta.ciphertext.sha256.to_string(),
                    "size": meta.ciphertext.size,
                    "kind": meta.kind.as_str(),
                    "owner": meta.owner.as_str(),
                }
            }))
            .map_err(|source| VaultError::Serialize { source })?,
        );
        let res = self
            .http
            .post(url.clone())
            .header("X-Vault-Token", credential.token.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|source| VaultError::Send {
                url: url.to_string(),
                source,
            })?;
        let status = res.status().as_u16();
        if !(200..300).contains(&status) {
            let text = res.text().await.unwrap_or_default();
            let detail = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("errors").map(ToString::to_string))
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(VaultError::Refused {
                mount: credential.kv_mount.clone(),
                path: credential.kv_path.clone(),
                status,
                detail,
            });
        }
        tracing::debug!("key record written");
        Ok(())
    }
}
