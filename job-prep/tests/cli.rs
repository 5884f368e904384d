//! The `job-prep` binary end to end against the test stack's real sshd and Slurm.
//!
//! The real `hpcs-node` needs SPIRE, Vault and a container engine on the node (its own tests and
//! `scripts/demo` cover that), so these jobs run a stand-in, uploaded to the cluster and named
//! with `--hpcs-node`: a shell script that records its argument vector NUL-separated (so the
//! test sees exactly the bytes it received), writes to stdout and stderr over a few seconds, and
//! seals an output the way hpcs-node does, with the `age` CLI, to the recipient it was given.

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use hpcs_client::ssh::SshSession;
use hpcs_core::crypto::Sha256Digest;
use hpcs_test_support::{Stack, ns};

mod common;

/// Records argv, talks on both streams, seals `<workdir>/output/<job>.tar.age` with `age`.
const FAKE_OK: &str = r#"#!/bin/sh
# Test stand-in for hpcs-node run.
set -eu
printf '%s\0' "$@" > "argv-$SLURM_JOB_ID"
echo "fake node: started job $SLURM_JOB_ID"
echo "fake node: a line on stderr" >&2
sleep 3
rcpt=
prev=
for a in "$@"; do
    if [ "$prev" = --output-recipient ]; then rcpt=$a; fi
    if [ "$a" = -- ]; then break; fi
    prev=$a
done
out="out-$SLURM_JOB_ID"
mkdir -p "$out/sub" output
printf 'result of job %s\n' "$SLURM_JOB_ID" > "$out/report.txt"
printf 'nested\n' > "$out/sub/n.txt"
tar -C "$out" -cf - . | age -r "$rcpt" > "output/.$SLURM_JOB_ID.partial"
mv "output/.$SLURM_JOB_ID.partial" "output/$SLURM_JOB_ID.tar.age"
rm -rf "$out"
echo "fake node: sealed the output"
"#;

const FAKE_FAIL: &str = "#!/bin/sh\necho 'fake node: failing on purpose' >&2\nexit 3\n";

const FAKE_SLEEP: &str = "#!/bin/sh\necho 'fake node: sleeping'\nsleep 300\n";

/// One test's world: a local config dir and a remote directory of alice's holding the
/// artefacts, the stand-in node programs and (below `work`) the job's work directory.
struct World {
    stack: Stack,
    ssh: SshSession,
    remote: String,
    local: tempfile::TempDir,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.ssh.exec(&["rm", "-rf", "--", &self.remote]);
    }
}

impl World {
    fn new(prefix: &str) -> Option<Self> {
        let stack = Stack::load_or_skip()?;
        let ssh =
            SshSession::connect(&common::alice_target(&stack)).expect("ssh to the stack as alice");
        let remote = format!("/tmp/{}", ns(prefix));
        ssh.mkdir_p(&remote, 0o700).expect("create the remote dir");
        let local = tempfile::tempdir().expect("local temp dir");
        let w = Self {
            stack,
            ssh,
            remote,
            local,
        };
        w.write_config(&w.stack.ssh_known_hosts.clone(), "client.ini");
        for (name, body) in [
            ("fake-ok", FAKE_OK),
            ("fake-fail", FAKE_FAIL),
            ("fake-sleep", FAKE_SLEEP),
        ] {
            w.ssh
                .upload(
                    body.as_bytes(),
                    &format!("{}/{name}", w.remote),
                    0o700,
                    |_| {},
                )
                .expect("upload a stand-in node program");
        }
        Some(w)
    }

    fn write_config(&self, known_hosts: &Path, name: &str) -> PathBuf {
        let path = self.local.path().join(name);
        let text = format!(
            "[spire-server]\ntrust-domain = hpcs.test\n[hpcs-server]\nurl = http://127.0.0.1:1\n\
             [vault]\nurl = http://127.0.0.1:1\n[supercomputer]\naddress = {}\nusername = alice\n\
             [ssh]\nkey = {}\nknown-hosts = {}\nport = {}\nconnect-timeout = 10s\n\
             [client]\nidentity-file = {}\n",
            self.stack.ssh_host,
            self.stack.alice.ssh_key.display(),
            known_hosts.display(),
            self.stack.ssh_port,
            self.identity_file().display(),
        );
        std::fs::write(&path, text).expect("write the client config");
        path
    }

