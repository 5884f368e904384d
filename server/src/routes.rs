//! HTTP handlers of `/api/v1` and the probes.
//!
//! Handlers authenticate first (so an anonymous caller learns nothing from body validation),
//! then parse the body, then run the operation in a task of its own: if the client disconnects
//! or the request deadline fires, the operation still runs to completion or rollback, so a
//! dropped request never leaves half a registration behind.

use std::time::Instant;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hpcs_core::api::{
    CreateSecretRequest, CreateSecretResponse, ListSecretsResponse, SecretInfo,
    UpdateSecretRequest, WriteCredential,
};
use hpcs_core::ids::SecretId;
use serde::Serialize;

use crate::audit::{AuditEvent, Outcome};
use crate::auth::Caller;
use crate::error::{ApiError, chain};
use crate::secrets::{Aftermath, SecretsError};
use crate::server::{AppState, PeerAddr};

/// A JSON body whose rejections are [`ApiError`]s with a clear message.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// The authenticated caller. Refusals are logged with their reason, counted and audited; the
/// caller only sees 401/403 (or 503 when the server has no trust bundle).
#[derive(Debug, Clone)]
pub struct Authenticated(pub Caller);

fn peer(parts: &Parts) -> Option<String> {
    parts
        .extensions
        .get::<ConnectInfo<PeerAddr>>()
        .map(|c| c.0.0.to_string())
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        match st.auth().authenticate(&parts.headers) {
            Ok(caller) => Ok(Self(caller)),
            Err(e) => {
                let reason = e.reason();
                tracing::warn!(
                    reason,
                    error = %chain(&e),
                    peer = peer(parts).as_deref().unwrap_or("-"),
                    path = parts.uri.path(),
                    "refused credential"
                );
                st.metrics()
                    .inc("hpcs_auth_failures_total", &[("reason", reason)]);
                st.audit(AuditEvent {
                    actor: None,
                    action: "authenticate",
                    secret_id: None,
                    outcome: Outcome::Denied,
                    reason: Some(reason.to_owned()),
                    peer: peer(parts),
                })
                .await;
                Err(if !e.is_callers() {
                    ApiError::unavailable(
                        "the server cannot validate credentials right now; retry later",
                    )
                } else if e.is_forbidden() {
                    ApiError::forbidden()
                } else {
                    ApiError::unauthorized()
                })
            }
        }
    }
}

/// The remote address, if known (informational).
#[derive(Debug, Clone)]
pub struct Peer(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(peer(parts)))
    }
}

fn parse_id(raw: &str) -> Result<SecretId, ApiError> {
    raw.parse()
        .map_err(|e| ApiError::bad_request(format!("secret id: {e}")))
}

/// Maps a service error to an answer (and logs what the caller will not see).
fn api_error(e: &SecretsError) -> (ApiError, Outcome, String) {
    match e {
        SecretsError::Invalid(msg) => (
            ApiError::bad_request(msg.clone()),
            Outcome::Denied,
            "invalid".to_owned(),
        ),
        SecretsError::NotFound(_) => (
            ApiError::no_such_secret(),
            Outcome::Denied,
            "not_found_or_not_owner".to_owned(),
        ),
        SecretsError::Conflict(_) => (ApiError::conflict(), Outcome::Failed, "conflict".to_owned()),
        SecretsError::Backend {
            step,
            source,
            aftermath,
            ..
        } => {
            let detail = match aftermath {
                Aftermath::NothingChanged => {
                    "SPIRE or Vault is unavailable; nothing was changed, retry later"
                }
                Aftermath::ChangeRecorded => {
                    "the change is recorded, but removing the access it revokes did not finish because SPIRE or Vault is unavailable; repeat the request"
                }
                Aftermath::RevocationIncomplete => {
                    "the revocation did not finish because SPIRE or Vault is unavailable; repeat the DELETE (access may already be partly removed)"
                }
            };
            let err = if source.is_transient() {
                ApiError::unavailable(detail)
            } else {
                tracing::error!(error = %chain(e), "backend refused an operation (configuration or permission problem?)");
                ApiError::new(hpcs_core::api::ErrorKind::Internal, detail)
            };
            (err, Outcome::Failed, (*step).to_owned())
        }
    }
}

async fn finish<T>(
    st: &AppState,
    caller: &Caller,
    peer: Option<String>,
    action: &'static str,
    counter: Option<&'static str>,
    secret_id: Option<String>,
    result: Result<T, SecretsError>,
) -> Result<T, ApiError> {
    let (outcome, reason, out) = match result {
        Ok(v) => (Outcome::Ok, None, Ok(v)),
        Err(e) => {
            let (api, outcome, reason) = api_error(&e);
            if outcome != Outcome::Denied {
                tracing::warn!(action, error = %chain(&e), "operation failed");
            }
            (outcome, Some(reason), Err(api))
        }
    };
    if let Some(counter) = counter {
        let label = match outcome {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        };
        st.metrics().inc(counter, &[("result", label)]);
    }
    st.audit(AuditEvent {
        actor: Some(caller.spiffe_id().to_string()),
        action,
        secret_id,
        outcome,
        reason,
        peer,
    })
    .await;
    out
}

