//! `spire.api.server.entry.v1.Entry`: CountEntries, ListEntries, GetEntry, BatchCreateEntry,
//! BatchDeleteEntry, with SPIRE's semantics (per-item statuses in batches, ALREADY_EXISTS for a
//! similar entry, output masks, filters, page tokens).

use std::collections::BTreeSet;
use std::sync::Arc;

use hpcs_spire_api::server::entry::v1::entry_server::Entry as EntryApi;
use hpcs_spire_api::server::entry::v1::{
    BatchCreateEntryRequest, BatchCreateEntryResponse, BatchDeleteEntryRequest,
    BatchDeleteEntryResponse, CountEntriesRequest, CountEntriesResponse, GetEntryRequest,
    ListEntriesRequest, ListEntriesResponse, batch_create_entry_response,
    batch_delete_entry_response,
};
use hpcs_spire_api::types::{
    self, EntryMask, SelectorMatch, Spiffeid, selector_match::MatchBehavior,
};
use tonic::{Code, Request, Response, Status};

use crate::selectors::Selector;
use crate::state::{Shared, unix_now};
use crate::store::{Entry, EntryError, EntryFields, StoredSelector, id_field};

/// The Entry service.
#[derive(Debug, Clone)]
pub struct EntryService {
    shared: Arc<Shared>,
}

impl EntryService {
    /// A service over `shared`.
    #[must_use]
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// The message of an error and its sources, joined with ": ".
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn status(code: Code, message: impl Into<String>) -> types::Status {
    types::Status {
        code: code as i32,
        message: message.into(),
    }
}

fn store_failure(e: &dyn std::error::Error) -> Status {
    tracing::error!(error = %chain(e), "entry store failure");
    Status::internal(format!("failed to persist entries: {}", chain(e)))
}

fn split_id(uri: &str) -> Option<Spiffeid> {
    Spiffeid::from_uri(uri).ok()
}

/// The API form of an entry, restricted to `mask` (all fields when `None`); `id` is always set.
#[must_use]
pub fn entry_to_proto(e: &Entry, mask: Option<&EntryMask>) -> types::Entry {
    let all = EntryMask {
        spiffe_id: true,
        parent_id: true,
        selectors: true,
        x509_svid_ttl: true,
        federates_with: true,
        admin: true,
        downstream: true,
        expires_at: true,
        dns_names: true,
        revision_number: true,
        store_svid: true,
        jwt_svid_ttl: true,
        hint: true,
        created_at: true,
    };
    let m = mask.unwrap_or(&all);
    types::Entry {
        id: e.id.clone(),
        spiffe_id: if m.spiffe_id {
            split_id(&e.spiffe_id)
        } else {
            None
        },
        parent_id: if m.parent_id {
            split_id(&e.parent_id)
        } else {
            None
        },
        selectors: if m.selectors {
            e.selectors.iter().map(Selector::to_proto).collect()
        } else {
            Vec::new()
        },
        x509_svid_ttl: if m.x509_svid_ttl { e.x509_svid_ttl } else { 0 },
        federates_with: Vec::new(),
        admin: m.admin && e.admin,
        downstream: m.downstream && e.downstream,
        expires_at: if m.expires_at { e.expires_at } else { 0 },
        dns_names: if m.dns_names {
            e.dns_names.clone()
        } else {
            Vec::new()
        },
        revision_number: if m.revision_number {
            e.revision_number
        } else {
            0
        },
        store_svid: m.store_svid && e.store_svid,
        jwt_svid_ttl: if m.jwt_svid_ttl { e.jwt_svid_ttl } else { 0 },
        hint: if m.hint {
            e.hint.clone()
        } else {
            String::new()
        },
        created_at: if m.created_at { e.created_at } else { 0 },
    }
}

/// Converts and validates an API entry (`created_at` set to `now`).
///
/// # Errors
///
/// The [`EntryError`] of the first invalid field.
pub fn entry_from_proto(e: types::Entry, shared: &Shared, now: i64) -> Result<Entry, EntryError> {
    let fields = EntryFields {
        id: e.id,
        spiffe_id: id_field(e.spiffe_id.as_ref(), "spiffe_id")?,
        parent_id: id_field(e.parent_id.as_ref(), "parent_id")?,
        selectors: e
            .selectors
            .into_iter()
            .map(|s| StoredSelector {
                kind: s.r#type,
                value: s.value,
            })
            .collect(),
        x509_svid_ttl: e.x509_svid_ttl,
        jwt_svid_ttl: e.jwt_svid_ttl,
        federates_with: e.federates_with,
        admin: e.admin,
        downstream: e.downstream,
        expires_at: e.expires_at,
        dns_names: e.dns_names,
        revision_number: 0,
        store_svid: e.store_svid,
        hint: e.hint,
        created_at: now,
    };
    Entry::validate(fields, &shared.settings().trust_domain)
}

/// A validated list filter.
#[derive(Debug, Default)]
struct Filter {
    spiffe_id: Option<String>,
    parent_id: Option<String>,
    selectors: Option<(BTreeSet<Selector>, MatchBehavior)>,
    hint: Option<String>,
}

impl Filter {
    fn new(
        spiffe_id: Option<&Spiffeid>,
        parent_id: Option<&Spiffeid>,
        selectors: Option<&SelectorMatch>,
        hint: Option<&String>,
    ) -> Result<Self, Status> {
        let id = |id: Option<&Spiffeid>, name: &str| {
            id.map(|id| {
                id.to_uri()
                    .map_err(|e| Status::invalid_argument(format!("malformed {name} filter: {e}")))
            })
            .transpose()
        };
        let selectors = selectors
            .map(|m| {
                if m.selectors.is_empty() {
                    return Err(Status::invalid_argument(
                        "malformed selectors filter: empty selector set",
                    ));
                }
                let set = m
                    .selectors
                    .iter()
                    .map(|s| {
                        Selector::from_proto(s).map_err(|e| {
                            Status::invalid_argument(format!("malformed selectors filter: {e}"))
                        })
                    })
                    .collect::<Result<BTreeSet<_>, _>>()?;
                let behavior = MatchBehavior::try_from(m.r#match).map_err(|_| {
                    Status::invalid_argument(format!(
                        "malformed selectors filter: unknown match behavior {}",
                        m.r#match
                    ))
                })?;
                Ok((set, behavior))
            })
            .transpose()?;
        Ok(Self {
            spiffe_id: id(spiffe_id, "by_spiffe_id")?,
            parent_id: id(parent_id, "by_parent_id")?,
            selectors,
            hint: hint.cloned(),
        })
    }

