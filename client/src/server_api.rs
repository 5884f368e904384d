//! Client of the HPCS server API (`/api/v1`), authenticated with the caller's JWT-SVID.
//!
//! One `reqwest::Client` per [`ServerApi`], built once with the configured per-request timeout.
//! Error answers are decoded into the server's stable [`ErrorKind`] so callers can tell a
//! refusal from a transient outage ([`ServerApiError::is_transient`]).

use std::time::Duration;

use hpcs_core::api::{
    CreateSecretRequest, CreateSecretResponse, ErrorBody, ErrorKind, SECRETS_PATH, SecretInfo,
    secret_path,
};
use hpcs_core::ids::SecretId;
use hpcs_core::secret::SecretString;
use url::Url;

/// Largest answer body we read from the server.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Errors of calling the HPCS server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerApiError {
    /// The HTTP client could not be built.
    #[error("failed to set up the HTTP client for the HPCS server")]
    Build {
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The URL could not be formed.
    #[error("invalid HPCS server URL {url}")]
    Url {
        /// Base URL.
        url: String,
        /// Cause.
        #[source]
        source: url::ParseError,
    },
    /// The request did not get an answer.
    #[error("failed to {op} at {url}")]
    Send {
        /// Operation.
        op: &'static str,
        /// URL.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error.
    #[error("the HPCS server refused to {op} ({status} {kind}): {detail}")]
    Refused {
        /// Operation.
        op: &'static str,
        /// HTTP status.
        status: u16,
        /// Stable error kind.
        kind: ErrorKind,
        /// Server's explanation.
        detail: String,
    },
    /// The answer could not be decoded.
    #[error("the HPCS server's answer to {op} is malformed")]
    Decode {
        /// Operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

impl ServerApiError {
    /// Whether retrying later may succeed (network errors, timeouts, 503/504).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Send { source, .. } => source.is_timeout() || source.is_connect(),
            Self::Refused { kind, .. } => matches!(
                kind,
                ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Conflict
            ),
            _ => false,
        }
    }
}

/// The HPCS server API.
#[derive(Debug, Clone)]
pub struct ServerApi {
    http: reqwest::Client,
    base: Url,
}

impl ServerApi {
    /// A client for the server at `base` with a per-request `timeout`.
    ///
    /// # Errors
    ///
    /// [`ServerApiError::Build`].
    pub fn new(base: Url, timeout: Duration) -> Result<Self, ServerApiError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|source| ServerApiError::Build { source })?;
        Ok(Self { http, base })
    }

    fn url(&self, path: &str) -> Result<Url, ServerApiError> {
        self.base.join(path).map_err(|source| ServerApiError::Url {
            url: self.base.to_string(),
            source,
        })
    }

    async fn send(
        &self,
        op: &'static str,
        req: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<(u16, Vec<u8>), ServerApiError> {
        let send_err = |source| ServerApiError::Send {
            op,
            url: url.to_string(),
            source,
        };
        let mut res = req.send().await.map_err(send_err)?;
        let status = res.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(send_err)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        if !(200..300).contains(&status) {
            let (kind, detail) = match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) => (e.kind, e.detail),
                Err(_) => (
                    ErrorKind::Unknown,
                    String::from_utf8_lossy(&body).chars().take(200).collect(),
                ),
            };
            return Err(ServerApiError::Refused {
                op,
                status,
                kind,
                detail,
            });
        }
        Ok((status, body))
    }

    /// `POST /api/v1/secrets`: registers a secret; the answer carries the single-use write
    /// credential for the key.
    ///
    /// # Errors
    ///
    /// [`ServerApiError`] naming the failure.
    #[tracing::instrument(skip_all, fields(name = %req.name))]
    pub async fn create_secret(
        &self,
        token: &SecretString,
        req: &CreateSecretRequest,
    ) -> Result<CreateSecretResponse, ServerApiError> {
        const OP: &str = "register the secret";
        let url = self.url(SECRETS_PATH)?;
        let builder = self
            .http
            .post(url.clone())
            .bearer_auth(token.expose_secret())
            .json(req);
        let (_, body) = self.send(OP, builder, &url).await?;
        serde_json::from_slice(&body).map_err(|source| ServerApiError::Decode { op: OP, source })
    }

    /// `GET /api/v1/secrets/{id}`.
    ///
    /// # Errors
    ///
    /// [`ServerApiError`] naming the failure.
    pub async fn get_secret(
        &self,
        token: &SecretString,
        id: &SecretId,
    ) -> Result<SecretInfo, ServerApiError> {
        const OP: &str = "read the secret";
        let url = self.url(&secret_path(id))?;
        let builder = self
            .http
            .get(url.clone())
            .bearer_auth(token.expose_secret());
        let (_, body) = self.send(OP, builder, &url).await?;
        serde_json::from_slice(&body).map_err(|source| ServerApiError::Decode { op: OP, source })
    }

    /// `DELETE /api/v1/secrets/{id}`: revokes a secret (SPIRE entries, Vault role, policies,
    /// key record).
    ///
    /// # Errors
    ///
    /// [`ServerApiError`] naming the failure.
    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn delete_secret(
        &self,
        token: &SecretString,
        id: &SecretId,
    ) -> Result<(), ServerApiError> {
        const OP: &str = "revoke the secret";
        let url = self.url(&secret_path(id))?;
        let builder = self
            .http
            .delete(url.clone())
            .bearer_auth(token.expose_secret());
        self.send(OP, builder, &url).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_paths_under_a_base_with_a_path() {
        let api = ServerApi::new(
            "https://hpcs.example.org/".parse().unwrap(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            api.url(SECRETS_PATH).unwrap().as_str(),
            "https://hpcs.example.org/api/v1/secrets"
        );
    }

    #[tokio::test]
    async fn unreachable_server_is_transient() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api = ServerApi::new(
            format!("http://127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(2),
        )
        .unwrap();
        let err = api
            .delete_secret(&SecretString::new("t".into()), &"abc".parse().unwrap())
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
    }
}
