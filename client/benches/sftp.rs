//! SFTP throughput of the shipping path against `scp`, over loopback to the test stack's sshd.
//!
//! ```text
//! scripts/test-stack up
//! cargo bench -p hpcs-client --bench sftp
//! ```
//!
//! For each size (`HPCS_BENCH_SFTP_SIZES`, default `256M,1G`) one incompressible file is written
//! to a local temporary directory (world-readable, so any account could ship it), and a remote
//! directory is made with `mktemp -d` in alice's account. Then, `HPCS_BENCH_RUNS` times (default
//! 3, median reported), on the same file:
//!
//! - upload: [`SshSession::upload`] from a `File` (what container-prep and data-prep ship) vs
//!   `scp` of the same file;
//! - download: [`SshSession::download`] into a `File`, and [`SshSession::open_read`] read in
//!   64 KiB pieces (what job-prep's fetch-output streams into the decryptor) vs `scp` back;
//! - shipping an artefact (encrypt, upload, check size and SHA-256 remotely): encrypting into a
//!   local spool file and then uploading it (what container-prep did before) vs
//!   [`prepare::stage`], which encrypts straight into the upload (what it does now).
//!
//! Each measurement is wall time including the connection and authentication (one new session
//! per transfer, as the tools do; `scp` is a new process each time). Every transfer is checked:
//! the remote size after an upload, the local bytes after a download. Both sides are removed at
//! the end. Prints a Markdown table; with `HPCS_BENCH_SUMMARY=FILE` also appends summary rows
//! (`scripts/bench`). A `harness = false` bench: `cargo test` never runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use hpcs_client::prepare::{self, Destination as _, Plan, SshDestination};
use hpcs_client::ssh::{SshSession, SshTarget};
use hpcs_test_support::Stack;

/// Target from the performance issue: our SFTP at least this fraction of scp's throughput.
const TARGET_RATIO: f64 = 0.8;

