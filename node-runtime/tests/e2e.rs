//! `hpcs-node run` end to end, as the job user, through the root daemon, against the test
//! stack's real dockerd, OpenBao and devspire.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::e2e::{self, MARKER_DATA, MARKER_IMAGE, Ns};
use hpcs_node::container::DockerEngine;

const POLICY: &str = "[defaults]\nrequire-job-cgroup = false\npids-limit = 128\n\
                      [image:test]\nnodes = node1, node2\nname = hpcs-node-e2e-*\n";

const APP: &str = "echo APP-RAN; echo uid=$(id -u) gid=$(id -g) groups=$(id -G); \
                   grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; \
                   wc -l < /data/input.txt; cp /data/input.txt /output/copy.txt; \
                   cp /marker.txt /output/image-marker.txt; echo result > /output/result.txt; exit 7";

struct Job {
    ns: Ns,
    app_info: std::path::PathBuf,
    data_info: std::path::PathBuf,
    image_id: String,
    out_id: age::x25519::Identity,
    engine: DockerEngine,
}

/// Encrypted image and data in a fresh namespace, keys registered in Vault, readable by alice
/// on node1 only.
async fn job(env: &common::Env) -> Job {
    let ns = Ns::new(env).await;
    let engine = common::engine(env).await;
    let name = format!("hpcs-node-e2e-{}", ns.id);
    let tag = format!("{name}:1");
    let (image_tar, image_id) = common::unique_image_archive(
        &engine,
        env.get("HPCS_TEST_IMAGE"),
        &tag,
        &[("marker.txt", MARKER_IMAGE.as_bytes())],
    )
    .await;
    let img_secret = format!("img-{}", ns.id);
    let data_secret = format!("data-{}", ns.id);
    let (app_info, img_rec) =
        e2e::encrypt_artefact(&ns, "app", &name, Some(&image_id), &img_secret, &image_tar);
    let (data_info, data_rec) =
        e2e::encrypt_artefact(&ns, "data", "input", None, &data_secret, &e2e::data_tar());
    ns.register_for_alice_on_node1(env, &img_secret, img_rec)
        .await;
    ns.register_for_alice_on_node1(env, &data_secret, data_rec)
        .await;
    ns.chown_workdir_to_alice(env);
    Job {
        ns,
        app_info,
        data_info,
        image_id,
        out_id: age::x25519::Identity::generate(),
        engine,
    }
}

impl Job {
    fn args(&self, extra: &[&str], app: &str) -> Vec<String> {
        e2e::run_args(
            &self.app_info,
            Some(&self.data_info),
            &self.ns.workdir,
            &self.out_id.to_public().to_string(),
            extra,
            &["sh", "-c", app],
        )
    }

