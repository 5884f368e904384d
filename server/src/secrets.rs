//! The secrets service: register, list, read, change and revoke secrets, all-or-nothing.
//!
//! # Registration
//!
//! For a new secret `<id>` with reader SPIFFE ID `R = spiffe://TD/hpcs/secret/<id>`:
//!
//! 1. SPIRE: one entry per (node x user/group) issuing `R`, parent = the node's agent, selector
//!    `unix:user:<u>` or `unix:supplementary_group:<g>`, expiring with the secret;
//! 2. Vault: policy `hpcs-secret-<id>-read`, jwt role `hpcs-secret-<id>`, policy
//!    `hpcs-secret-<id>-write`;
//! 3. Vault: the registry record (check-and-set 0) and the owner index entry;
//! 4. Vault: the owner's write-once token.
//!
//! If any step fails, the steps already taken are undone in reverse order. SPIRE entries are
//! undone by deleting *every* entry that issues `R` (listed from SPIRE), not only the IDs we were
//! told about, so a create call that timed out after SPIRE acted leaves nothing behind. Vault
//! objects are undone with idempotent deletes registered *before* each write, for the same reason.
//! Cleanup failures are logged and counted together with the error that caused them.
//!
//! # Changes and revocation
//!
//! Every operation on an existing secret holds that secret's lock (one process) and writes the
//! record with check-and-set on the version it read (several replicas), so concurrent changes are
//! serialised or refused with a conflict, never lost. A change adds SPIRE entries, commits the
//! record, then converges SPIRE to the record (deleting entries the record no longer lists); if
//! that last step fails the caller is told to repeat the request, and any repeat converges again.
//! Revocation marks the record `revoking`, deletes SPIRE entries, role, policies, key record and
//! index, and finally the record; it can be repeated until it completes.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;

use futures::StreamExt as _;
use hpcs_core::api::{
    CreateSecretRequest, MAX_COMPUTE_NODES, MAX_READERS, Readers, SecretState, UpdateSecretRequest,
};
use hpcs_core::ids::{NodeName, SecretId, SecretReaderId, SpiffeId, TrustDomain};
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::error::chain;
use crate::metrics::Metrics;
use crate::registry::{EntryRef, Principal, RECORD_SCHEMA, SecretRecord};
use crate::spire::{EntrySpec, EntryStore, SpireError};
use crate::vault::{
    IssuedToken, ReaderRole, VaultBackend, VaultError, read_policy_name, reader_policy,
    reader_role_name, write_policy_name, writer_policy,
};

/// Most SPIRE entries (nodes x readers) one secret may need.
pub const MAX_ENTRIES_PER_SECRET: usize = 4096;
/// Lock stripes for per-secret serialisation.
const LOCK_STRIPES: usize = 64;
/// Registry reads in flight when listing.
const LIST_CONCURRENCY: usize = 16;

/// A failed SPIRE or Vault call.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// SPIRE.
    #[error(transparent)]
    Spire(#[from] SpireError),
    /// Vault.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl BackendError {
    /// Whether retrying later may succeed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Spire(e) => e.is_transient(),
            Self::Vault(e) => e.is_transient(),
        }
    }

    /// `spire` or `vault`, for metrics.
    #[must_use]
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Spire(_) => "spire",
            Self::Vault(_) => "vault",
        }
    }
}

/// What state a failed operation left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aftermath {
    /// Nothing changed (everything rolled back, or nothing had been done).
    NothingChanged,
    /// The change is recorded, but removing access it revoked did not finish: repeat it.
    ChangeRecorded,
    /// The revocation started and did not finish: repeat it.
    RevocationIncomplete,
}

/// Errors of the secrets service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// The request is invalid; the message is safe to show.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No such secret, or not the caller's.
    #[error("no such secret {0}")]
    NotFound(SecretId),
    /// A concurrent change won, or the secret is being revoked.
    #[error("concurrent change of secret {0}")]
    Conflict(SecretId),
    /// A backend call failed.
    #[error("failed to {step} for secret {id}")]
    Backend {
        /// Secret.
        id: SecretId,
        /// The step that failed.
        step: &'static str,
        /// Cause.
        #[source]
        source: Box<BackendError>,
        /// What the failure left behind.
        aftermath: Aftermath,
        /// Undo steps that failed too (logged; these may have left orphans).
        cleanup_failures: Vec<String>,
    },
}