    fn matches(&self, e: &Entry) -> bool {
        if self.spiffe_id.as_ref().is_some_and(|id| *id != e.spiffe_id)
            || self.parent_id.as_ref().is_some_and(|id| *id != e.parent_id)
            || self.hint.as_ref().is_some_and(|h| *h != e.hint)
        {
            return false;
        }
        let Some((wanted, behavior)) = &self.selectors else {
            return true;
        };
        let have: BTreeSet<&Selector> = e.selectors.iter().collect();
        let wanted: BTreeSet<&Selector> = wanted.iter().collect();
        match behavior {
            MatchBehavior::MatchExact => have == wanted,
            MatchBehavior::MatchSubset => !have.is_empty() && have.is_subset(&wanted),
            MatchBehavior::MatchSuperset => have.is_superset(&wanted),
            MatchBehavior::MatchAny => !have.is_disjoint(&wanted),
        }
    }
}

fn list_filter(
    filter: Option<&hpcs_spire_api::server::entry::v1::list_entries_request::Filter>,
) -> Result<Filter, Status> {
    filter.map_or_else(
        || Ok(Filter::default()),
        |f| {
            Filter::new(
                f.by_spiffe_id.as_ref(),
                f.by_parent_id.as_ref(),
                f.by_selectors.as_ref(),
                f.by_hint.as_ref(),
            )
        },
    )
}

#[tonic::async_trait]
impl EntryApi for EntryService {
    async fn count_entries(
        &self,
        request: Request<CountEntriesRequest>,
    ) -> Result<Response<CountEntriesResponse>, Status> {
        let request = request.into_inner();
        let filter = request.filter.as_ref().map_or_else(
            || Ok(Filter::default()),
            |f| {
                Filter::new(
                    f.by_spiffe_id.as_ref(),
                    f.by_parent_id.as_ref(),
                    f.by_selectors.as_ref(),
                    f.by_hint.as_ref(),
                )
            },
        )?;
        let snapshot = self.shared.store().snapshot();
        let count = snapshot
            .entries
            .values()
            .filter(|e| filter.matches(e))
            .count();
        Ok(Response::new(CountEntriesResponse {
            count: i32::try_from(count).unwrap_or(i32::MAX),
        }))
    }