fn main() -> ExitCode {
    // `cargo test --benches` runs bench binaries without `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("sftp bench: run it with `cargo bench -p hpcs-client --bench sftp`");
        return ExitCode::SUCCESS;
    }
    let stack = Stack::load();
    let sizes = parse_sizes(&std::env::var("HPCS_BENCH_SFTP_SIZES").unwrap_or("256M,1G".into()));
    let runs: usize = std::env::var("HPCS_BENCH_RUNS")
        .ok()
        .map_or(3, |s| s.parse().expect("HPCS_BENCH_RUNS must be a number"));
    assert!(runs >= 1, "HPCS_BENCH_RUNS must be at least 1");
    let target = SshTarget {
        connect_timeout: Duration::from_secs(10),
        op_timeout: Duration::from_secs(600),
        ..SshTarget::new(
            stack.ssh_host.clone(),
            stack.ssh_port,
            stack.alice.name,
            Some(stack.alice.ssh_key.clone()),
            stack.ssh_known_hosts.clone(),
        )
    };
    let target = SshTarget {
        streams: std::env::var("HPCS_BENCH_SFTP_STREAMS")
            .ok()
            .map_or(target.streams, |s| {
                s.parse()
                    .expect("HPCS_BENCH_SFTP_STREAMS must be a number of connections")
            }),
        ..target
    };
    let local = tempfile::Builder::new()
        .prefix("hpcs-bench-sftp-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(local.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let session = SshSession::connect(&target).expect("connect to the stack's sshd as alice");
    let remote_dir = session
        .exec_ok(&["mktemp", "-d", "/tmp/hpcs-bench-sftp.XXXXXXXX"])
        .unwrap()
        .stdout_text()
        .trim()
        .to_owned();
    drop(session);
    let scp_version = Command::new("ssh").arg("-V").output().unwrap();
    let scp_version = String::from_utf8_lossy(&scp_version.stderr)
        .trim()
        .to_owned();

    let mut rows = Vec::new();
    let mut ship_rows = Vec::new();
    let mut summary = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for &size in &sizes {
            let src = local.path().join(format!("src-{size}"));
            write_random(&src, size);
            std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
            let remote_ours = format!("{remote_dir}/ours-{size}");
            let remote_scp = format!("{remote_dir}/scp-{size}");
            let back = local.path().join("back");
            let mut t = Times::default();
            for _ in 0..runs {
                // Alternate the tools in each round so cache and load drift hit both.
                t.up_ours.push(time(|| {
                    let s = SshSession::connect(&target).unwrap();
                    let n = s
                        .upload(File::open(&src).unwrap(), &remote_ours, 0o600, |_| {})
                        .unwrap();
                    assert_eq!(n, size);
                }));
                assert_eq!(remote_size(&target, &remote_ours), size);
                t.up_scp
                    .push(time(|| scp(&stack, &target, &src, &remote_scp, true)));
                assert_eq!(remote_size(&target, &remote_scp), size);

                t.down_ours.push(time(|| {
                    let s = SshSession::connect(&target).unwrap();
                    let n = s
                        .download(&remote_ours, File::create(&back).unwrap())
                        .unwrap();
                    assert_eq!(n, size);
                }));
                assert_same(&src, &back);
                t.down_stream.push(time(|| {
                    let s = SshSession::connect(&target).unwrap();
                    let mut r = s.open_read(&remote_ours).unwrap();
                    let mut w = File::create(&back).unwrap();
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = r.read(&mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        w.write_all(&buf[..n]).unwrap();
                    }
                }));
                assert_same(&src, &back);
                t.down_scp
                    .push(time(|| scp(&stack, &target, &back, &remote_scp, false)));
                assert_same(&src, &back);
                std::fs::remove_file(&back).unwrap();

                let plan = Plan {
                    name: format!("bench-{size}").parse().unwrap(),
                    kind: hpcs_core::info::ArtefactKind::Data,
                    readers: hpcs_core::api::Readers::default(),
                    compute_nodes: std::collections::BTreeSet::new(),
                    remote_dir: remote_dir.parse().unwrap(),
                };
                let dest = SshDestination::new(target.clone());
                let spool = local.path().join("spool.age");
                t.ship_spool.push(time(|| {
                    let identity = hpcs_core::secret::AgeIdentity::generate();
                    let summary = hpcs_core::crypto::encrypt(
                        File::open(&src).unwrap(),
                        File::create(&spool).unwrap(),
                        &[identity.to_public()],
                    )
                    .unwrap();
                    let staged = plan.staged_remote().unwrap();
                    dest.upload(&mut File::open(&spool).unwrap(), &staged, &mut |_| {})
                        .unwrap();
                    dest.verify(&staged, &summary).unwrap();
                    dest.discard(&[&staged]);
                    std::fs::remove_file(&spool).unwrap();
                }));
                t.ship_piped.push(time(|| {
                    let staged = prepare::stage(
                        &dest,
                        &plan,
                        File::open(&src).unwrap(),
                        "bench input",
                        &mut |_| {},
                    )
                    .unwrap();
                    prepare::discard(&dest, staged);
                }));
            }
            std::fs::remove_file(&src).unwrap();
            let label = human(size);
            let (spool_s, piped_s) = (median(&mut t.ship_spool), median(&mut t.ship_piped));
            ship_rows.push(format!(
                "| {label} | {spool_s:.2} | {piped_s:.2} | {:.2}x |",
                spool_s / piped_s
            ));
            summary.push(format!(
                "| ship {label} (encrypt + upload + remote check): piped vs spool file | {piped_s:.2} s | spool {spool_s:.2} s | {:.2}x faster | - | - |",
                spool_s / piped_s
            ));
            let up_scp = median(&mut t.up_scp);
            let down_scp = median(&mut t.down_scp);
            for (dir, what, ours, scp_s) in [
                (
                    "upload",
                    "SshSession::upload",
                    median(&mut t.up_ours),
                    up_scp,
                ),
                (
                    "download",
                    "SshSession::download",
                    median(&mut t.down_ours),
                    down_scp,
                ),
                (
                    "download",
                    "SshSession::open_read, 64 KiB reads",
                    median(&mut t.down_stream),
                    down_scp,
                ),
            ] {
                let ratio = scp_s / ours;
                let scp_row = format!(
                    "| {label} | {dir} | scp | {scp_s:.2} | {:.0} | 1.00x | |",
                    mib_s(size, scp_s)
                );
                if !rows.contains(&scp_row) {
                    rows.push(scp_row);
                }
                rows.push(format!(
                    "| {label} | {dir} | {what} | {ours:.2} | {:.0} | {ratio:.2}x | {} |",
                    mib_s(size, ours),
                    met(ratio)
                ));
                summary.push(format!(
                    "| SFTP {dir} {label} ({what}) | {:.0} MiB/s | scp {:.0} MiB/s | {ratio:.2}x | >= {TARGET_RATIO}x | {} |",
                    mib_s(size, ours),
                    mib_s(size, scp_s),
                    met(ratio)
                ));
            }
        }
    }));
    // Clean up the remote side whatever happened.
    if let Ok(s) = SshSession::connect(&target) {
        let _ = s.exec(&["rm", "-rf", "--", &remote_dir]);
    }
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    println!(
        "SFTP over loopback to {}:{} as {}, median of {runs} runs, wall time including connect \
         and authentication; scp: {scp_version}\n",
        stack.ssh_host, stack.ssh_port, stack.alice.name
    );
    println!("| size | direction | tool | time (s) | MiB/s | vs scp | >= {TARGET_RATIO}x scp |");
    println!("|---|---|---|---:|---:|---:|---|");
    for r in &rows {
        println!("{r}");
    }
    println!(
        "\nShipping an artefact (encrypt, upload, sha256sum on the remote side), median wall time:\n"
    );
    println!("| size | spool file, then upload (s) | encrypted into the upload (s) | speed-up |");
    println!("|---|---:|---:|---:|");
    for r in &ship_rows {
        println!("{r}");
    }
    hpcs_test_support::append_bench_summary(&summary);
    ExitCode::SUCCESS
}