/// Runs `fut` to completion in its own task, whatever happens to the request.
async fn detached<T: Send + 'static>(
    st: &AppState,
    fut: impl Future<Output = Result<T, SecretsError>> + Send + 'static,
) -> Result<Result<T, SecretsError>, ApiError> {
    st.tasks().spawn(fut).await.map_err(|e| {
        tracing::error!(error = %e, "operation task failed");
        ApiError::internal()
    })
}

/// Register a secret.
///
/// # Errors
///
/// An [`ApiError`] with the statuses listed in the OpenAPI responses.
#[utoipa::path(
    post,
    path = "/api/v1/secrets",
    tag = "secrets",
    request_body = CreateSecretRequest,
    responses(
        (status = 201, description = "Registered; write the key with the credential", body = CreateSecretResponse),
        (status = 400, description = "Invalid request", body = hpcs_core::api::ErrorBody),
        (status = 401, description = "No valid credential", body = hpcs_core::api::ErrorBody),
        (status = 403, description = "Not a client", body = hpcs_core::api::ErrorBody),
        (status = 413, description = "Body too large", body = hpcs_core::api::ErrorBody),
        (status = 503, description = "SPIRE or Vault unavailable; nothing registered", body = hpcs_core::api::ErrorBody),
    ),
    security(("jwt_svid" = []))
)]
pub async fn create_secret(
    State(st): State<AppState>,
    Authenticated(caller): Authenticated,
    Peer(peer): Peer,
    ApiJson(req): ApiJson<CreateSecretRequest>,
) -> Result<Response, ApiError> {
    let svc = st.clone();
    let owner = caller.spiffe_id().clone();
    let result = detached(&st, async move { svc.service().create(&owner, req).await }).await?;
    let id = result.as_ref().ok().map(|(r, _)| r.id.to_string());
    let (record, token) = finish(
        &st,
        &caller,
        peer,
        "secret.create",
        Some("hpcs_registrations_total"),
        id,
        result,
    )
    .await?;
    let secret = record.to_info(st.coordinates());
    let body = CreateSecretResponse {
        write_credential: WriteCredential {
            token: token.token,
            kv_mount: secret.vault.kv_mount.clone(),
            kv_path: secret.vault.kv_path.clone(),
            num_uses: token.num_uses,
            expires_at: token.expires_at,
        },
        secret,
    };
    let location = HeaderValue::from_str(&hpcs_core::api::secret_path(&record.id))
        .map_err(|_| ApiError::internal())?;
    let mut res = (StatusCode::CREATED, no_store(Json(body))).into_response();
    res.headers_mut().insert(header::LOCATION, location);
    Ok(res)
}

/// The answer carries a credential: no cache may keep it.
fn no_store<T: Serialize>(body: Json<T>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        body,
    )
}

/// The caller's secrets.
///
/// # Errors
///
/// An [`ApiError`] with the statuses listed in the OpenAPI responses.
#[utoipa::path(
    get,
    path = "/api/v1/secrets",
    tag = "secrets",
    responses(
        (status = 200, description = "The caller's own secrets", body = ListSecretsResponse),
        (status = 401, description = "No valid credential", body = hpcs_core::api::ErrorBody),
        (status = 503, description = "Vault unavailable", body = hpcs_core::api::ErrorBody),
    ),
    security(("jwt_svid" = []))
)]
pub async fn list_secrets(
    State(st): State<AppState>,
    Authenticated(caller): Authenticated,
    Peer(peer): Peer,
) -> Result<Json<ListSecretsResponse>, ApiError> {
    let svc = st.clone();
    let owner = caller.spiffe_id().clone();
    let result = detached(&st, async move { svc.service().list(&owner).await }).await?;
    let records = finish(&st, &caller, peer, "secret.list", None, None, result).await?;
    Ok(Json(ListSecretsResponse {
        secrets: records
            .iter()
            .map(|r| r.to_info(st.coordinates()))
            .collect(),
    }))
}

/// One of the caller's secrets.
///
/// # Errors
///
/// An [`ApiError`] with the statuses listed in the OpenAPI responses.
#[utoipa::path(
    get,
    path = "/api/v1/secrets/{id}",
    tag = "secrets",
    params(("id" = String, Path, description = "Secret ID")),
    responses(
        (status = 200, description = "The secret", body = SecretInfo),
        (status = 401, description = "No valid credential", body = hpcs_core::api::ErrorBody),
        (status = 404, description = "No such secret, or not the caller's", body = hpcs_core::api::ErrorBody),
    ),
    security(("jwt_svid" = []))
)]
pub async fn get_secret(
    State(st): State<AppState>,
    Authenticated(caller): Authenticated,
    Peer(peer): Peer,
    Path(raw): Path<String>,
) -> Result<Json<SecretInfo>, ApiError> {
    let id = parse_id(&raw)?;
    let svc = st.clone();
    let owner = caller.spiffe_id().clone();
    let id2 = id.clone();
    let result = detached(&st, async move { svc.service().get(&owner, &id2).await }).await?;
    let record = finish(
        &st,
        &caller,
        peer,
        "secret.read",
        None,
        Some(id.to_string()),
        result,
    )
    .await?;
    Ok(Json(record.to_info(st.coordinates())))
}

