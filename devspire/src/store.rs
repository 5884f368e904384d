//! Registration entries and join tokens, kept in memory and persisted to `entries.json` in the
//! state directory.
//!
//! Readers take a cheap [`Snapshot`] (an `Arc`); writers go through [`Store::update`], which
//! serialises changes, writes the file atomically and only then publishes the new snapshot, so a
//! change is visible only once it is durable.
//!
//! Changes are group-committed: every change waiting while a write is under way is applied and
//! written by the next write, in arrival order, so concurrent callers share one file write (and
//! fsync) instead of queueing for one each. A commit runs in a task of its own, so a caller that
//! gives up waiting (a cancelled RPC) cannot leave a change written but not published.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use hpcs_spire_api::spiffe_id::SpiffeIdError;
use hpcs_spire_api::types::Spiffeid;
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::ids::TrustDomain;
use crate::selectors::{Selector, SelectorError};

/// File name of the entry store inside the state directory.
pub const ENTRIES_FILE: &str = "entries.json";

/// Longest accepted entry ID, in bytes.
pub const MAX_ENTRY_ID_LEN: usize = 255;

/// Why an entry is invalid. The messages go back to API callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// A required SPIFFE ID field is missing.
    #[error("invalid {field}: missing")]
    MissingId {
        /// `spiffe_id` or `parent_id`.
        field: &'static str,
    },
    /// A SPIFFE ID field is malformed.
    #[error("invalid {field}")]
    BadId {
        /// `spiffe_id` or `parent_id`.
        field: &'static str,
        /// Why.
        #[source]
        source: SpiffeIdError,
    },
    /// A SPIFFE ID is outside the server's trust domain.
    #[error("invalid {field}: {id:?} is not a member of trust domain {trust_domain:?}")]
    ForeignTrustDomain {
        /// `spiffe_id` or `parent_id`.
        field: &'static str,
        /// The rejected ID.
        id: String,
        /// The server's trust domain.
        trust_domain: String,
    },
    /// A workload SPIFFE ID has no path or a path reserved for SPIRE.
    #[error("invalid spiffe_id: {id:?} is not a workload ID (empty path or reserved /spire/ path)")]
    NotWorkloadId {
        /// The rejected ID.
        id: String,
    },
    /// No selectors.
    #[error("invalid selectors: at least one selector is required")]
    NoSelectors,
    /// A selector is invalid.
    #[error("invalid selector")]
    BadSelector(#[source] SelectorError),
    /// A negative TTL.
    #[error("invalid {field}: must not be negative")]
    NegativeTtl {
        /// The field.
        field: &'static str,
    },
    /// Federation is not simulated.
    #[error("invalid federates_with: devspire does not support federation")]
    Federation,
    /// The entry ID holds characters we do not accept or is too long.
    #[error("invalid entry id {id:?}: use 1 to {MAX_ENTRY_ID_LEN} of A-Z, a-z, 0-9, '.', '-', '_'")]
    BadEntryId {
        /// The rejected ID.
        id: String,
    },
    /// A DNS name is malformed.
    #[error("invalid dns_names: {name:?} is not a DNS name")]
    BadDnsName {
        /// The rejected name.
        name: String,
    },
}

/// Errors of the store itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store file exists but cannot be read.
    #[error("failed to read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The store file is not valid JSON of the expected shape.
    #[error("failed to parse {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// An entry in the store file is invalid.
    #[error("invalid entry {id:?} in {path}")]
    InvalidEntry {
        /// The file.
        path: PathBuf,
        /// The entry's ID.
        id: String,
        /// Why.
        #[source]
        source: EntryError,
    },
    /// The store file cannot be written.
    #[error("failed to write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot cannot be serialised.
    #[error("failed to serialise the entry store")]
    Serialize(#[source] serde_json::Error),
    /// The blocking writer task died.
    #[error("the entry store writer task failed")]
    WriterTask(#[source] tokio::task::JoinError),
    /// The group commit that carried this change failed; the change was dropped.
    #[error(transparent)]
    Commit(Arc<StoreError>),
    /// The commit task ended without answering (the runtime is shutting down).
    #[error("the entry store commit was abandoned")]
    Abandoned,
}

/// A validated registration entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Entry ID.
    pub id: String,
    /// SPIFFE ID (URI) of the identity.
    pub spiffe_id: String,
    /// SPIFFE ID (URI) of the agent that serves it.
    pub parent_id: String,
    /// Sorted, without duplicates.
    pub selectors: Vec<Selector>,
    /// X.509-SVID TTL in seconds (0: server default).
    pub x509_svid_ttl: i32,
    /// JWT-SVID TTL in seconds (0: server default).
    pub jwt_svid_ttl: i32,
    /// Stored for API fidelity; unused.
    pub admin: bool,
    /// Stored for API fidelity; unused.
    pub downstream: bool,
    /// Seconds since the epoch after which the entry is not served (0: never).
    pub expires_at: i64,
    /// DNS SANs of the X.509-SVID.
    pub dns_names: Vec<String>,
    /// Bumped on every change (entries are never updated here, so 0).
    pub revision_number: i64,
    /// Stored for API fidelity; unused.
    pub store_svid: bool,
    /// Operator hint passed to workloads.
    pub hint: String,
    /// Creation time, seconds since the epoch.
    pub created_at: i64,
}

