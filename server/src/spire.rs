//! SPIRE registration entries through the SPIRE Server Entry API on the admin unix socket.
//!
//! [`EntryStore`] is the seam the secrets service uses; [`SpireEntries`] is the real client over
//! `hpcs-spire-api`'s tonic stubs. Creating a batch is all-or-nothing: when SPIRE refuses part of
//! a batch, the entries it did create are deleted again before the error is returned.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hpcs_core::ids::SpiffeId;
use hpcs_spire_api::server::entry::v1::entry_client::EntryClient;
use hpcs_spire_api::server::entry::v1::{
    BatchCreateEntryRequest, BatchDeleteEntryRequest, CountEntriesRequest, ListEntriesRequest,
    list_entries_request,
};
use hpcs_spire_api::types::{Entry, Selector, Spiffeid};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::metrics::Metrics;

/// Default timeout of one SPIRE server call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries per `BatchCreateEntry` / `BatchDeleteEntry` call.
pub const BATCH_SIZE: usize = 256;

/// gRPC status codes we tell apart (google.rpc.Code).
const CODE_NOT_FOUND: i32 = 5;

/// What the server asks SPIRE to register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntrySpec {
    /// The SPIFFE ID the entry issues.
    pub spiffe_id: SpiffeId,
    /// The agent under which it is issued.
    pub parent_id: SpiffeId,
    /// `(type, value)` pairs, e.g. `("unix", "user:alice")`; all must match.
    pub selectors: Vec<(String, String)>,
    /// Unix seconds after which SPIRE stops issuing it (0: never).
    pub expires_at: i64,
}

/// A registration entry as SPIRE reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryView {
    /// Entry ID.
    pub id: String,
    /// SPIFFE ID.
    pub spiffe_id: String,
    /// Parent ID.
    pub parent_id: String,
    /// `type:value` selectors.
    pub selectors: Vec<String>,
}

/// Errors of SPIRE server calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpireError {
    /// A call failed as a whole.
    #[error("SPIRE server call {op} failed")]
    Call {
        /// RPC name.
        op: &'static str,
        /// Cause.
        #[source]
        source: Box<tonic::Status>,
    },
    /// A call did not finish in time.
    #[error("SPIRE server call {op} timed out after {timeout:?}")]
    Timeout {
        /// RPC name.
        op: &'static str,
        /// Limit.
        timeout: Duration,
    },
    /// SPIRE refused one entry of a batch.
    #[error("SPIRE server refused entry {what}: {message} (code {code})")]
    Refused {
        /// The entry (SPIFFE ID and parent, or entry ID).
        what: String,
        /// gRPC code.
        code: i32,
        /// SPIRE's message.
        message: String,
    },
    /// SPIRE answered something we cannot use.
    #[error("SPIRE server answered {op} with {problem}")]
    Protocol {
        /// RPC name.
        op: &'static str,
        /// What is wrong.
        problem: String,
    },
}

impl SpireError {
    /// Whether retrying later may succeed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout { .. } => true,
            Self::Call { source, .. } => matches!(
                source.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Aborted
                    | tonic::Code::Unknown
            ),
            // Unavailable, deadline exceeded, resource exhausted, aborted.
            Self::Refused { code, .. } => matches!(code, 14 | 4 | 8 | 10),
            Self::Protocol { .. } => false,
        }
    }
}

/// Everything the secrets service needs from SPIRE.
#[async_trait]
pub trait EntryStore: Send + Sync + 'static {
    /// Creates all entries or none; returns their IDs in order.
    async fn create_entries(&self, specs: &[EntrySpec]) -> Result<Vec<String>, SpireError>;
    /// Deletes entries; entries that no longer exist count as deleted.
    async fn delete_entries(&self, ids: &[String]) -> Result<(), SpireError>;
    /// Entries that issue `spiffe_id`.
    async fn list_by_spiffe_id(&self, spiffe_id: &SpiffeId) -> Result<Vec<EntryView>, SpireError>;
    /// Readiness: the server answers on its admin socket.
    async fn check(&self) -> Result<(), SpireError>;
}