/// Add or remove readers and nodes.
///
/// # Errors
///
/// An [`ApiError`] with the statuses listed in the OpenAPI responses.
#[utoipa::path(
    patch,
    path = "/api/v1/secrets/{id}",
    tag = "secrets",
    params(("id" = String, Path, description = "Secret ID")),
    request_body = UpdateSecretRequest,
    responses(
        (status = 200, description = "The updated secret", body = SecretInfo),
        (status = 400, description = "Invalid request", body = hpcs_core::api::ErrorBody),
        (status = 401, description = "No valid credential", body = hpcs_core::api::ErrorBody),
        (status = 404, description = "No such secret, or not the caller's", body = hpcs_core::api::ErrorBody),
        (status = 409, description = "Concurrent change or revocation in progress", body = hpcs_core::api::ErrorBody),
        (status = 503, description = "SPIRE or Vault unavailable", body = hpcs_core::api::ErrorBody),
    ),
    security(("jwt_svid" = []))
)]
pub async fn update_secret(
    State(st): State<AppState>,
    Authenticated(caller): Authenticated,
    Peer(peer): Peer,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<UpdateSecretRequest>,
) -> Result<Json<SecretInfo>, ApiError> {
    let id = parse_id(&raw)?;
    let svc = st.clone();
    let owner = caller.spiffe_id().clone();
    let id2 = id.clone();
    let result = detached(
        &st,
        async move { svc.service().update(&owner, &id2, req).await },
    )
    .await?;
    let record = finish(
        &st,
        &caller,
        peer,
        "secret.update",
        Some("hpcs_updates_total"),
        Some(id.to_string()),
        result,
    )
    .await?;
    Ok(Json(record.to_info(st.coordinates())))
}

/// Revoke a secret.
///
/// # Errors
///
/// An [`ApiError`] with the statuses listed in the OpenAPI responses.
#[utoipa::path(
    delete,
    path = "/api/v1/secrets/{id}",
    tag = "secrets",
    params(("id" = String, Path, description = "Secret ID")),
    responses(
        (status = 204, description = "Revoked: SPIRE entries, Vault role, policies and key are gone"),
        (status = 401, description = "No valid credential", body = hpcs_core::api::ErrorBody),
        (status = 404, description = "No such secret, or not the caller's", body = hpcs_core::api::ErrorBody),
        (status = 503, description = "Revocation incomplete; repeat", body = hpcs_core::api::ErrorBody),
    ),
    security(("jwt_svid" = []))
)]
pub async fn delete_secret(
    State(st): State<AppState>,
    Authenticated(caller): Authenticated,
    Peer(peer): Peer,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&raw)?;
    let svc = st.clone();
    let owner = caller.spiffe_id().clone();
    let id2 = id.clone();
    let result = detached(&st, async move { svc.service().revoke(&owner, &id2).await }).await?;
    finish(
        &st,
        &caller,
        peer,
        "secret.delete",
        Some("hpcs_revocations_total"),
        Some(id.to_string()),
        result,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The OpenAPI document (authenticated like every `/api/v1` call).
pub async fn openapi_json(Authenticated(_): Authenticated) -> Response {
    Json(crate::openapi::document()).into_response()
}

/// Liveness: the process serves HTTP.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: SPIRE admin socket, Vault (and the server's token), the trust bundle, the audit log.
pub async fn readyz(State(st): State<AppState>) -> Response {
    let started = Instant::now();
    let (spire, vault) = tokio::join!(st.service().spire().check(), st.service().vault().check());
    let spire_ok = spire
        .inspect_err(|e| tracing::warn!(error = %chain(e), "readiness: SPIRE server"))
        .is_ok();
    let vault_ok = vault
        .inspect_err(|e| tracing::warn!(error = %chain(e), "readiness: Vault"))
        .is_ok();
    let bundle_ok = st.auth().has_bundle();
    if !bundle_ok {
        tracing::warn!("readiness: no JWT trust bundle for our trust domain");
    }
    let audit_ok = st.audit_writable();
    let ok = spire_ok && vault_ok && bundle_ok && audit_ok;
    let word = |b: bool| if b { "ok" } else { "failing" };
    let body = serde_json::json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": {
            "spire_server": word(spire_ok),
            "vault": word(vault_ok),
            "trust_bundle": word(bundle_ok),
            "audit_log": word(audit_ok),
        },
        "elapsed_ms": started.elapsed().as_millis(),
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics.
pub async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        st.metrics().render(),
    )
        .into_response()
}
