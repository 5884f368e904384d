//! The Workload API through the unmodified spiffe crate client, with callers of different uids
//! on different simulated nodes.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Devspire, api_as_uid, api_as_user, api_with_groups, devspire_bin, spiffe_id};
use hpcs_spire_api::workload::JwtsvidRequest;
use hpcs_spire_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use sha2::Digest as _;
use spiffe::{JwtSvid, WorkloadApiError};
use tokio_stream::StreamExt as _;

/// Arbitrary uids/gids with no account: SO_PEERCRED and /proc report them all the same.
const UID_A: u32 = 62_001;
const UID_B: u32 = 62_002;
const GID: u32 = 62_000;

fn fetch_jwt_args<'a>(socket: &'a str, audience: &'a str) -> Vec<&'a str> {
    vec!["fetch-jwt", "--socket", socket, "--audience", audience]
}

#[tokio::test(flavor = "multi_thread")]
async fn uid_on_node_gets_only_its_svid() {
    let ds = Devspire::start().await;
    ds.create_entry(
        "/hpcs/secret/a-node1",
        "node1",
        &[&format!("unix:uid:{UID_A}")],
    )
    .await;
    // Same SPIFFE path family but other selectors or other node: never served to A on node1.
    ds.create_entry(
        "/hpcs/secret/b-node1",
        "node1",
        &[&format!("unix:uid:{UID_B}"), "unix:gid:1"],
    )
    .await;
    let node1 = ds.socket("node1").display().to_string();
    let node2 = ds.socket("node2").display().to_string();

    let a1 = api_as_uid(UID_A, GID, &fetch_jwt_args(&node1, "test")).await;
    assert!(a1.ok, "{}", a1.stderr);
    assert_eq!(a1.spiffe_ids, vec![spiffe_id("/hpcs/secret/a-node1")]);

    let a1_x509 = api_as_uid(UID_A, GID, &["fetch-x509", "--socket", &node1]).await;
    assert!(a1_x509.ok, "{}", a1_x509.stderr);
    assert_eq!(a1_x509.spiffe_ids, vec![spiffe_id("/hpcs/secret/a-node1")]);

    let a2 = api_as_uid(UID_A, GID, &fetch_jwt_args(&node2, "test")).await;
    assert!(!a2.ok);
    assert!(a2.stderr.contains("no identity issued"), "{}", a2.stderr);

    // B's entry also requires gid 1, which B's process does not have.
    let b1 = api_as_uid(UID_B, GID, &fetch_jwt_args(&node1, "test")).await;
    assert!(!b1.ok);
    assert!(b1.stderr.contains("no identity issued"), "{}", b1.stderr);

    // The test process itself (root) has no entry either.
    let err = ds
        .workload("node1")
        .await
        .fetch_jwt_svid(["test"], None)
        .await
        .unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_svid_validates_with_the_spiffe_crate() {
    let ds = Devspire::start().await;
    let uid = nix::unistd::geteuid().as_raw();
    ds.create_entry("/hpcs/server", "node1", &[&format!("unix:uid:{uid}")])
        .await;
    let client = ds.workload("node1").await;

    let svid = client
        .fetch_jwt_svid(["hpcs-server", "other"], None)
        .await
        .unwrap();
    assert_eq!(svid.spiffe_id().to_string(), spiffe_id("/hpcs/server"));
    assert_eq!(svid.audience(), ["hpcs-server", "other"]);
    let lifetime = svid.expiry().unix_timestamp() - devspire::state::unix_now();
    assert!((290..=300).contains(&lifetime), "{lifetime}");

    let bundles = client.fetch_jwt_bundles().await.unwrap();
    let validated = JwtSvid::parse_and_validate(svid.token(), &bundles, &["hpcs-server"]).unwrap();
    assert_eq!(validated.spiffe_id(), svid.spiffe_id());
    let err = JwtSvid::parse_and_validate(svid.token(), &bundles, &["nope"]).unwrap_err();
    assert!(format!("{err:?}").contains("InvalidAudience"), "{err:?}");

    // ValidateJWTSVID on the agent.
    let checked = client
        .validate_jwt_token("other", svid.token())
        .await
        .unwrap();
    assert_eq!(checked.spiffe_id(), svid.spiffe_id());
    let err = client
        .validate_jwt_token("nope", svid.token())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("audience does not contain"),
        "{err}"
    );

    // Requesting one SPIFFE ID: the entitled one works, another is refused.
    let id: spiffe::SpiffeId = spiffe_id("/hpcs/server").parse().unwrap();
    client.fetch_jwt_svid(["x"], Some(&id)).await.unwrap();
    let other: spiffe::SpiffeId = spiffe_id("/other").parse().unwrap();
    let err = client
        .fetch_jwt_svid(["x"], Some(&other))
        .await
        .unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn x509_svid_and_bundles() {
    let ds = Devspire::start().await;
    let uid = nix::unistd::geteuid().as_raw();
    ds.create_entry("/hpcs/node", "node2", &[&format!("unix:uid:{uid}")])
        .await;
    let client = ds.workload("node2").await;
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), spiffe_id("/hpcs/node"));
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new(common::TD).unwrap();
    let bundle = bundles.get(&td).unwrap();
    assert_eq!(bundle.authorities().len(), 1);
    // The leaf really chains to the bundle's CA.
    verify_chain(svid.leaf().as_bytes(), bundle.authorities()[0].as_bytes());
}