/// Input of [`Entry::validate`]: what an API caller or the store file provides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryFields {
    /// Entry ID; generated when empty.
    #[serde(default)]
    pub id: String,
    /// SPIFFE ID URI.
    pub spiffe_id: Option<String>,
    /// Parent SPIFFE ID URI.
    pub parent_id: Option<String>,
    /// (type, value) pairs.
    pub selectors: Vec<StoredSelector>,
    /// See [`Entry`].
    #[serde(default)]
    pub x509_svid_ttl: i32,
    /// See [`Entry`].
    #[serde(default)]
    pub jwt_svid_ttl: i32,
    /// Must be empty.
    #[serde(default)]
    pub federates_with: Vec<String>,
    /// See [`Entry`].
    #[serde(default)]
    pub admin: bool,
    /// See [`Entry`].
    #[serde(default)]
    pub downstream: bool,
    /// See [`Entry`].
    #[serde(default)]
    pub expires_at: i64,
    /// See [`Entry`].
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// See [`Entry`].
    #[serde(default)]
    pub revision_number: i64,
    /// See [`Entry`].
    #[serde(default)]
    pub store_svid: bool,
    /// See [`Entry`].
    #[serde(default)]
    pub hint: String,
    /// See [`Entry`].
    #[serde(default)]
    pub created_at: i64,
}

/// A selector as stored: its type and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSelector {
    /// Selector type, e.g. `unix`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Selector value, e.g. `uid:1000`.
    pub value: String,
}

/// Converts an optional API SPIFFE ID message into a URI, naming the field in errors.
///
/// # Errors
///
/// [`EntryError::BadId`] when the parts are invalid.
pub fn id_field(id: Option<&Spiffeid>, field: &'static str) -> Result<Option<String>, EntryError> {
    id.map(|id| {
        id.to_uri()
            .map_err(|source| EntryError::BadId { field, source })
    })
    .transpose()
}

impl Entry {
    /// Validates `fields` for trust domain `td`; generates an ID when empty.
    ///
    /// # Errors
    ///
    /// The first [`EntryError`] found.
    pub fn validate(fields: EntryFields, td: &TrustDomain) -> Result<Self, EntryError> {
        let spiffe_id = member_id(fields.spiffe_id, "spiffe_id", td)?;
        let path = &spiffe_id[td.id().len()..];
        if path.is_empty() || path == "/spire" || path.starts_with("/spire/") {
            return Err(EntryError::NotWorkloadId { id: spiffe_id });
        }
        let parent_id = member_id(fields.parent_id, "parent_id", td)?;
        if fields.selectors.is_empty() {
            return Err(EntryError::NoSelectors);
        }
        let mut selectors = fields
            .selectors
            .iter()
            .map(|s| Selector::parse(&s.kind, &s.value))
            .collect::<Result<Vec<_>, _>>()
            .map_err(EntryError::BadSelector)?;
        selectors.sort();
        selectors.dedup();
        if fields.x509_svid_ttl < 0 {
            return Err(EntryError::NegativeTtl {
                field: "x509_svid_ttl",
            });
        }
        if fields.jwt_svid_ttl < 0 {
            return Err(EntryError::NegativeTtl {
                field: "jwt_svid_ttl",
            });
        }
        if !fields.federates_with.is_empty() {
            return Err(EntryError::Federation);
        }
        for name in &fields.dns_names {
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
                });
            if !valid {
                return Err(EntryError::BadDnsName { name: name.clone() });
            }
        }
        let id = if fields.id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            let valid = fields.id.len() <= MAX_ENTRY_ID_LEN
                && fields
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if !valid {
                return Err(EntryError::BadEntryId { id: fields.id });
            }
            fields.id
        };
        Ok(Self {
            id,
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl: fields.x509_svid_ttl,
            jwt_svid_ttl: fields.jwt_svid_ttl,
            admin: fields.admin,
            downstream: fields.downstream,
            expires_at: fields.expires_at,
            dns_names: fields.dns_names,
            revision_number: fields.revision_number,
            store_svid: fields.store_svid,
            hint: fields.hint,
            created_at: fields.created_at,
        })
    }

    /// The stored form.
    #[must_use]
    pub fn to_fields(&self) -> EntryFields {
        EntryFields {
            id: self.id.clone(),
            spiffe_id: Some(self.spiffe_id.clone()),
            parent_id: Some(self.parent_id.clone()),
            selectors: self
                .selectors
                .iter()
                .map(|s| StoredSelector {
                    kind: s.kind().to_owned(),
                    value: s.value(),
                })
                .collect(),
            x509_svid_ttl: self.x509_svid_ttl,
            jwt_svid_ttl: self.jwt_svid_ttl,
            federates_with: Vec::new(),
            admin: self.admin,
            downstream: self.downstream,
            expires_at: self.expires_at,
            dns_names: self.dns_names.clone(),
            revision_number: self.revision_number,
            store_svid: self.store_svid,
            hint: self.hint.clone(),
            created_at: self.created_at,
        }
    }

    /// Whether `other` is "similar" in SPIRE's sense: same SPIFFE ID, parent and selectors.
    #[must_use]
    pub fn is_similar(&self, other: &Self) -> bool {
        self.spiffe_id == other.spiffe_id
            && self.parent_id == other.parent_id
            && self.selectors == other.selectors
    }

    /// Whether the entry has expired at `now` (seconds since the epoch).
    #[must_use]
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at != 0 && self.expires_at <= now
    }
}