#[derive(Default)]
struct Times {
    up_ours: Vec<f64>,
    up_scp: Vec<f64>,
    down_ours: Vec<f64>,
    down_stream: Vec<f64>,
    down_scp: Vec<f64>,
    ship_spool: Vec<f64>,
    ship_piped: Vec<f64>,
}

fn met(ratio: f64) -> &'static str {
    if ratio >= TARGET_RATIO {
        "met"
    } else {
        "NOT met"
    }
}

fn time(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[allow(clippy::cast_precision_loss)]
fn mib_s(size: u64, secs: f64) -> f64 {
    size as f64 / 1_048_576.0 / secs
}

fn human(size: u64) -> String {
    if size.is_multiple_of(1 << 30) {
        format!("{} GiB", size >> 30)
    } else {
        format!("{} MiB", size >> 20)
    }
}

/// `256M`, `1G`, `4096K`, or plain bytes.
fn parse_sizes(text: &str) -> Vec<u64> {
    text.split(',')
        .map(|s| {
            let s = s.trim();
            let (num, mult) = match s.char_indices().last() {
                Some((i, 'K' | 'k')) => (&s[..i], 1 << 10),
                Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
                Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
                _ => (s, 1),
            };
            let n: u64 = num
                .parse()
                .unwrap_or_else(|_| panic!("bad size {s:?} in HPCS_BENCH_SFTP_SIZES"));
            n * mult
        })
        .collect()
}

/// Incompressible bytes, so no layer compresses them away.
fn write_random(path: &Path, size: u64) {
    let mut f = File::create(path).unwrap();
    let mut filler = hpcs_test_support::Incompressible::new(size);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap();
        filler.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
}

fn remote_size(target: &SshTarget, remote: &str) -> u64 {
    SshSession::connect(target)
        .unwrap()
        .file_size(remote)
        .unwrap()
}

/// The two files hold the same bytes.
fn assert_same(a: &Path, b: &Path) {
    let (mut fa, mut fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    assert_eq!(
        fa.metadata().unwrap().len(),
        fb.metadata().unwrap().len(),
        "{}",
        b.display()
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            break;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        assert!(
            ba[..n] == bb[..n],
            "{} differs from {}",
            b.display(),
            a.display()
        );
    }
}

/// `scp` with the same key, known_hosts and strict host key checking as our session.
fn scp(stack: &Stack, target: &SshTarget, local: &PathBuf, remote: &str, upload: bool) {
    let remote = format!("{}@{}:{remote}", target.user, stack.ssh_host);
    let mut c = Command::new("scp");
    c.args(["-q", "-B", "-P", &target.port.to_string(), "-i"])
        .arg(&stack.alice.ssh_key)
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            target.known_hosts.display()
        ))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
        ]);
    if upload {
        c.arg(local).arg(&remote);
    } else {
        c.arg(&remote).arg(local);
    }
    let st = c.status().expect("run scp");
    assert!(st.success(), "scp failed: {st}");
}
