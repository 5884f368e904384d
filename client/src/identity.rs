//! The client's SPIFFE identity: a JWT-SVID from the laptop's SPIRE agent (Workload API).
//!
//! The socket comes from the client INI (`[spire-agent] socket-path`) or, when that is unset,
//! from `SPIFFE_ENDPOINT_SOCKET`. The token proves the caller's identity to the HPCS server; it
//! is short-lived, so callers fetch a fresh one for each step that needs it (a revocation after a
//! long upload, for example).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hpcs_core::ids::SpiffeId;
use hpcs_core::secret::SecretString;

/// The environment variable naming the Workload API endpoint.
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";
/// Default timeout of one Workload API call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors of fetching the client identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Neither the config nor the environment names a Workload API socket.
    #[error(
        "no SPIRE agent socket configured\nhint: set [spire-agent] socket-path in the client config or {ENDPOINT_ENV}"
    )]
    NoEndpoint,
    /// The Workload API could not be reached.
    #[error("failed to connect to the SPIRE agent at {endpoint}")]
    Connect {
        /// Endpoint.
        endpoint: String,
        /// Cause.
        #[source]
        source: spiffe::workload_api::WorkloadApiError,
    },
    /// The agent refused or failed to issue a JWT-SVID.
    #[error("failed to fetch a JWT-SVID for audience {audience} from {endpoint}")]
    Fetch {
        /// Endpoint.
        endpoint: String,
        /// Audience asked for.
        audience: String,
        /// Cause.
        #[source]
        source: spiffe::workload_api::WorkloadApiError,
    },
    /// The SVID's SPIFFE ID did not parse as ours.
    #[error("the SPIRE agent returned an unusable SPIFFE ID {id}")]
    BadId {
        /// The ID.
        id: String,
        /// Cause.
        #[source]
        source: hpcs_core::ids::IdError,
    },
    /// The agent did not answer in time.
    #[error("the SPIRE agent at {endpoint} did not answer within {timeout:?}")]
    Timeout {
        /// Endpoint.
        endpoint: String,
        /// Timeout.
        timeout: Duration,
    },
}

/// A JWT-SVID and the SPIFFE ID it asserts.
pub struct ClientIdentity {
    /// Our SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The JWT (bearer token). Never logged.
    pub token: SecretString,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("spiffe_id", &self.spiffe_id)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Where to get JWT-SVIDs from, for one audience.
#[derive(Debug, Clone)]
pub struct IdentitySource {
    endpoint: String,
    audience: String,
    timeout: Duration,
}

impl IdentitySource {
    /// The socket from the config if given, else from `SPIFFE_ENDPOINT_SOCKET`.
    ///
    /// # Errors
    ///
    /// [`IdentityError::NoEndpoint`] if neither is set.
    pub fn new(configured: Option<&Path>, audience: &str) -> Result<Self, IdentityError> {
        let endpoint = match configured {
            Some(p) => endpoint_for(p),
            None => std::env::var(ENDPOINT_ENV)
                .ok()
                .filter(|s| !s.is_empty())
                .ok_or(IdentityError::NoEndpoint)?,
        };
        Ok(Self {
            endpoint,
            audience: audience.to_owned(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Changes the per-call timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The Workload API endpoint, e.g. `unix:/run/spire/agent.sock`.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Fetches a fresh JWT-SVID for the audience.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Connect`], [`IdentityError::Fetch`], [`IdentityError::BadId`],
    /// [`IdentityError::Timeout`].
    #[tracing::instrument(skip_all, fields(endpoint = %self.endpoint))]
    pub async fn fetch(&self) -> Result<ClientIdentity, IdentityError> {
        let work = async {
            let client = spiffe::WorkloadApiClient::connect_to(&self.endpoint)
                .await
                .map_err(|source| IdentityError::Connect {
                    endpoint: self.endpoint.clone(),
                    source,
                })?;
            let svid = client
                .fetch_jwt_svid([self.audience.as_str()], None)
                .await
                .map_err(|source| IdentityError::Fetch {
                    endpoint: self.endpoint.clone(),
                    audience: self.audience.clone(),
                    source,
                })?;
            let id = svid.spiffe_id().to_string();
            let spiffe_id = id
                .parse()
                .map_err(|source| IdentityError::BadId { id, source })?;
            tracing::debug!(%spiffe_id, "fetched a JWT-SVID");
            Ok(ClientIdentity {
                spiffe_id,
                token: SecretString::new(svid.token().to_owned()),
            })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| IdentityError::Timeout {
                endpoint: self.endpoint.clone(),
                timeout: self.timeout,
            })?
    }
}

/// `unix:<path>` for a socket path; a value that already names a scheme is kept.
fn endpoint_for(path: &Path) -> String {
    let s = path.to_string_lossy();
    if s.starts_with("unix:") || s.starts_with("tcp:") {
        s.into_owned()
    } else {
        format!("unix:{s}")
    }
}

/// A configured socket path, for messages.
#[must_use]
pub fn socket_path_of(endpoint: &str) -> PathBuf {
    PathBuf::from(
        endpoint
            .strip_prefix("unix://")
            .or_else(|| endpoint.strip_prefix("unix:"))
            .unwrap_or(endpoint),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("/run/spire/api.sock", "unix:/run/spire/api.sock")]
    #[case("unix:///run/a.sock", "unix:///run/a.sock")]
    fn endpoints(#[case] path: &str, #[case] want: &str) {
        assert_eq!(endpoint_for(Path::new(path)), want);
        assert!(
            socket_path_of(want)
                .to_string_lossy()
                .ends_with(path.rsplit('/').next().unwrap())
        );
    }

    #[test]
    fn configured_socket_wins() {
        let s = IdentitySource::new(Some(Path::new("/x.sock")), "hpcs-server").unwrap();
        assert_eq!(s.endpoint(), "unix:/x.sock");
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = IdentitySource::new(Some(&dir.path().join("none.sock")), "a")
            .unwrap()
            .with_timeout(Duration::from_secs(5));
        let err = s.fetch().await.unwrap_err();
        assert!(
            matches!(
                err,
                IdentityError::Connect { .. } | IdentityError::Fetch { .. }
            ),
            "{err:?}"
        );
    }
}
