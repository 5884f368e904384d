//! The API against the real stack: registration and reading keys as real workloads, ownership,
//! changes, revocation, authentication failures, malformed bodies, probes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{
    SERVER_AUD, TestServer, VAULT_AUD, client_token, create_body, entries_of, fetch_jwt_as,
    key_record, stack, write_key,
};
use hpcs_server::spire::EntryStore as _;
use serde_json::{Value, json};

/// Not a test: the entry point of the helper process that fetches SVIDs as another user (see
/// `common::fetch_jwt_as`); ignored in normal runs.
#[test]
#[ignore = "helper process entry point, run by common::fetch_jwt_as"]
fn zz_helper() {
    common::helper_main();
}

fn reader_id(created: &Value) -> String {
    created["secret"]["reader_id"].as_str().unwrap().to_owned()
}

fn secret_id(created: &Value) -> String {
    created["secret"]["id"].as_str().unwrap().to_owned()
}

fn role(created: &Value) -> String {
    created["secret"]["vault"]["role"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Fetches the reader SVID as `user` on `node` and reads the key with it.
async fn read_as(
    stack: &common::Stack,
    srv: &TestServer,
    created: &Value,
    user: &str,
    node: &str,
) -> Result<Value, String> {
    let jwt = fetch_jwt_as(
        user,
        &stack.sockets[node],
        VAULT_AUD,
        Some(&reader_id(created).parse().unwrap()),
    )?;
    srv.vault
        .read_key_with_jwt(&role(created), &jwt, &secret_id(created))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_key_is_readable_only_by_allowed_user_on_allowed_node() {
    let Some(stack) = stack() else { return };
    let srv = TestServer::start(&stack).await;
    let alice = client_token(&stack, "alice");

    let (status, created) = srv
        .call(
            Some(&alice),
            "POST",
            "/api/v1/secrets",
            Some(create_body(&["alice"], &[], &["node1"])),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = secret_id(&created);
    let secret = &created["secret"];
    assert_eq!(secret["owner"], stack.client_id("alice").to_string());
    assert_eq!(
        secret["reader_id"],
        format!("spiffe://{}/hpcs/secret/{id}", stack.trust_domain)
    );
    assert_eq!(secret["vault"]["kv_mount"], srv.vault.kv_mount);
    assert_eq!(secret["vault"]["kv_path"], id);
    assert_eq!(secret["vault"]["role"], format!("hpcs-secret-{id}"));
    assert_eq!(created["write_credential"]["num_uses"], 1);

    // One SPIRE entry: node1's agent, alice's user selector.
    let entries = entries_of(&stack, &reader_id(&created)).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].parent_id, stack.agent_ids["node1"]);
    assert_eq!(entries[0].selectors, ["unix:user:alice"]);

    // The owner writes the key once with the credential; the server never sees it.
    let record = key_record(stack.client_id("alice").as_str());
    assert_eq!(write_key(&srv.vault, &created, &record).await, 200);
    // The credential is spent: no second write, and it never could read.
    assert_eq!(
        write_key(&srv.vault, &created, &json!({"identity": "x"})).await,
        403
    );
    let (status, _) = srv
        .vault
        .call(
            Some(created["write_credential"]["token"].as_str().unwrap()),
            "GET",
            &format!("{}/data/{id}", srv.vault.kv_mount),
            None,
        )
        .await;
    assert_eq!(status, 403);

    // alice on node1 reads it.
    let got = read_as(&stack, &srv, &created, "alice", "node1")
        .await
        .unwrap();
    assert_eq!(got, record);
    // alice on node2, bob on node1: the agent issues them no reader identity.
    let err = read_as(&stack, &srv, &created, "alice", "node2")
        .await
        .unwrap_err();
    assert!(err.contains("fetch"), "{err}");
    let err = read_as(&stack, &srv, &created, "bob", "node1")
        .await
        .unwrap_err();
    assert!(err.contains("fetch"), "{err}");

    // A reader identity of another secret cannot use this secret's role.
    let (_, other) = srv
        .call(
            Some(&alice),
            "POST",
            "/api/v1/secrets",
            Some(create_body(&["alice"], &[], &["node1"])),
        )
        .await;
    let other_jwt = fetch_jwt_as(
        "alice",
        &stack.sockets["node1"],
        VAULT_AUD,
        Some(&reader_id(&other).parse().unwrap()),
    )
    .unwrap();
    let err = srv
        .vault
        .read_key_with_jwt(&role(&created), &other_jwt, &id)
        .await
        .unwrap_err();
    assert!(
        err.starts_with("login 400") || err.starts_with("login 403"),
        "{err}"
    );
    // ... nor read this secret's path with its own role.
    let err = srv
        .vault
        .read_key_with_jwt(&role(&other), &other_jwt, &id)
        .await
        .unwrap_err();
    assert!(err.starts_with("read 403"), "{err}");

    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_readers_read_on_their_nodes() {
    let Some(stack) = stack() else { return };
    let srv = TestServer::start(&stack).await;
    let alice = client_token(&stack, "alice");
    let (status, created) = srv
        .call(
            Some(&alice),
            "POST",
            "/api/v1/secrets",
            Some(create_body(&[], &["hpcs-users"], &["node2"])),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let entries = entries_of(&stack, &reader_id(&created)).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].selectors,
        ["unix:supplementary_group:hpcs-users"]
    );
    let record = key_record("alice");
    assert_eq!(write_key(&srv.vault, &created, &record).await, 200);
    // bob is in hpcs-users.
    assert_eq!(
        read_as(&stack, &srv, &created, "bob", "node2")
            .await
            .unwrap(),
        record
    );
    assert!(
        read_as(&stack, &srv, &created, "bob", "node1")
            .await
            .is_err()
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_may_read_change_or_revoke() {
    let Some(stack) = stack() else { return };
    let srv = TestServer::start(&stack).await;
    let alice = client_token(&stack, "alice");
    let bob = client_token(&stack, "bob");
    let (_, created) = srv
        .call(
            Some(&alice),
            "POST",
            "/api/v1/secrets",
            Some(create_body(&["alice"], &[], &["node1"])),
        )
        .await;
    let path = format!("/api/v1/secrets/{}", secret_id(&created));

    // bob: refused exactly like a secret that does not exist.
    let (s_get, b_get) = srv.call(Some(&bob), "GET", &path, None).await;
    let (s_none, b_none) = srv
        .call(
            Some(&bob),
            "GET",
            "/api/v1/secrets/00000000-0000-4000-8000-000000000000",
            None,
        )
        .await;
    assert_eq!((s_get, &b_get), (s_none, &b_none));
    assert_eq!(s_get, 404);
    assert_eq!(b_get["kind"], "not_found");
    let (s, _) = srv
        .call(
            Some(&bob),
            "PATCH",
            &path,
            Some(json!({"add_readers": {"users": ["bob"]}})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = srv.call(Some(&bob), "DELETE", &path, None).await;
    assert_eq!(s, 404);
    let (s, list) = srv.call(Some(&bob), "GET", "/api/v1/secrets", None).await;
    assert_eq!(s, 200);
    assert_eq!(list["secrets"], json!([]));
    // Nothing changed.
    assert_eq!(entries_of(&stack, &reader_id(&created)).await.len(), 1);

    // alice sees hers.
    let (s, got) = srv.call(Some(&alice), "GET", &path, None).await;
    assert_eq!(s, 200);
    assert_eq!(got, created["secret"]);
    let (s, list) = srv.call(Some(&alice), "GET", "/api/v1/secrets", None).await;
    assert_eq!(s, 200);
    assert_eq!(list["secrets"], json!([created["secret"]]));

    // The audit log has both decisions, chained.
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_updates_entries() {
    let Some(stack) = stack() else { return };
    let srv = TestServer::start(&stack).await;
    let alice = client_token(&stack, "alice");
    let (_, created) = srv
        .call(
            Some(&alice),
            "POST",
            "/api/v1/secrets",
            Some(create_body(&["alice"], &[], &["node1"])),
        )
        .await;
    assert_eq!(
        write_key(&srv.vault, &created, &key_record("alice")).await,
        200
    );
    let path = format!("/api/v1/secrets/{}", secret_id(&created));
    let (s, updated) = srv
        .call(
            Some(&alice),
            "PATCH",
            &path,
            Some(json!({
                "add_readers": {"users": ["bob"]},
                "add_compute_nodes": ["node2"],
                "remove_compute_nodes": ["node1"],
            })),
        )
        .await;
    assert_eq!(s, 200, "{updated}");
    assert_eq!(updated["readers"]["users"], json!(["alice", "bob"]));
    assert_eq!(updated["compute_nodes"], json!(["node2"]));
    let mut entries: Vec<(String, Vec<String>)> = entries_of(&stack, &reader_id(&created))
        .await
        .into_iter()
        .map(|e| (e.parent_id, e.selectors))
        .collect();
    entries.sort();
    let node2 = stack.agent_ids["node2"].clone();
    assert_eq!(
        entries,
        [
            (node2.clone(), vec!["unix:user:alice".to_owned()]),
            (node2, vec!["unix:user:bob".to_owned()]),
        ]
    );
    assert!(
        read_as(&stack, &srv, &created, "bob", "node2")
            .await
            .is_ok()
    );
    assert!(
        read_as(&stack, &srv, &created, "alice", "node1")
            .await
            .is_err()
    );

    // Removing the last node is refused and changes nothing.
    let (s, body) = srv
        .call(
            Some(&alice),
            "PATCH",
            &path,
            Some(json!({"remove_compute_nodes": ["node2"]})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        body["detail"].as_str().unwrap().contains("compute_nodes"),
        "{body}"
    );
    assert_eq!(entries_of(&stack, &reader_id(&created)).await.len(), 2);

    // A no-op change answers the current state.
    let (s, same) = srv
        .call(
            Some(&alice),
            "PATCH",
            &path,
            Some(json!({"add_readers": {"users": ["bob"]}})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(same, updated);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_removes_entries_role_policies_and_key() {
    let Some(stack) = stack() else { return };
    let srv = TestServer::start(&stack).await;
    let alice = client_token(&stack, "alice");
    let (_, created) = srv
        .call(
            Some(&alice),
            "POST",
            "/api/v1/secrets",
            Some(create_body(
                &["alice", "bob"],
                &["hpcs-users"],
                &["node1", "node2"],
            )),
        )
        .await;
    let id = secret_id(&created);
    assert_eq!(entries_of(&stack, &reader_id(&created)).await.len(), 6);
    assert_eq!(
        write_key(&srv.vault, &created, &key_record("alice")).await,
        200
    );
    let v = &srv.vault;
    let kv = &v.kv_mount;
    let paths = [
        format!("auth/{}/role/hpcs-secret-{id}", v.auth_mount),
        format!("sys/policy/hpcs-secret-{id}-read"),
        format!("sys/policy/hpcs-secret-{id}-write"),
        format!("{kv}/metadata/{id}"),
        format!("{kv}/metadata/_registry/secrets/{id}"),
    ];
    for p in &paths {
        assert!(v.exists(p).await, "{p} should exist before revocation");
    }

    let path = format!("/api/v1/secrets/{id}");
    let (s, _) = srv.call(Some(&alice), "DELETE", &path, None).await;
    assert_eq!(s, 204);
    assert!(entries_of(&stack, &reader_id(&created)).await.is_empty());
    for p in &paths {
        assert!(!v.exists(p).await, "{p} survived revocation");
    }
    let (_, owners) = v
        .call(
            None,
            "LIST",
            &format!("{kv}/metadata/_registry/owners"),
            None,
        )
        .await;
    assert!(
        owners["data"]["keys"].is_null(),
        "owner index left: {owners}"
    );
    let (s, _) = srv.call(Some(&alice), "GET", &path, None).await;
    assert_eq!(s, 404);
    let (s, _) = srv.call(Some(&alice), "DELETE", &path, None).await;
    assert_eq!(s, 404);
    // The reader cannot log in any more.
    assert!(
        read_as(&stack, &srv, &created, "alice", "node1")
            .await
            .is_err()
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_alike() {
    let Some(stack) = stack() else { return };
    let srv = TestServer::start(&stack).await;
    let body = create_body(&["alice"], &[], &["node1"]);

    // Missing.
    let (s_missing, b_missing) = srv
        .call(None, "POST", "/api/v1/secrets", Some(body.clone()))
        .await;
    assert_eq!(s_missing, 401);
    assert_eq!(b_missing["kind"], "unauthorized");

    // Forged: right shape, signed by a key the trust bundle does not hold.
    let forger = common::testing::TestAuthority::generate("forged");
    let forged = forger.token(stack.client_id("alice").as_str(), SERVER_AUD, 300);
    let (s, b) = srv
        .call(Some(&forged), "POST", "/api/v1/secrets", Some(body.clone()))
        .await;
    assert_eq!((s, &b), (401, &b_missing));

    // Tampered: a real token with its subject changed.
    let bob = client_token(&stack, "bob");
    let mut parts: Vec<String> = bob.split('.').map(str::to_owned).collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(&parts[1]).unwrap()).unwrap();
    claims["sub"] = json!(stack.client_id("alice").to_string());
    parts[1] = b64.encode(claims.to_string());
    let (s, b) = srv
        .call(Some(&parts.join(".")), "GET", "/api/v1/secrets", None)
        .await;
    assert_eq!((s, &b), (401, &b_missing));

    // Wrong audience: a real SVID for Vault.
    let for_vault = fetch_jwt_as(
        "alice",
        &stack.sockets["laptop"],
        VAULT_AUD,
        Some(&stack.client_id("alice")),
    )
    .unwrap();
    let (s, b) = srv
        .call(Some(&for_vault), "GET", "/api/v1/secrets", None)
        .await;
    assert_eq!((s, &b), (401, &b_missing));

    // Expired: a real SVID from an entry with a 1 s lifetime.
    let short = stack.id(&format!("/client/exp{}", common::ns()));
    let entry = short_lived_entry(&stack, &short).await;
    let token = fetch_jwt_as("bob", &stack.sockets["laptop"], SERVER_AUD, Some(&short)).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (s, b) = srv.call(Some(&token), "GET", "/api/v1/secrets", None).await;
    assert_eq!((s, &b), (401, &b_missing));
    stack.spire().delete_entries(&[entry]).await.unwrap();

    // Valid SVID, but not a client identity: 403 with the same detail.
    let server_svid = fetch_jwt_as(
        "root",
        &stack.sockets["laptop"],
        SERVER_AUD,
        Some(&stack.id("/hpcs/server")),
    )
    .unwrap();
    let (s, b) = srv
        .call(Some(&server_svid), "GET", "/api/v1/secrets", None)
        .await;
    assert_eq!(s, 403);
    assert_eq!(b["detail"], b_missing["detail"]);

    // Every refusal is audited with its reason, and the chain verifies.
    let audit = std::fs::read_to_string(&srv.audit).unwrap();
    for reason in [
        "missing",
        "unknown_key",
        "bad_signature",
        "wrong_audience",
        "expired",
        "not_a_client",
    ] {
        assert!(
            audit.contains(&format!("\"reason\":\"{reason}\"")),
            "audit lacks {reason}: {audit}"
        );
    }
    assert!(hpcs_server::audit::verify_file(&srv.audit).unwrap() >= 6);
    let metrics = srv.state.metrics().render();
    assert!(
        metrics.contains("hpcs_auth_failures_total{reason=\"missing\"} 1"),
        "{metrics}"
    );
    srv.stop().await;
}

/// An entry for `id` (bob's uid on the laptop) whose JWT-SVIDs live one second.
async fn short_lived_entry(stack: &common::Stack, id: &hpcs_core::ids::SpiffeId) -> String {
    use hpcs_spire_api::server::entry::v1::BatchCreateEntryRequest;
    use hpcs_spire_api::server::entry::v1::entry_client::EntryClient;
    use hpcs_spire_api::types::{Entry, Selector, Spiffeid};
    let channel = hpcs_spire_api::channel::connect_unix(
        &stack.admin_socket,
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    let laptop: hpcs_core::ids::SpiffeId = stack.agent_ids["laptop"].parse().unwrap();
    let res = EntryClient::new(channel)
        .batch_create_entry(BatchCreateEntryRequest {
            entries: vec![Entry {
                spiffe_id: Some(Spiffeid {
                    trust_domain: stack.trust_domain.clone(),
                    path: id.path().to_owned(),
                }),
                parent_id: Some(Spiffeid {
                    trust_domain: stack.trust_domain.clone(),
                    path: laptop.path().to_owned(),
                }),
                selectors: vec![Selector {
                    r#type: "unix".into(),
                    value: format!("uid:{}", stack.uids["bob"]),
                }],
                jwt_svid_ttl: 1,
                ..Entry::default()
            }],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let r = &res.results[0];
    assert_eq!(r.status.as_ref().map_or(0, |s| s.code), 0, "{r:?}");
    r.entry.as_ref().unwrap().id.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_bodies_get_clear_4xx() {
    let Some(stack) = stack() else { return };
    let srv = TestServer::start(&stack).await;
    let alice = client_token(&stack, "alice");
    let client = reqwest::Client::new();
    let post = |body: String, ctype: &'static str| {
        client
            .post(srv.url("/api/v1/secrets"))
            .bearer_auth(&alice)
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    let check = |res: reqwest::Response, status: u16, kind: &'static str, needle: &'static str| async move {
        assert_eq!(res.status().as_u16(), status);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["kind"], kind, "{body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "{detail:?} lacks {needle:?}");
    };
    check(
        post("{\"kind\":".into(), "application/json").await.unwrap(),
        400,
        "bad_request",
        "malformed JSON",
    )
    .await;
    check(
        post(json!({"kind":"image","name":"x","readers":{"users":["alice"]},"compute_nodes":["node1"],"owner":"me"}).to_string(), "application/json").await.unwrap(),
        400, "bad_request", "unknown field `owner`",
    ).await;
    check(
        post(json!({"kind":"image","name":"x","readers":{"users":["Alice;rm"]},"compute_nodes":["node1"]}).to_string(), "application/json").await.unwrap(),
        400, "bad_request", "readers.users",
    ).await;
    check(
        post("{}".into(), "text/plain").await.unwrap(),
        415,
        "unsupported_media_type",
        "application/json",
    )
    .await;
    let big = json!({"kind":"image","name":"x","readers":{"users":["alice"]},"compute_nodes":["node1"],"pad":"x".repeat(17 * 1024)});
    check(
        post(big.to_string(), "application/json").await.unwrap(),
        413,
        "payload_too_large",
        "too large",
    )
    .await;
    check(
        post(
            create_body(&[], &[], &["node1"]).to_string(),
            "application/json",
        )
        .await
        .unwrap(),
        400,
        "bad_request",
        "readers: name at least one",
    )
    .await;
    check(
        post(
            create_body(&["alice"], &[], &["node9"]).to_string(),
            "application/json",
        )
        .await
        .unwrap(),
        400,
        "bad_request",
        "unknown to this server: node9",
    )
    .await;
    let mut past = create_body(&["alice"], &[], &["node1"]);
    past["expires_at"] = json!("2001-01-01T00:00:00Z");
    check(
        post(past.to_string(), "application/json").await.unwrap(),
        400,
        "bad_request",
        "expires_at",
    )
    .await;

    let (s, b) = srv
        .call(Some(&alice), "GET", "/api/v1/secrets/NOT_AN_ID", None)
        .await;
    assert_eq!((s, b["kind"].as_str()), (400, Some("bad_request")));
    let (s, b) = srv.call(Some(&alice), "GET", "/api/v1/nothing", None).await;
    assert_eq!((s, b["kind"].as_str()), (404, Some("not_found")));
    let (s, b) = srv.call(Some(&alice), "PUT", "/api/v1/secrets", None).await;
    assert_eq!((s, b["kind"].as_str()), (405, Some("method_not_allowed")));
    // No body check before authentication: an anonymous bad body is a 401.
    let res = client
        .post(srv.url("/api/v1/secrets"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_metrics_and_openapi() {
    let Some(stack) = stack() else { return };
    let srv = TestServer::start(&stack).await;
    let (s, b) = srv.call(None, "GET", "/healthz", None).await;
    assert_eq!((s, &b["status"]), (200, &json!("ok")));
    let (s, b) = srv.call(None, "GET", "/readyz", None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["checks"]["vault"], "ok");
    assert_eq!(b["checks"]["spire_server"], "ok");
    assert_eq!(b["checks"]["trust_bundle"], "ok");

    let (s, _) = srv.call(None, "GET", "/api/v1/openapi.json", None).await;
    assert_eq!(s, 401);
    let alice = client_token(&stack, "alice");
    let (s, doc) = srv
        .call(Some(&alice), "GET", "/api/v1/openapi.json", None)
        .await;
    assert_eq!(s, 200);
    assert!(doc["paths"]["/api/v1/secrets"]["post"].is_object());

    let (s, _) = srv
        .call(
            Some(&alice),
            "POST",
            "/api/v1/secrets",
            Some(create_body(&["alice"], &[], &["node1"])),
        )
        .await;
    assert_eq!(s, 201);
    let text = reqwest::get(srv.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("hpcs_registrations_total{result=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "hpcs_http_requests_total{method=\"POST\",route=\"/api/v1/secrets\",status=\"201\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("hpcs_http_request_duration_seconds_bucket{method=\"POST\",route=\"/api/v1/secrets\",le=\"+Inf\"} 1"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_jwt_signing_keys_are_followed_without_restart() {
    let Some(stack) = stack() else { return };
    let srv = TestServer::start(&stack).await;
    let kid = |token: &str| -> String {
        use base64::Engine as _;
        let header = token.split('.').next().unwrap();
        let header: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .unwrap(),
        )
        .unwrap();
        header["kid"].as_str().unwrap().to_owned()
    };
    let before = client_token(&stack, "alice");
    let (s, _) = srv
        .call(Some(&before), "GET", "/api/v1/secrets", None)
        .await;
    assert_eq!(s, 200);

    let devspire = hpcs_test_support::Stack::load().devspire_bin;
    let out = std::process::Command::new(devspire)
        .arg("rotate")
        .arg("--admin-socket")
        .arg(&stack.admin_socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = client_token(&stack, "alice");
    assert_ne!(kid(&before), kid(&after), "devspire signs with the new key");
    // The server learns the new key from the Workload API stream, without a restart.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (s, _) = srv.call(Some(&after), "GET", "/api/v1/secrets", None).await;
        if s == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a token signed with the rotated key is still refused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Tokens signed with the previous key stay valid until they expire.
    let (s, _) = srv
        .call(Some(&before), "GET", "/api/v1/secrets", None)
        .await;
    assert_eq!(s, 200);
    srv.stop().await;
}
