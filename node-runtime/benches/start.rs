//! Time from `hpcs-node run` to the container's entrypoint, for a large encrypted image, against
//! plain `docker load` + `docker run` of the same plaintext image.
//!
//! ```text
//! scripts/test-stack up
//! cargo bench -p hpcs-node --bench start
//! ```
//!
//! Setup as in `tests/e2e.rs`, against the test stack's dockerd, OpenBao and devspire: an image
//! made of the stack's busybox image plus one layer holding `HPCS_BENCH_IMAGE_MIB` (default 512)
//! MiB of incompressible bytes, age-encrypted into a workdir of alice's, its key registered in a
//! Vault mount of its own (KV record, read policy, jwt role bound to the secret's SPIFFE ID),
//! a devspire entry for alice's uid on node1, a policy allowing the image on node1, and an
//! `hpcs-node daemon` (the root broker). Then `HPCS_BENCH_RUNS` times (default 3, median
//! reported), with the image absent from the engine before each measurement:
//!
//! - hpcs: `hpcs-node run` as alice (setpriv, with her groups) through the daemon; it attests,
//!   fetches the key, decrypts the image into the engine, creates and starts the container;
//! - plain: `docker load -i` of the plaintext archive, then `docker run --rm --network none`.
//!
//! The container's command prints `/proc/uptime`; "container start" is that time minus the same
//! clock read just before the first process was spawned (10 ms resolution). The whole run (until the sealed output is
//! written and everything is removed, for hpcs; until `docker run` returns, for plain) is
//! reported too. Prints a Markdown table; with `HPCS_BENCH_SUMMARY=FILE` also appends a
//! summary row (`scripts/bench`). Runs as root (it starts the daemon and runs as alice). A
//! `harness = false` bench: `cargo test` never runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use common::e2e::{self, Ns};

/// What the container runs: a marker line with the time it started, as seconds since boot
/// (`/proc/uptime`, 10 ms resolution; containers share the host's clock, busybox `date` has no
/// sub-second format).
const APP: &str = "read up _ < /proc/uptime; echo HPCS-BENCH-START $up";

/// Target from the performance issue: `hpcs-node run` to container start at most this multiple
/// of plain `docker load` + `docker run`.
const TARGET_RATIO: f64 = 1.2;

fn main() -> ExitCode {
    // `cargo test --benches` runs bench binaries without `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("start bench: run it with `cargo bench -p hpcs-node --bench start`");
        return ExitCode::SUCCESS;
    }
    let mib: usize = std::env::var("HPCS_BENCH_IMAGE_MIB").ok().map_or(512, |v| {
        v.parse().expect("HPCS_BENCH_IMAGE_MIB must be a number")
    });
    let runs: usize = std::env::var("HPCS_BENCH_RUNS")
        .ok()
        .map_or(3, |s| s.parse().expect("HPCS_BENCH_RUNS must be a number"));
    assert!(runs >= 1, "HPCS_BENCH_RUNS must be at least 1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench(mib, runs));
    ExitCode::SUCCESS
}

struct Sample {
    start: f64,
    total: f64,
}

