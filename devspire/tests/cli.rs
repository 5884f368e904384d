//! The `devspire` binary as the test stack runs it: help text, usage errors, readiness,
//! SIGHUP rotation, SIGTERM shutdown.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::devspire_bin;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn help_says_development_and_test_only() {
    for args in [&["--help"][..], &["serve", "--help"][..]] {
        let out = Command::new(devspire_bin()).args(args).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("DEVELOPMENT AND TEST ONLY"), "{text}");
    }
    let out = Command::new(devspire_bin()).arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("NEVER used in production"), "{text}");
}

#[test]
fn usage_and_config_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let base = |extra: &[&str]| {
        let mut args = vec![
            "serve".to_owned(),
            "--state-dir".into(),
            dir.path().join("s").display().to_string(),
            "--admin-socket".into(),
            dir.path().join("a.sock").display().to_string(),
            "--oidc-listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Command::new(devspire_bin()).args(args).output().unwrap()
    };
    let cases: [(&[&str], &str); 4] = [
        (
            &["--trust-domain", "BAD", "--agent", "n=/tmp/x"],
            "invalid trust domain",
        ),
        (
            &["--trust-domain", "td", "--agent", "node1"],
            "NAME=SOCKET_PATH",
        ),
        (
            &[
                "--trust-domain",
                "td",
                "--agent",
                "n=/tmp/x",
                "--jwt-ttl",
                "1",
            ],
            "--jwt-ttl 1 is out of range",
        ),
        (&["--trust-domain", "td"], "--agent"),
    ];
    for (extra, message) in cases {
        let out = base(extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{extra:?}: {stderr}");
    }
}

#[test]
fn serve_is_ready_rotates_on_sighup_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = dir.path().join("admin.sock");
    let node1 = dir.path().join("agents/node1.sock");
    let mut child = Command::new(devspire_bin())
        .args(["serve", "--trust-domain", "hpcs.test", "--oidc-listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--admin-socket")
        .arg(&admin)
        .arg("--agent")
        .arg(format!("node1={}", node1.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    let url = format!("http://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let keys = |http: &reqwest::Client| {
        runtime.block_on(async {
            let doc: serde_json::Value = http
                .get(format!("{url}/.well-known/openid-configuration"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let jwks: serde_json::Value = http
                .get(doc["jwks_uri"].as_str()?)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            Some(jwks["keys"].as_array()?.len())
        })
    };

    // Readiness as the stack checks it: admin socket connects, discovery answers.
    let start = Instant::now();
    let ready = loop {
        if std::os::unix::net::UnixStream::connect(&admin).is_ok()
            && let Some(n) = keys(&http)
        {
            break n;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "devspire not ready after 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ready, 1);
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    assert_eq!(
        std::fs::metadata(&node1).unwrap().permissions().mode() & 0o777,
        0o666
    );
    assert_eq!(std::fs::metadata(&admin).unwrap().mode() & 0o777, 0o600);

    kill(pid, Signal::SIGHUP).unwrap();
    let start = Instant::now();
    while keys(&http) != Some(2) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "SIGHUP did not rotate the key"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    kill(pid, Signal::SIGTERM).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "devspire ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(!admin.exists() && !node1.exists(), "sockets left behind");
}

/// `devspire entry create` registers an entry the way `spire-server entry create` does: the
/// workload it selects then gets the SVID, a repeat is idempotent, bad input exits 1 with a reason.
#[test]
fn entry_create_registers_an_identity_for_the_selected_user() {
    let stack = hpcs_test_support::Stack::load();
    let laptop = stack.agent("laptop");
    let id = format!(
        "spiffe://{}/test/{}",
        stack.trust_domain,
        hpcs_test_support::ns("entry-cli")
    );
    let create = || {
        Command::new(devspire_bin())
            .args(["entry", "create", "--admin-socket"])
            .arg(&stack.devspire_admin_socket)
            .args(["--spiffe-id", &id, "--parent-id", &laptop.id])
            .arg(format!("--selector=unix:uid:{}", stack.alice.uid))
            .output()
            .unwrap()
    };
    let first = create();
    assert!(first.status.success(), "{first:?}");
    let entry_id = String::from_utf8(first.stdout).unwrap();
    assert!(!entry_id.trim().is_empty());
    let again = create();
    assert!(again.status.success());
    assert_eq!(
        String::from_utf8(again.stdout).unwrap(),
        entry_id,
        "idempotent"
    );

    let fetch = |user: &hpcs_test_support::TestUser| {
        hpcs_test_support::run_as(user, devspire_bin())
            .args(["api", "fetch-jwt", "--audience", "x", "--socket"])
            .arg(&laptop.socket)
            .output()
            .unwrap()
    };
    let alice = String::from_utf8(fetch(&stack.alice).stdout).unwrap();
    assert!(
        alice.lines().any(|l| l.starts_with(&format!("{id} "))),
        "{alice}"
    );
    let bob = String::from_utf8(fetch(&stack.bob).stdout).unwrap();
    assert!(!bob.contains(&id), "bob must not get alice's entry: {bob}");

    let bad = Command::new(devspire_bin())
        .args(["entry", "create", "--admin-socket"])
        .arg(&stack.devspire_admin_socket)
        .args([
            "--spiffe-id",
            &id,
            "--parent-id",
            &laptop.id,
            "--selector",
            "nocolon",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected TYPE:VALUE"));
}
