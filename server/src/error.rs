//! The one error type handlers return: a stable [`ErrorKind`] and a client-safe `detail`.
//!
//! Internals (Vault and SPIRE messages, paths, reasons for refusing a token) are logged where the
//! error is made, never sent. Authentication and authorisation failures carry the same detail, and
//! "not yours" is answered exactly like "does not exist".

use std::borrow::Cow;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::response::{IntoResponse, Response};
use hpcs_core::api::{ErrorBody, ErrorKind};
use http::{HeaderValue, StatusCode, header};

/// Detail of every 401 and 403.
pub const NOT_AUTHORIZED: &str =
    "not authorized: send a valid JWT-SVID of an HPCS client as a bearer token";
/// Detail of every 404 for a secret.
pub const NO_SUCH_SECRET: &str = "no such secret";

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    kind: ErrorKind,
    detail: Cow<'static, str>,
}

impl ApiError {
    /// An error of `kind` with `detail` (must be safe to show to the caller).
    #[must_use]
    pub fn new(kind: ErrorKind, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// 400 with a message saying what to fix.
    #[must_use]
    pub fn bad_request(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::BadRequest, detail)
    }

    /// 401.
    #[must_use]
    pub fn unauthorized() -> Self {
        Self::new(ErrorKind::Unauthorized, NOT_AUTHORIZED)
    }

    /// 403, indistinguishable in detail from 401.
    #[must_use]
    pub fn forbidden() -> Self {
        Self::new(ErrorKind::Forbidden, NOT_AUTHORIZED)
    }

    /// 404 for a secret that does not exist or is not the caller's.
    #[must_use]
    pub fn no_such_secret() -> Self {
        Self::new(ErrorKind::NotFound, NO_SUCH_SECRET)
    }

    /// 404 for an unknown path.
    #[must_use]
    pub fn no_such_path() -> Self {
        Self::new(ErrorKind::NotFound, "no such API path")
    }

    /// 405.
    #[must_use]
    pub fn method_not_allowed() -> Self {
        Self::new(
            ErrorKind::MethodNotAllowed,
            "method not allowed on this path",
        )
    }

    /// 409.
    #[must_use]
    pub fn conflict() -> Self {
        Self::new(
            ErrorKind::Conflict,
            "the secret was changed concurrently; read it again and retry",
        )
    }

    /// 503 with a detail saying whether anything changed.
    #[must_use]
    pub fn unavailable(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Unavailable, detail)
    }

    /// 504.
    #[must_use]
    pub fn timeout() -> Self {
        Self::new(ErrorKind::Timeout, "the request took too long")
    }

    /// 500.
    #[must_use]
    pub fn internal() -> Self {
        Self::new(
            ErrorKind::Internal,
            "internal error; the server log has the details",
        )
    }

    /// The kind.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The detail.
    #[must_use]
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut res = (
            status,
            Json(ErrorBody {
                kind: self.kind,
                detail: self.detail.into_owned(),
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                ErrorKind::UnsupportedMediaType,
                "the body must be JSON with Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(ErrorKind::PayloadTooLarge, "the request body is too large")
            }
            // Syntax and data errors name the position and the field (serde_path_to_error);
            // the text only echoes what the caller sent.
            JsonRejection::JsonSyntaxError(e) => {
                Self::bad_request(format!("malformed JSON body: {}", e.body_text()))
            }
            JsonRejection::JsonDataError(e) => {
                Self::bad_request(format!("invalid request body: {}", e.body_text()))
            }
            other => Self::bad_request(format!("unreadable request body: {}", other.body_text())),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request(format!("invalid path: {}", r.body_text()))
    }
}

/// `err` and all its sources, `: `-separated, for logs.
#[must_use]
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(e: ApiError) -> (StatusCode, Option<String>, serde_json::Value) {
        let res = e.into_response();
        let status = res.status();
        let www = res
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, www, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn authn_and_authz_failures_look_the_same() {
        let (s401, www, b401) = body_of(ApiError::unauthorized()).await;
        let (s403, _, b403) = body_of(ApiError::forbidden()).await;
        assert_eq!(s401, StatusCode::UNAUTHORIZED);
        assert_eq!(www.as_deref(), Some("Bearer"));
        assert_eq!(s403, StatusCode::FORBIDDEN);
        assert_eq!(b401["detail"], b403["detail"]);
        assert_eq!(b401["kind"], "unauthorized");
    }

    #[tokio::test]
    async fn body_shape_is_kind_and_detail() {
        let (status, _, body) = body_of(ApiError::bad_request("readers: empty")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            serde_json::json!({"kind": "bad_request", "detail": "readers: empty"})
        );
    }

    #[test]
    fn chain_joins_sources() {
        let inner = std::io::Error::other("disk full");
        let outer = crate::audit::AuditError::Write {
            path: "/x".into(),
            source: inner,
        };
        assert_eq!(chain(&outer), "failed to write audit log /x: disk full");
    }
}