async fn bench(mib: usize, runs: usize) {
    let env = common::Env::load().expect("the test stack's env file (scripts/test-stack up)");
    let ns = Ns::new(&env).await;
    let engine = common::engine(&env).await;
    let docker_host = env.get("HPCS_DOCKER_HOST").to_owned();

    // The image: busybox plus an incompressible layer.
    let t = Instant::now();
    let name = format!("hpcs-node-bench-{}", ns.id);
    let (image_tar, image_id) =
        common::large_image_archive(&engine, &env, &name, mib, mib as u64).await;
    let plain = ns.dir.path().join("plain-image.tar");
    std::fs::write(&plain, &image_tar).unwrap();
    let secret = format!("img-{}", ns.id);
    let (app_info, rec) =
        e2e::encrypt_artefact(&ns, "app", &name, Some(&image_id), &secret, &image_tar);
    let archive_bytes = image_tar.len();
    drop(image_tar);
    ns.register_for_alice_on_node1(&env, &secret, rec).await;
    ns.chown_workdir_to_alice(&env);
    let policy = ns.policy(
        "[defaults]\nrequire-job-cgroup = false\npids-limit = 128\n\
         [image:bench]\nnodes = node1\nname = hpcs-node-bench-*\n",
    );
    let daemon = e2e::Daemon::start(&ns, &ns.node_ini(&env, "node1", None, &policy));
    let ini = ns.node_ini(&env, "node1", Some(&daemon.socket), &policy);
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    eprintln!(
        "setup: image {image_id} ({archive_bytes} bytes as a docker save archive) made, \
         encrypted and registered in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut ours = Vec::new();
    let mut docker = Vec::new();
    for i in 0..runs {
        remove_image(&engine, &image_id).await;
        // hpcs-node run as alice, through the daemon.
        let args = e2e::run_args(
            &app_info,
            None,
            &ns.workdir,
            &recipient,
            &[],
            &["sh", "-c", APP],
        );
        let mut cmd = e2e::node_cmd("alice", &ini, &args);
        cmd.env("SLURM_JOB_ID", format!("{}", 9000 + i));
        let (t0, t) = (now(), Instant::now());
        let out = cmd.output().unwrap();
        let total = t.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "hpcs-node run failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let start = started_at(&stdout) - t0;
        eprintln!(
            "run {i}: hpcs-node: container started after {start:.2} s, run took {total:.2} s"
        );
        ours.push(Sample { start, total });
        // The daemon removes the image after the run; wait for it, so the next load is cold.
        let t = Instant::now();
        while engine.docker().inspect_image(&image_id).await.is_ok() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "image {image_id} left behind"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Plain docker load + docker run of the same plaintext image.
        let (t0, t) = (now(), Instant::now());
        let load = Command::new("docker")
            .args(["-H", &docker_host, "load", "-q", "-i"])
            .arg(&plain)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(load.success(), "docker load failed: {load}");
        let run = Command::new("docker")
            .args(["-H", &docker_host, "run", "--rm", "--network", "none"])
            .args([&image_id, "sh", "-c", APP])
            .output()
            .unwrap();
        let total = t.elapsed().as_secs_f64();
        assert!(
            run.status.success(),
            "docker run failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let start = started_at(&String::from_utf8_lossy(&run.stdout)) - t0;
        eprintln!(
            "run {i}: docker load + run: container started after {start:.2} s, took {total:.2} s"
        );
        docker.push(Sample { start, total });
    }
    remove_image(&engine, &image_id).await;
    drop(daemon);

    let med = |v: &[Sample], f: fn(&Sample) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let (os, ot) = (med(&ours, |s| s.start), med(&ours, |s| s.total));
    let (ds, dt) = (med(&docker, |s| s.start), med(&docker, |s| s.total));
    let all = |v: &[Sample]| {
        v.iter()
            .map(|s| format!("{:.2}", s.start))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "Node start: image of busybox + {mib} MiB incompressible layer ({:.0} MiB as a docker \
         save archive), median of {runs} runs, image absent from the engine before each run\n",
        archive_bytes as f64 / 1_048_576.0
    );
    println!("| path | to container start (s) | runs (s) | whole run (s) | vs docker |");
    println!("|---|---:|---|---:|---:|");
    println!(
        "| docker load + docker run (plaintext) | {ds:.2} | {} | {dt:.2} | 1.00x |",
        all(&docker)
    );
    println!(
        "| hpcs-node run (attest, key, decrypt, load, start) | {os:.2} | {} | {ot:.2} | {:.2}x |",
        all(&ours),
        os / ds
    );
    let ratio = os / ds;
    let met = if ratio <= TARGET_RATIO {
        "met"
    } else {
        "NOT met"
    };
    hpcs_test_support::append_bench_summary(&[format!(
        "| node start, {mib} MiB image (hpcs-node run to entrypoint) | {os:.2} s | docker load + run {ds:.2} s | {ratio:.2}x time | <= {TARGET_RATIO}x time | {met} |"
    )]);
}

/// Seconds since boot, from `/proc/uptime` (what the container prints).
fn now() -> f64 {
    let text = std::fs::read_to_string("/proc/uptime").unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

/// The time the container printed.
fn started_at(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("HPCS-BENCH-START "))
        .unwrap_or_else(|| panic!("no start marker in the container's output: {stdout}"));
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("start marker {line:?} is not a time"))
}

async fn remove_image(engine: &hpcs_node::container::DockerEngine, id: &str) {
    let opts = bollard::query_parameters::RemoveImageOptions {
        force: true,
        noprune: false,
        platforms: None,
    };
    let _ = engine.docker().remove_image(id, Some(opts), None).await;
}