    async fn list_entries(
        &self,
        request: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        let request = request.into_inner();
        let filter = list_filter(request.filter.as_ref())?;
        let page_size = usize::try_from(request.page_size)
            .map_err(|_| Status::invalid_argument("page_size must not be negative"))?;
        let snapshot = self.shared.store().snapshot();
        // Page tokens are the ID of the last entry of the previous page (IDs sort stably, and a
        // token whose entry was deleted meanwhile still marks the right position).
        let token_ok = request
            .page_token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !token_ok {
            return Err(Status::invalid_argument(format!(
                "invalid page token {:?}",
                request.page_token
            )));
        }
        let mut matching = snapshot
            .entries
            .range::<String, _>((
                if request.page_token.is_empty() {
                    std::ops::Bound::Unbounded
                } else {
                    std::ops::Bound::Excluded(&request.page_token)
                },
                std::ops::Bound::Unbounded,
            ))
            .map(|(_, e)| e)
            .filter(|e| filter.matches(e));
        let mut entries = Vec::new();
        let mut next_page_token = String::new();
        for e in matching.by_ref() {
            entries.push(entry_to_proto(e, request.output_mask.as_ref()));
            if page_size > 0 && entries.len() == page_size {
                break;
            }
        }
        if page_size > 0 && entries.len() == page_size && matching.next().is_some() {
            next_page_token = entries.last().map(|e| e.id.clone()).unwrap_or_default();
        }
        Ok(Response::new(ListEntriesResponse {
            entries,
            next_page_token,
        }))
    }

    async fn get_entry(
        &self,
        request: Request<GetEntryRequest>,
    ) -> Result<Response<types::Entry>, Status> {
        let request = request.into_inner();
        if request.id.is_empty() {
            return Err(Status::invalid_argument("missing ID"));
        }
        let snapshot = self.shared.store().snapshot();
        let entry = snapshot
            .entries
            .get(&request.id)
            .ok_or_else(|| Status::not_found(format!("entry {:?} not found", request.id)))?;
        Ok(Response::new(entry_to_proto(
            entry,
            request.output_mask.as_ref(),
        )))
    }

    async fn batch_create_entry(
        &self,
        request: Request<BatchCreateEntryRequest>,
    ) -> Result<Response<BatchCreateEntryResponse>, Status> {
        let request = request.into_inner();
        let now = unix_now();
        let mask = request.output_mask;
        let candidates: Vec<Result<Entry, EntryError>> = request
            .entries
            .into_iter()
            .map(|e| entry_from_proto(e, &self.shared, now))
            .collect();
        let (results, changed) = self
            .shared
            .store()
            .update(move |snapshot| {
                candidates
                    .into_iter()
                    .map(|candidate| {
                        let entry = match candidate {
                            Ok(entry) => entry,
                            Err(e) => {
                                return batch_create_entry_response::Result {
                                    status: Some(status(
                                        Code::InvalidArgument,
                                        format!("failed to convert entry: {}", chain(&e)),
                                    )),
                                    entry: None,
                                };
                            }
                        };
                        if let Some(existing) =
                            snapshot.entries.values().find(|x| x.is_similar(&entry))
                        {
                            return batch_create_entry_response::Result {
                                status: Some(status(
                                    Code::AlreadyExists,
                                    "similar entry already exists",
                                )),
                                entry: Some(entry_to_proto(existing, mask.as_ref())),
                            };
                        }
                        if snapshot.entries.contains_key(&entry.id) {
                            return batch_create_entry_response::Result {
                                status: Some(status(
                                    Code::AlreadyExists,
                                    format!("an entry with ID {:?} already exists", entry.id),
                                )),
                                entry: None,
                            };
                        }
                        let proto = entry_to_proto(&entry, mask.as_ref());
                        tracing::info!(id = %entry.id, spiffe_id = %entry.spiffe_id,
                            parent_id = %entry.parent_id, "entry created");
                        snapshot.entries.insert(entry.id.clone(), Arc::new(entry));
                        batch_create_entry_response::Result {
                            status: Some(status(Code::Ok, "OK")),
                            entry: Some(proto),
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| store_failure(&e))?;
        if changed {
            self.shared.notify();
        }
        Ok(Response::new(BatchCreateEntryResponse { results }))
    }

    async fn batch_delete_entry(
        &self,
        request: Request<BatchDeleteEntryRequest>,
    ) -> Result<Response<BatchDeleteEntryResponse>, Status> {
        let ids = request.into_inner().ids;
        let to_delete = ids.clone();
        let (results, changed) = self
            .shared
            .store()
            .update(move |snapshot| {
                to_delete
                    .iter()
                    .map(|id| {
                        let status = if id.is_empty() {
                            status(Code::InvalidArgument, "missing entry ID")
                        } else if snapshot.entries.remove(id).is_some() {
                            tracing::info!(%id, "entry deleted");
                            status(Code::Ok, "OK")
                        } else {
                            status(Code::NotFound, format!("entry {id:?} not found"))
                        };
                        batch_delete_entry_response::Result {
                            status: Some(status),
                            id: id.clone(),
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| store_failure(&e))?;
        if changed {
            self.shared.forget_svids(ids.iter().map(String::as_str));
            self.shared.notify();
        }
        Ok(Response::new(BatchDeleteEntryResponse { results }))
    }
}
