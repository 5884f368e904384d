//! Clients of a running devspire: key rotation over the admin socket, and Workload API fetches
//! through the unmodified `spiffe` crate client (what `devspire api ...` prints).

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::proto::admin::v1::RotateJwtKeyResponse;
use crate::proto::admin::v1::admin_client::AdminClient;

/// Timeout of admin calls.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of a whole Workload API fetch (connect and call).
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The admin socket cannot be reached.
    #[error("failed to connect to {path}")]
    Connect {
        /// The socket.
        path: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The admin call failed.
    #[error("the {call} call failed: {status}")]
    Call {
        /// The RPC.
        call: &'static str,
        /// The gRPC status (code and message).
        status: Box<tonic::Status>,
    },
    /// A Workload API call did not finish in time.
    #[error("Workload API call to {path} timed out after {WORKLOAD_TIMEOUT:?}")]
    Timeout {
        /// The socket.
        path: String,
    },
    /// A Workload API call failed.
    #[error("Workload API call to {path} failed")]
    Workload {
        /// The socket.
        path: String,
        /// The spiffe crate error.
        #[source]
        source: spiffe::WorkloadApiError,
    },
}

/// Rotates the JWT signing key of the devspire serving `admin_socket`.
///
/// # Errors
///
/// A [`ClientError`] when the socket cannot be reached or the call fails.
pub async fn rotate(admin_socket: &Path) -> Result<RotateJwtKeyResponse, ClientError> {
    let channel = hpcs_spire_api::channel::connect_unix(admin_socket, ADMIN_TIMEOUT)
        .await
        .map_err(|source| ClientError::Connect {
            path: admin_socket.display().to_string(),
            source,
        })?;
    AdminClient::new(channel)
        .rotate_jwt_key(crate::proto::admin::v1::RotateJwtKeyRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| ClientError::Call {
            call: "RotateJwtKey",
            status: Box::new(status),
        })
}

