//! OIDC discovery for Vault/OpenBao `jwt` auth, shaped like SPIRE's OIDC discovery provider:
//! `GET /.well-known/openid-configuration` (issuer, `jwks_uri`) and `GET /keys` (the JWT-SVID
//! signing keys, retired ones included until their tokens expire).
//!
//! Vault fetches the discovery document from `oidc_discovery_url` and requires its `issuer` to
//! equal that URL, so the issuer is the URL clients use (by default `http://<listen address>`).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::state::Shared;

/// Path of the JWKS document.
pub const JWKS_PATH: &str = "/keys";

/// The router serving discovery and keys.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route(JWKS_PATH, get(keys))
        .with_state(shared)
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let issuer = shared.settings().issuer.trim_end_matches('/');
    Json(json!({
        "issuer": shared.settings().issuer,
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "authorization_endpoint": "",
        "response_types_supported": ["id_token"],
        "subject_types_supported": [],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "ES384"],
    }))
}

async fn keys(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(shared.oidc_jwks())
}