/// Which SPIRE agent serves each compute node.
///
/// Real agent IDs depend on the node attestor (`x509pop` gives
/// `spiffe://TD/spire/agent/x509pop/cn/<hostname>` with the compose stack's template), so the
/// mapping is configured: explicit pairs first, then an optional template with `{node}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentMap {
    /// Explicit node to agent ID pairs.
    pub explicit: BTreeMap<NodeName, SpiffeId>,
    /// A template such as `spiffe://TD/spire/agent/x509pop/cn/{node}` for other nodes.
    pub template: Option<String>,
}

/// The placeholder in [`AgentMap::template`].
pub const NODE_PLACEHOLDER: &str = "{node}";

impl AgentMap {
    /// The agent ID of `node`, if the mapping knows it.
    #[must_use]
    pub fn resolve(&self, node: &NodeName) -> Option<SpiffeId> {
        if let Some(id) = self.explicit.get(node) {
            return Some(id.clone());
        }
        // Node names are valid SPIFFE path segments, so the result only fails to parse if the
        // template itself is bad, which configuration validation rules out.
        self.template
            .as_ref()
            .and_then(|t| t.replace(NODE_PLACEHOLDER, node.as_str()).parse().ok())
    }

    /// Whether no node can be resolved.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.explicit.is_empty() && self.template.is_none()
    }
}

/// The service. Cheap to share behind an `Arc`.
pub struct SecretService {
    spire: Arc<dyn EntryStore>,
    vault: Arc<dyn VaultBackend>,
    trust_domain: TrustDomain,
    kv_mount: String,
    agents: AgentMap,
    locks: Vec<Mutex<()>>,
    metrics: Arc<Metrics>,
    secret_ttl: Option<std::time::Duration>,
}

impl std::fmt::Debug for SecretService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretService")
            .field("trust_domain", &self.trust_domain)
            .field("agents", &self.agents)
            .finish_non_exhaustive()
    }
}

/// One undo step, registered before the action it undoes.
enum Undo {
    /// Delete every SPIRE entry issuing this ID except the listed ones.
    EntriesExcept(SpiffeId, BTreeSet<String>),
    Policy(hpcs_core::ids::RoleName),
    Role(hpcs_core::ids::RoleName),
    Record(SecretId),
    Index(SpiffeId, SecretId),
}

