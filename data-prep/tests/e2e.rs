//! data-prep end to end as alice, against the test stack: devspire (alice's JWT-SVID from the
//! laptop agent), OpenBao (a namespace set up by deploy/vault/setup), sshd, and the HPCS server
//! in-process (the server tests' harness).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../server/tests/common/mod.rs"]
mod common;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use common::{TestServer, client_token};

/// The re-executed helper of the harness (fetches JWT-SVIDs as another user).
#[test]
fn zz_helper() {
    common::helper_main();
}

struct Env {
    dir: PathBuf,
    config: PathBuf,
    remote: PathBuf,
}

fn chown_r(path: &Path, uid: u32, gid: u32) {
    let st = std::process::Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A private dir for alice with her client config, SSH key and known_hosts, and a remote dir.
fn alice_env(st: &hpcs_test_support::Stack, server: &TestServer) -> (tempfile::TempDir, Env) {
    let tmp = tempfile::Builder::new()
        .prefix("hpcs-dp-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_owned();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = dir.join("id_ssh");
    std::fs::copy(&st.alice.ssh_key, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let kh = dir.join("known_hosts");
    std::fs::copy(&st.ssh_known_hosts, &kh).unwrap();
    let remote = dir.join("at-rest");
    std::fs::create_dir(&remote).unwrap();
    let config = dir.join("client.ini");
    std::fs::write(
        &config,
        format!(
            "[spire-server]\ntrust-domain = {td}\n\n[hpcs-server]\nurl = {url}\n\n[vault]\nurl = {bao}\n\n\
             [supercomputer]\naddress = {host}\nusername = alice\n\n[ssh]\nkey = {key}\nknown-hosts = {kh}\nport = {port}\n\n\
             [spire-agent]\nsocket-path = {sock}\n",
            td = st.trust_domain,
            url = server.base,
            bao = st.bao_addr,
            host = st.ssh_host,
            key = key.display(),
            kh = kh.display(),
            port = st.ssh_port,
            sock = st.agent("laptop").socket.display(),
        ),
    )
    .unwrap();
    chown_r(&dir, st.alice.uid, st.alice.gid);
    (
        tmp,
        Env {
            dir,
            config,
            remote,
        },
    )
}

fn data_prep(
    st: &hpcs_test_support::Stack,
    env: &Env,
    input: &Path,
    name: &str,
) -> std::process::Output {
    hpcs_test_support::run_as(&st.alice, env!("CARGO_BIN_EXE_data-prep"))
        .arg("--config")
        .arg(&env.config)
        .arg("-i")
        .arg(input)
        .args(["--name", name, "-u", "alice", "-c", "node1", "--json"])
        .arg("--data-path-at-rest")
        .arg(&env.remote)
        .output()
        .unwrap()
}

async fn secrets_of_alice(stack: &common::Stack, server: &TestServer) -> usize {
    let token = client_token(stack, "alice");
    let (status, body) = server
        .call(Some(&token), "GET", "/api/v1/secrets", None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["secrets"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_a_tree_and_refuses_a_fifo() {
    let Some(stack) = common::stack() else {
        return;
    };
    let st = hpcs_test_support::Stack::load();
    let server = TestServer::start(&stack).await;
    let (_tmp, env) = alice_env(&st, &server);

    // A tree with nested dirs, an empty file, unicode names and an inside symlink.
    let input = env.dir.join("input");
    std::fs::create_dir_all(input.join("a/b/c")).unwrap();
    std::fs::write(input.join("a/b/c/deep.txt"), b"deep content\n").unwrap();
    std::fs::write(input.join("empty"), b"").unwrap();
    std::fs::write(input.join("päivää ☃.txt"), "unicode\n").unwrap();
    symlink("a/b/c/deep.txt", input.join("link")).unwrap();
    chown_r(&input, st.alice.uid, st.alice.gid);

    let out = data_prep(&st, &env, &input, "tree");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "data-prep failed: {stderr}");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["result"], "prepared", "{result}");
    let ct_path = PathBuf::from(result["ciphertext_path"].as_str().unwrap());
    assert_eq!(ct_path, env.remote.join("tree.age"));
    let ct = std::fs::read(&ct_path).unwrap();
    assert_eq!(ct.len() as u64, result["size"].as_u64().unwrap());
    let info = hpcs_core::info::InfoFile::read(&env.remote.join("tree.info.yaml")).unwrap();
    assert_eq!(info.ciphertext.size, ct.len() as u64);
    assert_eq!(
        info.ciphertext.sha256.to_string(),
        result["sha256"].as_str().unwrap()
    );
    assert_eq!(
        info.secret_id().to_string(),
        result["secret_id"].as_str().unwrap()
    );
    assert_eq!(
        info.owner.to_string(),
        format!("spiffe://{}/client/alice", st.trust_domain)
    );

    // The key in Vault decrypts the remote ciphertext into the same tree.
    let (status, body) = server
        .vault
        .call(
            None,
            "GET",
            &format!("{}/data/{}", server.vault.kv_mount, info.secret_id()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let record = &body["data"]["data"];
    assert_eq!(record["sha256"], result["sha256"]);
    assert_eq!(record["size"], result["size"]);
    assert_eq!(record["kind"], "data");
    let identity =
        hpcs_core::secret::AgeIdentity::parse(record["age_identity"].as_str().unwrap()).unwrap();
    let mut tar = Vec::new();
    hpcs_core::crypto::decrypt(&ct[..], &mut tar, &identity, Some(&info.ciphertext)).unwrap();
    let back = tempfile::tempdir().unwrap();
    let dest = back.path().join("out");
    std::fs::create_dir(&dest).unwrap();
    hpcs_core::archive::unpack_safe(&tar[..], &dest).unwrap();
    assert_eq!(
        std::fs::read(dest.join("a/b/c/deep.txt")).unwrap(),
        b"deep content\n"
    );
    assert_eq!(std::fs::read(dest.join("empty")).unwrap(), b"");
    assert_eq!(
        std::fs::read_to_string(dest.join("päivää ☃.txt")).unwrap(),
        "unicode\n"
    );
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        PathBuf::from("a/b/c/deep.txt")
    );
    assert_eq!(secrets_of_alice(&stack, &server).await, 1);

    // A FIFO is refused before anything is registered or uploaded.
    let bad = env.dir.join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("ok.txt"), b"x").unwrap();
    let st_fifo = std::process::Command::new("mkfifo")
        .arg(bad.join("pipe"))
        .status()
        .unwrap();
    assert!(st_fifo.success());
    chown_r(&bad, st.alice.uid, st.alice.gid);
    let out = data_prep(&st, &env, &bad, "bad");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("FIFO"), "{stderr}");
    assert!(!env.remote.join("bad.age").exists());

    // A symlink pointing outside the tree is refused too.
    let esc = env.dir.join("escape");
    std::fs::create_dir(&esc).unwrap();
    symlink("../client.ini", esc.join("out")).unwrap();
    chown_r(&esc, st.alice.uid, st.alice.gid);
    let out = data_prep(&st, &env, &esc, "escape");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot pack symlink"), "{stderr}");
    assert_eq!(
        secrets_of_alice(&stack, &server).await,
        1,
        "nothing new registered"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_failure_revokes_the_registered_secret() {
    let Some(stack) = common::stack() else {
        return;
    };
    let st = hpcs_test_support::Stack::load();
    let server = TestServer::start(&stack).await;
    let (_tmp, env) = alice_env(&st, &server);
    // The client's Vault is unreachable: the registration succeeds, the key write fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ini = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(&st.bao_addr, &format!("http://127.0.0.1:{closed}"));
    std::fs::write(&env.config, ini).unwrap();
    let input = env.dir.join("input");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("f"), b"data").unwrap();
    chown_r(&env.dir, st.alice.uid, st.alice.gid);

    let out = data_prep(&st, &env, &input, "novault");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was revoked after a failure"), "{stderr}");
    assert!(
        stderr.contains("failed to write the key to Vault"),
        "{stderr}"
    );
    assert_eq!(
        secrets_of_alice(&stack, &server).await,
        0,
        "no orphan secret"
    );
    assert!(!env.remote.join("novault.age").exists());
    // The ciphertext went up before the registration; the failure removed it again.
    let left: Vec<_> = std::fs::read_dir(&env.remote)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left at rest: {left:?}");
    server.stop().await;
}