fn member_id(
    id: Option<String>,
    field: &'static str,
    td: &TrustDomain,
) -> Result<String, EntryError> {
    let Some(id) = id.filter(|id| !id.is_empty()) else {
        return Err(EntryError::MissingId { field });
    };
    let parsed = Spiffeid::from_uri(&id).map_err(|source| EntryError::BadId { field, source })?;
    if parsed.trust_domain != td.as_str() {
        return Err(EntryError::ForeignTrustDomain {
            field,
            id,
            trust_domain: td.to_string(),
        });
    }
    Ok(id)
}

/// A point-in-time view of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Entries by ID.
    pub entries: BTreeMap<String, Arc<Entry>>,
    /// Join tokens: value -> expiry (seconds since the epoch).
    pub join_tokens: BTreeMap<String, i64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    entries: Vec<EntryFields>,
    #[serde(default)]
    join_tokens: BTreeMap<String, i64>,
}

const STORE_VERSION: u32 = 1;

/// A queued change: applied to the working copy, it returns what answers its caller once the
/// commit is known to have succeeded or failed.
type Change = Box<dyn FnOnce(&mut Snapshot) -> Answer + Send>;
/// Answers one caller with the commit's outcome (`Ok(changed)`).
type Answer = Box<dyn FnOnce(Result<bool, Arc<StoreError>>) + Send>;

/// The persisted entry store.
#[derive(Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Changes not yet taken by a commit, in arrival order.
    queue: Mutex<Vec<Change>>,
    /// Held by the one commit under way.
    writer: tokio::sync::Mutex<()>,
    current: RwLock<Arc<Snapshot>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Loads `entries.json` from `state_dir` (an absent file is an empty store). Blocking.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] naming the file (and entry) when it cannot be read or is invalid.
    pub fn open(state_dir: &Path, td: &TrustDomain) -> Result<Self, StoreError> {
        let path = state_dir.join(ENTRIES_FILE);
        let snapshot = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: StoreFile =
                    serde_json::from_slice(&bytes).map_err(|source| StoreError::Parse {
                        path: path.clone(),
                        source,
                    })?;
                let mut entries = BTreeMap::new();
                for fields in file.entries {
                    let id = fields.id.clone();
                    // An entry without an ID would get a fresh one on every start.
                    if id.is_empty() {
                        return Err(StoreError::InvalidEntry {
                            path,
                            id,
                            source: EntryError::BadEntryId { id: String::new() },
                        });
                    }
                    let entry =
                        Entry::validate(fields, td).map_err(|source| StoreError::InvalidEntry {
                            path: path.clone(),
                            id: id.clone(),
                            source,
                        })?;
                    entries.insert(id, Arc::new(entry));
                }
                Snapshot {
                    entries,
                    join_tokens: file.join_tokens,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot::default(),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                queue: Mutex::new(Vec::new()),
                writer: tokio::sync::Mutex::new(()),
                current: RwLock::new(Arc::new(snapshot)),
            }),
        })
    }

    /// The current state.
    #[must_use]
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot()
    }

    /// Applies `change` to a copy of the current state, persists it when it differs, then
    /// publishes it. Returns what `change` returned and whether it changed anything.
    ///
    /// `change` runs after every change queued before it and sees their effects; it may run on
    /// another task (hence `Send + 'static`).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the file cannot be written; the change (and every other change of
    /// the same commit) is then dropped.
    pub async fn update<R: Send + 'static>(
        &self,
        change: impl FnOnce(&mut Snapshot) -> R + Send + 'static,
    ) -> Result<(R, bool), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued: Change = Box::new(move |snapshot: &mut Snapshot| {
            let result = change(snapshot);
            Box::new(move |outcome: Result<bool, Arc<StoreError>>| {
                let _ = tx.send(
                    outcome
                        .map(|changed| (result, changed))
                        .map_err(StoreError::Commit),
                );
            })
        });
        self.inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(queued);
        // The commit that takes this change may be this task's or one already waiting for the
        // writer lock; either way it answers through `tx`.
        tokio::spawn(Arc::clone(&self.inner).commit());
        rx.await.map_err(|_| StoreError::Abandoned)?
    }
}