/// The real SPIRE server client on a unix socket.
#[derive(Clone, Debug)]
pub struct SpireEntries {
    socket: PathBuf,
    channel: Channel,
    timeout: Duration,
    metrics: Option<Arc<Metrics>>,
}

impl SpireEntries {
    /// A client for the admin socket at `socket`. Connects lazily (and reconnects after SPIRE
    /// restarts), so the server starts even while SPIRE is still coming up; `/readyz` tells.
    #[must_use]
    pub fn new(socket: &Path, timeout: Duration) -> Self {
        let path = socket.to_owned();
        // The URI is never resolved: the connector dials the socket.
        let channel =
            Endpoint::from_static("http://localhost")
                .connect_timeout(timeout)
                .timeout(timeout)
                .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }));
        Self {
            socket: socket.to_owned(),
            channel,
            timeout,
            metrics: None,
        }
    }

    /// Records the latency of every call in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The admin socket path.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn client(&self) -> EntryClient<Channel> {
        EntryClient::new(self.channel.clone())
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, SpireError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, fut).await;
        if let Some(m) = &self.metrics {
            m.observe(
                "hpcs_backend_duration_seconds",
                &[("backend", "spire"), ("op", op)],
                started.elapsed(),
            );
        }
        result
            .map_err(|_| SpireError::Timeout {
                op,
                timeout: self.timeout,
            })?
            .map(tonic::Response::into_inner)
            .map_err(|source| SpireError::Call {
                op,
                source: Box::new(source),
            })
    }

    async fn create_batch(
        &self,
        specs: &[EntrySpec],
        created: &mut Vec<String>,
    ) -> Result<(), SpireError> {
        const OP: &str = "BatchCreateEntry";
        let entries = specs.iter().map(to_proto).collect::<Result<Vec<_>, _>>()?;
        let res = self
            .timed(
                OP,
                self.client().batch_create_entry(BatchCreateEntryRequest {
                    entries,
                    output_mask: None,
                }),
            )
            .await?;
        if res.results.len() != specs.len() {
            return Err(SpireError::Protocol {
                op: OP,
                problem: format!("{} results for {} entries", res.results.len(), specs.len()),
            });
        }
        let mut first_err = None;
        for (spec, result) in specs.iter().zip(res.results) {
            let code = result.status.as_ref().map_or(0, |s| s.code);
            match (code, result.entry) {
                (0, Some(entry)) if !entry.id.is_empty() => created.push(entry.id),
                (0, _) => {
                    first_err.get_or_insert(SpireError::Protocol {
                        op: OP,
                        problem: "a success without an entry ID".to_owned(),
                    });
                }
                (code, _) => {
                    first_err.get_or_insert(SpireError::Refused {
                        what: format!("{} under {}", spec.spiffe_id, spec.parent_id),
                        code,
                        message: result.status.map(|s| s.message).unwrap_or_default(),
                    });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn delete_batch(&self, ids: &[String]) -> Result<(), SpireError> {
        const OP: &str = "BatchDeleteEntry";
        let res = self
            .timed(
                OP,
                self.client()
                    .batch_delete_entry(BatchDeleteEntryRequest { ids: ids.to_vec() }),
            )
            .await?;
        for result in res.results {
            let code = result.status.as_ref().map_or(0, |s| s.code);
            if code != 0 && code != CODE_NOT_FOUND {
                return Err(SpireError::Refused {
                    what: result.id,
                    code,
                    message: result.status.map(|s| s.message).unwrap_or_default(),
                });
            }
        }
        Ok(())
    }
}

fn proto_id(id: &SpiffeId) -> Spiffeid {
    Spiffeid {
        trust_domain: id.trust_domain().to_string(),
        path: id.path().to_owned(),
    }
}

fn to_proto(spec: &EntrySpec) -> Result<Entry, SpireError> {
    Ok(Entry {
        spiffe_id: Some(proto_id(&spec.spiffe_id)),
        parent_id: Some(proto_id(&spec.parent_id)),
        selectors: spec
            .selectors
            .iter()
            .map(|(r#type, value)| Selector {
                r#type: r#type.clone(),
                value: value.clone(),
            })
            .collect(),
        expires_at: spec.expires_at,
        ..Entry::default()
    })
}

fn uri(id: Option<&Spiffeid>) -> String {
    id.map(|i| format!("spiffe://{}{}", i.trust_domain, i.path))
        .unwrap_or_default()
}

#[async_trait]
impl EntryStore for SpireEntries {
    async fn create_entries(&self, specs: &[EntrySpec]) -> Result<Vec<String>, SpireError> {
        let mut created = Vec::with_capacity(specs.len());
        for chunk in specs.chunks(BATCH_SIZE) {
            if let Err(e) = self.create_batch(chunk, &mut created).await {
                if !created.is_empty()
                    && let Err(cleanup) = self.delete_entries(&created).await
                {
                    tracing::error!(
                        error = %crate::error::chain(&cleanup),
                        entries = ?created,
                        "failed to delete SPIRE entries of a partly refused batch"
                    );
                }
                return Err(e);
            }
        }
        Ok(created)
    }

    async fn delete_entries(&self, ids: &[String]) -> Result<(), SpireError> {
        for chunk in ids.chunks(BATCH_SIZE) {
            self.delete_batch(chunk).await?;
        }
        Ok(())
    }

    async fn list_by_spiffe_id(&self, spiffe_id: &SpiffeId) -> Result<Vec<EntryView>, SpireError> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let res = self
                .timed(
                    "ListEntries",
                    self.client().list_entries(ListEntriesRequest {
                        filter: Some(list_entries_request::Filter {
                            by_spiffe_id: Some(proto_id(spiffe_id)),
                            ..Default::default()
                        }),
                        output_mask: None,
                        page_size: 500,
                        page_token: page_token.clone(),
                    }),
                )
                .await?;
            out.extend(res.entries.into_iter().map(|e| {
                EntryView {
                    spiffe_id: uri(e.spiffe_id.as_ref()),
                    parent_id: uri(e.parent_id.as_ref()),
                    selectors: e
                        .selectors
                        .iter()
                        .map(|s| format!("{}:{}", s.r#type, s.value))
                        .collect(),
                    id: e.id,
                }
            }));
            if res.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = res.next_page_token;
        }
    }

    async fn check(&self) -> Result<(), SpireError> {
        self.timed(
            "CountEntries",
            self.client()
                .count_entries(CountEntriesRequest { filter: None }),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_converts_to_wire_entry() {
        let spec = EntrySpec {
            spiffe_id: "spiffe://hpcs.test/hpcs/secret/abc".parse().unwrap(),
            parent_id: "spiffe://hpcs.test/spire/agent/devspire/node1"
                .parse()
                .unwrap(),
            selectors: vec![("unix".into(), "user:alice".into())],
            expires_at: 0,
        };
        let e = to_proto(&spec).unwrap();
        assert_eq!(
            uri(e.spiffe_id.as_ref()),
            "spiffe://hpcs.test/hpcs/secret/abc"
        );
        assert_eq!(
            e.parent_id.as_ref().unwrap().path,
            "/spire/agent/devspire/node1"
        );
        assert_eq!(e.selectors[0].r#type, "unix");
        assert_eq!(e.selectors[0].value, "user:alice");
        assert!(e.id.is_empty(), "SPIRE assigns IDs");
    }

    #[test]
    fn refused_unavailable_is_transient() {
        let e = SpireError::Refused {
            what: "x".into(),
            code: 14,
            message: String::new(),
        };
        assert!(e.is_transient());
        let e = SpireError::Refused {
            what: "x".into(),
            code: 3,
            message: String::new(),
        };
        assert!(!e.is_transient());
    }

    #[tokio::test]
    async fn missing_socket_is_a_transient_call_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = SpireEntries::new(&dir.path().join("nope.sock"), Duration::from_secs(2));
        let err = store.check().await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
    }
}