/// Checks the leaf's signature with the CA key using openssl, if installed.
fn verify_chain(leaf_der: &[u8], ca_der: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let write_pem = |name: &str, der: &[u8]| {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let body: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                body.join("\n")
            ),
        )
        .unwrap();
        path
    };
    let ca = write_pem("ca.pem", ca_der);
    let leaf = write_pem("leaf.pem", leaf_der);
    match std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&ca)
        .arg(&leaf)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "openssl verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("openssl not available ({e}); chain signature not checked"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_without_the_security_header_are_rejected() {
    let ds = Devspire::start().await;
    let channel = hpcs_spire_api::channel::connect_unix(ds.socket("node1"), Duration::from_secs(5))
        .await
        .unwrap();
    let mut raw = SpiffeWorkloadApiClient::new(channel);
    let status = raw
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["x".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("security header missing"),
        "{}",
        status.message()
    );

    // With the header, a bad request still gets a clear error.
    let mut request = tonic::Request::new(JwtsvidRequest {
        audience: vec![],
        spiffe_id: String::new(),
    });
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let status = raw.fetch_jwtsvid(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "audience must be specified");

    let mut request = tonic::Request::new(JwtsvidRequest {
        audience: vec!["x".into()],
        spiffe_id: "spiffe://hpcs.test/a//b".into(),
    });
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let status = raw.fetch_jwtsvid(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("invalid requested SPIFFE ID"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_entry_is_no_longer_served_and_streams_follow() {
    let ds = Devspire::start().await;
    let uid = nix::unistd::geteuid().as_raw();
    let id = ds
        .create_entry("/hpcs/secret/s1", "node1", &[&format!("unix:uid:{uid}")])
        .await;
    let client = ds.workload("node1").await;
    client.fetch_jwt_svid(["a"], None).await.unwrap();
    let mut stream = client.stream_x509_svids().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.spiffe_id().to_string(), spiffe_id("/hpcs/secret/s1"));

    // A second entry for the same workload shows up on the open stream.
    let id2 = ds
        .create_entry("/hpcs/secret/s2", "node1", &[&format!("unix:uid:{uid}")])
        .await;
    let _update = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("no stream update after BatchCreateEntry")
        .unwrap()
        .unwrap();
    let all = client.fetch_all_x509_svids().await.unwrap();
    assert_eq!(all.len(), 2);

    ds.delete_entry(&id).await;
    ds.delete_entry(&id2).await;
    let err = client.fetch_jwt_svid(["a"], None).await.unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err}");
    let err = client.fetch_x509_svid().await.unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err}");
    // The open stream ends with "no identity issued" (after possibly one intermediate update).
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.next().await {
                Some(Err(e)) => break e,
                Some(Ok(_)) => {}
                None => panic!("stream ended without an error"),
            }
        }
    })
    .await
    .expect("stream did not report the deletion");
    assert!(
        matches!(ended, WorkloadApiError::NoIdentityIssued),
        "{ended}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn path_and_sha256_selectors() {
    let ds = Devspire::start().await;
    let bin = devspire_bin().canonicalize().unwrap();
    let hash = hex::encode(sha2::Sha256::digest(std::fs::read(&bin).unwrap()));
    let uid = 62_011;
    ds.create_entry(
        "/by-path",
        "node1",
        &[
            &format!("unix:uid:{uid}"),
            &format!("unix:path:{}", bin.display()),
        ],
    )
    .await;
    ds.create_entry(
        "/by-hash",
        "node1",
        &[&format!("unix:uid:{uid}"), &format!("unix:sha256:{hash}")],
    )
    .await;
    ds.create_entry(
        "/wrong-hash",
        "node1",
        &[
            &format!("unix:uid:{uid}"),
            &format!("unix:sha256:{}", "0".repeat(64)),
        ],
    )
    .await;
    ds.create_entry(
        "/wrong-path",
        "node1",
        &[&format!("unix:uid:{uid}"), "unix:path:/usr/bin/env"],
    )
    .await;
    let socket = ds.socket("node1").display().to_string();
    let got = api_as_uid(uid, GID, &fetch_jwt_args(&socket, "x")).await;
    assert!(got.ok, "{}", got.stderr);
    assert_eq!(
        got.spiffe_ids,
        vec![spiffe_id("/by-hash"), spiffe_id("/by-path")]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_is_followed_by_bundle_streams_and_old_tokens_stay_valid() {
    let ds = Devspire::start().await;
    let uid = nix::unistd::geteuid().as_raw();
    ds.create_entry("/rot", "node1", &[&format!("unix:uid:{uid}")])
        .await;
    let client = ds.workload("node1").await;
    let old = client.fetch_jwt_svid(["a"], None).await.unwrap();
    let mut bundles = client.stream_jwt_bundles().await.unwrap();
    let before = bundles.next().await.unwrap().unwrap();
    let td = spiffe::TrustDomain::new(common::TD).unwrap();
    assert_eq!(before.get(&td).unwrap().jwt_authorities().count(), 1);

    // Through the CLI, as an operator would.
    let out = tokio::process::Command::new(devspire_bin())
        .args(["rotate", "--admin-socket"])
        .arg(&ds.admin)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_kid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_ne!(new_kid, old.key_id());

    let after = tokio::time::timeout(Duration::from_secs(5), bundles.next())
        .await
        .expect("no bundle update after rotation")
        .unwrap()
        .unwrap();
    let after_bundle = after.get(&td).unwrap();
    assert_eq!(after_bundle.jwt_authorities().count(), 2);
    assert!(after_bundle.find_jwt_authority(&new_kid).is_some());

    let new = client.fetch_jwt_svid(["a"], None).await.unwrap();
    assert_eq!(new.key_id(), new_kid);
    JwtSvid::parse_and_validate(new.token(), &after, &["a"]).unwrap();
    JwtSvid::parse_and_validate(old.token(), &after, &["a"]).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_and_keys_survive_a_restart() {
    let ds = Devspire::start().await;
    let uid = nix::unistd::geteuid().as_raw();
    ds.create_entry("/persist", "node2", &[&format!("unix:uid:{uid}")])
        .await;
    let token = ds
        .workload("node2")
        .await
        .fetch_jwt_svid(["a"], None)
        .await
        .unwrap();
    let ds = ds.restart().await;
    let client = ds.workload("node2").await;
    let again = client.fetch_jwt_svid(["a"], None).await.unwrap();
    assert_eq!(again.spiffe_id().to_string(), spiffe_id("/persist"));
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    JwtSvid::parse_and_validate(token.token(), &bundles, &["a"]).unwrap();
}

/// User, group and supplementary group selectors, with accounts every Debian system has
/// (nobody/nogroup, groups users=100 and adm=4).
#[tokio::test(flavor = "multi_thread")]
async fn name_and_group_selectors() {
    let ds = Devspire::start().await;
    ds.create_entry(
        "/names",
        "node1",
        &[
            "unix:user:nobody",
            "unix:group:nogroup",
            "unix:supplementary_group:users",
        ],
    )
    .await;
    ds.create_entry(
        "/sgid",
        "node1",
        &["unix:uid:65534", "unix:supplementary_gid:4"],
    )
    .await;
    ds.create_entry(
        "/staff",
        "node1",
        &["unix:user:nobody", "unix:supplementary_group:staff"],
    )
    .await;
    let socket = ds.socket("node1").display().to_string();

    let both = api_with_groups(65_534, 65_534, &[100, 4], &fetch_jwt_args(&socket, "x")).await;
    assert!(both.ok, "{}", both.stderr);
    assert_eq!(
        both.spiffe_ids,
        vec![spiffe_id("/names"), spiffe_id("/sgid")]
    );

    let only_adm = api_with_groups(65_534, 65_534, &[4], &fetch_jwt_args(&socket, "x")).await;
    assert!(only_adm.ok, "{}", only_adm.stderr);
    assert_eq!(only_adm.spiffe_ids, vec![spiffe_id("/sgid")]);

    let none = api_with_groups(65_534, 65_534, &[], &fetch_jwt_args(&socket, "x")).await;
    assert!(!none.ok);
    assert!(
        none.stderr.contains("no identity issued"),
        "{}",
        none.stderr
    );
}

/// The test stack's users: alice (also in hpcs-alice-proj) and bob, logged in with `runuser`.
#[tokio::test(flavor = "multi_thread")]
async fn stack_users_alice_and_bob() {
    let Some(env) = common::stack_env() else {
        if common::may_skip_without_stack() {
            eprintln!("skipped: no test stack (HPCS_ALLOW_NO_STACK=1)");
            return;
        }
        panic!("no test stack env file: run `scripts/test-stack up` first");
    };
    let alice_uid = env
        .get("HPCS_ALICE_UID")
        .expect("HPCS_ALICE_UID missing from the stack env file: rerun `scripts/test-stack up`");
    let ds = Devspire::start().await;
    ds.create_entry(
        "/client/alice",
        "node1",
        &[
            &format!("unix:uid:{alice_uid}"),
            "unix:supplementary_group:hpcs-alice-proj",
        ],
    )
    .await;
    ds.create_entry(
        "/group/hpcs-users",
        "node2",
        &["unix:supplementary_group:hpcs-users"],
    )
    .await;
    let node1 = ds.socket("node1").display().to_string();
    let node2 = ds.socket("node2").display().to_string();

    let alice = api_as_user("alice", &fetch_jwt_args(&node1, "x")).await;
    assert!(alice.ok, "{}", alice.stderr);
    assert_eq!(alice.spiffe_ids, vec![spiffe_id("/client/alice")]);
    let bob = api_as_user("bob", &fetch_jwt_args(&node1, "x")).await;
    assert!(
        !bob.ok && bob.stderr.contains("no identity issued"),
        "{}",
        bob.stderr
    );
    for user in ["alice", "bob"] {
        let got = api_as_user(user, &fetch_jwt_args(&node2, "x")).await;
        assert!(got.ok, "{user}: {}", got.stderr);
        assert_eq!(got.spiffe_ids, vec![spiffe_id("/group/hpcs-users")]);
    }
}