impl Inner {
    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Takes every queued change, applies them in order to one copy, writes it once, publishes
    /// it, then answers each caller. Does nothing when an earlier commit took the queue.
    async fn commit(self: Arc<Self>) {
        let _writer = self.writer.lock().await;
        let changes =
            std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
        if changes.is_empty() {
            return;
        }
        let before = self.snapshot();
        let mut next = (*before).clone();
        let mut answers = Vec::with_capacity(changes.len());
        for change in changes {
            let prior = next.clone();
            let answer = change(&mut next);
            answers.push((answer, next != prior));
        }
        let outcome = if answers.iter().any(|(_, changed)| *changed) {
            self.write(&next).await
        } else {
            Ok(())
        };
        match outcome {
            Ok(()) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
                for (answer, changed) in answers {
                    answer(Ok(changed));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for (answer, _) in answers {
                    answer(Err(Arc::clone(&e)));
                }
            }
        }
    }

    async fn write(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let file = StoreFile {
            version: STORE_VERSION,
            entries: snapshot.entries.values().map(|e| e.to_fields()).collect(),
            join_tokens: snapshot.join_tokens.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(StoreError::Serialize)?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || fsutil::write_private_atomic(&path, &bytes))
            .await
            .map_err(StoreError::WriterTask)?
            .map_err(|source| StoreError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn td() -> TrustDomain {
        "hpcs.test".parse().unwrap()
    }

    fn fields(spiffe_id: &str, parent: &str, selectors: &[(&str, &str)]) -> EntryFields {
        EntryFields {
            spiffe_id: Some(spiffe_id.into()),
            parent_id: Some(parent.into()),
            selectors: selectors
                .iter()
                .map(|(k, v)| StoredSelector {
                    kind: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
            ..EntryFields::default()
        }
    }

    const PARENT: &str = "spiffe://hpcs.test/spire/agent/devspire/node1";

    #[test]
    fn validates_and_normalises() {
        let entry = Entry::validate(
            fields(
                "spiffe://hpcs.test/hpcs/secret/s1",
                PARENT,
                &[
                    ("unix", "user:alice"),
                    ("unix", "uid:1000"),
                    ("unix", "uid:1000"),
                ],
            ),
            &td(),
        )
        .unwrap();
        assert_eq!(entry.selectors.len(), 2);
        assert!(!entry.id.is_empty());
        let again = Entry::validate(entry.to_fields(), &td()).unwrap();
        assert_eq!(again, entry);
        assert!(again.is_similar(&entry));
    }

    #[rstest]
    #[case(fields("", PARENT, &[("unix", "uid:1")]), "invalid spiffe_id: missing")]
    #[case(fields("spiffe://hpcs.test/a//b", PARENT, &[("unix", "uid:1")]), "invalid spiffe_id")]
    #[case(fields("not-an-id", PARENT, &[("unix", "uid:1")]), "invalid spiffe_id")]
    #[case(fields("spiffe://other.test/a", PARENT, &[("unix", "uid:1")]), "not a member of trust domain")]
    #[case(fields("spiffe://hpcs.test", PARENT, &[("unix", "uid:1")]), "not a workload ID")]
    #[case(fields("spiffe://hpcs.test/spire/x", PARENT, &[("unix", "uid:1")]), "not a workload ID")]
    #[case(fields("spiffe://hpcs.test/a", "spiffe://hpcs.test/a b", &[("unix", "uid:1")]), "invalid parent_id")]
    #[case(fields("spiffe://hpcs.test/a", PARENT, &[]), "at least one selector")]
    #[case(fields("spiffe://hpcs.test/a", PARENT, &[("docker", "label:x")]), "invalid selector")]
    fn rejects(#[case] fields: EntryFields, #[case] message: &str) {
        let err = Entry::validate(fields, &td()).unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }

    #[test]
    fn rejects_bad_ids_ttls_and_federation() {
        let mut f = fields("spiffe://hpcs.test/a", PARENT, &[("unix", "uid:1")]);
        f.id = "a/b".into();
        assert!(matches!(
            Entry::validate(f.clone(), &td()),
            Err(EntryError::BadEntryId { .. })
        ));
        f.id = String::new();
        f.jwt_svid_ttl = -1;
        assert!(matches!(
            Entry::validate(f.clone(), &td()),
            Err(EntryError::NegativeTtl { .. })
        ));
        f.jwt_svid_ttl = 0;
        f.federates_with = vec!["spiffe://x".into()];
        assert_eq!(Entry::validate(f, &td()), Err(EntryError::Federation));
    }

    #[tokio::test]
    async fn persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &td()).unwrap();
        assert!(store.snapshot().entries.is_empty());
        let entry = Entry::validate(
            fields("spiffe://hpcs.test/a", PARENT, &[("unix", "uid:1000")]),
            &td(),
        )
        .unwrap();
        let id = entry.id.clone();
        let (inserted, key) = (Arc::new(entry.clone()), id.clone());
        let ((), changed) = store
            .update(move |s| {
                s.entries.insert(key, inserted);
            })
            .await
            .unwrap();
        assert!(changed);
        let ((), changed) = store.update(|_| {}).await.unwrap();
        assert!(!changed);
        let reopened = Store::open(dir.path(), &td()).unwrap();
        assert_eq!(
            reopened.snapshot().entries.get(&id).map(|e| (**e).clone()),
            Some(entry)
        );

        std::fs::write(dir.path().join(ENTRIES_FILE), b"{not json").unwrap();
        let err = Store::open(dir.path(), &td()).unwrap_err();
        assert!(err.to_string().contains("failed to parse"), "{err}");
    }

    fn entry(n: usize) -> Arc<Entry> {
        let spiffe_id = format!("spiffe://hpcs.test/w{n}");
        Arc::new(
            Entry::validate(fields(&spiffe_id, PARENT, &[("unix", "uid:1000")]), &td()).unwrap(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_updates_are_all_applied_in_order_and_each_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), &td()).unwrap());
        let tasks: Vec<_> = (0..64)
            .map(|n| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let e = entry(n);
                    store
                        .update(move |s| {
                            let before = s.entries.len();
                            s.entries.insert(e.id.clone(), e);
                            before
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut seen = Vec::new();
        for task in tasks {
            let (before, changed) = task.await.unwrap();
            assert!(changed);
            seen.push(before);
        }
        // Each change saw the ones applied before it: the counts are 0..64, each once.
        seen.sort_unstable();
        assert_eq!(seen, (0..64).collect::<Vec<_>>());
        assert_eq!(store.snapshot().entries.len(), 64);
        let reopened = Store::open(dir.path(), &td()).unwrap();
        assert_eq!(reopened.snapshot(), store.snapshot());
        // A change that changes nothing in a busy store still reports `false`.
        let ((), changed) = store.update(|_| {}).await.unwrap();
        assert!(!changed);
    }

    #[tokio::test]
    async fn a_failed_write_fails_the_change_and_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &td()).unwrap();
        // The atomic write cannot replace a directory at its temporary name.
        std::fs::create_dir(dir.path().join(format!("{ENTRIES_FILE}.tmp"))).unwrap();
        let e = entry(1);
        let err = store
            .update(move |s| {
                s.entries.insert(e.id.clone(), e);
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains(ENTRIES_FILE), "{err}");
        assert!(store.snapshot().entries.is_empty());
        assert!(!dir.path().join(ENTRIES_FILE).exists());
    }

    #[tokio::test]
    async fn a_caller_that_stops_waiting_does_not_lose_its_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &td()).unwrap();
        let e = entry(1);
        let id = e.id.clone();
        // Polled once (queued, commit task spawned), then dropped like a cancelled RPC.
        {
            let update = std::pin::pin!(store.update(move |s| {
                s.entries.insert(e.id.clone(), e);
            }));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(update.poll(&mut cx).is_pending());
        }
        // A later change is committed after it, so by then the first is durable and published.
        store.update(|_| {}).await.unwrap();
        assert!(store.snapshot().entries.contains_key(&id));
        let reopened = Store::open(dir.path(), &td()).unwrap();
        assert!(reopened.snapshot().entries.contains_key(&id));
    }
}
