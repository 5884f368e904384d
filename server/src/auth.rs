//! Caller authentication: a JWT-SVID as bearer token, nothing else.
//!
//! The token is validated with `spiffe`'s `JwtSvid::parse_and_validate` (signature against the
//! trust bundle, expiry, not-before, audience), then the subject must be in our own trust domain
//! (a bundle source may also carry federated bundles) and have the configured client shape
//! `spiffe://<td><client-prefix><user>`. The bundle comes from a [`BundleProvider`]: in
//! production a `spiffe::JwtSource` that follows the Workload API's bundle stream, so rotated
//! signing keys are picked up without a restart.
//!
//! Reasons for refusal are logged by the caller of [`Authenticator::authenticate`], never sent
//! to the client.

use std::fmt;
use std::sync::Arc;

use hpcs_core::ids::{ClientId, ClientPrefix, SpiffeId, TrustDomain};
use http::HeaderMap;
use http::header::AUTHORIZATION;
use spiffe::{JwtBundleSet, JwtSvid, JwtSvidError};

/// Longest `Authorization` header we look at; JWT-SVIDs are well under 2 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// A source of the current JWT trust bundles.
pub trait BundleProvider: Send + Sync + 'static {
    /// The current bundle set.
    ///
    /// # Errors
    ///
    /// When no usable bundle is available (Workload API not synced or permission withdrawn).
    fn jwt_bundles(&self) -> Result<Arc<JwtBundleSet>, Box<dyn std::error::Error + Send + Sync>>;
}

impl BundleProvider for spiffe::JwtSource {
    fn jwt_bundles(&self) -> Result<Arc<JwtBundleSet>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.bundle_set()?)
    }
}

/// A fixed bundle set (tests, or a static bundle file).
#[derive(Debug, Clone)]
pub struct StaticBundles(pub Arc<JwtBundleSet>);

impl BundleProvider for StaticBundles {
    fn jwt_bundles(&self) -> Result<Arc<JwtBundleSet>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Arc::clone(&self.0))
    }
}

/// An authenticated client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Its client ID.
    pub id: ClientId,
}

impl Caller {
    /// Its SPIFFE ID.
    #[must_use]
    pub fn spiffe_id(&self) -> &SpiffeId {
        self.id.as_spiffe_id()
    }
}

/// Why a request was not authenticated. Logged and audited; the client sees only 401/403.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("no Authorization header")]
    Missing,
    /// The header is not `Bearer <token>`, or too long, or not ASCII.
    #[error("Authorization header is not a bearer token")]
    NotBearer,
    /// The token failed validation (signature, expiry, audience, format, unknown key).
    #[error("JWT-SVID rejected")]
    Invalid(#[source] JwtSvidError),
    /// The token is valid but from another trust domain.
    #[error("JWT-SVID subject {subject} is not in trust domain {expected}")]
    ForeignTrustDomain {
        /// Subject.
        subject: String,
        /// Our trust domain.
        expected: TrustDomain,
    },
    /// The subject is valid but not a client ID.
    #[error("JWT-SVID subject {subject} is not a client ID under {prefix}")]
    NotAClient {
        /// Subject.
        subject: String,
        /// Configured prefix.
        prefix: ClientPrefix,
    },
    /// No trust bundle to validate against (server-side problem).
    #[error("no JWT trust bundle available")]
    NoBundle(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl AuthError {
    /// Whether the failure is the caller's (401/403) rather than ours (503).
    #[must_use]
    pub fn is_callers(&self) -> bool {
        !matches!(self, Self::NoBundle(_))
    }

    /// Whether the credential was valid but not allowed (403) rather than absent or invalid (401).
    #[must_use]
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            Self::ForeignTrustDomain { .. } | Self::NotAClient { .. }
        )
    }

    /// A short stable reason for logs, audit and metrics.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::NotBearer => "not_bearer",
            Self::Invalid(e) => invalid_reason(e),
            Self::ForeignTrustDomain { .. } => "foreign_trust_domain",
            Self::NotAClient { .. } => "not_a_client",
            Self::NoBundle(_) => "no_bundle",
        }
    }
}

