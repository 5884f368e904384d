//! Binding and running every devspire endpoint: the admin socket (SPIRE Server API subset and the
//! devspire admin service), one Workload API socket per agent, and the OIDC discovery HTTP
//! listener. [`Server::bind`] does everything that can fail at start (so a caller knows the
//! bound OIDC address before serving); [`Server::serve`] runs until the shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hpcs_spire_api::server::agent::v1::agent_server::AgentServer;
use hpcs_spire_api::server::entry::v1::entry_server::EntryServer;
use hpcs_spire_api::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::wrappers::UnixListenerStream;

use crate::admin::AdminService;
use crate::agent_api::AgentService;
use crate::config::{AgentConfig, Config};
use crate::entry_api::EntryService;
use crate::oidc;
use crate::proto::admin::v1::admin_server::AdminServer;
use crate::state::{Settings, Shared, StateError, unix_now};
use crate::workload::WorkloadService;

/// Mode of agent sockets: every local user may connect (attestation decides what they get).
pub const AGENT_SOCKET_MODE: u32 = 0o666;
/// Mode of the admin socket: only its owner (root) may manage entries, as with SPIRE's server
/// socket.
pub const ADMIN_SOCKET_MODE: u32 = 0o600;
/// How long open streams and connections get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The state could not be opened.
    #[error("failed to open the state directory")]
    State(#[from] StateError),
    /// The OIDC listener could not be bound.
    #[error("failed to listen on {addr} for OIDC discovery")]
    BindOidc {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A unix socket could not be created.
    #[error("failed to create socket {path}")]
    Socket {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Something else is listening on a socket path.
    #[error("socket {path} is in use by another process")]
    SocketInUse {
        /// The path.
        path: PathBuf,
    },
    /// The socket path exists and is not a socket.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A gRPC server failed.
    #[error("the gRPC server on {path} failed")]
    Grpc {
        /// Its socket.
        path: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The OIDC HTTP server failed.
    #[error("the OIDC discovery server failed")]
    Http(#[source] std::io::Error),
    /// A server task panicked.
    #[error("a server task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// A devspire with every endpoint bound, not yet serving.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    admin_path: PathBuf,
    admin: UnixListener,
    agents: Vec<(AgentConfig, UnixListener)>,
    oidc: TcpListener,
    oidc_addr: SocketAddr,
}

impl Server {
    /// Opens the state and binds every endpoint.
    ///
    /// # Errors
    ///
    /// A [`ServeError`] naming the endpoint or file at fault.
    pub async fn bind(config: Config) -> Result<Self, ServeError> {
        let oidc = TcpListener::bind(config.oidc_listen)
            .await
            .map_err(|source| ServeError::BindOidc {
                addr: config.oidc_listen,
                source,
            })?;
        let oidc_addr = oidc.local_addr().map_err(|source| ServeError::BindOidc {
            addr: config.oidc_listen,
            source,
        })?;
        let settings = Settings {
            trust_domain: config.trust_domain.clone(),
            issuer: config
                .oidc_issuer
                .clone()
                .unwrap_or_else(|| format!("http://{oidc_addr}")),
            jwt_ttl: config.jwt_ttl,
            x509_ttl: config.x509_ttl,
        };
        let state_dir = config.state_dir.clone();
        let shared = tokio::task::spawn_blocking(move || Shared::open(&state_dir, settings))
            .await
            .map_err(ServeError::Task)??;
        let admin = bind_socket(&config.admin_socket, ADMIN_SOCKET_MODE)?;
        let mut agents = Vec::with_capacity(config.agents.len());
        for agent in config.agents {
            let listener = bind_socket(&agent.socket, AGENT_SOCKET_MODE)?;
            agents.push((agent, listener));
        }
        Ok(Self {
            shared: Arc::new(shared),
            admin_path: config.admin_socket,
            admin,
            agents,
            oidc,
            oidc_addr,
        })
    }

    /// The bound OIDC discovery address.
    #[must_use]
    pub fn oidc_addr(&self) -> SocketAddr {
        self.oidc_addr
    }

    /// The OIDC issuer URL (the URL to give Vault as `oidc_discovery_url`).
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.shared.settings().issuer
    }

    /// The shared state (for SIGHUP rotation).
    #[must_use]
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Serves until `shutdown` resolves or an endpoint fails, then ends streams, drains
    /// connections and removes the socket files.
    ///
    /// # Errors
    ///
    /// The first [`ServeError`] of any endpoint.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
        let shared = self.shared;
        let mut tasks: JoinSet<Result<(), ServeError>> = JoinSet::new();
        let mut paths = vec![self.admin_path.clone()];

        let admin_path = self.admin_path;
        let grpc = tonic::transport::Server::builder()
            .add_service(EntryServer::new(EntryService::new(Arc::clone(&shared))))
            .add_service(AgentServer::new(AgentService::new(Arc::clone(&shared))))
            .add_service(AdminServer::new(AdminService::new(Arc::clone(&shared))))
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(self.admin),
                closed(shared.closing()),
            );
        tasks.spawn(async move {
            grpc.await.map_err(|source| ServeError::Grpc {
                path: admin_path,
                source,
            })
        });

        for (agent, listener) in self.agents {
            paths.push(agent.socket.clone());
            tracing::info!(agent = %agent.name, id = %agent.id, socket = %agent.socket.display(),
                "Workload API listening");
            let grpc = tonic::transport::Server::builder()
                .add_service(SpiffeWorkloadApiServer::new(WorkloadService::new(
                    Arc::clone(&shared),
                    &agent.id,
                )))
                .serve_with_incoming_shutdown(
                    UnixListenerStream::new(listener),
                    closed(shared.closing()),
                );
            tasks.spawn(async move {
                grpc.await.map_err(|source| ServeError::Grpc {
                    path: agent.socket,
                    source,
                })
            });
        }

        tracing::info!(issuer = %shared.settings().issuer, "OIDC discovery listening");
        let http = axum::serve(self.oidc, oidc::router(Arc::clone(&shared)))
            .with_graceful_shutdown(closed(shared.closing()));
        tasks.spawn(async move { http.await.map_err(ServeError::Http) });

        tasks.spawn(prune_keys(Arc::clone(&shared)));

        let mut result = Ok(());
        tokio::select! {
            () = shutdown => {}
            Some(first) = tasks.join_next() => {
                result = first.map_err(ServeError::Task).and_then(|r| r);
            }
        }
        shared.close();
        let drain = async {
            while let Some(done) = tasks.join_next().await {
                if let Err(e) = done.map_err(ServeError::Task).and_then(|r| r) {
                    if result.is_ok() {
                        result = Err(e);
                    } else {
                        tracing::error!(error = %crate::entry_api::chain(&e), "during shutdown");
                    }
                }
            }
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            tracing::warn!("connections did not close in time; stopping anyway");
            tasks.abort_all();
        }
        for path in paths {
            let _ = std::fs::remove_file(path);
        }
        result
    }
}

async fn closed(mut closing: watch::Receiver<bool>) {
    Shared::until_closed(&mut closing).await;
}

/// Drops retired JWT keys when their last tokens expire, so bundles and JWKS shrink on time.
async fn prune_keys(shared: Arc<Shared>) -> Result<(), ServeError> {
    let mut changes = shared.subscribe();
    let mut closing = shared.closing();
    loop {
        let next = shared.next_key_retirement();
        let sleep = async {
            match next {
                Some(at) => {
                    let secs = u64::try_from(at - unix_now()).unwrap_or(0);
                    tokio::time::sleep(Duration::from_secs(secs) + Duration::from_millis(100))
                        .await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = Shared::until_closed(&mut closing) => return Ok(()),
            r = changes.changed() => { if r.is_err() { return Ok(()); } }
            () = sleep => {
                if let Err(e) = shared.prune_jwt_keys().await {
                    tracing::error!(error = %crate::entry_api::chain(&e), "failed to prune retired JWT keys");
                }
            }
        }
    }
}

/// Binds a unix socket at `path` with `mode`, replacing a stale socket file.
fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, ServeError> {
    let io = |source| ServeError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Agent sockets must be reachable by every user: their directory is world-searchable.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::SocketInUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => {
            return Err(ServeError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    Ok(listener)
}
