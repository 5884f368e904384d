//! Attest and fetch: one artefact key from Vault, released to this node's SPIFFE identity.
//!
//! For each artefact the runtime asks the local SPIRE agent (Workload API) for a JWT-SVID with
//! the artefact's reader SPIFFE ID, `spiffe://TD/hpcs/secret/<secret-id>`, and Vault's bound
//! audience. The agent only issues it when a registration entry for this node matches the
//! calling process (by uid, user or group): that is the attestation. The JWT logs into Vault's
//! jwt auth with the artefact's role, whose `bound_subject` is that SPIFFE ID, and the token reads
//! exactly one KV v2 record: the age identity, the ciphertext's sha256 and size.
//!
//! The info file on shared storage only says *which* secret to ask for; it is never trusted for
//! the digest or the size, which come from the record. The key stays in memory, in a zeroizing
//! buffer; the Vault token is revoked after the read.

use std::path::PathBuf;
use std::time::Duration;

use hpcs_core::ids::{RoleName, SecretReaderId};
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};
use zeroize::Zeroizing;

/// Timeout of each call to the agent and to Vault.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of fetching a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The Workload API could not be reached.
    #[error("failed to connect to the SPIRE agent at {socket}")]
    ConnectAgent {
        /// Socket.
        socket: String,
        /// Cause.
        #[source]
        source: spiffe::workload_api::error::WorkloadApiError,
    },
    /// The agent issued no JWT-SVID for the reader ID.
    #[error(
        "the SPIRE agent issued no identity {id} to this process\nhint: this user on this node \
         is not among the readers the secret's owner allowed"
    )]
    NoIdentity {
        /// Reader SPIFFE ID.
        id: String,
        /// Cause.
        #[source]
        source: spiffe::workload_api::error::WorkloadApiError,
    },
    /// A SPIFFE ID could not be converted.
    #[error("invalid SPIFFE ID {id}")]
    BadId {
        /// The ID.
        id: String,
    },
    /// A call timed out.
    #[error("{what} timed out after {secs} s")]
    Timeout {
        /// The call.
        what: &'static str,
        /// Limit.
        secs: u64,
    },
    /// The Vault client could not be set up.
    #[error("failed to set up the Vault client for {url}: {message}")]
    VaultClient {
        /// URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// Vault login failed.
    #[error("Vault jwt login with role {role} failed")]
    Login {
        /// Role.
        role: String,
        /// Cause.
        #[source]
        source: vaultrs::error::ClientError,
    },
    /// Reading the record failed.
    #[error("failed to read the key record {path}")]
    ReadRecord {
        /// KV path.
        path: String,
        /// Cause.
        #[source]
        source: vaultrs::error::ClientError,
    },
    /// The record lacks a field or has a bad one.
    #[error("key record {path} is malformed: {message}")]
    BadRecord {
        /// KV path.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Where the agent and Vault are.
#[derive(Debug, Clone)]
pub struct KeySource {
    /// Workload API socket path.
    pub agent_socket: PathBuf,
    /// Vault URL.
    pub vault_url: String,
    /// PEM CA bundle for Vault's TLS, if not the system's.
    pub vault_ca: Option<PathBuf>,
    /// Mount of the jwt auth method.
    pub auth_mount: String,
    /// Mount of the KV v2 engine.
    pub kv_mount: String,
    /// Audience Vault's jwt roles are bound to.
    pub audience: String,
}

/// One artefact's key and the ciphertext facts Vault recorded for it.
pub struct ArtefactKey {
    /// The age identity (`AGE-SECRET-KEY-1...`), zeroized on drop.
    pub identity: Zeroizing<String>,
    /// Expected ciphertext sha256.
    pub sha256: [u8; 32],
    /// Expected ciphertext size in bytes.
    pub size: u64,
    /// `image` or `data`, when the record says.
    pub kind: Option<String>,
}

impl std::fmt::Debug for ArtefactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtefactKey")
            .field("identity", &"<redacted>")
            .field("sha256", &hex::encode(self.sha256))
            .field("size", &self.size)
            .field("kind", &self.kind)
            .finish()
    }
}

async fn timed<T>(what: &'static str, fut: impl Future<Output = T>) -> Result<T, KeyError> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(|_| KeyError::Timeout {
            what,
            secs: CALL_TIMEOUT.as_secs(),
        })
}

impl KeySource {
    /// Fetch a JWT-SVID for `reader` from the local agent.
    ///
    /// # Errors
    ///
    /// [`KeyError::ConnectAgent`], [`KeyError::NoIdentity`] or a timeout.
    pub async fn jwt_svid(&self, reader: &SecretReaderId) -> Result<Zeroizing<String>, KeyError> {
        let socket = format!("unix:{}", self.agent_socket.display());
        let client = timed(
            "connecting to the SPIRE agent",
            spiffe::WorkloadApiClient::connect_to(&socket),
        )
        .await?
        .map_err(|source| KeyError::ConnectAgent {
            socket: socket.clone(),
            source,
        })?;
        let id: spiffe::SpiffeId = reader.as_str().parse().map_err(|_| KeyError::BadId {
            id: reader.to_string(),
        })?;
        let svid = timed(
            "fetching a JWT-SVID",
            client.fetch_jwt_svid([self.audience.as_str()], Some(&id)),
        )
        .await?
        .map_err(|source| KeyError::NoIdentity {
            id: reader.to_string(),
            source,
        })?;
        if svid.spiffe_id() != &id {
            return Err(KeyError::BadId {
                id: svid.spiffe_id().to_string(),
            });
        }
        Ok(Zeroizing::new(svid.token().to_owned()))
    }