    fn identity_file(&self) -> PathBuf {
        self.local.path().join("hpcs/output-identity.txt")
    }

    fn workdir(&self) -> String {
        format!("{}/work", self.remote)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("job-prep").expect("the job-prep binary");
        c.env_remove("HPCS_CLIENT_CONFIG")
            .env_remove("HPCS_LOG")
            .arg("--config")
            .arg(self.local.path().join("client.ini"))
            .timeout(Duration::from_secs(240));
        c
    }

    /// A ciphertext stand-in and its info file on the cluster; returns the info file's path.
    fn artefact(&self, name: &str, kind: &str, content: &[u8]) -> String {
        let ct = format!("{}/{name}.age", self.remote);
        self.ssh
            .upload(content, &ct, 0o600, |_| {})
            .expect("upload a ciphertext");
        let sha = Sha256Digest::of(content);
        let sid = "0b7e5c1e-8a7c-4c39-9a59-2f5d8d1f3b6a";
        let image = if kind == "image" {
            format!("  image:\n    digest: sha256:{sha}\n    entrypoint: [/app/run]\n    env: []\n")
        } else {
            String::new()
        };
        let yaml = format!(
            "info:\n  version: 1\n  kind: {kind}\n  name: {name}\n  path_at_rest: {ct}\n  \
             secret_path: hpcs/data/secrets/{sid}\n  access_role: hpcs-secret-{sid}\n  \
             checksum: {sha}\n  spiffeID: spiffe://hpcs.test/hpcs/secret/{sid}\n  sha256: {sha}\n  \
             size: {}\n  owner: spiffe://hpcs.test/client/alice\n  created: 2026-01-01T00:00:00Z\n  \
             secret_id: {sid}\n{image}",
            content.len()
        );
        let info = format!("{}/{name}.info.yaml", self.remote);
        hpcs_core::info::InfoFile::from_yaml(&yaml, Path::new(&info)).expect("a valid info file");
        self.ssh
            .upload(yaml.as_bytes(), &info, 0o600, |_| {})
            .expect("upload an info file");
        info
    }

