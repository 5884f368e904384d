//! The JWT-SVID signing authority: ES256 keys with random key IDs, signing, verification, JWKS
//! rendering, and on-demand rotation.
//!
//! The last key is the active one and signs every new token. On rotation the previous active key
//! gets a `retire_after` time, the latest expiry of any token it may have signed; until then it
//! stays in the JWT bundle and the OIDC JWKS so its tokens keep validating, then it is pruned.

use std::sync::atomic::{AtomicI64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use hpcs_spire_api::types::Spiffeid;

use crate::ids::TrustDomain;
use crate::secret::SecretString;

/// The only signing algorithm devspire uses (SPIRE's default key type is EC P-256 too).
pub const ALG: &str = "ES256";

/// Length of generated key IDs (SPIRE uses 32 random characters too).
const KID_LEN: usize = 32;

/// Errors of this module. Verification messages go back to Workload API callers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not three base64url parts.
    #[error("token is not a compact JWS (three base64url parts)")]
    Malformed,
    /// The header is not the JSON we expect.
    #[error("token header is malformed")]
    BadHeader,
    /// An algorithm other than ES256.
    #[error("token algorithm {alg:?} is not supported (expected ES256)")]
    UnsupportedAlg {
        /// The token's `alg`.
        alg: String,
    },
    /// The `kid` is not in the bundle.
    #[error("token key ID {kid:?} is not in the trust bundle")]
    UnknownKey {
        /// The token's `kid`.
        kid: String,
    },
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// The claims are not a JSON object with the required claims.
    #[error("token claims are malformed: {what}")]
    BadClaims {
        /// What is wrong.
        what: &'static str,
    },
    /// `exp` is in the past.
    #[error("token has expired (exp {exp})")]
    Expired {
        /// The token's `exp`.
        exp: i64,
    },
    /// The expected audience is not in `aud`.
    #[error("token audience does not contain {audience:?}")]
    AudienceMismatch {
        /// The expected audience.
        audience: String,
    },
    /// `sub` is not a SPIFFE ID of this trust domain.
    #[error("token subject {sub:?} is not a SPIFFE ID of trust domain {trust_domain}")]
    BadSubject {
        /// The token's `sub`.
        sub: String,
        /// Our trust domain.
        trust_domain: String,
    },
    /// A stored key cannot be decoded.
    #[error("stored JWT signing key {kid:?} is not a valid P-256 PKCS#8 key")]
    BadStoredKey {
        /// The key's ID.
        kid: String,
    },
    /// The stored key list is empty.
    #[error("the stored JWT key list is empty")]
    NoStoredKeys,
    /// The last stored key (the active one) is marked retired.
    #[error("the last stored JWT key {kid:?} is marked retired; it must be the active key")]
    NoActiveKey {
        /// The last key's ID.
        kid: String,
    },
}

/// One signing key.
#[derive(Debug)]
pub struct JwtKey {
    kid: String,
    key: SigningKey,
    created_at: i64,
    /// 0 while active.
    retire_after: i64,
    /// Latest `exp` this key signed since the process started.
    max_exp: AtomicI64,
}

/// Public facts about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Key ID.
    pub kid: String,
    /// Creation, seconds since the epoch.
    pub created_at: i64,
    /// Leaves the bundle after this time; 0 for the active key.
    pub retire_after: i64,
    /// Whether it signs new tokens.
    pub active: bool,
}

/// Stored form of a key (the private key is PKCS#8 DER, base64).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredJwtKey {
    kid: String,
    pkcs8: SecretString,
    created_at: i64,
    retire_after: i64,
}

/// Claims devspire puts in a JWT-SVID.
#[derive(Debug, Clone, Serialize)]
pub struct Claims<'a> {
    /// SPIFFE ID.
    pub sub: &'a str,
    /// Audiences.
    pub aud: &'a [String],
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issue time, seconds since the epoch.
    pub iat: i64,
    /// Issuer (the OIDC discovery issuer URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<&'a str>,
}

/// Which JWKS flavour to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jwks {
    /// Workload API JWT bundle (`use: jwt-svid`, as SPIRE's bundles).
    Bundle,
    /// OIDC discovery JWKS (`use: sig`, `alg: ES256`, as SPIRE's OIDC discovery provider).
    Oidc,
}

