//! The SPIFFE Workload API of one simulated agent (one unix socket).
//!
//! Every call must carry `workload.spiffe.io: true`; the caller is attested from the socket's
//! peer credentials, and only entries whose parent is this agent and whose selectors all match
//! are served. Streaming RPCs send a first message at once and another whenever the answer
//! changes (entries created or deleted, JWT key rotation, X.509-SVID renewal at half-life).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hpcs_spire_api::WORKLOAD_API_HEADER;
use hpcs_spire_api::types::Spiffeid;
use hpcs_spire_api::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use hpcs_spire_api::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::attest::{self, Workload};
use crate::state::{Shared, unix_now};
use crate::store::Entry;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The Workload API service of one agent.
#[derive(Debug, Clone)]
pub struct WorkloadService {
    shared: Arc<Shared>,
    agent_id: Arc<str>,
}

impl WorkloadService {
    /// The service for the agent whose SPIFFE ID is `agent_id`.
    #[must_use]
    pub fn new(shared: Arc<Shared>, agent_id: &str) -> Self {
        Self {
            shared,
            agent_id: Arc::from(agent_id),
        }
    }

    /// Checks the security header and attests the caller.
    async fn attest<T>(&self, request: &Request<T>) -> Result<Arc<Workload>, Status> {
        let header_ok = request
            .metadata()
            .get(WORKLOAD_API_HEADER)
            .is_some_and(|v| v.as_bytes() == b"true");
        if !header_ok {
            return Err(Status::invalid_argument(format!(
                "security header missing from request: Workload API calls must carry the metadata \"{WORKLOAD_API_HEADER}: true\""
            )));
        }
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "workload attestation failed: {}",
                    attest::AttestError::NoPeerCredentials
                ))
            })?;
        let pid = cred.pid().ok_or_else(|| {
            Status::permission_denied(format!(
                "workload attestation failed: {}",
                attest::AttestError::NoPid
            ))
        })?;
        let (uid, gid) = (cred.uid(), cred.gid());
        let workload = tokio::task::spawn_blocking(move || attest::attest(pid, uid, gid))
            .await
            .map_err(|e| Status::internal(format!("attestation task failed: {e}")))?
            .map_err(|e| {
                tracing::warn!(agent = %self.agent_id, pid, uid, error = %e, "workload attestation failed");
                Status::permission_denied(format!("workload attestation failed: {e}"))
            })?;
        Ok(Arc::new(workload))
    }

    /// Entries of this agent matching the workload (off the runtime: may hash the binary).
    async fn identities(&self, workload: &Arc<Workload>) -> Result<Vec<Arc<Entry>>, Status> {
        let shared = Arc::clone(&self.shared);
        let agent_id = Arc::clone(&self.agent_id);
        let workload = Arc::clone(workload);
        let entries = tokio::task::spawn_blocking(move || shared.entries_for(&agent_id, &workload))
            .await
            .map_err(|e| Status::internal(format!("entry matching task failed: {e}")))?;
        Ok(entries)
    }

    /// The X.509-SVID response for a workload and when it next needs refreshing.
    async fn x509_response(
        &self,
        workload: &Arc<Workload>,
    ) -> Result<(X509svidResponse, Option<i64>), Status> {
        let entries = self.identities(workload).await?;
        if entries.is_empty() {
            return Err(no_identity());
        }
        let bundle = self.shared.ca_der().to_vec();
        let mut svids = Vec::with_capacity(entries.len());
        let mut refresh: Option<i64> = None;
        for entry in &entries {
            let svid = self
                .shared
                .x509_svid(entry)
                .map_err(|e| Status::internal(format!("failed to issue X.509-SVID: {e}")))?;
            refresh = Some(refresh.map_or(svid.refresh_at(), |r| r.min(svid.refresh_at())));
            svids.push(X509svid {
                spiffe_id: entry.spiffe_id.clone(),
                x509_svid: svid.cert_der.clone(),
                x509_svid_key: svid.key_pkcs8.to_vec(),
                bundle: bundle.clone(),
                hint: entry.hint.clone(),
            });
        }
        Ok((
            X509svidResponse {
                svids,
                crl: Vec::new(),
                federated_bundles: Default::default(),
            },
            refresh,
        ))
    }

    fn jwt_bundles(&self) -> JwtBundlesResponse {
        JwtBundlesResponse {
            bundles: [(
                self.shared.settings().trust_domain.id(),
                self.shared.jwt_bundle(),
            )]
            .into_iter()
            .collect(),
        }
    }

    fn x509_bundles(&self) -> X509BundlesResponse {
        X509BundlesResponse {
            crl: Vec::new(),
            bundles: [(
                self.shared.settings().trust_domain.id(),
                self.shared.ca_der().to_vec(),
            )]
            .into_iter()
            .collect(),
        }
    }
}