    fn vault(&self) -> Result<VaultClient, KeyError> {
        let err = |message: String| KeyError::VaultClient {
            url: self.vault_url.clone(),
            message,
        };
        let mut b = VaultClientSettingsBuilder::default();
        b.address(&self.vault_url)
            .timeout(Some(CALL_TIMEOUT))
            .token("");
        if let Some(ca) = &self.vault_ca {
            b.ca_certs(vec![ca.display().to_string()]);
        }
        let settings = b.build().map_err(|e| err(e.to_string()))?;
        VaultClient::new(settings).map_err(|e| err(e.to_string()))
    }

    /// Attest, log in with `role`, read the record at `kv_path`, revoke the token.
    ///
    /// # Errors
    ///
    /// [`KeyError`] naming the step that failed.
    pub async fn fetch(
        &self,
        reader: &SecretReaderId,
        role: &RoleName,
        kv_path: &str,
    ) -> Result<ArtefactKey, KeyError> {
        let jwt = self.jwt_svid(reader).await?;
        let mut client = self.vault()?;
        let auth = timed(
            "Vault login",
            vaultrs::auth::oidc::login(&client, &self.auth_mount, &jwt, Some(role.to_string())),
        )
        .await?
        .map_err(|source| KeyError::Login {
            role: role.to_string(),
            source,
        })?;
        let token = Zeroizing::new(auth.client_token);
        client.set_token(&token);
        let record = timed(
            "reading the key record",
            vaultrs::kv2::read::<serde_json::Map<String, serde_json::Value>>(
                &client,
                &self.kv_mount,
                kv_path,
            ),
        )
        .await?
        .map_err(|source| KeyError::ReadRecord {
            path: kv_path.to_owned(),
            source,
        });
        // The token is single-purpose; revoking may fail once its uses are spent, which is fine.
        let _ = timed(
            "revoking the Vault token",
            vaultrs::token::revoke_self(&client),
        )
        .await;
        parse_record(kv_path, record?)
    }
}

/// Field names of the key record, shared with the prep tools that write it.
pub mod fields {
    /// The age identity.
    pub const IDENTITY: [&str; 2] = ["age_identity", "key"];
    /// Ciphertext sha256, hex.
    pub const SHA256: [&str; 2] = ["sha256", "checksum"];
    /// Ciphertext size in bytes.
    pub const SIZE: [&str; 1] = ["size"];
    /// Artefact kind.
    pub const KIND: [&str; 1] = ["kind"];
}

fn parse_record(
    path: &str,
    mut record: serde_json::Map<String, serde_json::Value>,
) -> Result<ArtefactKey, KeyError> {
    let bad = |message: String| KeyError::BadRecord {
        path: path.to_owned(),
        message,
    };
    let mut take = |names: &[&str]| names.iter().find_map(|n| record.remove(*n));
    let identity = match take(&fields::IDENTITY) {
        Some(serde_json::Value::String(s)) => Zeroizing::new(s),
        _ => return Err(bad("no age identity".into())),
    };
    if !identity.starts_with("AGE-SECRET-KEY-1") {
        return Err(bad("the identity is not an age X25519 identity".into()));
    }
    let Some(serde_json::Value::String(sha)) = take(&fields::SHA256) else {
        return Err(bad("no ciphertext sha256".into()));
    };
    let sha = sha.strip_prefix("sha256:").unwrap_or(&sha);
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(sha, &mut sha256)
        .map_err(|_| bad("sha256 is not 64 hex digits".into()))?;
    let size = match take(&fields::SIZE) {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| bad("no ciphertext size".into()))?;
    let kind = match take(&fields::KIND) {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    };
    Ok(ArtefactKey {
        identity,
        sha256,
        size,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn rec(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        match v {
            serde_json::Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn record_fields() {
        let k = parse_record(
            "p",
            rec(serde_json::json!({"age_identity": "AGE-SECRET-KEY-1XYZ", "sha256": "ab".repeat(32), "size": 12, "kind": "image"})),
        )
        .expect("record");
        assert_eq!(k.size, 12);
        assert_eq!(k.sha256, [0xab; 32]);
        assert!(!format!("{k:?}").contains("AGE-SECRET"));
    }

    #[rstest]
    #[case(serde_json::json!({"sha256": "ab", "size": 1}), "no age identity")]
    #[case(serde_json::json!({"age_identity": "x", "sha256": "ab", "size": 1}), "not an age X25519")]
    #[case(serde_json::json!({"age_identity": "AGE-SECRET-KEY-1A", "size": 1}), "no ciphertext sha256")]
    #[case(serde_json::json!({"age_identity": "AGE-SECRET-KEY-1A", "sha256": "zz", "size": 1}), "64 hex")]
    #[case(serde_json::json!({"age_identity": "AGE-SECRET-KEY-1A", "sha256": "ab".repeat(32)}), "no ciphertext size")]
    fn bad_records(#[case] v: serde_json::Value, #[case] want: &str) {
        let err = parse_record("p", rec(v)).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}