/// The set of JWT signing keys; never empty, the last one is active.
#[derive(Debug)]
pub struct JwtAuthority {
    keys: Vec<JwtKey>,
}

fn new_key(now: i64) -> JwtKey {
    let kid: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(KID_LEN)
        .map(char::from)
        .collect();
    JwtKey {
        kid,
        key: SigningKey::random(&mut rand::rngs::OsRng),
        created_at: now,
        retire_after: 0,
        max_exp: AtomicI64::new(0),
    }
}

impl JwtAuthority {
    /// A fresh authority with one key.
    #[must_use]
    pub fn generate(now: i64) -> Self {
        Self {
            keys: vec![new_key(now)],
        }
    }

    /// Restores stored keys.
    ///
    /// # Errors
    ///
    /// [`JwtError::BadStoredKey`] or [`JwtError::NoStoredKeys`].
    pub fn from_stored(stored: &[StoredJwtKey]) -> Result<Self, JwtError> {
        // The last key is the active one; `prune` keeps it only while it is unretired.
        match stored.last() {
            None => return Err(JwtError::NoStoredKeys),
            Some(last) if last.retire_after != 0 => {
                return Err(JwtError::NoActiveKey {
                    kid: last.kid.clone(),
                });
            }
            Some(_) => {}
        }
        let keys = stored
            .iter()
            .map(|s| {
                let bad = || JwtError::BadStoredKey { kid: s.kid.clone() };
                let der = Zeroizing::new(B64.decode(s.pkcs8.expose()).map_err(|_| bad())?);
                let key = SigningKey::from_pkcs8_der(&der).map_err(|_| bad())?;
                Ok(JwtKey {
                    kid: s.kid.clone(),
                    key,
                    created_at: s.created_at,
                    retire_after: s.retire_after,
                    max_exp: AtomicI64::new(0),
                })
            })
            .collect::<Result<Vec<_>, JwtError>>()?;
        Ok(Self { keys })
    }

    /// The stored form of every key.
    #[must_use]
    pub fn to_stored(&self) -> Vec<StoredJwtKey> {
        self.keys
            .iter()
            .map(|k| {
                // An in-memory P-256 key always encodes.
                let der = k
                    .key
                    .to_pkcs8_der()
                    .map(|doc| SecretString::new(B64.encode(doc.as_bytes())))
                    .unwrap_or_default();
                StoredJwtKey {
                    kid: k.kid.clone(),
                    pkcs8: der,
                    created_at: k.created_at,
                    retire_after: k.retire_after,
                }
            })
            .collect()
    }

    fn active(&self) -> &JwtKey {
        // Invariant: `keys` is never empty (constructors and `prune` keep the active key).
        let last = self.keys.len() - 1;
        &self.keys[last]
    }

    /// The active key's ID.
    #[must_use]
    pub fn active_kid(&self) -> &str {
        &self.active().kid
    }

    /// Public facts about every key, oldest first.
    #[must_use]
    pub fn key_info(&self) -> Vec<KeyInfo> {
        let active = self.active_kid().to_owned();
        self.keys
            .iter()
            .map(|k| KeyInfo {
                kid: k.kid.clone(),
                created_at: k.created_at,
                retire_after: k.retire_after,
                active: k.kid == active,
            })
            .collect()
    }

    /// The latest expiry of any token signed by the active key since start.
    #[must_use]
    pub fn active_max_exp(&self) -> i64 {
        self.active().max_exp.load(Ordering::Relaxed)
    }

    /// Signs a JWT-SVID with the active key.
    #[must_use]
    pub fn sign(&self, claims: &Claims<'_>) -> String {
        let key = self.active();
        let header = json!({ "alg": ALG, "kid": key.kid, "typ": "JWT" });
        // Serialising these plain structs cannot fail.
        let header = B64.encode(serde_json::to_vec(&header).unwrap_or_default());
        let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let signature: Signature = key.key.sign(signing_input.as_bytes());
        key.max_exp.fetch_max(claims.exp, Ordering::Relaxed);
        format!("{signing_input}.{}", B64.encode(signature.to_bytes()))
    }

    /// Makes a new key active; the previous active key stays published until `keep_until`
    /// (seconds since the epoch). Returns the new key ID.
    pub fn rotate(&mut self, now: i64, keep_until: i64) -> String {
        let previous_max = self.active_max_exp();
        let last = self.keys.len() - 1;
        self.keys[last].retire_after = keep_until.max(previous_max).max(now);
        self.keys.push(new_key(now));
        self.active_kid().to_owned()
    }