fn no_identity() -> Status {
    Status::permission_denied("no identity issued")
}

/// Waits until the answer may have changed. `false`: stop (client gone or server closing).
async fn wait_for_change<T>(
    changes: &mut watch::Receiver<u64>,
    closing: &mut watch::Receiver<bool>,
    tx: &mpsc::Sender<T>,
    refresh_at: Option<i64>,
) -> bool {
    let sleep = async {
        match refresh_at {
            Some(at) => {
                let secs = u64::try_from(at - unix_now()).unwrap_or(0);
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = tx.closed() => false,
        () = Shared::until_closed(closing) => false,
        r = changes.changed() => r.is_ok(),
        () = sleep => true,
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadService {
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let workload = self.attest(&request).await?;
        let mut changes = self.shared.subscribe();
        let mut closing = self.shared.closing();
        let (first, mut refresh) = self.x509_response(&workload).await?;
        tracing::info!(agent = %self.agent_id, pid = workload.pid, uid = workload.uid,
            svids = first.svids.len(), "FetchX509SVID");
        let (tx, rx) = mpsc::channel(4);
        let service = self.clone();
        tokio::spawn(async move {
            let mut last = first.clone();
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            while wait_for_change(&mut changes, &mut closing, &tx, refresh).await {
                match service.x509_response(&workload).await {
                    Ok((response, next)) => {
                        refresh = next;
                        if response != last {
                            last = response.clone();
                            if tx.send(Ok(response)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.attest(&request).await?;
        let mut changes = self.shared.subscribe();
        let mut closing = self.shared.closing();
        let first = self.x509_bundles();
        let (tx, rx) = mpsc::channel(4);
        let service = self.clone();
        tokio::spawn(async move {
            let mut last = first.clone();
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            while wait_for_change(&mut changes, &mut closing, &tx, None).await {
                let response = service.x509_bundles();
                if response != last {
                    last = response.clone();
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let workload = self.attest(&request).await?;
        let request = request.into_inner();
        if request.audience.is_empty() || request.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if !request.spiffe_id.is_empty() {
            Spiffeid::from_uri(&request.spiffe_id).map_err(|e| {
                Status::invalid_argument(format!("invalid requested SPIFFE ID: {e}"))
            })?;
        }
        let entries = self.identities(&workload).await?;
        let mut seen = HashSet::new();
        let svids: Vec<Jwtsvid> = entries
            .iter()
            .filter(|e| request.spiffe_id.is_empty() || e.spiffe_id == request.spiffe_id)
            .filter(|e| seen.insert(e.spiffe_id.clone()))
            .map(|e| Jwtsvid {
                spiffe_id: e.spiffe_id.clone(),
                svid: self.shared.sign_jwt(e, &request.audience),
                hint: e.hint.clone(),
            })
            .collect();
        tracing::info!(agent = %self.agent_id, pid = workload.pid, uid = workload.uid,
            svids = svids.len(), "FetchJWTSVID");
        if svids.is_empty() {
            return Err(no_identity());
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.attest(&request).await?;
        let mut changes = self.shared.subscribe();
        let mut closing = self.shared.closing();
        let first = self.jwt_bundles();
        let (tx, rx) = mpsc::channel(4);
        let service = self.clone();
        tokio::spawn(async move {
            let mut last = first.clone();
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            while wait_for_change(&mut changes, &mut closing, &tx, None).await {
                let response = service.jwt_bundles();
                if response != last {
                    last = response.clone();
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        self.attest(&request).await?;
        let request = request.into_inner();
        if request.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if request.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let (spiffe_id, claims) = self
            .shared
            .validate_jwt(&request.svid, &request.audience)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id,
            claims: Some(to_struct(claims)),
        }))
    }
}

fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match value {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        J::String(s) => Kind::StringValue(s),
        J::Array(list) => Kind::ListValue(prost_types::ListValue {
            values: list.into_iter().map(to_value).collect(),
        }),
        J::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}
