//! A tonic [`Channel`] over a unix domain socket.
//!
//! The SPIRE server's API socket and the agents' Workload API sockets are unix sockets; tonic's
//! endpoint needs an HTTP URI, so we give it a placeholder one and a connector that dials the
//! socket instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// Connects to a gRPC server listening on the unix socket at `path`.
///
/// `timeout` bounds the connection attempt and every request made on the channel.
///
/// # Errors
///
/// A transport error when the socket cannot be reached (missing file, permission denied, nobody
/// listening) within `timeout`.
pub async fn connect_unix(
    path: impl AsRef<Path>,
    timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.as_ref().to_owned();
    // The authority is never resolved: the connector below ignores the URI.
    Endpoint::from_static("http://localhost")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}
