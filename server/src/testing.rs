//! Test helpers shared by unit and integration tests: an ES256 JWT signing authority and its
//! bundle, to make forged, expired and wrong-audience tokens that a SPIRE server never issues.
//!
//! Compiled only into tests (`#[cfg(test)]` here, `#[path]` from `tests/common`).

#![allow(dead_code)]

use std::sync::Arc;

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use spiffe::{JwtBundle, JwtBundleSet};

/// A JWT signing authority for tests.
#[derive(Debug)]
pub struct TestAuthority {
    key: SigningKey,
    kid: String,
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl TestAuthority {
    /// A fresh random key with key ID `kid`.
    #[must_use]
    pub fn generate(kid: &str) -> Self {
        Self {
            key: SigningKey::random(&mut rand::rngs::OsRng),
            kid: kid.to_owned(),
        }
    }

    /// The JWK of the public key.
    #[must_use]
    pub fn jwk(&self) -> serde_json::Value {
        let mut jwk: serde_json::Value =
            serde_json::from_str(&p256::PublicKey::from(self.key.verifying_key()).to_jwk_string())
                .expect("jwk");
        jwk["kid"] = serde_json::Value::String(self.kid.clone());
        jwk["use"] = serde_json::Value::String("jwt-svid".into());
        jwk
    }

    /// A bundle set holding this key for `trust_domain`.
    #[must_use]
    pub fn bundle_set(&self, trust_domain: &str) -> Arc<JwtBundleSet> {
        let jwks = serde_json::json!({ "keys": [self.jwk()] });
        let bundle = JwtBundle::from_jwt_authorities(
            spiffe::TrustDomain::new(trust_domain).expect("trust domain"),
            jwks.to_string().as_bytes(),
        )
        .expect("bundle");
        Arc::new(std::iter::once(bundle).collect())
    }

    /// A signed ES256 token with these claims.
    #[must_use]
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": self.kid });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig: Signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(&sig.to_bytes()))
    }

    /// A token for `sub` and `aud`, valid from now for `ttl_secs` (negative: already expired).
    #[must_use]
    pub fn token(&self, sub: &str, aud: &str, ttl_secs: i64) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.sign(&serde_json::json!({
            "sub": sub,
            "aud": [aud],
            "iat": now - 5,
            "exp": now + ttl_secs,
        }))
    }
}