fn invalid_reason(e: &JwtSvidError) -> &'static str {
    use spiffe::JwtVerificationErrorKind as K;
    match e {
        JwtSvidError::InvalidToken(v) => match v.kind() {
            K::Expired => "expired",
            K::NotYetValid => "not_yet_valid",
            K::AudienceMismatch => "wrong_audience",
            K::InvalidSignature => "bad_signature",
            _ => "invalid_token",
        },
        JwtSvidError::AuthorityNotFound(..) => "unknown_key",
        JwtSvidError::BundleNotFound(..) => "unknown_trust_domain",
        JwtSvidError::InvalidJwtFormat
        | JwtSvidError::InvalidBase64
        | JwtSvidError::InvalidJson(_) => "malformed",
        _ => "invalid_token",
    }
}

/// Validates bearer JWT-SVIDs.
#[derive(Clone)]
pub struct Authenticator {
    bundles: Arc<dyn BundleProvider>,
    audience: String,
    trust_domain: TrustDomain,
    client_prefix: ClientPrefix,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("audience", &self.audience)
            .field("trust_domain", &self.trust_domain)
            .field("client_prefix", &self.client_prefix)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for tokens with `audience` from clients of `trust_domain` under
    /// `client_prefix`.
    #[must_use]
    pub fn new(
        bundles: Arc<dyn BundleProvider>,
        audience: String,
        trust_domain: TrustDomain,
        client_prefix: ClientPrefix,
    ) -> Self {
        Self {
            bundles,
            audience,
            trust_domain,
            client_prefix,
        }
    }

    /// Whether a bundle for our trust domain is available (readiness).
    #[must_use]
    pub fn has_bundle(&self) -> bool {
        let Ok(td) = spiffe::TrustDomain::new(self.trust_domain.as_str()) else {
            return false;
        };
        self.bundles.jwt_bundles().is_ok_and(|set| {
            set.get(&td)
                .is_some_and(|b| b.jwt_authorities().next().is_some())
        })
    }

