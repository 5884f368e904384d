//! container-prep end to end as alice, against the test stack: devspire (alice's JWT-SVID from the
//! laptop agent), OpenBao (a namespace set up by deploy/vault/setup), sshd, and the HPCS server
//! in-process (the server tests' harness).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../server/tests/common/mod.rs"]
mod common;

use std::os::unix::fs::PermissionsExt;
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
        .prefix("hpcs-cp-")
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

fn run_tool(
    st: &hpcs_test_support::Stack,
    env: &Env,
    input: &Path,
    name: &str,
) -> std::process::Output {
    hpcs_test_support::run_as(&st.alice, env!("CARGO_BIN_EXE_container-prep"))
        .arg("--config")
        .arg(&env.config)
        .arg("--image-archive")
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
async fn prepares_an_image_archive_and_aborts_on_a_changed_host_key() {
    let Some(stack) = common::stack() else {
        return;
    };
    let st = hpcs_test_support::Stack::load();
    let server = TestServer::start(&stack).await;
    let (_tmp, env) = alice_env(&st, &server);

    let saved = std::process::Command::new("docker")
        .args(["-H", &st.docker_host, "save", &st.test_image])
        .output()
        .unwrap();
    assert!(saved.status.success());
    let archive = env.dir.join("image.tar");
    std::fs::write(&archive, &saved.stdout).unwrap();
    chown_r(&archive, st.alice.uid, st.alice.gid);

    let out = run_tool(&st, &env, &archive, "img");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "container-prep failed: {stderr}");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ct = std::fs::read(env.remote.join("img.age")).unwrap();
    assert_eq!(ct.len() as u64, result["size"].as_u64().unwrap());
    let info = hpcs_core::info::InfoFile::read(&env.remote.join("img.info.yaml")).unwrap();
    assert_eq!(info.ciphertext.size, ct.len() as u64);
    let hpcs_core::info::ArtefactKind::Image(meta) = &info.kind else {
        panic!("not an image: {info:?}");
    };
    assert_eq!(
        Some(meta.digest.to_string().as_str()),
        result["image_digest"].as_str()
    );
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
    let identity = hpcs_core::secret::AgeIdentity::parse(
        body["data"]["data"]["age_identity"].as_str().unwrap(),
    )
    .unwrap();
    let mut plain = Vec::new();
    hpcs_core::crypto::decrypt(&ct[..], &mut plain, &identity, Some(&info.ciphertext)).unwrap();
    assert!(
        plain == saved.stdout,
        "decrypted image differs from docker save"
    );
    assert_eq!(secrets_of_alice(&stack, &server).await, 1);
    // The staged upload was renamed into place: the two final files are all there is.
    let mut names: Vec<_> = std::fs::read_dir(&env.remote)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["img.age", "img.info.yaml"]);

    // A known_hosts entry with another key for the host: abort before registering or uploading.
    let other = env.dir.join("other_key");
    let kg = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(kg.success());
    let pubkey = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let mut words = pubkey.split_whitespace();
    let line = format!(
        "[{}]:{} {} {}\n",
        st.ssh_host,
        st.ssh_port,
        words.next().unwrap(),
        words.next().unwrap()
    );
    std::fs::write(env.dir.join("known_hosts"), line).unwrap();
    let out = run_tool(&st, &env, &archive, "img2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing was registered"), "{stderr}");
    assert!(!env.remote.join("img2.age").exists());
    assert_eq!(
        secrets_of_alice(&stack, &server).await,
        1,
        "nothing new registered"
    );
    server.stop().await;
}