    async fn assert_clean(&self) {
        // The daemon cleans up after the client is gone; give it a moment.
        let t = Instant::now();
        loop {
            let image_gone = self
                .engine
                .docker()
                .inspect_image(&self.image_id)
                .await
                .is_err();
            let containers = self.containers().await;
            let scratch = self.ns.scratch_entries();
            if image_gone && containers.is_empty() && scratch.is_empty() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "left behind: image present={} containers={containers:?} scratch={scratch:?}",
                !image_gone
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for marker in [MARKER_DATA, MARKER_IMAGE] {
            assert_eq!(
                self.ns.scan_workdir(marker),
                Vec::<std::path::PathBuf>::new(),
                "plaintext {marker} in the workdir"
            );
        }
    }

    /// Containers (any state) whose mounts come from this test's scratch root.
    async fn containers(&self) -> Vec<String> {
        let opts = bollard::query_parameters::ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let list = self
            .engine
            .docker()
            .list_containers(Some(opts))
            .await
            .unwrap();
        list.into_iter()
            .filter(|c| {
                c.mounts.iter().flatten().any(|m| {
                    m.source
                        .as_deref()
                        .is_some_and(|s| Path::new(s).starts_with(&self.ns.scratch))
                })
            })
            .filter_map(|c| c.id)
            .collect()
    }
}

fn run_as(user: &str, node_ini: &Path, args: &[String]) -> e2e::Output {
    e2e::output(e2e::node_cmd(user, node_ini, args))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_runs_confined_and_gets_sealed_output() {
    let Some(env) = common::Env::load() else {
        return;
    };
    let j = job(&env).await;
    let policy = j.ns.policy(POLICY);
    let daemon_ini = j.ns.node_ini(&env, "node1", None, &policy);
    let daemon = e2e::Daemon::start(&j.ns, &daemon_ini);
    let ini = j.ns.node_ini(&env, "node1", Some(&daemon.socket), &policy);
    let env_file = j.ns.dir.path().join("job.env");
    std::fs::write(
        &env_file,
        "# job settings\nGREETING=hello from the env file\n",
    )
    .unwrap();
    let app = format!("echo \"job=$SLURM_JOB_ID greeting=$GREETING\"; {APP}");
    let args = j.args(&["--env-file", &env_file.display().to_string()], &app);
    let mut cmd = e2e::node_cmd("alice", &ini, &args);
    cmd.env("SLURM_JOB_ID", "4242").env("SLURM_NTASKS", "1");
    let out = e2e::output(cmd);
    assert!(
        out.stdout
            .contains("job=4242 greeting=hello from the env file"),
        "SLURM_* and the env file reach the app: {}",
        out.stdout
    );
    assert_eq!(
        out.code, 7,
        "exit code is the app's\nstdout:{}\nstderr:{}",
        out.stdout, out.stderr
    );
    assert!(out.stdout.contains("APP-RAN"), "{}", out.stdout);
    let gid_users = env.get("HPCS_GROUP_GID");
    let ids = out.stdout.lines().find(|l| l.starts_with("uid=")).unwrap();
    assert!(
        ids.starts_with(&format!(
            "uid={} gid={} groups=",
            env.get("HPCS_ALICE_UID"),
            env.get("HPCS_ALICE_GID")
        )),
        "{ids}"
    );
    assert!(
        ids.split_whitespace()
            .any(|g| g == gid_users || g.ends_with(&format!("={gid_users}"))),
        "{ids}"
    );
    assert!(
        out.stdout.contains("CapEff:\t0000000000000000"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("NoNewPrivs:\t1"), "{}", out.stdout);
    assert!(
        out.stdout.lines().any(|l| l.trim() == "2"),
        "the app read the data: {}",
        out.stdout
    );

    let sealed = j.ns.workdir.join("output");
    let files: Vec<_> = std::fs::read_dir(&sealed)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with("4242.tar.age"), "{files:?}");
    let contents = e2e::open_output(&files[0], &j.out_id);
    let get = |n: &str| {
        contents
            .iter()
            .find(|(name, _)| name.ends_with(n))
            .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
    };
    assert!(get("copy.txt").unwrap().contains(MARKER_DATA));
    assert!(get("image-marker.txt").unwrap().contains(MARKER_IMAGE));
    assert_eq!(get("result.txt").unwrap().trim(), "result");
    j.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bob_and_other_nodes_get_no_key() {
    let Some(env) = common::Env::load() else {
        return;
    };
    let j = job(&env).await;
    let policy = j.ns.policy(POLICY);
    let daemon = e2e::Daemon::start(&j.ns, &j.ns.node_ini(&env, "node1", None, &policy));
    // Bob may write into the workdir for this test (shared project directory).
    std::fs::set_permissions(
        &j.ns.workdir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let ini = j.ns.node_ini(&env, "node1", Some(&daemon.socket), &policy);
    let out = run_as("bob", &ini, &j.args(&[], APP));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("issued no identity"), "{}", out.stderr);
    assert!(!out.stdout.contains("APP-RAN"));

    // Alice, but on node2 (whose agent has no entry for her).
    let daemon2 = e2e::Daemon::start(&j.ns, &j.ns.node_ini(&env, "node2", None, &policy));
    let ini2 = j.ns.node_ini(&env, "node2", Some(&daemon2.socket), &policy);
    let out = run_as("alice", &ini2, &j.args(&[], APP));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("issued no identity"), "{}", out.stderr);
    assert!(!out.stdout.contains("APP-RAN"));
    j.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_or_swapped_artefacts_abort_before_running() {
    let Some(env) = common::Env::load() else {
        return;
    };
    let j = job(&env).await;
    let policy = j.ns.policy(POLICY);
    let daemon = e2e::Daemon::start(&j.ns, &j.ns.node_ini(&env, "node1", None, &policy));
    let ini = j.ns.node_ini(&env, "node1", Some(&daemon.socket), &policy);

    // 1. One flipped byte in the data ciphertext (same size).
    let ct = j.ns.workdir.join("data.tar.age");
    let original = std::fs::read(&ct).unwrap();
    let mut bad = original.clone();
    let i = bad.len() - 3;
    bad[i] ^= 0x55;
    std::fs::write(&ct, &bad).unwrap();
    let out = run_as("alice", &ini, &j.args(&[], APP));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        !out.stdout.contains("APP-RAN"),
        "the app must not run on tampered data"
    );
    assert!(out.stderr.contains("failed to decrypt"), "{}", out.stderr);
    std::fs::write(&ct, &original).unwrap();
    j.assert_clean().await;

    // 2. The image info swapped for one naming the data ciphertext (its own sha256 claim
    //    fixed up): the digest comes from Vault, so this fails before anything runs.
    let info = std::fs::read_to_string(&j.app_info).unwrap();
    let swapped = info.replace("/app.tar.age", "/data.tar.age");
    assert_ne!(swapped, info);
    std::fs::write(&j.app_info, &swapped).unwrap();
    let out = run_as("alice", &ini, &j.args(&[], APP));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(!out.stdout.contains("APP-RAN"));
    assert!(
        out.stderr.contains("does not match the key record")
            || out.stderr.contains("bytes, the key record says"),
        "{}",
        out.stderr
    );

    // 3. An info file whose checksum disagrees with the record is refused as swapped.
    let sha_of = |text: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("sha256: ").map(str::to_owned))
            .unwrap()
    };
    let data_sha = sha_of(&std::fs::read_to_string(&j.data_info).unwrap());
    // checksum and sha256 must agree in the file, so both are replaced.
    std::fs::write(&j.app_info, info.replace(&sha_of(&info), &data_sha)).unwrap();
    let out = run_as("alice", &ini, &j.args(&[], APP));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("does not match its key record"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("APP-RAN"));
    j.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorised_image_is_refused_before_any_key_fetch() {
    let Some(env) = common::Env::load() else {
        return;
    };
    let ns = Ns::new(&env).await;
    // No Vault role, no SPIRE entry: a key fetch would fail with a different message.
    let digest = format!("sha256:{}", "e".repeat(64));
    let (app_info, _) = e2e::encrypt_artefact(
        &ns,
        "app",
        "evil-miner",
        Some(&digest),
        &format!("img-{}", ns.id),
        b"x",
    );
    ns.chown_workdir_to_alice(&env);
    let policy = ns.policy(POLICY);
    let daemon = e2e::Daemon::start(&ns, &ns.node_ini(&env, "node1", None, &policy));
    let ini = ns.node_ini(&env, "node1", Some(&daemon.socket), &policy);
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let args = e2e::run_args(&app_info, None, &ns.workdir, &recipient, &[], &["true"]);
    let out = e2e::output(e2e::node_cmd("alice", &ini, &args));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("denied by policy: image \"evil-miner\" on node node1"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("[image:test]"),
        "the message names the rule: {}",
        out.stderr
    );
    // A network request beyond the policy is refused the same way.
    let mut args2 = args.to_vec();
    args2.splice(7..7, ["--network".to_owned(), "host".to_owned()]);
    let out = e2e::output(e2e::node_cmd("alice", &ini, &args2));
    assert!(
        out.stderr.contains("denied by policy: network host"),
        "{}",
        out.stderr
    );
    assert!(ns.scratch_entries().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_input_hook_prevents_the_app() {
    let Some(env) = common::Env::load() else {
        return;
    };
    let j = job(&env).await;
    let policy = j.ns.policy(POLICY);
    let daemon = e2e::Daemon::start(&j.ns, &j.ns.node_ini(&env, "node1", None, &policy));
    let ini = j.ns.node_ini(&env, "node1", Some(&daemon.socket), &policy);
    let hooks = j.ns.dir.path().join("hooks-in");
    std::fs::create_dir(&hooks).unwrap();
    for (name, body) in [
        ("10-ok", "#!/bin/sh\necho HOOK-10 uid=$(id -u)\nls /data\n"),
        ("20-fail", "#!/bin/sh\necho HOOK-20\nexit 3\n"),
        ("30-never", "#!/bin/sh\necho HOOK-30\n"),
    ] {
        let p = hooks.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let out = run_as(
        "alice",
        &ini,
        &j.args(&["--input-hooks", &hooks.display().to_string()], APP),
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("HOOK-10 uid={}", env.get("HPCS_ALICE_UID"))),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("input.txt"),
        "hooks see the decrypted data: {}",
        out.stdout
    );
    assert!(out.stdout.contains("HOOK-20"));
    assert!(!out.stdout.contains("HOOK-30"));
    assert!(!out.stdout.contains("APP-RAN"), "the app must not run");
    assert!(
        out.stderr.contains("input hook 20-fail exited with 3"),
        "{}",
        out.stderr
    );
    assert!(
        !j.ns.workdir.join("output").exists(),
        "no output is released"
    );
    j.assert_clean().await;

    // A failing output hook: the app ran, no output is released.
    let out_hooks = j.ns.dir.path().join("hooks-out");
    std::fs::create_dir(&out_hooks).unwrap();
    let p = out_hooks.join("check");
    std::fs::write(&p, "#!/bin/sh\ntest ! -e /output/copy.txt\n").unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = run_as(
        "alice",
        &ini,
        &j.args(&["--output-hooks", &out_hooks.display().to_string()], APP),
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stdout.contains("APP-RAN"));
    assert!(
        out.stderr.contains("output hook check exited with 1"),
        "{}",
        out.stderr
    );
    assert!(
        !j.ns.workdir.join("output").exists(),
        "no output is released"
    );
    j.assert_clean().await;
}

/// Start a long job as alice through a daemon, send `signal` to `hpcs-node` once the app's
/// container runs, and return its exit status and stderr.
async fn interrupt_mid_run(
    j: &Job,
    ini: &Path,
    signal: nix::sys::signal::Signal,
) -> (std::process::ExitStatus, String) {
    let args = j.args(&[], "echo APP-STARTED; sleep 120");
    let mut cmd = e2e::node_cmd("alice", ini, &args);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let t = Instant::now();
    while j.containers().await.is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the app never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "hpcs-node did not stop after {signal}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_leaves_nothing_behind() {
    let Some(env) = common::Env::load() else {
        return;
    };
    let j = job(&env).await;
    let policy = j.ns.policy(POLICY);
    let daemon = e2e::Daemon::start(&j.ns, &j.ns.node_ini(&env, "node1", None, &policy));
    let ini = j.ns.node_ini(&env, "node1", Some(&daemon.socket), &policy);
    let (status, stderr) = interrupt_mid_run(&j, &ini, nix::sys::signal::Signal::SIGTERM).await;
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(!j.ns.workdir.join("output").exists());
    j.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_gets_its_container_killed() {
    let Some(env) = common::Env::load() else {
        return;
    };
    let j = job(&env).await;
    let policy = j.ns.policy(POLICY);
    let daemon = e2e::Daemon::start(&j.ns, &j.ns.node_ini(&env, "node1", None, &policy));
    let ini = j.ns.node_ini(&env, "node1", Some(&daemon.socket), &policy);
    // SIGKILL: no cleanup on the client side at all; the daemon sees the socket close.
    let (status, _) = interrupt_mid_run(&j, &ini, nix::sys::signal::Signal::SIGKILL).await;
    assert_eq!(status.code(), None);
    j.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_runs_too_long_is_killed_and_fails_the_job() {
    let Some(env) = common::Env::load() else {
        return;
    };
    let j = job(&env).await;
    let policy = j.ns.policy(POLICY);
    let daemon_ini = j.ns.node_ini(&env, "node1", None, &policy);
    let text = std::fs::read_to_string(&daemon_ini)
        .unwrap()
        .replace("hook-timeout = 20", "hook-timeout = 2");
    std::fs::write(&daemon_ini, text).unwrap();
    let daemon = e2e::Daemon::start(&j.ns, &daemon_ini);
    let ini = j.ns.node_ini(&env, "node1", Some(&daemon.socket), &policy);
    let hooks = j.ns.dir.path().join("hooks-slow");
    std::fs::create_dir(&hooks).unwrap();
    let p = hooks.join("slow");
    std::fs::write(
        &p,
        "#!/bin/sh
echo HOOK-SLOW
sleep 60
",
    )
    .unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let t = Instant::now();
    let out = run_as(
        "alice",
        &ini,
        &j.args(&["--input-hooks", &hooks.display().to_string()], APP),
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "the hook was not stopped"
    );
    assert!(
        out.stderr.contains("input hook slow timed out after 2 s"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("APP-RAN"));
    j.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_refuses_root_and_callers_outside_a_job() {
    let Some(env) = common::Env::load() else {
        return;
    };
    let j = job(&env).await;
    // Production policy: callers must be inside a Slurm job cgroup (this stack uses
    // proctrack/linuxproc, so none is).
    let strict = j.ns.policy("[image:test]\nname = hpcs-node-e2e-*\n");
    let daemon = e2e::Daemon::start(&j.ns, &j.ns.node_ini(&env, "node1", None, &strict));
    let ini = j.ns.node_ini(&env, "node1", Some(&daemon.socket), &strict);
    let out = run_as("alice", &ini, &j.args(&[], APP));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("is not inside a Slurm job cgroup"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("APP-RAN"));

    // Root never gets a container, whatever the policy.
    let policy = j.ns.policy(POLICY);
    let daemon = e2e::Daemon::start(&j.ns, &j.ns.node_ini(&env, "node1", None, &policy));
    let ini = j.ns.node_ini(&env, "node1", Some(&daemon.socket), &policy);
    let args = j.args(&[], APP);
    let out = e2e::output({
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hpcs-node"));
        c.arg("--config").arg(&ini).args(&args);
        c
    });
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("refusing to run containers for uid/gid 0"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("APP-RAN"));
    j.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_start_removes_leftovers_of_a_crashed_predecessor() {
    let Some(env) = common::Env::load() else {
        return;
    };
    let ns = Ns::new(&env).await;
    let leftover = ns.scratch.join("hpcs-123-deadbeef0000");
    std::fs::create_dir_all(leftover.join("data")).unwrap();
    std::fs::write(leftover.join("data/input.txt"), MARKER_DATA).unwrap();
    let unrelated = ns.scratch.join("not-a-job");
    std::fs::create_dir(&unrelated).unwrap();
    let policy = ns.policy(POLICY);
    let _daemon = e2e::Daemon::start(&ns, &ns.node_ini(&env, "node1", None, &policy));
    let t = Instant::now();
    while leftover.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "leftover job directory not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unrelated.exists(), "only job directories are removed");
}

/// Throughput and peak memory of the image path (not an assertion on speed; numbers go to
/// docs/node-runtime.md). `cargo test -p hpcs-node --test e2e -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, run by hand"]
async fn measure_large_image_path() {
    let Some(env) = common::Env::load() else {
        return;
    };
    let ns = Ns::new(&env).await;
    let engine = common::engine(&env).await;
    let mib: usize = std::env::var("HPCS_MEASURE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let name = format!("hpcs-node-e2e-{}", ns.id);
    let (image_tar, image_id) = common::large_image_archive(&engine, &env, &name, mib, 0).await;
    let secret = format!("img-{}", ns.id);
    let (app_info, rec) =
        e2e::encrypt_artefact(&ns, "app", &name, Some(&image_id), &secret, &image_tar);
    drop(image_tar);
    ns.register_for_alice_on_node1(&env, &secret, rec).await;
    ns.chown_workdir_to_alice(&env);
    let policy = ns.policy(POLICY);
    let daemon = e2e::Daemon::start(&ns, &ns.node_ini(&env, "node1", None, &policy));
    let ini = ns.node_ini(&env, "node1", Some(&daemon.socket), &policy);
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let args = e2e::run_args(&app_info, None, &ns.workdir, &recipient, &[], &["true"]);
    let mut cmd = e2e::node_cmd("alice", &ini, &args);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let hwm = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_owned()))
            })
    };
    let t = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let mut client_peak = String::new();
    let status = loop {
        if let Some(h) = hwm(child.id()) {
            client_peak = h;
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let secs = t.elapsed().as_secs_f64();
    assert!(status.success());
    println!(
        "image of {mib} MiB: run took {secs:.1} s ({:.0} MiB/s end to end); peak RSS client {client_peak}, daemon {}",
        mib as f64 / secs,
        hwm(daemon.child.id()).unwrap_or_default()
    );
}

/// A unix socket owned by `uid` that relays to the stack's engine: stands in for a rootless
/// Podman socket of the user, so direct mode runs as the user without the daemon.
async fn user_engine_socket(env: &common::Env, ns: &Ns, uid: u32, gid: u32) -> std::path::PathBuf {
    let path = ns.dir.path().join("user-engine.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    e2e::chown_r(&path, uid, gid);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let upstream = env
        .get("HPCS_DOCKER_HOST")
        .trim_start_matches("unix://")
        .to_owned();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut engine) = tokio::net::UnixStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                }
            });
        }
    });
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_mode_runs_as_the_user_without_the_daemon() {
    let Some(env) = common::Env::load() else {
        return;
    };
    let j = job(&env).await;
    let uid: u32 = env.get("HPCS_ALICE_UID").parse().unwrap();
    let gid: u32 = env.get("HPCS_ALICE_GID").parse().unwrap();
    let socket = user_engine_socket(&env, &j.ns, uid, gid).await;
    let policy = j.ns.policy(POLICY);
    // In direct mode the user creates the job directory under the scratch root.
    std::fs::set_permissions(
        &j.ns.scratch,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let ini = j.ns.node_ini(&env, "node1", None, &policy);
    let socket = socket.display().to_string();
    let out = run_as(
        "alice",
        &ini,
        &j.args(&["--direct", "--engine-socket", &socket], APP),
    );
    assert_eq!(out.code, 7, "stdout:{}\nstderr:{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("uid={uid} gid={gid}")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("CapEff:\t0000000000000000"),
        "{}",
        out.stdout
    );
    let sealed: Vec<_> = std::fs::read_dir(j.ns.workdir.join("output"))
        .unwrap()
        .collect();
    assert_eq!(sealed.len(), 1);
    j.assert_clean().await;

    // The policy applies in direct mode too, before any key is fetched.
    let out = run_as(
        "alice",
        &ini,
        &j.args(
            &["--direct", "--engine-socket", &socket, "--network", "host"],
            APP,
        ),
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("denied by policy: network host"),
        "{}",
        out.stderr
    );
}