impl SecretService {
    /// A service over these backends.
    #[must_use]
    pub fn new(
        spire: Arc<dyn EntryStore>,
        vault: Arc<dyn VaultBackend>,
        trust_domain: TrustDomain,
        kv_mount: String,
        agents: AgentMap,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            spire,
            vault,
            trust_domain,
            kv_mount,
            agents,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            metrics,
            secret_ttl: None,
        }
    }

    /// Caps every secret's lifetime at `ttl` (secrets without an expiry get one).
    #[must_use]
    pub fn with_secret_ttl(mut self, ttl: Option<std::time::Duration>) -> Self {
        self.secret_ttl = ttl;
        self
    }

    /// The SPIRE backend (readiness).
    #[must_use]
    pub fn spire(&self) -> &Arc<dyn EntryStore> {
        &self.spire
    }

    /// The Vault backend (readiness).
    #[must_use]
    pub fn vault(&self) -> &Arc<dyn VaultBackend> {
        &self.vault
    }

    fn lock_for(&self, id: &SecretId) -> &Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        let stripe = usize::try_from(h.finish() % LOCK_STRIPES as u64).unwrap_or(0);
        &self.locks[stripe]
    }

    fn check_shape(
        &self,
        readers: &Readers,
        nodes: &BTreeSet<NodeName>,
    ) -> Result<(), SecretsError> {
        if readers.is_empty() {
            return Err(SecretsError::Invalid(
                "readers: name at least one user or group".into(),
            ));
        }
        if nodes.is_empty() {
            return Err(SecretsError::Invalid(
                "compute_nodes: name at least one compute node".into(),
            ));
        }
        if readers.len() > MAX_READERS {
            return Err(SecretsError::Invalid(format!(
                "readers: {} users and groups, at most {MAX_READERS} allowed",
                readers.len()
            )));
        }
        if nodes.len() > MAX_COMPUTE_NODES {
            return Err(SecretsError::Invalid(format!(
                "compute_nodes: {} nodes, at most {MAX_COMPUTE_NODES} allowed",
                nodes.len()
            )));
        }
        if readers.len() * nodes.len() > MAX_ENTRIES_PER_SECRET {
            return Err(SecretsError::Invalid(format!(
                "{} readers on {} nodes need {} SPIRE entries, at most {MAX_ENTRIES_PER_SECRET} allowed",
                readers.len(),
                nodes.len(),
                readers.len() * nodes.len()
            )));
        }
        let unknown: Vec<&str> = nodes
            .iter()
            .filter(|n| self.agents.resolve(n).is_none())
            .map(NodeName::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(SecretsError::Invalid(format!(
                "compute_nodes: unknown to this server: {}",
                unknown.join(", ")
            )));
        }
        Ok(())
    }

    fn spec(
        &self,
        reader_id: &SpiffeId,
        node: &NodeName,
        p: &Principal,
        expires: i64,
    ) -> EntrySpec {
        // check_shape resolved every node before any spec is built.
        let parent_id = self
            .agents
            .resolve(node)
            .expect("nodes are checked before entries are built");
        let selector = match p {
            Principal::User(u) => format!("user:{u}"),
            Principal::Group(g) => format!("supplementary_group:{g}"),
        };
        EntrySpec {
            spiffe_id: reader_id.clone(),
            parent_id,
            selectors: vec![("unix".to_owned(), selector)],
            expires_at: expires,
        }
    }

    /// Registers a secret owned by `owner`.
    ///
    /// # Errors
    ///
    /// [`SecretsError::Invalid`] for a bad request, [`SecretsError::Backend`] when SPIRE or Vault
    /// failed (everything rolled back).
    pub async fn create(
        &self,
        owner: &SpiffeId,
        req: CreateSecretRequest,
    ) -> Result<(SecretRecord, IssuedToken), SecretsError> {
        self.check_shape(&req.readers, &req.compute_nodes)?;
        let now = OffsetDateTime::now_utc();
        if let Some(t) = req.expires_at
            && t <= now
        {
            return Err(SecretsError::Invalid(
                "expires_at: must be in the future".into(),
            ));
        }
        let cap = self.secret_ttl.map(|ttl| now + ttl);
        let expires_at = match (req.expires_at, cap) {
            (Some(t), Some(c)) => Some(t.min(c)),
            (t, c) => t.or(c),
        };
        let id = SecretId::generate();
        let reader_id: SpiffeId = SecretReaderId::new(&self.trust_domain, &id).into();
        let expires = expires_at.map_or(0, OffsetDateTime::unix_timestamp);
        let pairs: Vec<(NodeName, Principal)> = req
            .compute_nodes
            .iter()
            .flat_map(|n| Principal::all(&req.readers).map(move |p| (n.clone(), p)))
            .collect();
        let specs: Vec<EntrySpec> = pairs
            .iter()
            .map(|(n, p)| self.spec(&reader_id, n, p, expires))
            .collect();
        let mut record = SecretRecord {
            schema: RECORD_SCHEMA,
            id: id.clone(),
            kind: req.kind,
            name: req.name,
            owner: owner.clone(),
            readers: req.readers,
            compute_nodes: req.compute_nodes,
            reader_id: reader_id.clone(),
            role: reader_role_name(&id),
            read_policy: read_policy_name(&id),
            write_policy: write_policy_name(&id),
            entries: Vec::new(),
            state: SecretState::Active,
            created_at: now,
            expires_at,
        };

        let mut undo = Vec::new();
        let result = self
            .create_steps(&mut record, &pairs, &specs, &mut undo)
            .await;
        match result {
            Ok(token) => {
                tracing::info!(secret = %id, owner = %owner, entries = record.entries.len(), "registered secret");
                Ok((record, token))
            }
            Err((step, source)) => Err(self
                .fail(id, step, source, Aftermath::NothingChanged, undo)
                .await),
        }
    }

    async fn create_steps(
        &self,
        record: &mut SecretRecord,
        pairs: &[(NodeName, Principal)],
        specs: &[EntrySpec],
        undo: &mut Vec<Undo>,
    ) -> Result<IssuedToken, (&'static str, BackendError)> {
        let id = record.id.clone();
        undo.push(Undo::EntriesExcept(
            record.reader_id.clone(),
            BTreeSet::new(),
        ));
        let ids = self
            .spire
            .create_entries(specs)
            .await
            .map_err(|e| ("create SPIRE entries", e.into()))?;
        record.entries = pairs
            .iter()
            .zip(ids)
            .map(|((node, principal), entry_id)| EntryRef {
                node: node.clone(),
                principal: principal.clone(),
                entry_id,
            })
            .collect();

        undo.push(Undo::Policy(record.read_policy.clone()));
        self.vault
            .write_policy(&record.read_policy, &reader_policy(&self.kv_mount, &id))
            .await
            .map_err(|e| ("write the read policy", e.into()))?;

        undo.push(Undo::Role(record.role.clone()));
        self.vault
            .write_reader_role(&ReaderRole {
                name: record.role.clone(),
                bound_subject: record.reader_id.clone(),
                policy: record.read_policy.clone(),
            })
            .await
            .map_err(|e| ("write the reader role", e.into()))?;

        undo.push(Undo::Policy(record.write_policy.clone()));
        self.vault
            .write_policy(&record.write_policy, &writer_policy(&self.kv_mount, &id))
            .await
            .map_err(|e| ("write the write-once policy", e.into()))?;

        undo.push(Undo::Record(id.clone()));
        self.vault
            .create_record(record)
            .await
            .map_err(|e| ("create the registry record", e.into()))?;

        undo.push(Undo::Index(record.owner.clone(), id.clone()));
        self.vault
            .index_owner(&record.owner, &id)
            .await
            .map_err(|e| ("index the owner", e.into()))?;

        // Last: a token cannot be taken back, but it would be inert anyway once the rollback
        // deleted the policy it names (Vault resolves policies by name on every request).
        self.vault
            .create_write_token(&record.write_policy, &id)
            .await
            .map_err(|e| ("mint the write-once token", e.into()))
    }

    /// Logs and counts a failure, runs `undo` in reverse, and builds the error.
    async fn fail(
        &self,
        id: SecretId,
        step: &'static str,
        source: BackendError,
        aftermath: Aftermath,
        undo: Vec<Undo>,
    ) -> SecretsError {
        self.metrics.inc(
            "hpcs_backend_failures_total",
            &[("backend", source.backend()), ("op", step)],
        );
        tracing::warn!(secret = %id, step, error = %chain(&source), "backend call failed");
        let cleanup_failures = self.rollback(&id, undo).await;
        SecretsError::Backend {
            id,
            step,
            source: Box::new(source),
            aftermath,
            cleanup_failures,
        }
    }

    /// Runs `undo` in reverse; returns the failures (also logged and counted).
    async fn rollback(&self, id: &SecretId, undo: Vec<Undo>) -> Vec<String> {
        let mut cleanup_failures = Vec::new();
        if !undo.is_empty() {
            for u in undo.into_iter().rev() {
                if let Err(e) = self.undo(&u).await {
                    cleanup_failures.push(chain(&e));
                }
            }
            if cleanup_failures.is_empty() {
                self.metrics
                    .inc("hpcs_rollbacks_total", &[("result", "complete")]);
            } else {
                self.metrics
                    .inc("hpcs_rollbacks_total", &[("result", "incomplete")]);
                tracing::error!(
                    secret = %id,
                    failures = ?cleanup_failures,
                    "rollback incomplete: these objects may be orphaned"
                );
            }
        }
        cleanup_failures
    }

    async fn undo(&self, u: &Undo) -> Result<(), BackendError> {
        match u {
            Undo::EntriesExcept(spiffe_id, keep) => self.converge_entries(spiffe_id, keep).await,
            Undo::Policy(name) => Ok(self.vault.delete_policy(name).await?),
            Undo::Role(name) => Ok(self.vault.delete_reader_role(name).await?),
            Undo::Record(id) => Ok(self.vault.delete_record(id).await?),
            Undo::Index(owner, id) => Ok(self.vault.unindex_owner(owner, id).await?),
        }
    }

    /// Deletes every SPIRE entry issuing `spiffe_id` whose ID is not in `keep`.
    async fn converge_entries(
        &self,
        spiffe_id: &SpiffeId,
        keep: &BTreeSet<String>,
    ) -> Result<(), BackendError> {
        let extra: Vec<String> = self
            .spire
            .list_by_spiffe_id(spiffe_id)
            .await?
            .into_iter()
            .map(|e| e.id)
            .filter(|id| !keep.contains(id))
            .collect();
        if !extra.is_empty() {
            self.spire.delete_entries(&extra).await?;
        }
        Ok(())
    }

    /// Reads a record the caller owns.
    async fn owned_record(
        &self,
        owner: &SpiffeId,
        id: &SecretId,
    ) -> Result<crate::vault::Versioned<SecretRecord>, SecretsError> {
        match self.vault.read_record(id).await {
            Ok(Some(v)) if &v.value.owner == owner => Ok(v),
            // Someone else's secret looks exactly like a missing one.
            Ok(_) => Err(SecretsError::NotFound(id.clone())),
            Err(e) => Err(SecretsError::Backend {
                id: id.clone(),
                step: "read the registry record",
                source: Box::new(e.into()),
                aftermath: Aftermath::NothingChanged,
                cleanup_failures: Vec::new(),
            }),
        }
    }

    /// The caller's secret `id`.
    ///
    /// # Errors
    ///
    /// [`SecretsError::NotFound`] if it does not exist or is not the caller's.
    pub async fn get(&self, owner: &SpiffeId, id: &SecretId) -> Result<SecretRecord, SecretsError> {
        Ok(self.owned_record(owner, id).await?.value)
    }

    /// The caller's secrets, oldest first.
    ///
    /// # Errors
    ///
    /// [`SecretsError::Backend`] when Vault fails.
    pub async fn list(&self, owner: &SpiffeId) -> Result<Vec<SecretRecord>, SecretsError> {
        let backend_err = |id: SecretId, step, e: VaultError| SecretsError::Backend {
            id,
            step,
            source: Box::new(e.into()),
            aftermath: Aftermath::NothingChanged,
            cleanup_failures: Vec::new(),
        };
        let placeholder: SecretId = "list".parse().expect("valid ID");
        let ids = self
            .vault
            .owned(owner)
            .await
            .map_err(|e| backend_err(placeholder, "list the owner's secrets", e))?;
        let reads = futures::stream::iter(ids)
            .map(|id| async move {
                let r = self.vault.read_record(&id).await;
                (id, r)
            })
            .buffer_unordered(LIST_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut out = Vec::new();
        for (id, r) in reads {
            match r {
                // Owner check again: the index is a convenience, the record is the truth.
                Ok(Some(v)) if &v.value.owner == owner => out.push(v.value),
                Ok(_) => {}
                Err(e) => return Err(backend_err(id, "read the registry record", e)),
            }
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Adds and removes readers and nodes of the caller's secret `id`.
    ///
    /// # Errors
    ///
    /// [`SecretsError::NotFound`], [`SecretsError::Invalid`], [`SecretsError::Conflict`] (a
    /// concurrent change, or a revocation in progress) or [`SecretsError::Backend`].
    pub async fn update(
        &self,
        owner: &SpiffeId,
        id: &SecretId,
        req: UpdateSecretRequest,
    ) -> Result<SecretRecord, SecretsError> {
        let _guard = self.lock_for(id).lock().await;
        let current = self.owned_record(owner, id).await?;
        if current.value.state != SecretState::Active {
            return Err(SecretsError::Conflict(id.clone()));
        }
        let old = &current.value;
        let mut readers = old.readers.clone();
        readers.users.extend(req.add_readers.users);
        readers.groups.extend(req.add_readers.groups);
        readers
            .users
            .retain(|u| !req.remove_readers.users.contains(u));
        readers
            .groups
            .retain(|g| !req.remove_readers.groups.contains(g));
        let mut nodes = old.compute_nodes.clone();
        nodes.extend(req.add_compute_nodes);
        nodes.retain(|n| !req.remove_compute_nodes.contains(n));
        self.check_shape(&readers, &nodes)?;

        let desired: BTreeSet<(NodeName, Principal)> = nodes
            .iter()
            .flat_map(|n| Principal::all(&readers).map(move |p| (n.clone(), p)))
            .collect();
        let kept: Vec<EntryRef> = old
            .entries
            .iter()
            .filter(|e| desired.contains(&(e.node.clone(), e.principal.clone())))
            .cloned()
            .collect();
        let existing: BTreeSet<(NodeName, Principal)> = kept
            .iter()
            .map(|e| (e.node.clone(), e.principal.clone()))
            .collect();
        let to_add: Vec<(NodeName, Principal)> = desired.difference(&existing).cloned().collect();
        let old_ids: BTreeSet<String> = old.entries.iter().map(|e| e.entry_id.clone()).collect();

        if to_add.is_empty() && kept.len() == old.entries.len() {
            // Nothing to change; still converge, so that repeating a request whose removal
            // step failed finishes the job.
            self.converge_entries(&old.reader_id, &old_ids)
                .await
                .map_err(|e| SecretsError::Backend {
                    id: id.clone(),
                    step: "delete SPIRE entries of removed readers",
                    source: Box::new(e),
                    aftermath: Aftermath::ChangeRecorded,
                    cleanup_failures: Vec::new(),
                })?;
            return Ok(current.value);
        }

        let expires = old.expires_at.map_or(0, OffsetDateTime::unix_timestamp);
        let specs: Vec<EntrySpec> = to_add
            .iter()
            .map(|(n, p)| self.spec(&old.reader_id, n, p, expires))
            .collect();
        // Undo of the additions: back to exactly the entries of the current record.
        let undo = vec![Undo::EntriesExcept(old.reader_id.clone(), old_ids)];
        let new_ids = match self.spire.create_entries(&specs).await {
            Ok(ids) => ids,
            Err(e) => {
                return Err(self
                    .fail(
                        id.clone(),
                        "create SPIRE entries",
                        e.into(),
                        Aftermath::NothingChanged,
                        undo,
                    )
                    .await);
            }
        };
        let mut next = old.clone();
        next.readers = readers;
        next.compute_nodes = nodes;
        next.entries = kept;
        next.entries.extend(to_add.into_iter().zip(new_ids).map(
            |((node, principal), entry_id)| EntryRef {
                node,
                principal,
                entry_id,
            },
        ));
        match self.vault.update_record(&next, current.version).await {
            Ok(_) => {}
            Err(VaultError::Conflict { .. }) => {
                // Another replica changed the record since we read it: undo our additions.
                self.rollback(id, undo).await;
                return Err(SecretsError::Conflict(id.clone()));
            }
            Err(e) => {
                return Err(self
                    .fail(
                        id.clone(),
                        "update the registry record",
                        e.into(),
                        Aftermath::NothingChanged,
                        undo,
                    )
                    .await);
            }
        }
        // Committed. Now remove the access the change revoked.
        let keep: BTreeSet<String> = next.entries.iter().map(|e| e.entry_id.clone()).collect();
        if let Err(e) = self.converge_entries(&next.reader_id, &keep).await {
            return Err(self
                .fail(
                    id.clone(),
                    "delete SPIRE entries of removed readers",
                    e,
                    Aftermath::ChangeRecorded,
                    Vec::new(),
                )
                .await);
        }
        tracing::info!(secret = %id, entries = next.entries.len(), "updated secret");
        Ok(next)
    }

    /// Revokes the caller's secret `id`: SPIRE entries, Vault role, policies, key record, index
    /// and registry record all go.
    ///
    /// # Errors
    ///
    /// [`SecretsError::NotFound`], [`SecretsError::Conflict`] or [`SecretsError::Backend`] (repeat
    /// the call).
    pub async fn revoke(&self, owner: &SpiffeId, id: &SecretId) -> Result<(), SecretsError> {
        let _guard = self.lock_for(id).lock().await;
        let current = self.owned_record(owner, id).await?;
        self.revoke_locked(current).await
    }

    async fn revoke_locked(
        &self,
        current: crate::vault::Versioned<SecretRecord>,
    ) -> Result<(), SecretsError> {
        let mut rec = current.value;
        let id = rec.id.clone();
        if rec.state == SecretState::Active {
            rec.state = SecretState::Revoking;
            match self.vault.update_record(&rec, current.version).await {
                Ok(_) => {}
                Err(VaultError::Conflict { .. }) => return Err(SecretsError::Conflict(id)),
                Err(e) => {
                    return Err(self
                        .fail(
                            id,
                            "mark the secret as revoking",
                            e.into(),
                            Aftermath::NothingChanged,
                            Vec::new(),
                        )
                        .await);
                }
            }
        }
        let incomplete = |step, e: BackendError| (step, e);
        let steps = async {
            // Entries first: from here on no node can obtain the reader identity.
            self.converge_entries(&rec.reader_id, &BTreeSet::new())
                .await
                .map_err(|e| incomplete("delete SPIRE entries", e))?;
            self.vault
                .delete_reader_role(&rec.role)
                .await
                .map_err(|e| incomplete("delete the reader role", e.into()))?;
            self.vault
                .delete_policy(&rec.read_policy)
                .await
                .map_err(|e| incomplete("delete the read policy", e.into()))?;
            self.vault
                .delete_policy(&rec.write_policy)
                .await
                .map_err(|e| incomplete("delete the write-once policy", e.into()))?;
            self.vault
                .destroy_key(&id)
                .await
                .map_err(|e| incomplete("destroy the key record", e.into()))?;
            self.vault
                .unindex_owner(&rec.owner, &id)
                .await
                .map_err(|e| incomplete("remove the owner index entry", e.into()))?;
            self.vault
                .delete_record(&id)
                .await
                .map_err(|e| incomplete("delete the registry record", e.into()))
        };
        match steps.await {
            Ok(()) => {
                tracing::info!(secret = %id, "revoked secret");
                Ok(())
            }
            Err((step, e)) => Err(self
                .fail(id, step, e, Aftermath::RevocationIncomplete, Vec::new())
                .await),
        }
    }

    /// Revokes every secret whose expiry has passed; returns how many.
    ///
    /// # Errors
    ///
    /// [`SecretsError::Backend`] if the registry cannot be listed. Failures on single secrets are
    /// logged and retried on the next sweep.
    pub async fn sweep_expired(&self) -> Result<usize, SecretsError> {
        let now = OffsetDateTime::now_utc();
        let ids = self
            .vault
            .all_records()
            .await
            .map_err(|e| SecretsError::Backend {
                id: "sweep".parse().expect("valid ID"),
                step: "list the registry",
                source: Box::new(e.into()),
                aftermath: Aftermath::NothingChanged,
                cleanup_failures: Vec::new(),
            })?;
        let mut revoked = 0;
        for id in ids {
            let _guard = self.lock_for(&id).lock().await;
            let rec = match self.vault.read_record(&id).await {
                Ok(Some(r)) if r.value.is_expired(now) => r,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(secret = %id, error = %chain(&e), "expiry sweep could not read record");
                    continue;
                }
            };
            match self.revoke_locked(rec).await {
                Ok(()) => {
                    tracing::info!(secret = %id, "revoked expired secret");
                    revoked += 1;
                }
                Err(e) => {
                    tracing::warn!(secret = %id, error = %chain(&e), "expiry sweep could not revoke");
                }
            }
        }
        Ok(revoked)
    }
}
