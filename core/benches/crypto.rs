//! Throughput and peak memory of our age encryption/decryption against the Go `age` CLI, with
//! `openssl speed` ChaCha20-Poly1305 as the ceiling. See docs/performance.md.
//!
//! Run: `cargo bench -p hpcs-core --bench crypto`. Needs `age`, `openssl` and GNU time
//! (`/usr/bin/time`, Debian package `time`) for the peak RSS of each process. Environment:
//! `HPCS_BENCH_SIZES` (default `64M,1G,4G`), `HPCS_BENCH_DIR` (where the temporary files go,
//! default the system temp dir; needs about 3x the largest size free), `HPCS_BENCH_RUNS`
//! (default 2; the best time and the highest RSS are reported).
//!
//! Every process is timed from spawn to exit, so each number includes start-up and the header;
//! encryption writes a file next to the input, decryption writes to /dev/null (same for both).
//! The binary re-executes itself (`child encrypt|decrypt ...`) so that our path is measured as
//! a process of its own, exactly like the CLI.

use std::fs::{self, File};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use hpcs_core::crypto;
use hpcs_core::secret::{AgeIdentity, AgeRecipient};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("child") {
        child(&args[1..])
    } else {
        bench()
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `child encrypt IN OUT RECIPIENT` or `child decrypt IN OUT KEYFILE`.
fn child(args: &[String]) -> Result<()> {
    let [op, input, output, key] = args else {
        bail!("usage: child encrypt|decrypt IN OUT KEY");
    };
    let reader = File::open(input).with_context(|| format!("open {input}"))?;
    let writer = File::create(output).with_context(|| format!("create {output}"))?;
    match op.as_str() {
        "encrypt" => {
            let recipient: AgeRecipient = key.parse()?;
            crypto::encrypt(reader, writer, &[recipient])?;
        }
        "decrypt" => {
            let text = fs::read_to_string(key)?;
            let id = AgeIdentity::parse_file_text(&text)?;
            crypto::decrypt(reader, writer, &id, None)?;
        }
        other => bail!("unknown operation {other}"),
    }
    Ok(())
}

fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    Ok(num.parse::<u64>().with_context(|| format!("size {s:?}"))? * mult)
}

fn label(size: u64) -> String {
    if size >= 1 << 30 && size.is_multiple_of(1 << 30) {
        format!("{} GiB", size >> 30)
    } else {
        format!("{} MiB", size >> 20)
    }
}

/// Writes `size` pseudo-random (incompressible) bytes.
fn make_input(path: &Path, size: u64) -> Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = usize::try_from(left.min(block.len() as u64))?;
        w.write_all(&block[..n])?;
        left -= n as u64;
    }
    w.into_inner()?.sync_all()?;
    Ok(())
}

struct Measure {
    seconds: f64,
    rss_kib: u64,
}

/// Runs `cmd` under GNU time `runs` times, each after a `sync`; best wall time, highest peak RSS.
fn measure(dir: &Path, cmd: &[&str], runs: u32) -> Result<Measure> {
    let tfile = dir.join("time.out");
    let mut best = Measure {
        seconds: f64::INFINITY,
        rss_kib: 0,
    };
    for _ in 0..runs {
        // Start every run with no dirty pages of earlier runs (a 4 GiB output written just
        // before would otherwise be flushed inside this run's timed region).
        let synced = Command::new("sync").status().context("run sync")?;
        if !synced.success() {
            bail!("sync failed: {synced}");
        }
        let start = Instant::now();
        let out = Command::new("/usr/bin/time")
            .arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&tfile)
            .args(cmd)
            .output()
            .context("run /usr/bin/time (Debian package `time`)")?;
        let seconds = start.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                cmd.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let rss: u64 = fs::read_to_string(&tfile)?
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .parse()
            .context("parse GNU time output")?;
        best.seconds = best.seconds.min(seconds);
        best.rss_kib = best.rss_kib.max(rss);
    }
    Ok(best)
}

/// `openssl speed` ChaCha20-Poly1305 on 16 KiB blocks, in GiB/s, with `multi` processes.
fn openssl_speed(multi: usize) -> Result<f64> {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "speed",
        "-evp",
        "chacha20-poly1305",
        "-bytes",
        "16384",
        "-seconds",
        "3",
    ]);
    if multi > 1 {
        cmd.args(["-multi", &multi.to_string()]);
    }
    let out = cmd.output().context("run openssl speed")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.to_ascii_lowercase().starts_with("chacha20-poly1305"))
        .context("no ChaCha20-Poly1305 line in openssl speed output")?;
    let k: f64 = line
        .split_whitespace()
        .last()
        .and_then(|v| v.strip_suffix('k'))
        .context("openssl speed column")?
        .parse()?;
    // "1000s of bytes per second".
    Ok(k * 1000.0 / GIB)
}

