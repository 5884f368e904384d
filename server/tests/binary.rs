//! The `hpcs-server` binary as an operator runs it: exit codes, TLS, SIGTERM, the audit log
//! verifier and the OpenAPI printer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{VaultNs, client_token, create_body, stack};

/// Not a test: the entry point of the helper process that fetches SVIDs as another user (see
/// `common::fetch_jwt_as`); ignored in normal runs.
#[test]
#[ignore = "helper process entry point, run by common::fetch_jwt_as"]
fn zz_helper() {
    common::helper_main();
}

const BIN: &str = env!("CARGO_BIN_EXE_hpcs-server");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server.ini for the stack and `v`'s Vault namespace.
fn ini(stack: &common::Stack, v: &VaultNs, dir: &Path, port: u16, transport: &str) -> String {
    format!(
        "[server]
listen = 127.0.0.1:{port}
{transport}
audit-log = {audit}

[spire-server]
trust-domain = {td}
socket-path = {admin}

[node-agents]
node1 = {node1}
node2 = {node2}

[spire-agent]
socket-path = {laptop}

[vault]
url = {bao}
kv-mount = {kv}
auth-mount = {auth}
token-role = {role}
",
        audit = dir.join("audit.jsonl").display(),
        td = stack.trust_domain,
        admin = stack.admin_socket.display(),
        node1 = stack.agent_ids["node1"],
        node2 = stack.agent_ids["node2"],
        laptop = stack.sockets["laptop"].display(),
        bao = v.addr,
        kv = v.kv_mount,
        auth = v.auth_mount,
        role = v.token_role,
    )
}

struct Running(Option<Child>);

impl Running {
    fn start(config: &Path) -> Self {
        Self(Some(
            Command::new(BIN)
                .arg("--config")
                .arg(config)
                .arg("--json-logs")
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        ))
    }

    fn sigterm(&mut self) -> (i32, String) {
        let mut child = self.0.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
                return (status.code().unwrap_or(-1), err);
            }
            assert!(Instant::now() < deadline, "no exit 20 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn wait_ready(client: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn usage_and_config_errors_exit_2() {
    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no --config is a usage error");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.ini");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.ini"));

    // Plain HTTP on every interface: refused with a hint.
    let bad = dir.path().join("bad.ini");
    std::fs::write(
        &bad,
        "[server]\nlisten = 0.0.0.0:10080\nallow-plain-http = true\naudit-log = /tmp/a\n\
         [spire-server]\ntrust-domain = hpcs.test\nagent-id-template = spiffe://hpcs.test/spire/agent/x/{node}\n\
         [vault]\nurl = https://vault.example.org\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback"), "{err}");
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn openapi_flag_prints_the_document() {
    let out = Command::new(BIN).arg("--openapi").output().unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["info"]["title"], "HPCS server API");
    assert!(doc["paths"]["/api/v1/secrets/{id}"]["delete"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_until_sigterm_then_exits_0_with_an_intact_audit_log() {
    let Some(stack) = stack() else { return };
    stack.ensure_identities().await;
    let v = VaultNs::for_stack(&stack);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("server.ini");
    std::fs::write(
        &config,
        ini(&stack, &v, dir.path(), port, "allow-plain-http = true"),
    )
    .unwrap();
    let mut server = Running::start(&config);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &format!("{base}/readyz")).await;

    let alice = client_token(&stack, "alice");
    let res = client
        .post(format!("{base}/api/v1/secrets"))
        .bearer_auth(&alice)
        .json(&create_body(&["alice"], &[], &["node1"]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert!(
        res.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/api/v1/secrets/")
    );

    let (code, log) = server.sigterm();
    assert_eq!(code, 0, "{log}");
    // Structured JSON logs, no token in them.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "request"),
        "{log}"
    );
    assert!(
        !log.contains(&alice),
        "the bearer token leaked into the log"
    );
    let out = Command::new(BIN)
        .arg("--verify-audit")
        .arg(dir.path().join("audit.jsonl"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("chain intact"));
    v.cleanup(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls() {
    let Some(stack) = stack() else { return };
    stack.ensure_identities().await;
    let v = VaultNs::for_stack(&stack);
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let config = dir.path().join("server.ini");
    let transport = format!(
        "tls-cert = {}\ntls-key = {}",
        cert_path.display(),
        key_path.display()
    );
    std::fs::write(&config, ini(&stack, &v, dir.path(), port, &transport)).unwrap();
    let mut server = Running::start(&config);

    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    wait_ready(&client, &format!("https://localhost:{port}/readyz")).await;
    let alice = client_token(&stack, "alice");
    let res = client
        .get(format!("https://localhost:{port}/api/v1/secrets"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Plain HTTP to the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    let (code, log) = server.sigterm();
    assert_eq!(code, 0, "{log}");
    v.cleanup(&stack).await;
}