    /// Drops retired keys whose tokens have all expired. Returns whether any was dropped.
    pub fn prune(&mut self, now: i64) -> bool {
        let before = self.keys.len();
        self.keys
            .retain(|k| k.retire_after == 0 || k.retire_after > now);
        self.keys.len() != before
    }

    /// The earliest time a retired key is due to be pruned.
    #[must_use]
    pub fn next_retirement(&self) -> Option<i64> {
        self.keys
            .iter()
            .filter(|k| k.retire_after != 0)
            .map(|k| k.retire_after)
            .min()
    }

    /// Renders the public keys as a JWKS document.
    #[must_use]
    pub fn jwks(&self, flavour: Jwks) -> Value {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|k| {
                let point = VerifyingKey::from(&k.key).to_encoded_point(false);
                let mut jwk = Map::new();
                jwk.insert("kty".into(), "EC".into());
                jwk.insert("kid".into(), k.kid.clone().into());
                jwk.insert("crv".into(), "P-256".into());
                jwk.insert(
                    "x".into(),
                    point.x().map(|x| B64.encode(x)).unwrap_or_default().into(),
                );
                jwk.insert(
                    "y".into(),
                    point.y().map(|y| B64.encode(y)).unwrap_or_default().into(),
                );
                match flavour {
                    Jwks::Bundle => {
                        jwk.insert("use".into(), "jwt-svid".into());
                    }
                    Jwks::Oidc => {
                        jwk.insert("use".into(), "sig".into());
                        jwk.insert("alg".into(), ALG.into());
                    }
                }
                Value::Object(jwk)
            })
            .collect();
        json!({ "keys": keys })
    }

    /// Verifies a JWT-SVID: signature by a published key, `exp` in the future, `audience` in
    /// `aud`, `sub` a SPIFFE ID of `td`. Returns the SPIFFE ID and all claims.
    ///
    /// # Errors
    ///
    /// A [`JwtError`] saying what failed.
    pub fn verify(
        &self,
        token: &str,
        audience: &str,
        td: &TrustDomain,
        now: i64,
    ) -> Result<(String, Map<String, Value>), JwtError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let decode = |part: &str| B64.decode(part).map_err(|_| JwtError::Malformed);
        let header: Value =
            serde_json::from_slice(&decode(header)?).map_err(|_| JwtError::BadHeader)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(JwtError::BadHeader)?;
        if alg != ALG {
            return Err(JwtError::UnsupportedAlg {
                alg: alg.to_owned(),
            });
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or(JwtError::BadHeader)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| JwtError::UnknownKey {
                kid: kid.to_owned(),
            })?;
        let signature =
            Signature::from_slice(&decode(signature)?).map_err(|_| JwtError::BadSignature)?;
        let signing_input_len = token.len() - token.rsplit('.').next().map_or(0, str::len) - 1;
        VerifyingKey::from(&key.key)
            .verify(&token.as_bytes()[..signing_input_len], &signature)
            .map_err(|_| JwtError::BadSignature)?;

        let claims: Map<String, Value> =
            serde_json::from_slice(&decode(payload)?).map_err(|_| JwtError::BadClaims {
                what: "not a JSON object",
            })?;
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(JwtError::BadClaims {
                what: "exp is missing or not an integer",
            })?;
        if exp <= now {
            return Err(JwtError::Expired { exp });
        }
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => {
                return Err(JwtError::BadClaims {
                    what: "aud is missing",
                });
            }
        };
        if !audiences.contains(&audience) {
            return Err(JwtError::AudienceMismatch {
                audience: audience.to_owned(),
            });
        }
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or(JwtError::BadClaims {
                what: "sub is missing",
            })?;
        let in_domain = Spiffeid::from_uri(sub)
            .is_ok_and(|id| id.trust_domain == td.as_str() && !id.path.is_empty());
        if !in_domain {
            return Err(JwtError::BadSubject {
                sub: sub.to_owned(),
                trust_domain: td.to_string(),
            });
        }
        Ok((sub.to_owned(), claims))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        "hpcs.test".parse().unwrap()
    }

    fn token(auth: &JwtAuthority, sub: &str, aud: &[String], exp: i64) -> String {
        auth.sign(&Claims {
            sub,
            aud,
            exp,
            iat: 1000,
            iss: Some("http://127.0.0.1:1"),
        })
    }

    #[test]
    fn signs_and_verifies() {
        let auth = JwtAuthority::generate(1000);
        let aud = vec!["vault".to_owned(), "other".to_owned()];
        let t = token(&auth, "spiffe://hpcs.test/a", &aud, 2000);
        let (sub, claims) = auth.verify(&t, "vault", &td(), 1500).unwrap();
        assert_eq!(sub, "spiffe://hpcs.test/a");
        assert_eq!(claims["iss"], "http://127.0.0.1:1");
        assert_eq!(claims["iat"], 1000);

        let err = |r: Result<_, JwtError>| r.unwrap_err().to_string();
        assert!(err(auth.verify(&t, "nope", &td(), 1500)).contains("audience does not contain"));
        assert!(err(auth.verify(&t, "vault", &td(), 2000)).contains("expired"));
        assert!(err(auth.verify("a.b", "vault", &td(), 1500)).contains("compact JWS"));
        let foreign = token(&auth, "spiffe://other.test/a", &aud, 2000);
        assert!(
            err(auth.verify(&foreign, "vault", &td(), 1500))
                .contains("not a SPIFFE ID of trust domain")
        );
        // Flip one character of the payload: the signature must fail.
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        let forged = token(&auth, "spiffe://hpcs.test/b", &aud, 2000);
        parts[1] = forged.split('.').nth(1).unwrap().to_owned();
        assert!(
            err(auth.verify(&parts.join("."), "vault", &td(), 1500))
                .contains("signature is invalid")
        );
        let other = JwtAuthority::generate(1000);
        assert!(err(other.verify(&t, "vault", &td(), 1500)).contains("not in the trust bundle"));
    }

    #[test]
    fn rotation_keeps_old_key_until_its_tokens_expire() {
        let mut auth = JwtAuthority::generate(1000);
        let aud = vec!["vault".to_owned()];
        let old = token(&auth, "spiffe://hpcs.test/a", &aud, 1300);
        let old_kid = auth.active_kid().to_owned();
        let new_kid = auth.rotate(1100, 1200);
        assert_ne!(old_kid, new_kid);
        // The old key signed a token expiring at 1300, later than the requested 1200.
        assert_eq!(auth.next_retirement(), Some(1300));
        let new = token(&auth, "spiffe://hpcs.test/a", &aud, 1400);
        assert!(new.starts_with(&B64.encode(format!(
            r#"{{"alg":"ES256","kid":"{new_kid}","typ":"JWT"}}"#
        ))));
        auth.verify(&old, "vault", &td(), 1250).unwrap();
        assert_eq!(auth.jwks(Jwks::Bundle)["keys"].as_array().unwrap().len(), 2);
        assert!(!auth.prune(1299));
        assert!(auth.prune(1300));
        assert_eq!(auth.key_info().len(), 1);
        assert!(auth.key_info()[0].active);
        assert!(auth.verify(&old, "vault", &td(), 1250).is_err());
        auth.verify(&new, "vault", &td(), 1350).unwrap();
    }

    #[test]
    fn stored_round_trip_and_jwks_shape() {
        let mut auth = JwtAuthority::generate(1000);
        auth.rotate(1001, 5000);
        let stored = auth.to_stored();
        let json = serde_json::to_string(&stored).unwrap();
        let back: Vec<StoredJwtKey> = serde_json::from_str(&json).unwrap();
        let restored = JwtAuthority::from_stored(&back).unwrap();
        assert_eq!(restored.key_info(), auth.key_info());
        let aud = vec!["x".to_owned()];
        let t = token(&auth, "spiffe://hpcs.test/a", &aud, 2000);
        restored.verify(&t, "x", &td(), 1500).unwrap();
        let jwks = restored.jwks(Jwks::Oidc);
        let key = &jwks["keys"][0];
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
        assert_eq!(key["alg"], "ES256");
        assert_eq!(key["use"], "sig");
        assert_eq!(B64.decode(key["x"].as_str().unwrap()).unwrap().len(), 32);
        assert!(JwtAuthority::from_stored(&[]).is_err());
        let mut retired = auth.to_stored();
        retired.truncate(1);
        assert!(matches!(
            JwtAuthority::from_stored(&retired),
            Err(JwtError::NoActiveKey { .. })
        ));
    }
}
