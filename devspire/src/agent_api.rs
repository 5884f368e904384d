//! `spire.api.server.agent.v1.Agent`: CreateJoinToken, as SPIRE implements it. devspire's agents
//! are configured, not attested, so a token is only recorded; with `agent_id` it also creates the
//! node alias entry SPIRE creates (parent `spiffe://<td>/spire/agent/join_token/<token>`, selector
//! `spiffe_id:<that parent>`).

use std::sync::Arc;

use hpcs_spire_api::server::agent::v1::CreateJoinTokenRequest;
use hpcs_spire_api::server::agent::v1::agent_server::Agent as AgentApi;
use hpcs_spire_api::types;
use tonic::{Request, Response, Status};

use crate::entry_api::chain;
use crate::state::{Shared, unix_now};
use crate::store::{Entry, EntryFields, StoredSelector, id_field};

/// Longest accepted caller-chosen token.
const MAX_TOKEN_LEN: usize = 128;

/// The Agent service.
#[derive(Debug, Clone)]
pub struct AgentService {
    shared: Arc<Shared>,
}

impl AgentService {
    /// A service over `shared`.
    #[must_use]
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl AgentApi for AgentService {
    async fn create_join_token(
        &self,
        request: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<types::JoinToken>, Status> {
        let request = request.into_inner();
        if request.ttl < 1 {
            return Err(Status::invalid_argument(
                "ttl is required, you must provide one",
            ));
        }
        let token = if request.token.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            // The token becomes a SPIFFE ID path segment.
            let valid = request.token.len() <= MAX_TOKEN_LEN
                && request
                    .token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
                && request.token != "."
                && request.token != "..";
            if !valid {
                return Err(Status::invalid_argument(format!(
                    "invalid token: use 1 to {MAX_TOKEN_LEN} of A-Z, a-z, 0-9, '.', '-', '_'"
                )));
            }
            request.token
        };
        let now = unix_now();
        let td = &self.shared.settings().trust_domain;
        let alias = match id_field(request.agent_id.as_ref(), "agent_id")
            .map_err(|e| Status::invalid_argument(format!("invalid agent ID: {}", chain(&e))))?
        {
            None => None,
            Some(agent_id) => {
                let parent = td.id_with_path(&format!("/spire/agent/join_token/{token}"));
                let fields = EntryFields {
                    spiffe_id: Some(agent_id),
                    parent_id: Some(parent.clone()),
                    selectors: vec![StoredSelector {
                        kind: "spiffe_id".into(),
                        value: parent,
                    }],
                    created_at: now,
                    ..EntryFields::default()
                };
                Some(Entry::validate(fields, td).map_err(|e| {
                    Status::invalid_argument(format!("invalid agent ID: {}", chain(&e)))
                })?)
            }
        };
        let expires_at = now.saturating_add(i64::from(request.ttl));
        let stored = token.clone();
        let (created, changed) = self
            .shared
            .store()
            .update(move |snapshot| {
                snapshot.join_tokens.retain(|_, expiry| *expiry > now);
                if snapshot.join_tokens.contains_key(&stored) {
                    return false;
                }
                snapshot.join_tokens.insert(stored, expires_at);
                if let Some(entry) = alias {
                    snapshot.entries.insert(entry.id.clone(), Arc::new(entry));
                }
                true
            })
            .await
            .map_err(|e| Status::internal(format!("failed to create token: {}", chain(&e))))?;
        if !created {
            return Err(Status::already_exists(
                "failed to create token: token already exists",
            ));
        }
        if changed {
            self.shared.notify();
        }
        Ok(Response::new(types::JoinToken {
            value: token,
            expires_at,
        }))
    }
}