/// Creates a registration entry through the SPIRE Server API; an identical existing entry
/// counts as success. Returns the entry ID.
///
/// # Errors
///
/// A [`ClientError`] when the socket cannot be reached or the server refuses the entry.
pub async fn create_entry(
    admin_socket: &Path,
    spiffe_id: &str,
    parent_id: &str,
    selectors: &[String],
) -> Result<String, ClientError> {
    use hpcs_spire_api::server::entry::v1::BatchCreateEntryRequest;
    use hpcs_spire_api::server::entry::v1::entry_client::EntryClient;
    use hpcs_spire_api::types::{Entry, Selector, Spiffeid};

    let invalid = |message: String| ClientError::Call {
        call: "BatchCreateEntry",
        status: Box::new(tonic::Status::invalid_argument(message)),
    };
    let id = |s: &str| Spiffeid::from_uri(s).map_err(|e| invalid(format!("{s}: {e}")));
    let selectors = selectors
        .iter()
        .map(|s| {
            s.split_once(':')
                .map(|(t, v)| Selector {
                    r#type: t.to_owned(),
                    value: v.to_owned(),
                })
                .ok_or_else(|| invalid(format!("selector {s:?}: expected TYPE:VALUE")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let entry = Entry {
        spiffe_id: Some(id(spiffe_id)?),
        parent_id: Some(id(parent_id)?),
        selectors,
        ..Entry::default()
    };
    let channel = hpcs_spire_api::channel::connect_unix(admin_socket, ADMIN_TIMEOUT)
        .await
        .map_err(|source| ClientError::Connect {
            path: admin_socket.display().to_string(),
            source,
        })?;
    let call = |status| ClientError::Call {
        call: "BatchCreateEntry",
        status: Box::new(status),
    };
    let response = EntryClient::new(channel)
        .batch_create_entry(BatchCreateEntryRequest {
            entries: vec![entry],
            output_mask: None,
        })
        .await
        .map_err(call)?
        .into_inner();
    let result = response
        .results
        .into_iter()
        .next()
        .ok_or_else(|| call(tonic::Status::internal("empty BatchCreateEntry response")))?;
    let status = result.status.unwrap_or_default();
    // 0 OK, 6 ALREADY_EXISTS (the existing entry is returned), as in SPIRE.
    if status.code != 0 && status.code != 6 {
        return Err(call(tonic::Status::new(
            tonic::Code::from_i32(status.code),
            status.message,
        )));
    }
    Ok(result.entry.map(|e| e.id).unwrap_or_default())
}

/// A fetched JWT-SVID.
#[derive(Debug, Serialize)]
pub struct FetchedJwt {
    /// SPIFFE ID.
    pub spiffe_id: String,
    /// The token.
    pub token: String,
    /// Audience.
    pub audience: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub expiry: i64,
}

/// A fetched X.509-SVID (public facts only).
#[derive(Debug, Serialize)]
pub struct FetchedX509 {
    /// SPIFFE ID.
    pub spiffe_id: String,
    /// Number of certificates in the chain.
    pub chain_len: usize,
}

async fn connect(socket: &Path) -> Result<spiffe::WorkloadApiClient, ClientError> {
    spiffe::WorkloadApiClient::connect_to(format!("unix:{}", socket.display()))
        .await
        .map_err(|source| ClientError::Workload {
            path: socket.display().to_string(),
            source,
        })
}

/// Fetches every JWT-SVID the caller is entitled to on `socket`.
///
/// # Errors
///
/// A [`ClientError`] when the call fails (e.g. `PermissionDenied: no identity issued`).
pub async fn fetch_jwt(
    socket: &Path,
    audiences: &[String],
    spiffe_id: Option<&str>,
) -> Result<Vec<FetchedJwt>, ClientError> {
    with_timeout(socket, fetch_jwt_inner(socket, audiences, spiffe_id)).await
}

async fn with_timeout<T>(
    socket: &Path,
    call: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(WORKLOAD_TIMEOUT, call)
        .await
        .map_err(|_| ClientError::Timeout {
            path: socket.display().to_string(),
        })?
}

async fn fetch_jwt_inner(
    socket: &Path,
    audiences: &[String],
    spiffe_id: Option<&str>,
) -> Result<Vec<FetchedJwt>, ClientError> {
    let wrap = |source| ClientError::Workload {
        path: socket.display().to_string(),
        source,
    };
    let client = connect(socket).await?;
    let id = spiffe_id
        .map(|id| id.parse::<spiffe::SpiffeId>())
        .transpose()
        .map_err(|e| wrap(spiffe::WorkloadApiError::from(e)))?;
    let svids = client
        .fetch_all_jwt_svids(audiences, id.as_ref())
        .await
        .map_err(wrap)?;
    Ok(svids
        .into_iter()
        .map(|s| FetchedJwt {
            spiffe_id: s.spiffe_id().to_string(),
            token: s.token().to_owned(),
            audience: s.audience().to_vec(),
            expiry: s.expiry().unix_timestamp(),
        })
        .collect())
}

/// Fetches every X.509-SVID the caller is entitled to on `socket`.
///
/// # Errors
///
/// A [`ClientError`] when the call fails.
pub async fn fetch_x509(socket: &Path) -> Result<Vec<FetchedX509>, ClientError> {
    with_timeout(socket, fetch_x509_inner(socket)).await
}

async fn fetch_x509_inner(socket: &Path) -> Result<Vec<FetchedX509>, ClientError> {
    let client = connect(socket).await?;
    let svids = client
        .fetch_all_x509_svids()
        .await
        .map_err(|source| ClientError::Workload {
            path: socket.display().to_string(),
            source,
        })?;
    Ok(svids
        .into_iter()
        .map(|s| FetchedX509 {
            spiffe_id: s.spiffe_id().to_string(),
            chain_len: s.cert_chain().len(),
        })
        .collect())
}
