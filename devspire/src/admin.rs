//! devspire's own admin service (`devspire.admin.v1.Admin`, not part of SPIRE): on-demand JWT
//! signing key rotation. Served on the admin socket next to the SPIRE Server API.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::entry_api::chain;
use crate::proto::admin::v1::admin_server::Admin;
use crate::proto::admin::v1::{JwtKey, RotateJwtKeyRequest, RotateJwtKeyResponse};
use crate::state::Shared;

/// The admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    shared: Arc<Shared>,
}

impl AdminService {
    /// A service over `shared`.
    #[must_use]
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// Rotates the JWT key and describes the result (shared by the RPC and SIGHUP).
///
/// # Errors
///
/// A [`crate::state::StateError`] when the new key cannot be persisted.
pub async fn rotate(shared: &Shared) -> Result<RotateJwtKeyResponse, crate::state::StateError> {
    let active_kid = shared.rotate_jwt_key().await?;
    let keys = shared
        .jwt_keys()
        .into_iter()
        .map(|k| JwtKey {
            kid: k.kid,
            created_at: k.created_at,
            retire_after: k.retire_after,
            active: k.active,
        })
        .collect();
    tracing::info!(kid = %active_kid, "JWT signing key rotated");
    Ok(RotateJwtKeyResponse { active_kid, keys })
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn rotate_jwt_key(
        &self,
        _request: Request<RotateJwtKeyRequest>,
    ) -> Result<Response<RotateJwtKeyResponse>, Status> {
        rotate(&self.shared)
            .await
            .map(Response::new)
            .map_err(|e| Status::internal(format!("failed to rotate the JWT key: {}", chain(&e))))
    }
}
