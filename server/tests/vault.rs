//! The server's Vault rights, checked against real OpenBao with a token that carries exactly the
//! policy of deploy/vault/hpcs-server.hcl (as rendered by deploy/vault/setup): it can do what the
//! server needs and nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{VaultNs, stack};
use hpcs_core::api::VaultToken;
use hpcs_core::ids::SecretId;
use hpcs_server::vault::{
    ReaderRole, Vault, VaultBackend, VaultLogin, read_policy_name, reader_policy, reader_role_name,
    write_policy_name, writer_policy,
};
use serde_json::json;

/// Not a test: the entry point of the helper process that fetches SVIDs as another user (see
/// `common::fetch_jwt_as`); ignored in normal runs.
#[test]
#[ignore = "helper process entry point, run by common::fetch_jwt_as"]
fn zz_helper() {
    common::helper_main();
}

async fn setup() -> Option<(common::Stack, VaultNs, String, Vault)> {
    let stack = stack()?;
    let v = VaultNs::for_stack(&stack);
    let token = v.server_token().await;
    let vault = Vault::new(
        v.settings(),
        VaultLogin::Token(VaultToken::new(token.clone())),
    )
    .unwrap();
    Some((stack, v, token, vault))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_policy_allows_the_server_its_work_and_no_more() {
    let Some((stack, v, token, vault)) = setup().await else {
        return;
    };
    let t = Some(token.as_str());
    let id: SecretId = SecretId::generate();
    let kv = &v.kv_mount;

    // What it needs.
    vault.check().await.unwrap();
    vault
        .write_policy(&read_policy_name(&id), &reader_policy(kv, &id))
        .await
        .unwrap();
    vault
        .write_policy(&write_policy_name(&id), &writer_policy(kv, &id))
        .await
        .unwrap();
    vault
        .write_reader_role(&ReaderRole {
            name: reader_role_name(&id),
            bound_subject: format!("spiffe://{}/hpcs/secret/{id}", stack.trust_domain)
                .parse()
                .unwrap(),
            policy: read_policy_name(&id),
        })
        .await
        .unwrap();
    let (_, role) = v
        .call(
            None,
            "GET",
            &format!("auth/{}/role/hpcs-secret-{id}", v.auth_mount),
            None,
        )
        .await;
    assert_eq!(
        role["data"]["token_policies"],
        json!([format!("hpcs-secret-{id}-read")])
    );
    assert_eq!(role["data"]["bound_audiences"], json!(["vault"]));
    assert_eq!(role["data"]["user_claim"], "sub");
    assert_eq!(role["data"]["token_num_uses"], 2);

    // Policies: other names, other mounts, the other endpoint.
    let p = |path: &str, body: serde_json::Value| {
        let v = v.clone();
        let path = path.to_owned();
        async move { v.call(t, "PUT", &path, Some(body)).await.0 }
    };
    let body = json!({"policy": reader_policy(kv, &id)});
    assert_eq!(p("sys/policy/admin", body.clone()).await, 403);
    assert_eq!(p("sys/policy/hpcs-server-x", body.clone()).await, 403);
    assert_eq!(p("sys/policies/acl/hpcs-secret-x", body).await, 403);
    assert_eq!(
        p(
            "sys/policy/hpcs-secret-x",
            json!({"policy": "path \"sys/*\" { capabilities = [\"sudo\", \"update\"] }"})
        )
        .await,
        403
    );
    assert_eq!(
        p(
            "sys/policy/hpcs-secret-x",
            json!({"policy": "path \"secret/data/x\" { capabilities = [\"read\"] }"})
        )
        .await,
        403
    );

    // Roles: every parameter pinned.
    let r = |body: serde_json::Value| {
        let v = v.clone();
        let path = format!("auth/{}/role/hpcs-secret-x", v.auth_mount);
        async move { v.call(t, "POST", &path, Some(body)).await.0 }
    };
    let good = json!({
        "role_type": "jwt", "user_claim": "sub",
        "bound_subject": format!("spiffe://{}/hpcs/secret/x", stack.trust_domain),
        "bound_audiences": "vault", "token_policies": "hpcs-secret-x-read",
    });
    assert_eq!(r(good.clone()).await, 204);
    let with = |k: &str, val: serde_json::Value| {
        let mut b = good.clone();
        b[k] = val;
        b
    };
    for (what, body) in [
        (
            "client subject",
            with(
                "bound_subject",
                json!(format!("spiffe://{}/client/alice", stack.trust_domain)),
            ),
        ),
        (
            "two subjects",
            with(
                "bound_subject",
                json!(format!(
                    "spiffe://{}/hpcs/secret/x,spiffe://{}/client/alice",
                    stack.trust_domain, stack.trust_domain
                )),
            ),
        ),
        (
            "other audience",
            with("bound_audiences", json!("hpcs-server")),
        ),
        (
            "audience list",
            with("bound_audiences", json!(["vault", "x"])),
        ),
        (
            "write policy",
            with("token_policies", json!("hpcs-secret-x-write")),
        ),
        (
            "smuggled policy",
            with("token_policies", json!("hpcs-secret-x-read,admin")),
        ),
        (
            "policy list",
            with("token_policies", json!(["hpcs-secret-x-read", "admin"])),
        ),
        (
            "server policy",
            with("token_policies", json!(v.server_policy)),
        ),
        ("oidc role", with("role_type", json!("oidc"))),
        ("other claim", with("user_claim", json!("aud"))),
        (
            "claim mappings",
            with("claim_mappings", json!({"sub": "x"})),
        ),
        ("periodic token", with("token_period", json!("24h"))),
    ] {
        assert_eq!(r(body).await, 403, "{what} was allowed");
    }
    let (s, _) = v
        .call(
            t,
            "POST",
            &format!("auth/{}/role/hpcs-server", v.auth_mount),
            Some(good),
        )
        .await;
    assert_eq!(s, 403, "the server must not rewrite its own role");

    // Tokens: only from the writer role, only write policies.
    let (s, _) = v
        .call(
            t,
            "POST",
            "auth/token/create",
            Some(json!({"policies": [format!("hpcs-secret-{id}-write")]})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = v
        .call(
            t,
            "POST",
            &format!("auth/token/create/{}", v.token_role),
            Some(json!({"policies": [format!("hpcs-secret-{id}-read")]})),
        )
        .await;
    assert_eq!(s, 400, "a read policy from the writer role");
    let (s, _) = v
        .call(
            t,
            "POST",
            &format!("auth/token/create/{}", v.token_role),
            Some(json!({"policies": ["root"]})),
        )
        .await;
    assert_eq!(s, 400);

    // Keys: never readable, never writable by the server.
    let key_path = format!("{kv}/data/{id}");
    let (s, _) = v
        .call(
            None,
            "POST",
            &key_path,
            Some(json!({"data": {"identity": "k"}})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v.call(t, "GET", &key_path, None).await.0, 403);
    assert_eq!(
        v.call(
            t,
            "POST",
            &key_path,
            Some(json!({"data": {"identity": "x"}}))
        )
        .await
        .0,
        403
    );
    assert_eq!(
        v.call(t, "LIST", &format!("{kv}/metadata"), None).await.0,
        403
    );
    // ... but destroyable on revocation.
    vault.destroy_key(&id).await.unwrap();
    assert!(!v.exists(&format!("{kv}/metadata/{id}")).await);

    // Nothing outside its mounts.
    assert_eq!(v.call(t, "GET", "sys/mounts", None).await.0, 403);
    assert_eq!(v.call(t, "GET", "sys/policy/default", None).await.0, 403);
    assert_eq!(
        v.call(t, "POST", "sys/mounts/evil", Some(json!({"type": "kv"})))
            .await
            .0,
        403
    );

    vault
        .delete_reader_role(&reader_role_name(&id))
        .await
        .unwrap();
    vault.delete_policy(&read_policy_name(&id)).await.unwrap();
    vault.delete_policy(&write_policy_name(&id)).await.unwrap();
    // Deleting what is gone is fine (revocation is repeatable).
    vault.delete_policy(&read_policy_name(&id)).await.unwrap();
    vault
        .delete_reader_role(&reader_role_name(&id))
        .await
        .unwrap();
    v.cleanup(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_once_token_creates_exactly_one_record_once() {
    let Some((stack, v, _token, vault)) = setup().await else {
        return;
    };
    let id = SecretId::generate();
    let other = SecretId::generate();
    let kv = &v.kv_mount;
    vault
        .write_policy(&write_policy_name(&id), &writer_policy(kv, &id))
        .await
        .unwrap();
    let issued = vault
        .create_write_token(&write_policy_name(&id), &id)
        .await
        .unwrap();
    assert_eq!(issued.num_uses, 1);
    let tok = issued.token.expose().to_owned();
    let (_, info) = v
        .call(
            None,
            "POST",
            "auth/token/lookup",
            Some(json!({"token": tok})),
        )
        .await;
    assert_eq!(info["data"]["num_uses"], 1);
    assert_eq!(info["data"]["orphan"], true);
    assert_eq!(info["data"]["renewable"], false);
    assert_eq!(
        info["data"]["policies"],
        json!([format!("hpcs-secret-{id}-write")])
    );

    // The one write.
    let (s, _) = v
        .call(
            Some(&tok),
            "POST",
            &format!("{kv}/data/{id}"),
            Some(json!({"data": {"identity": "k"}})),
        )
        .await;
    assert_eq!(s, 200);
    // Spent.
    let (s, _) = v
        .call(
            Some(&tok),
            "POST",
            &format!("{kv}/data/{id}"),
            Some(json!({"data": {"identity": "x"}})),
        )
        .await;
    assert_eq!(s, 403);

    // Another path or a read: refused. A refused request spends the token too, so an owner's
    // client must make exactly one request with it: the write.
    for (method, path) in [
        ("POST", format!("{kv}/data/{other}")),
        ("GET", format!("{kv}/data/{id}")),
    ] {
        let t = vault
            .create_write_token(&write_policy_name(&id), &id)
            .await
            .unwrap();
        let body = (method == "POST").then(|| json!({"data": {"k": "v"}}));
        let (s, _) = v.call(Some(t.token.expose()), method, &path, body).await;
        assert_eq!(s, 403, "{method} {path}");
    }

    // Even a token with uses left cannot overwrite: the policy grants create, not update.
    let (s, body) = v
        .call(
            None,
            "POST",
            "auth/token/create",
            Some(json!({"policies": [format!("hpcs-secret-{id}-write")], "no_default_policy": true, "num_uses": 5})),
        )
        .await;
    assert_eq!(s, 200);
    let multi = body["auth"]["client_token"].as_str().unwrap();
    let (s, _) = v
        .call(
            Some(multi),
            "POST",
            &format!("{kv}/data/{id}"),
            Some(json!({"data": {"identity": "x"}})),
        )
        .await;
    assert_eq!(s, 403);
    let (_, rec) = v.call(None, "GET", &format!("{kv}/data/{id}"), None).await;
    assert_eq!(rec["data"]["data"]["identity"], "k");

    // Deleting the policy neuters an unused token (what a rollback relies on).
    let unused = vault
        .create_write_token(&write_policy_name(&id), &id)
        .await
        .unwrap();
    vault.delete_policy(&write_policy_name(&id)).await.unwrap();
    vault.destroy_key(&id).await.unwrap();
    let (s, _) = v
        .call(
            Some(unused.token.expose()),
            "POST",
            &format!("{kv}/data/{id}"),
            Some(json!({"data": {"identity": "x"}})),
        )
        .await;
    assert_eq!(s, 403);
    v.cleanup(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_index_lists_per_owner() {
    let Some((stack, v, _token, vault)) = setup().await else {
        return;
    };
    let alice = stack.client_id("alice");
    let bob = stack.client_id("bob");
    let ids: Vec<SecretId> = (0..3).map(|_| SecretId::generate()).collect();
    for id in &ids {
        vault.index_owner(&alice, id).await.unwrap();
    }
    vault.index_owner(&bob, &ids[0]).await.unwrap();
    let mut owned = vault.owned(&alice).await.unwrap();
    owned.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(owned, expected);
    vault.unindex_owner(&alice, &ids[1]).await.unwrap();
    vault.unindex_owner(&alice, &ids[1]).await.unwrap();
    assert_eq!(vault.owned(&alice).await.unwrap().len(), 2);
    assert_eq!(vault.owned(&bob).await.unwrap(), [ids[0].clone()]);
    assert!(
        vault
            .owned(&stack.client_id("carol"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(vault.read_record(&ids[0]).await.unwrap().is_none());
    v.cleanup(&stack).await;
}
