//! The SPIRE Server API subset (Entry, Agent) over the admin socket: validation errors with clear
//! messages, SPIRE's batch semantics, filters, paging.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::{Devspire, TD, agent_id, entry, spiffe_id};
use hpcs_spire_api::server::agent::v1::CreateJoinTokenRequest;
use hpcs_spire_api::server::agent::v1::agent_client::AgentClient;
use hpcs_spire_api::server::entry::v1::{
    BatchCreateEntryRequest, BatchDeleteEntryRequest, CountEntriesRequest, GetEntryRequest,
    ListEntriesRequest, list_entries_request,
};
use hpcs_spire_api::types::{EntryMask, Selector, SelectorMatch, Spiffeid, selector_match};
use tonic::Code;

fn sid(path: &str) -> Spiffeid {
    Spiffeid {
        trust_domain: TD.into(),
        path: path.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_create_reports_each_entry() {
    let ds = Devspire::start().await;
    let mut client = ds.entries().await;
    let mut foreign = entry("/x", "node1", &["unix:uid:1"]);
    foreign.spiffe_id = Some(Spiffeid {
        trust_domain: "other.test".into(),
        path: "/x".into(),
    });
    let mut malformed = entry("/x", "node1", &["unix:uid:1"]);
    malformed.spiffe_id = Some(sid("no-leading-slash"));
    let response = client
        .batch_create_entry(BatchCreateEntryRequest {
            entries: vec![
                entry("/ok", "node1", &["unix:uid:1000", "unix:user:alice"]),
                entry("/ok", "node1", &["unix:user:alice", "unix:uid:1000"]),
                entry("/bad-type", "node1", &["k8s:ns:default"]),
                entry("/bad-unix", "node1", &["unix:pid:1"]),
                entry("/bad-uid", "node1", &["unix:uid:alice"]),
                malformed,
                foreign,
                entry("/none", "node1", &[]),
            ],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let statuses: Vec<(i32, String)> = response
        .results
        .iter()
        .map(|r| {
            let s = r.status.as_ref().unwrap();
            (s.code, s.message.clone())
        })
        .collect();
    assert_eq!(statuses[0], (Code::Ok as i32, "OK".into()));
    assert_eq!(statuses[1].0, Code::AlreadyExists as i32, "{statuses:?}");
    assert_eq!(
        response.results[1].entry.as_ref().unwrap().id,
        response.results[0].entry.as_ref().unwrap().id,
        "ALREADY_EXISTS returns the existing entry"
    );
    let expect = [
        (2, "unknown selector type \"k8s\""),
        (3, "unknown unix selector \"pid\""),
        (4, "unix:uid selector value \"alice\" is not a number"),
        (
            5,
            "invalid spiffe_id: SPIFFE ID path \"no-leading-slash\" must be empty or start with '/'",
        ),
        (6, "is not a member of trust domain \"hpcs.test\""),
        (7, "at least one selector is required"),
    ];
    for (i, message) in expect {
        assert_eq!(
            statuses[i].0,
            Code::InvalidArgument as i32,
            "{i}: {statuses:?}"
        );
        assert!(statuses[i].1.contains(message), "{i}: {}", statuses[i].1);
        assert!(response.results[i].entry.is_none());
    }
    let count = client
        .count_entries(CountEntriesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(count, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_get_filter_page_and_delete() {
    let ds = Devspire::start().await;
    let a = ds.create_entry("/a", "node1", &["unix:uid:1"]).await;
    let b = ds
        .create_entry("/b", "node1", &["unix:uid:2", "unix:gid:2"])
        .await;
    let c = ds.create_entry("/b", "node2", &["unix:uid:2"]).await;
    let mut client = ds.entries().await;

    let list = |filter: list_entries_request::Filter| ListEntriesRequest {
        filter: Some(filter),
        output_mask: None,
        page_size: 0,
        page_token: String::new(),
    };
    let ids = |r: hpcs_spire_api::server::entry::v1::ListEntriesResponse| {
        let mut ids: Vec<String> = r.entries.into_iter().map(|e| e.id).collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    let by_id = client
        .list_entries(list(list_entries_request::Filter {
            by_spiffe_id: Some(sid("/b")),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(by_id), sorted(vec![b.clone(), c.clone()]));

    let by_parent = client
        .list_entries(list(list_entries_request::Filter {
            by_parent_id: Some(sid("/spire/agent/devspire/node1")),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(by_parent), sorted(vec![a.clone(), b.clone()]));

    let superset = client
        .list_entries(list(list_entries_request::Filter {
            by_selectors: Some(SelectorMatch {
                selectors: vec![Selector {
                    r#type: "unix".into(),
                    value: "uid:2".into(),
                }],
                r#match: selector_match::MatchBehavior::MatchSuperset as i32,
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(superset), sorted(vec![b.clone(), c.clone()]));

    let bad = client
        .list_entries(list(list_entries_request::Filter {
            by_spiffe_id: Some(sid("/a//b")),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().contains("malformed by_spiffe_id filter"),
        "{}",
        bad.message()
    );

    // Paging: one entry per page until the token is empty.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_entries(ListEntriesRequest {
                filter: None,
                output_mask: Some(EntryMask::default()),
                page_size: 1,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        for e in &page.entries {
            assert!(e.spiffe_id.is_none(), "output mask hides fields");
            seen.push(e.id.clone());
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(sorted(seen), sorted(vec![a.clone(), b.clone(), c.clone()]));

    let got = client
        .get_entry(GetEntryRequest {
            id: a.clone(),
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.spiffe_id.unwrap().to_uri().unwrap(), spiffe_id("/a"));
    assert_eq!(got.parent_id.unwrap().to_uri().unwrap(), agent_id("node1"));
    assert!(got.created_at > 0);
    let missing = client
        .get_entry(GetEntryRequest {
            id: "nope".into(),
            output_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let deleted = client
        .batch_delete_entry(BatchDeleteEntryRequest {
            ids: vec![a.clone(), a.clone(), String::new()],
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = deleted
        .results
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(
        codes,
        vec![
            Code::Ok as i32,
            Code::NotFound as i32,
            Code::InvalidArgument as i32
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn create_join_token() {
    let ds = Devspire::start().await;
    let mut agents = AgentClient::new(ds.admin_channel().await);
    let token = agents
        .create_join_token(CreateJoinTokenRequest {
            ttl: 600,
            token: String::new(),
            agent_id: Some(sid("/hpcs/node/n1")),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!token.value.is_empty());
    assert!(token.expires_at > devspire::state::unix_now());
    let again = agents
        .create_join_token(CreateJoinTokenRequest {
            ttl: 600,
            token: token.value.clone(),
            agent_id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    let no_ttl = agents
        .create_join_token(CreateJoinTokenRequest::default())
        .await
        .unwrap_err();
    assert_eq!(no_ttl.code(), Code::InvalidArgument);
    let bad_agent = agents
        .create_join_token(CreateJoinTokenRequest {
            ttl: 60,
            token: String::new(),
            agent_id: Some(Spiffeid {
                trust_domain: "BAD".into(),
                path: "/x".into(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_agent.code(), Code::InvalidArgument);
    assert!(
        bad_agent.message().contains("invalid agent ID"),
        "{}",
        bad_agent.message()
    );

    // As SPIRE does, the agent_id alias entry exists, parented to the join-token agent ID.
    let entries = ds
        .entries()
        .await
        .list_entries(ListEntriesRequest {
            filter: Some(list_entries_request::Filter {
                by_spiffe_id: Some(sid("/hpcs/node/n1")),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].parent_id.as_ref().unwrap().path,
        format!("/spire/agent/join_token/{}", token.value)
    );
}
