//! The OpenAPI 3.1 document of `/api/v1`, generated from the API types and handler annotations.

use hpcs_core::api::{
    ArtefactKind, CreateSecretRequest, CreateSecretResponse, ErrorBody, ErrorKind,
    ListSecretsResponse, Readers, SecretInfo, SecretState, UpdateSecretRequest, VaultLocation,
    VaultToken, WriteCredential,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "HPCS server API",
        description = "Registers artefact keys in Vault for SPIFFE workload identities. Every call \
                       carries a JWT-SVID (audience hpcs-server unless configured otherwise) as a \
                       bearer token.",
    ),
    paths(
        crate::routes::create_secret,
        crate::routes::list_secrets,
        crate::routes::get_secret,
        crate::routes::update_secret,
        crate::routes::delete_secret,
    ),
    components(schemas(
        ArtefactKind,
        CreateSecretRequest,
        CreateSecretResponse,
        ErrorBody,
        ErrorKind,
        ListSecretsResponse,
        Readers,
        SecretInfo,
        SecretState,
        UpdateSecretRequest,
        VaultLocation,
        VaultToken,
        WriteCredential,
    )),
    modifiers(&JwtSvidScheme),
    tags((name = "secrets", description = "Artefact secrets and who may read them")),
)]
#[derive(Debug)]
pub struct ApiDoc;

#[derive(Debug)]
struct JwtSvidScheme;

impl Modify for JwtSvidScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "jwt_svid",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT-SVID")
                    .description(Some(
                        "A JWT-SVID of a client identity, spiffe://<trust-domain>/client/<user>",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as JSON.
#[must_use]
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_every_operation() {
        let json = serde_json::to_value(document()).unwrap();
        let paths = &json["paths"];
        assert!(paths["/api/v1/secrets"]["post"].is_object(), "{paths}");
        assert!(paths["/api/v1/secrets"]["get"].is_object());
        for m in ["get", "patch", "delete"] {
            assert!(paths["/api/v1/secrets/{id}"][m].is_object(), "{m}");
        }
        let schemas = &json["components"]["schemas"];
        assert!(schemas["CreateSecretRequest"]["properties"]["compute_nodes"].is_object());
        assert_eq!(
            json["components"]["securitySchemes"]["jwt_svid"]["scheme"],
            "bearer"
        );
    }
}