    /// Authenticates a request by its headers.
    ///
    /// # Errors
    ///
    /// [`AuthError`] saying why not.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let value = headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
        if value.len() > MAX_TOKEN_LEN {
            return Err(AuthError::NotBearer);
        }
        let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::NotBearer);
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::NotBearer);
        }
        self.authenticate_token(token)
    }

    /// Authenticates a bare JWT-SVID.
    ///
    /// # Errors
    ///
    /// [`AuthError`] saying why not.
    pub fn authenticate_token(&self, token: &str) -> Result<Caller, AuthError> {
        let bundles = self.bundles.jwt_bundles().map_err(AuthError::NoBundle)?;
        let svid = JwtSvid::parse_and_validate(token, bundles.as_ref(), &[self.audience.as_str()])
            .map_err(AuthError::Invalid)?;
        let subject = svid.spiffe_id().to_string();
        let id: SpiffeId = subject.parse().map_err(|_| AuthError::NotAClient {
            subject: subject.clone(),
            prefix: self.client_prefix.clone(),
        })?;
        if id.trust_domain() != &self.trust_domain {
            return Err(AuthError::ForeignTrustDomain {
                subject,
                expected: self.trust_domain.clone(),
            });
        }
        let id = ClientId::from_spiffe_id(id, &self.client_prefix).map_err(|_| {
            AuthError::NotAClient {
                subject,
                prefix: self.client_prefix.clone(),
            }
        })?;
        Ok(Caller { id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestAuthority;
    use http::HeaderValue;
    use rstest::rstest;

    const TD: &str = "hpcs.test";
    const AUD: &str = "hpcs-server";

    fn authenticator(authority: &TestAuthority) -> Authenticator {
        Authenticator::new(
            Arc::new(StaticBundles(authority.bundle_set(TD))),
            AUD.to_owned(),
            TD.parse().unwrap(),
            ClientPrefix::default(),
        )
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn valid_client_token_is_accepted() {
        let a = TestAuthority::generate("k1");
        let token = a.token("spiffe://hpcs.test/client/alice", AUD, 300);
        let caller = authenticator(&a)
            .authenticate(&headers(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(caller.id.user().as_str(), "alice");
        assert_eq!(
            caller.spiffe_id().as_str(),
            "spiffe://hpcs.test/client/alice"
        );
        assert!(authenticator(&a).has_bundle());
    }

    #[rstest]
    #[case::expired("spiffe://hpcs.test/client/alice", AUD, -10, "expired", false)]
    #[case::wrong_audience(
        "spiffe://hpcs.test/client/alice",
        "vault",
        300,
        "wrong_audience",
        false
    )]
    #[case::not_a_client("spiffe://hpcs.test/hpcs/server", AUD, 300, "not_a_client", true)]
    #[case::nested_client("spiffe://hpcs.test/client/alice/x", AUD, 300, "not_a_client", true)]
    #[case::bad_user_name("spiffe://hpcs.test/client/Alice", AUD, 300, "not_a_client", true)]
    #[case::other_trust_domain(
        "spiffe://other.test/client/alice",
        AUD,
        300,
        "unknown_trust_domain",
        false
    )]
    fn bad_tokens_are_refused(
        #[case] sub: &str,
        #[case] aud: &str,
        #[case] ttl: i64,
        #[case] reason: &str,
        #[case] forbidden: bool,
    ) {
        let a = TestAuthority::generate("k1");
        let err = authenticator(&a)
            .authenticate_token(&a.token(sub, aud, ttl))
            .unwrap_err();
        assert_eq!(err.reason(), reason, "{err:?}");
        assert_eq!(err.is_forbidden(), forbidden);
        assert!(err.is_callers());
    }

    #[test]
    fn foreign_trust_domain_with_a_federated_bundle_is_refused() {
        let ours = TestAuthority::generate("k1");
        let theirs = TestAuthority::generate("k2");
        let mut set = (*ours.bundle_set(TD)).clone();
        for (_, b) in theirs.bundle_set("other.test").iter() {
            set.add_bundle((**b).clone());
        }
        let auth = Authenticator::new(
            Arc::new(StaticBundles(Arc::new(set))),
            AUD.to_owned(),
            TD.parse().unwrap(),
            ClientPrefix::default(),
        );
        let err = auth
            .authenticate_token(&theirs.token("spiffe://other.test/client/alice", AUD, 60))
            .unwrap_err();
        assert_eq!(err.reason(), "foreign_trust_domain");
    }

    #[test]
    fn forged_signature_is_refused() {
        let trusted = TestAuthority::generate("k1");
        // Same key ID, different key: a forger who knows the kid.
        let forger = TestAuthority::generate("k1");
        let err = authenticator(&trusted)
            .authenticate_token(&forger.token("spiffe://hpcs.test/client/alice", AUD, 60))
            .unwrap_err();
        assert_eq!(err.reason(), "bad_signature", "{err:?}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let trusted = TestAuthority::generate("k1");
        let other = TestAuthority::generate("k9");
        let err = authenticator(&trusted)
            .authenticate_token(&other.token("spiffe://hpcs.test/client/alice", AUD, 60))
            .unwrap_err();
        assert_eq!(err.reason(), "unknown_key");
    }

    #[test]
    fn unsigned_token_is_refused() {
        let a = TestAuthority::generate("k1");
        let token = a.token("spiffe://hpcs.test/client/alice", AUD, 60);
        let (signing_input, _) = token.rsplit_once('.').unwrap();
        let err = authenticator(&a)
            .authenticate_token(&format!("{signing_input}."))
            .unwrap_err();
        assert!(!err.reason().is_empty());
        assert!(err.is_callers());
    }

    #[rstest]
    #[case::basic("Basic YWxpY2U6cHc=", "not_bearer")]
    #[case::empty_bearer("Bearer ", "not_bearer")]
    #[case::garbage("Bearer not.a.jwt", "malformed")]
    #[case::two_parts("Bearer abc.def", "malformed")]
    fn malformed_headers_are_refused(#[case] value: &str, #[case] reason: &str) {
        let a = TestAuthority::generate("k1");
        let err = authenticator(&a).authenticate(&headers(value)).unwrap_err();
        assert_eq!(err.reason(), reason, "{err:?}");
    }

    #[test]
    fn missing_header_is_refused() {
        let a = TestAuthority::generate("k1");
        let err = authenticator(&a)
            .authenticate(&HeaderMap::new())
            .unwrap_err();
        assert_eq!(err.reason(), "missing");
    }

    #[test]
    fn configured_client_prefix_applies() {
        let a = TestAuthority::generate("k1");
        let auth = Authenticator::new(
            Arc::new(StaticBundles(a.bundle_set(TD))),
            AUD.to_owned(),
            TD.parse().unwrap(),
            "/researchers/".parse().unwrap(),
        );
        assert!(
            auth.authenticate_token(&a.token("spiffe://hpcs.test/researchers/bob", AUD, 60))
                .is_ok()
        );
        let err = auth
            .authenticate_token(&a.token("spiffe://hpcs.test/client/bob", AUD, 60))
            .unwrap_err();
        assert_eq!(err.reason(), "not_a_client");
    }
}