fn bench() -> Result<()> {
    let sizes: Vec<u64> = std::env::var("HPCS_BENCH_SIZES")
        .unwrap_or_else(|_| "64M,1G,4G".into())
        .split(',')
        .map(parse_size)
        .collect::<Result<_>>()?;
    let runs: u32 = std::env::var("HPCS_BENCH_RUNS")
        .map_or(Ok(2), |v| v.parse())
        .context("HPCS_BENCH_RUNS")?;
    let base = std::env::var_os("HPCS_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let tmp = tempfile::tempdir_in(&base)?;
    let dir = tmp.path();
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().context("non-UTF-8 bench path")?;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);

    let id = AgeIdentity::generate();
    let key = dir.join("key.txt");
    fs::write(&key, id.to_file_text().expose_secret())?;
    let key = key.to_str().context("non-UTF-8 temp dir")?;
    let recipient = id.to_public().to_string();

    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let age_version = Command::new("age")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "not found".into());
    eprintln!("measuring openssl speed (ceiling)...");
    let ssl1 = openssl_speed(1)?;
    let ssl_n = if cores > 1 {
        openssl_speed(cores)?
    } else {
        ssl1
    };

    println!("machine: {cpu}, {cores} cores; age {age_version}; best of {runs} run(s)");
    println!();
    println!(
        "openssl speed -evp chacha20-poly1305 (16 KiB blocks): {ssl1:.2} GiB/s on 1 core, {ssl_n:.2} GiB/s on {cores} processes"
    );
    println!();
    println!(
        "| size | op | tool | time (s) | GiB/s | vs age | vs openssl ({cores} cores) | peak RSS (MiB) |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for &size in &sizes {
        eprintln!("preparing {} input...", label(size));
        let input = dir.join("input");
        make_input(&input, size)?;
        let input = input.to_str().context("path")?;
        let ours_ct = format!("{}/ours.age", dir.display());
        let age_ct = format!("{}/cli.age", dir.display());
        let gib = size as f64 / GIB;
        let row = |op: &str, tool: &str, m: &Measure, age: Option<&Measure>| {
            let rate = gib / m.seconds;
            let vs_age = age.map_or("1.00x".to_owned(), |a| {
                format!("{:.2}x", a.seconds / m.seconds)
            });
            println!(
                "| {} | {op} | {tool} | {:.2} | {rate:.2} | {vs_age} | {:.0}% | {:.1} |",
                label(size),
                m.seconds,
                100.0 * rate / ssl_n,
                m.rss_kib as f64 / 1024.0
            );
        };
        eprintln!("encrypting {}...", label(size));
        // Timed to /dev/null, like decryption: written to a file, both tools' times are
        // dominated by page-cache writeback of the output (seconds of spread at 4 GiB), not by
        // the cipher. The ciphertexts each tool decrypts below come from one untimed run.
        let age_enc = measure(
            dir,
            &["age", "-r", &recipient, "-o", "/dev/null", input],
            runs,
        )?;
        let ours_enc = measure(
            dir,
            &[exe, "child", "encrypt", input, "/dev/null", &recipient],
            runs,
        )?;
        measure(dir, &["age", "-r", &recipient, "-o", &age_ct, input], 1)?;
        measure(
            dir,
            &[exe, "child", "encrypt", input, &ours_ct, &recipient],
            1,
        )?;
        row("encrypt", "age CLI", &age_enc, None);
        row("encrypt", "hpcs", &ours_enc, Some(&age_enc));
        eprintln!("decrypting {}...", label(size));
        let age_dec = measure(
            dir,
            &["age", "-d", "-i", key, "-o", "/dev/null", &age_ct],
            runs,
        )?;
        let ours_dec = measure(
            dir,
            &[exe, "child", "decrypt", &ours_ct, "/dev/null", key],
            runs,
        )?;
        row("decrypt", "age CLI", &age_dec, None);
        row("decrypt", "hpcs", &ours_dec, Some(&age_dec));
        for f in [input, ours_ct.as_str(), age_ct.as_str()] {
            fs::remove_file(f)?;
        }
    }
    Ok(())
}
