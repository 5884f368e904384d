//! Wiring for the binary: settings in, a running server out.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::{AuditError, AuditLog};
use crate::auth::Authenticator;
use crate::config::{Settings, Transport};
use crate::error::chain;
use crate::metrics::Metrics;
use crate::registry::VaultCoordinates;
use crate::secrets::SecretService;
use crate::server::{AppState, Limits, serve};
use crate::spire::SpireEntries;
use crate::tls::TlsError;
use crate::vault::{Vault, VaultError, VaultLogin};

/// How long the server waits for its first trust bundle from the Workload API.
pub const WORKLOAD_API_SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The settings do not work.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The Workload API could not be reached or did not deliver bundles.
    #[error("failed to get the trust bundle from the Workload API at {socket}")]
    WorkloadApi {
        /// Socket.
        socket: String,
        /// Cause.
        #[source]
        source: spiffe::JwtSourceError,
    },
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The Vault client could not be set up.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listen address could not be bound.
    #[error("failed to listen on {addr}")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The server loop failed.
    #[error("server failed")]
    Serve(#[source] std::io::Error),
}

impl RunError {
    /// Whether this is a configuration problem (exit code 2) rather than a runtime failure (1).
    #[must_use]
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config(_) | Self::Tls(_))
            || matches!(self, Self::Vault(VaultError::Client { .. }))
    }
}

/// A server assembled from settings, ready to serve.
#[derive(Debug)]
pub struct Assembled {
    /// The application state.
    pub state: AppState,
    /// The Workload API source (trust bundles and the server's own SVIDs); shut it down last.
    pub source: Arc<spiffe::JwtSource>,
}

/// Connects to the Workload API, opens the audit log and builds the state (no listener yet).
///
/// # Errors
///
/// [`RunError`] naming the step that failed.
pub async fn assemble(settings: &Settings) -> Result<Assembled, RunError> {
    settings.validate()?;
    for w in settings.warnings() {
        tracing::warn!("{w}");
    }
    let endpoint = format!("unix:{}", settings.workload_socket.display());
    let source = spiffe::JwtSource::builder()
        .endpoint(&endpoint)
        .initial_sync_timeout(WORKLOAD_API_SYNC_TIMEOUT)
        .build()
        .await
        .map_err(|source| RunError::WorkloadApi {
            socket: endpoint.clone(),
            source,
        })?;
    let source = Arc::new(source);
    let metrics = Arc::new(Metrics::new());
    let audit = AuditLog::open(&settings.audit_log)?;
    let vault = Vault::new(settings.vault.clone(), VaultLogin::Jwt(source.clone()))?
        .with_metrics(Arc::clone(&metrics));
    let spire = SpireEntries::new(&settings.spire_admin_socket, settings.spire_timeout)
        .with_metrics(Arc::clone(&metrics));
    let service = SecretService::new(
        Arc::new(spire),
        Arc::new(vault),
        settings.trust_domain.clone(),
        settings.vault.kv_mount.clone(),
        settings.agents.clone(),
        Arc::clone(&metrics),
    )
    .with_secret_ttl(settings.secret_ttl);
    let auth = Authenticator::new(
        source.clone(),
        settings.audience.clone(),
        settings.trust_domain.clone(),
        settings.client_prefix.clone(),
    );
    let state = AppState::new(
        service,
        auth,
        audit,
        metrics,
        VaultCoordinates {
            kv_mount: settings.vault.kv_mount.clone(),
            auth_mount: settings.vault.auth_mount.clone(),
            audience: settings.vault.audience.clone(),
        },
        Limits {
            max_body_bytes: settings.max_body_bytes,
            request_timeout: settings.request_timeout,
        },
    );
    Ok(Assembled { state, source })
}

/// Revokes expired secrets every `every` until the task is aborted.
pub fn spawn_expiry_sweep(state: AppState, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match state.service().sweep_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(revoked = n, "expiry sweep"),
                Err(e) => tracing::warn!(error = %chain(&e), "expiry sweep failed"),
            }
        }
    })
}

/// Starts the server with `settings` and runs it until `shutdown` completes.
///
/// # Errors
///
/// [`RunError`] naming the step that failed.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    // Certificate problems are configuration errors: report them before waiting on SPIRE.
    let tls = match &settings.transport {
        Transport::Tls { cert, key } => Some(crate::tls::server_config(cert, key)?),
        Transport::PlainHttp => None,
    };
    let Assembled { state, source } = assemble(&settings).await?;
    let sweeper = settings
        .expiry_sweep
        .map(|every| spawn_expiry_sweep(state.clone(), every));
    let tcp = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: settings.listen,
            source,
        })?;
    let result = match tls {
        Some(config) => {
            let listener = crate::tls::TlsListener::new(tcp, config).map_err(RunError::Serve)?;
            tracing::info!(listen = %settings.listen, "serving HTTPS");
            serve(listener, shutdown, state.clone()).await
        }
        None => {
            tracing::info!(listen = %settings.listen, "serving plain HTTP");
            serve(tcp, shutdown, state.clone()).await
        }
    };
    if let Some(s) = sweeper {
        s.abort();
    }
    state.service().vault().logout().await;
    source.shutdown().await;
    tracing::info!("stopped");
    result.map_err(RunError::Serve)
}