    /// The usual submission flags for a stand-in node program.
    fn submit_args(&self, node: &str) -> Vec<String> {
        let app = self.artefact("app", "image", b"not really an image ciphertext");
        [
            "-N",
            "1",
            "-p",
            &self.stack.slurm_partition,
            "-t",
            "5",
            "-s",
            &self.workdir(),
            "--application-info",
            &app,
            "--hpcs-node",
            &format!("{}/{node}", self.remote),
            "--poll-interval",
            "0.5",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    fn remote_text(&self, path: &str) -> Vec<u8> {
        self.ssh
            .read_small(path, 1 << 20)
            .expect("read a remote file")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn job_id(stdout: &str) -> String {
    let first = stdout.lines().next().unwrap_or("");
    assert!(
        !first.is_empty() && first.bytes().all(|b| b.is_ascii_digit()),
        "first stdout line is not a job id: {stdout:?}"
    );
    first.to_owned()
}

#[test]
fn submit_follow_and_fetch_output_with_hostile_arguments() {
    let Some(w) = World::new("jp-cli-ok") else {
        return;
    };
    let data = w.artefact("data", "data", b"data ciphertext stand-in");
    let canary = format!("{}/pwned", w.remote);
    let hostile = hpcs_test_support::hostile_words(&canary);
    let env = w.local.path().join("job.env");
    std::fs::write(
        &env,
        "# for the container\nGREETING=hello world\nexport MODE=fast\n",
    )
    .unwrap();
    let hooks = w.local.path().join("hooks-in");
    std::fs::create_dir(&hooks).unwrap();
    let hook = hooks.join("10-check");
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let results = w.local.path().join("results");

    let out = w
        .cmd()
        .args(w.submit_args("fake-ok"))
        .args(["--data-info", &data, "-J", "hpcs-cli-test"])
        .args(["-w", &w.stack.slurm_node])
        .arg("--env-file")
        .arg(&env)
        .arg("-i")
        .arg(&hooks)
        .arg("--fetch-output")
        .arg(&results)
        .arg("--")
        .args(&hostile)
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let job = job_id(&stdout);

    // Streamed logs, in order, and the state changes.
    let started = stdout
        .find(&format!("fake node: started job {job}"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let sealed = stdout.find("fake node: sealed the output").unwrap();
    assert!(started < sealed);
    assert!(stderr.contains("fake node: a line on stderr"), "{stderr}");
    assert!(stderr.contains(&format!("job {job}: RUNNING")), "{stderr}");
    assert!(
        stderr.contains(&format!("job {job}: COMPLETED (exit code 0:0)")),
        "{stderr}"
    );
    assert!(stderr.contains("created your output identity"), "{stderr}");

    // The identity: created private; its public key is what the node got.
    let mode = std::fs::metadata(w.identity_file()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let identity = hpcs_core::secret::read_identity_file(&w.identity_file()).unwrap();

    // The argument vector arrived byte for byte.
    let argv = w.remote_text(&format!("{}/argv-{job}", w.workdir()));
    let mut words: Vec<String> = argv.split(|b| *b == 0).map(text).collect();
    assert_eq!(words.pop().as_deref(), Some(""));
    let sep = words.iter().position(|a| a == "--").unwrap();
    assert_eq!(&words[sep + 1..], hostile.as_slice());
    let value = |flag: &str| {
        let i = words[..sep]
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} in {words:?}"));
        words[i + 1].clone()
    };
    assert_eq!(words[0], "run");
    assert_eq!(value("--workdir"), w.workdir());
    assert_eq!(
        value("--application-info"),
        format!("{}/app.info.yaml", w.remote)
    );
    assert_eq!(value("--data-info"), data);
    assert_eq!(
        value("--output-recipient"),
        identity.to_public().to_string()
    );
    let env_remote = value("--env-file");
    assert_eq!(
        text(&w.remote_text(&env_remote)),
        "GREETING=hello world\nMODE=fast\n"
    );
    let hooks_remote = value("--input-hooks");
    assert_eq!(
        w.remote_text(&format!("{hooks_remote}/10-check")),
        b"#!/bin/sh\nexit 0\n"
    );
    assert!(
        w.ssh.stat(&canary).unwrap().is_none(),
        "an argument was executed"
    );
    assert!(!Path::new(&canary).exists());

    // The output came home verified and decrypted.
    let report = results.join(&job).join("report.txt");
    assert_eq!(
        std::fs::read_to_string(&report).unwrap(),
        format!("result of job {job}\n")
    );
    assert_eq!(
        std::fs::read_to_string(results.join(&job).join("sub/n.txt")).unwrap(),
        "nested\n"
    );

    // fetch-output on its own finds the work directory through Slurm.
    let again = w.local.path().join("again");
    let out = w
        .cmd()
        .args(["fetch-output", &job, "--to"])
        .arg(&again)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        again.join(&job).display().to_string()
    );
    assert!(again.join(&job).join("report.txt").exists());

    // status knows how it ended.
    let out = w.cmd().args(["--json", "status", &job]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["state"], "COMPLETED");
    assert_eq!(st["exit_code"]["code"], 0);
}

#[test]
fn failing_job_exits_with_its_state_and_code() {
    let Some(w) = World::new("jp-cli-fail") else {
        return;
    };
    let out = w
        .cmd()
        .args(w.submit_args("fake-fail"))
        .arg("--fetch-output")
        .arg(w.local.path().join("results"))
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let job = job_id(&stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains("fake node: failing on purpose"), "{stderr}");
    assert!(
        stderr.contains(&format!("job {job}: FAILED (exit code 3:0)")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("job {job} left no output")),
        "{stderr}"
    );
}

#[test]
fn cancel_status_and_follow_of_a_cancelled_job() {
    let Some(w) = World::new("jp-cli-cancel") else {
        return;
    };
    let out = w
        .cmd()
        .arg("--json")
        .args(w.submit_args("fake-sleep"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let sub: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = sub["job_id"].as_str().unwrap().to_owned();
    assert_eq!(sub["workdir"], w.workdir());
    assert_eq!(
        sub["output"],
        format!("{}/output/{job}.tar.age", w.workdir())
    );

    let out = w.cmd().args(["status", &job]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let line = text(&out.stdout);
    assert!(
        line.starts_with(&format!("{job} PENDING")) || line.starts_with(&format!("{job} RUNNING")),
        "{line}"
    );

    let out = w.cmd().args(["cancel", &job]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = w
        .cmd()
        .args(["--poll-interval", "0.5", "follow", &job])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("job {job}: CANCELLED")),
        "{stderr}"
    );

    // Cancelling a job that does not exist is an error naming it.
    let out = w.cmd().args(["cancel", "999999999"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("Invalid job id"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn tampered_or_mismatched_artefacts_are_refused_before_submission() {
    let Some(w) = World::new("jp-cli-tamper") else {
        return;
    };
    let args = w.submit_args("fake-ok");
    let data = w.artefact("data", "data", b"original data ciphertext");

    // Same size, different bytes: the digest check catches it.
    w.ssh
        .upload(
            &b"replaced data ciphertext"[..],
            &format!("{}/data.age", w.remote),
            0o600,
            |_| {},
        )
        .unwrap();
    let out = w.cmd().args(&args).args(["--di", &data]).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "ciphertext {}/data.age does not match {data}: sha256",
            w.remote
        )),
        "{stderr}"
    );

    // Truncated: the size check catches it.
    w.ssh
        .upload(
            &b"short"[..],
            &format!("{}/data.age", w.remote),
            0o600,
            |_| {},
        )
        .unwrap();
    let out = w.cmd().args(&args).args(["--di", &data]).output().unwrap();
    assert!(
        text(&out.stderr).contains("does not match"),
        "{}",
        text(&out.stderr)
    );

    // An image passed as data.
    let app = format!("{}/app.info.yaml", w.remote);
    let out = w.cmd().args(&args).args(["--di", &app]).output().unwrap();
    assert!(
        text(&out.stderr).contains("describes image artefact app, but --data-info needs data"),
        "{}",
        text(&out.stderr)
    );

    // A malformed info file (unknown key) on shared storage.
    let bad = format!("{}/bad.info.yaml", w.remote);
    w.ssh
        .upload(
            &b"info:\n  version: 1\n  evil: true\n"[..],
            &bad,
            0o600,
            |_| {},
        )
        .unwrap();
    let out = w.cmd().args(&args).args(["--di", &bad]).output().unwrap();
    assert!(
        text(&out.stderr).contains("invalid info file"),
        "{}",
        text(&out.stderr)
    );

    // None of these reached Slurm or created the work directory.
    assert!(w.ssh.stat(&w.workdir()).unwrap().is_none());
}

#[test]
fn usage_and_config_errors_exit_2() {
    let Some(w) = World::new("jp-cli-usage") else {
        return;
    };
    let mut args = w.submit_args("fake-ok");
    let t = args.iter().position(|a| a == "-t").unwrap();
    args[t + 1] = "1h".into();
    let out = w.cmd().args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid time limit \"1h\""),
        "{}",
        text(&out.stderr)
    );

    let out = w
        .cmd()
        .args(["-p", "debug", "status", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("-p/--partition is a submission flag"));

    let out = Command::cargo_bin("job-prep")
        .unwrap()
        .env_remove("HPCS_CLIENT_CONFIG")
        .args(["status", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--config"),
        "{}",
        text(&out.stderr)
    );

    let out = Command::cargo_bin("job-prep")
        .unwrap()
        .args(["--config", "/nonexistent/client.ini", "status", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unknown_host_key_is_a_clear_error() {
    let Some(w) = World::new("jp-cli-hostkey") else {
        return;
    };
    let empty = w.local.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let config = w.write_config(&empty, "strict.ini");
    let out = Command::cargo_bin("job-prep")
        .unwrap()
        .arg("--config")
        .arg(&config)
        .args(["status", "1"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "host key of {} port {} is not in {}",
            w.stack.ssh_host,
            w.stack.ssh_port,
            empty.display()
        )) && stderr.contains("hint:"),
        "{stderr}"
    );
}
