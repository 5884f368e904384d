//! The test stack's services are real and usable the way the product uses them: OpenBao through
//! vaultrs, sshd through ssh2 with strict host keys, Slurm jobs that run as the submitting user,
//! and dockerd running a container as a non-root uid.

#![allow(clippy::unwrap_used)] // helpers of the tests, not product code

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, LogsOptions, RemoveContainerOptions, WaitContainerOptions,
};
use futures::StreamExt as _;
use hpcs_test_support::{Stack, TestUser, ns};

fn ssh(stack: &Stack, user: &TestUser) -> ssh2::Session {
    let tcp = TcpStream::connect((stack.ssh_host.as_str(), stack.ssh_port)).unwrap();
    let mut sess = ssh2::Session::new().unwrap();
    sess.set_tcp_stream(tcp);
    sess.set_timeout(30_000);
    sess.handshake().unwrap();
    let mut kh = sess.known_hosts().unwrap();
    kh.read_file(&stack.ssh_known_hosts, ssh2::KnownHostFileKind::OpenSSH)
        .unwrap();
    let (key, _) = sess.host_key().unwrap();
    let check = kh.check_port(&stack.ssh_host, stack.ssh_port, key);
    assert!(
        matches!(check, ssh2::CheckResult::Match),
        "host key check: {check:?}"
    );
    sess.userauth_pubkey_file(user.name, None, &user.ssh_key, None)
        .unwrap();
    assert!(sess.authenticated());
    sess
}

fn exec(sess: &ssh2::Session, cmd: &str) -> (i32, String) {
    let mut ch = sess.channel_session().unwrap();
    ch.exec(cmd).unwrap();
    let mut out = String::new();
    ch.read_to_string(&mut out).unwrap();
    ch.wait_close().unwrap();
    (ch.exit_status().unwrap(), out)
}

#[tokio::test]
async fn openbao_kv_round_trip() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let client = vaultrs::client::VaultClient::new(
        vaultrs::client::VaultClientSettingsBuilder::default()
            .address(&stack.bao_addr)
            .token(&stack.bao_token)
            .build()
            .unwrap(),
    )
    .unwrap();
    let path = ns("smoke");
    let value = serde_json::json!({ "marker": path });
    vaultrs::kv2::set(&client, "secret", &path, &value)
        .await
        .unwrap();
    let back: serde_json::Value = vaultrs::kv2::read(&client, "secret", &path).await.unwrap();
    assert_eq!(back, value);
    vaultrs::kv2::delete_metadata(&client, "secret", &path)
        .await
        .unwrap();
}

#[test]
fn sshd_key_login_and_sftp_as_alice() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let sess = ssh(&stack, &stack.alice);
    let (code, out) = exec(&sess, "id -u");
    assert_eq!(code, 0);
    assert_eq!(out.trim(), stack.alice.uid.to_string());

    let sftp = sess.sftp().unwrap();
    let remote = format!("/tmp/{}.txt", ns("smoke"));
    sftp.create(Path::new(&remote))
        .unwrap()
        .write_all(b"hello sftp\n")
        .unwrap();
    let mut back = String::new();
    sftp.open(Path::new(&remote))
        .unwrap()
        .read_to_string(&mut back)
        .unwrap();
    assert_eq!(back, "hello sftp\n");
    let stat = sftp.stat(Path::new(&remote)).unwrap();
    assert_eq!(stat.uid, Some(stack.alice.uid), "the file belongs to alice");
    sftp.unlink(Path::new(&remote)).unwrap();
}

#[test]
fn sshd_refuses_a_key_that_is_not_authorised() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let tcp = TcpStream::connect((stack.ssh_host.as_str(), stack.ssh_port)).unwrap();
    let mut sess = ssh2::Session::new().unwrap();
    sess.set_tcp_stream(tcp);
    sess.handshake().unwrap();
    // bob's key does not open alice's account.
    assert!(
        sess.userauth_pubkey_file("alice", None, &stack.bob.ssh_key, None)
            .is_err()
    );
    assert!(!sess.authenticated());
}

