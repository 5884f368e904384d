//! Application state, the router with its middleware, and [`serve`].
//!
//! Middleware (outermost first): request log and metrics, request deadline, body size limit.
//! Unknown paths and methods answer with the same JSON error body as everything else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::{IncomingStream, Listener};
use hpcs_core::api::{HEALTHZ_PATH, METRICS_PATH, OPENAPI_PATH, READYZ_PATH, SECRETS_PATH};
use tokio_util::task::TaskTracker;

use crate::audit::{AuditEvent, AuditLog};
use crate::auth::Authenticator;
use crate::error::{ApiError, chain};
use crate::metrics::Metrics;
use crate::registry::VaultCoordinates;
use crate::routes;
use crate::secrets::SecretService;
use crate::tls::TlsListener;

/// Request limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest body.
    pub max_body_bytes: usize,
    /// Deadline of one request.
    pub request_timeout: Duration,
}

struct Inner {
    service: SecretService,
    auth: Authenticator,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    coordinates: VaultCoordinates,
    limits: Limits,
    tasks: TaskTracker,
}

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// Assembles the state.
    #[must_use]
    pub fn new(
        service: SecretService,
        auth: Authenticator,
        audit: AuditLog,
        metrics: Arc<Metrics>,
        coordinates: VaultCoordinates,
        limits: Limits,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                service,
                auth,
                audit,
                metrics,
                coordinates,
                limits,
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// The secrets service.
    #[must_use]
    pub fn service(&self) -> &SecretService {
        &self.inner.service
    }

    /// The authenticator.
    #[must_use]
    pub fn auth(&self) -> &Authenticator {
        &self.inner.auth
    }

    /// Metrics.
    #[must_use]
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Vault coordinates reported with secrets.
    #[must_use]
    pub fn coordinates(&self) -> &VaultCoordinates {
        &self.inner.coordinates
    }

    /// Operations in flight (graceful shutdown waits for them).
    #[must_use]
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// Whether the audit log is writable.
    #[must_use]
    pub fn audit_writable(&self) -> bool {
        self.inner.audit.is_writable()
    }

    /// Appends an audit record; a failure is logged and counted (the decision stands).
    pub async fn audit(&self, event: AuditEvent) {
        if let Err(e) = self.inner.audit.record(event).await {
            self.inner.metrics.inc("hpcs_audit_failures_total", &[]);
            tracing::error!(error = %chain(&e), "AUDIT RECORD LOST");
        }
    }
}

/// The complete router.
pub fn router(state: AppState) -> Router {
    let limits = state.inner.limits;
    let api = Router::new()
        .route(
            SECRETS_PATH,
            get(routes::list_secrets).post(routes::create_secret),
        )
        .route(
            &format!("{SECRETS_PATH}/{{id}}"),
            get(routes::get_secret)
                .patch(routes::update_secret)
                .delete(routes::delete_secret),
        )
        .route(OPENAPI_PATH, get(routes::openapi_json))
        .route(HEALTHZ_PATH, get(routes::healthz))
        .route(READYZ_PATH, get(routes::readyz))
        .route(METRICS_PATH, get(routes::metrics))
        .fallback(|| async { ApiError::no_such_path() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(limits, deadline))
        .layer(middleware::from_fn_with_state(state.clone(), observe));
    api.with_state(state)
}

/// Answers 504 when a request outlives its deadline. Dropping the handler here is safe: every
/// operation that changes state runs in its own task (see `routes`).
async fn deadline(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limits.request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::timeout().into_response(),
    }
}

/// Logs each request and records its metrics.
async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    // The route template, not the raw path: secret IDs would explode the label set.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let res = next.run(req).await;
    let elapsed = started.elapsed();
    let status = res.status().as_u16().to_string();
    st.metrics().inc(
        "hpcs_http_requests_total",
        &[("method", &method), ("route", &route), ("status", &status)],
    );
    st.metrics().observe(
        "hpcs_http_request_duration_seconds",
        &[("method", &method), ("route", &route)],
        elapsed,
    );
    tracing::info!(
        method,
        route,
        status = res.status().as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    res
}

/// The remote address of a connection, for any listener with socket addresses (TCP or TLS).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// Serves `state` on `listener` until `shutdown` completes, then waits for requests and
/// operations in flight.
///
/// # Errors
///
/// An I/O error from the server loop.
pub async fn serve<L>(
    listener: L,
    shutdown: impl Future<Output = ()> + Send + 'static,
    state: AppState,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
    PeerAddr: for<'a> Connected<IncomingStream<'a, L>>,
{
    let tasks = state.tasks().clone();
    let app = router(state).into_make_service_with_connect_info::<PeerAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    tasks.close();
    tasks.wait().await;
    Ok(())
}
