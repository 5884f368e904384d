//! JWT-SVIDs against real OpenBao `jwt` auth configured through devspire's OIDC discovery URL,
//! exactly as with SPIRE's OIDC discovery provider.
//!
//! OpenBao comes from the test stack (`HPCS_BAO_ADDR`, `HPCS_BAO_TOKEN`); without a stack, a
//! private `bao server -dev` is started from `HPCS_BAO_BIN`. Each test uses its own auth mount,
//! KV mount and policy names.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Devspire, spiffe_id};
use serde_json::{Value, json};

/// A reachable OpenBao with a root token; a private dev server is killed on drop.
struct Bao {
    addr: String,
    token: String,
    _child: Option<tokio::process::Child>,
}

async fn bao() -> Option<Bao> {
    let env = common::stack_env().unwrap_or_default();
    let get = |k: &str| std::env::var(k).ok().or_else(|| env.get(k).cloned());
    if let (Some(addr), Some(token)) = (get("HPCS_BAO_ADDR"), get("HPCS_BAO_TOKEN")) {
        return Some(Bao {
            addr,
            token,
            _child: None,
        });
    }
    let Some(bin) = get("HPCS_BAO_BIN") else {
        if common::may_skip_without_stack() {
            eprintln!("skipped: no OpenBao (HPCS_ALLOW_NO_STACK=1)");
            return None;
        }
        panic!(
            "no OpenBao for this test: run `scripts/test-stack up` (or set HPCS_BAO_BIN to a bao binary)"
        );
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = uuid::Uuid::new_v4().to_string();
    let child = tokio::process::Command::new(bin)
        .args(["server", "-dev", "-dev-no-store-token"])
        .arg(format!("-dev-root-token-id={token}"))
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = format!("http://127.0.0.1:{port}");
    let http = client();
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{addr}/v1/sys/health")).send().await
            && r.status().is_success()
        {
            return Some(Bao {
                addr,
                token,
                _child: Some(child),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("private bao dev server did not become ready on {addr}");
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

impl Bao {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = client()
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn root(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let (status, value) = self.call(method, path, &self.token, Some(body)).await;
        assert!((200..300).contains(&status), "{path}: {status} {value}");
        value
    }

    async fn login(&self, mount: &str, role: &str, jwt: &str) -> Result<String, String> {
        let (status, value) = self
            .call(
                reqwest::Method::POST,
                &format!("auth/{mount}/login"),
                "",
                Some(json!({ "role": role, "jwt": jwt })),
            )
            .await;
        match value["auth"]["client_token"].as_str() {
            Some(token) if status == 200 => Ok(token.to_owned()),
            _ => Err(format!("{status} {value}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_svid_logs_into_openbao_through_oidc_discovery() {
    let Some(bao) = bao().await else { return };
    let ds = Devspire::start().await;
    let ns = format!("ds{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mount = format!("jwt-{ns}");
    let kv = format!("kv-{ns}");
    let policy = format!("p-{ns}");
    let audience = format!("vault-{ns}");
    let post = reqwest::Method::POST;

    // Vault gets the discovery URL; the discovery document's issuer must equal it.
    let discovery: Value = client()
        .get(format!("{}/.well-known/openid-configuration", ds.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], ds.issuer.as_str());

    bao.root(
        post.clone(),
        &format!("sys/auth/{mount}"),
        json!({ "type": "jwt" }),
    )
    .await;
    // bound_issuer makes Vault check the JWT-SVID's `iss` too (devspire sets it to the issuer).
    bao.root(
        post.clone(),
        &format!("auth/{mount}/config"),
        json!({ "oidc_discovery_url": ds.issuer, "bound_issuer": ds.issuer }),
    )
    .await;
    bao.root(
        post.clone(),
        &format!("sys/mounts/{kv}"),
        json!({ "type": "kv", "options": { "version": "2" } }),
    )
    .await;
    bao.root(
        reqwest::Method::PUT,
        &format!("sys/policies/acl/{policy}"),
        json!({ "policy": format!("path \"{kv}/data/allowed\" {{ capabilities = [\"read\"] }}") }),
    )
    .await;
    let reader = spiffe_id(&format!("/hpcs/secret/{ns}"));
    bao.root(
        post.clone(),
        &format!("auth/{mount}/role/reader"),
        json!({
            "role_type": "jwt",
            "user_claim": "sub",
            "bound_subject": reader,
            "bound_audiences": [audience],
            "token_policies": [policy],
            "token_ttl": 60,
        }),
    )
    .await;
    for name in ["allowed", "denied"] {
        bao.root(
            post.clone(),
            &format!("{kv}/data/{name}"),
            json!({ "data": { "v": name } }),
        )
        .await;
    }

    let uid = nix::unistd::geteuid().as_raw();
    ds.create_entry(
        &format!("/hpcs/secret/{ns}"),
        "node1",
        &[&format!("unix:uid:{uid}")],
    )
    .await;
    ds.create_entry(
        &format!("/other/{ns}"),
        "node2",
        &[&format!("unix:uid:{uid}")],
    )
    .await;
    let node1 = ds.workload("node1").await;

    let svid = node1
        .fetch_jwt_svid([audience.as_str()], None)
        .await
        .unwrap();
    let token = bao.login(&mount, "reader", svid.token()).await.unwrap();
    let (status, value) = bao
        .call(
            reqwest::Method::GET,
            &format!("{kv}/data/allowed"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{value}");
    assert_eq!(value["data"]["data"]["v"], "allowed");
    let (status, _) = bao
        .call(
            reqwest::Method::GET,
            &format!("{kv}/data/denied"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 403);

    // Wrong audience: refused.
    let wrong_aud = node1.fetch_jwt_svid(["someone-else"], None).await.unwrap();
    let err = bao
        .login(&mount, "reader", wrong_aud.token())
        .await
        .unwrap_err();
    assert!(err.contains("audience claim does not match"), "{err}");

    // Another identity (node2's entry) with the right audience: refused by bound_subject.
    let other = ds
        .workload("node2")
        .await
        .fetch_jwt_svid([audience.as_str()], None)
        .await
        .unwrap();
    let err = bao
        .login(&mount, "reader", other.token())
        .await
        .unwrap_err();
    assert!(err.contains("invalid subject (sub) claim"), "{err}");

    // Rotation: Vault follows the JWKS; tokens of the old key keep working until they expire.
    let rotated = devspire::client::rotate(&ds.admin).await.unwrap();
    let fresh = node1
        .fetch_jwt_svid([audience.as_str()], None)
        .await
        .unwrap();
    assert_eq!(fresh.key_id(), rotated.active_kid);
    assert_ne!(fresh.key_id(), svid.key_id());
    bao.login(&mount, "reader", fresh.token()).await.unwrap();
    bao.login(&mount, "reader", svid.token()).await.unwrap();

    // Best-effort cleanup of this test's namespace on a shared server.
    for path in [
        format!("sys/auth/{mount}"),
        format!("sys/mounts/{kv}"),
        format!("sys/policies/acl/{policy}"),
    ] {
        let _ = bao
            .call(reqwest::Method::DELETE, &path, &bao.token, None)
            .await;
    }
}

/// What OpenBao's jwt auth requires of the issuer when configured with `oidc_discovery_url`:
/// the discovery document's `issuer` must equal the URL (checked when the config is written),
/// and the token's `iss` is compared only when `bound_issuer` is set.
#[tokio::test(flavor = "multi_thread")]
async fn openbao_issuer_rules() {
    let Some(bao) = bao().await else { return };
    let post = reqwest::Method::POST;
    let ns = format!("ds{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mount = format!("jwt-{ns}");
    bao.root(
        post.clone(),
        &format!("sys/auth/{mount}"),
        json!({ "type": "jwt" }),
    )
    .await;

    // A discovery document whose issuer differs from the URL Vault is given: config refused.
    let misnamed = Devspire::start_with(300, Some("http://devspire.invalid".into())).await;
    let (status, value) = bao
        .call(
            post.clone(),
            &format!("auth/{mount}/config"),
            &bao.token,
            Some(json!({ "oidc_discovery_url": misnamed.oidc_url })),
        )
        .await;
    assert_eq!(status, 400, "{value}");
    assert!(value.to_string().contains("issuer"), "{value}");

    // Matching issuer; without bound_issuer the token's iss is not compared.
    let ds = Devspire::start().await;
    assert_eq!(ds.issuer, ds.oidc_url);
    let config = |bound: Option<&str>| {
        let mut body = json!({ "oidc_discovery_url": ds.issuer });
        if let Some(bound) = bound {
            body["bound_issuer"] = bound.into();
        }
        body
    };
    bao.root(post.clone(), &format!("auth/{mount}/config"), config(None))
        .await;
    let subject = spiffe_id(&format!("/iss/{ns}"));
    bao.root(
        post.clone(),
        &format!("auth/{mount}/role/r"),
        json!({ "role_type": "jwt", "user_claim": "sub", "bound_subject": subject,
                "bound_audiences": ["v"], "token_ttl": 30 }),
    )
    .await;
    let uid = nix::unistd::geteuid().as_raw();
    ds.create_entry(
        &format!("/iss/{ns}"),
        "node1",
        &[&format!("unix:uid:{uid}")],
    )
    .await;
    let svid = ds
        .workload("node1")
        .await
        .fetch_jwt_svid(["v"], None)
        .await
        .unwrap();
    bao.login(&mount, "r", svid.token()).await.unwrap();

    // bound_issuer set to something else: the token's iss no longer matches.
    bao.root(
        post.clone(),
        &format!("auth/{mount}/config"),
        config(Some("http://elsewhere")),
    )
    .await;
    let err = bao.login(&mount, "r", svid.token()).await.unwrap_err();
    assert!(err.contains("iss"), "{err}");
    bao.root(
        post.clone(),
        &format!("auth/{mount}/config"),
        config(Some(&ds.issuer)),
    )
    .await;
    bao.login(&mount, "r", svid.token()).await.unwrap();

    let _ = bao
        .call(
            reqwest::Method::DELETE,
            &format!("sys/auth/{mount}"),
            &bao.token,
            None,
        )
        .await;
}