#[test]
fn slurm_job_runs_as_the_submitting_user() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let sess = ssh(&stack, &stack.alice);
    let dir = format!("/home/alice/{}", ns("smoke-job"));
    let (code, jobid) = exec(
        &sess,
        &format!(
            "mkdir -p {dir} && cd {dir} && sbatch --parsable -p {} -o {dir}/out.txt --wrap 'id -u; echo hello from slurm'",
            stack.slurm_partition
        ),
    );
    assert_eq!(code, 0, "sbatch failed: {jobid}");
    let jobid = jobid.trim().to_owned();
    assert!(
        jobid.chars().all(|c| c.is_ascii_digit()),
        "job id {jobid:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let state = loop {
        let (_, out) = exec(&sess, &format!("scontrol show job {jobid}"));
        let state = out
            .split_whitespace()
            .find_map(|w| w.strip_prefix("JobState="))
            .unwrap_or("UNKNOWN")
            .to_owned();
        if ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"].contains(&state.as_str()) {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "job {jobid} still {state} after 60 s"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(state, "COMPLETED");
    let (_, out) = exec(&sess, &format!("cat {dir}/out.txt && rm -rf {dir}"));
    assert_eq!(out, format!("{}\nhello from slurm\n", stack.alice.uid));
}

#[tokio::test]
async fn dockerd_runs_a_container_as_a_non_root_uid() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let docker = Docker::connect_with_unix(
        stack.docker_socket().to_str().unwrap(),
        60,
        bollard::API_DEFAULT_VERSION,
    )
    .unwrap()
    .negotiate_version()
    .await
    .unwrap();
    let name = ns("smoke");
    let user = format!("{}:{}", stack.alice.uid, stack.alice.gid);
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            ContainerCreateBody {
                image: Some(stack.test_image.clone()),
                cmd: Some(vec!["id".into(), "-u".into()]),
                user: Some(user),
                network_disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    docker
        .start_container(
            &name,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .unwrap();
    let mut wait = docker.wait_container(&name, None::<WaitContainerOptions>);
    while let Some(r) = wait.next().await {
        assert_eq!(r.unwrap().status_code, 0);
    }
    let mut logs = docker.logs(
        &name,
        Some(LogsOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        }),
    );
    let mut out = String::new();
    while let Some(chunk) = logs.next().await {
        out.push_str(&chunk.unwrap().to_string());
    }
    docker
        .remove_container(
            &name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    assert_eq!(out.trim(), stack.alice.uid.to_string());
}

#[test]
fn slurm_job_submitted_locally_with_run_as_runs_as_bob() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let dir = Path::new("/home/bob").join(ns("smoke-job"));
    let status = stack
        .run_as(&stack.bob, "mkdir")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let out_file = dir.join("out.txt");
    // --wait: sbatch returns when the job has ended, with the job's exit code.
    let out = stack
        .run_as(&stack.bob, "sbatch")
        .args(["--wait", "--parsable", "-p", &stack.slurm_partition, "-D"])
        .arg(&dir)
        .arg("-o")
        .arg(&out_file)
        .args(["--wrap", "id -u; id -G"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sbatch --wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(stack.bob.uid.to_string().as_str()));
    let groups: Vec<u32> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    assert!(groups.contains(&stack.users_gid), "bob's groups {groups:?}");
    assert!(
        !groups.contains(&stack.alice_proj_gid),
        "bob is not in alice's project: {groups:?}"
    );
}

#[test]
fn devspire_serves_discovery_and_agent_sockets_reach_the_users() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let authority = stack
        .devspire_oidc_url
        .strip_prefix("http://")
        .expect("the OIDC URL is plain http on loopback");
    let mut tcp = TcpStream::connect(authority).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "GET /.well-known/openid-configuration HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let doc: serde_json::Value = serde_json::from_str(body).unwrap();
    // Vault's jwt auth requires the issuer to be the discovery URL itself.
    assert_eq!(doc["issuer"], stack.devspire_oidc_url.as_str());

    for agent in &stack.agents {
        assert!(
            agent
                .id
                .starts_with(&format!("spiffe://{}/", stack.trust_domain)),
            "{}",
            agent.id
        );
        for user in [&stack.alice, &stack.bob] {
            let out = stack
                .run_as(user, "python3")
                .args([
                    "-c",
                    "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])",
                ])
                .arg(&agent.socket)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{} cannot connect to {}: {}",
                user.name,
                agent.socket.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
