//! Interoperability of `hpcs_core::crypto` with the reference Go `age` command-line tool, in
//! both directions, at STREAM chunk and batch boundaries.
//!
//! Needs `age` and `age-keygen` on `PATH` (Debian package `age`). Without them the tests fail,
//! unless `HPCS_ALLOW_NO_STACK=1` is set outside CI, in which case they print "skipped".

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use hpcs_core::crypto::{self, BATCH_CHUNKS, CHUNK_BYTES};
use hpcs_core::secret::AgeIdentity;
use rstest::rstest;

const BATCH: usize = BATCH_CHUNKS * CHUNK_BYTES;

fn age_cli() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("age"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let allowed = std::env::var("HPCS_ALLOW_NO_STACK").as_deref() == Ok("1")
            && std::env::var("CI").as_deref() != Ok("true");
        assert!(
            allowed,
            "the `age` CLI is not on PATH (install the Debian package `age`)"
        );
        println!("skipped: no age CLI");
    }
    found
}

/// Deterministic pseudo-random bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write_identity(dir: &Path, id: &AgeIdentity) -> PathBuf {
    // The temp dir is private to this test (mode 0700).
    let path = dir.join("key.txt");
    fs::write(&path, id.to_file_text().expose_secret()).expect("write the identity file");
    path
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("run the age CLI");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[rstest]
#[case(0)]
#[case(1)]
#[case(CHUNK_BYTES - 1)]
#[case(CHUNK_BYTES)]
#[case(CHUNK_BYTES + 1)]
#[case(2 * CHUNK_BYTES)]
#[case(BATCH - 1)]
#[case(BATCH)]
#[case(BATCH + 1)]
#[case(2 * BATCH + 3 * CHUNK_BYTES + 5)]
fn ours_encrypt_age_cli_decrypts(#[case] len: usize) {
    let Some(age) = age_cli() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let id = AgeIdentity::generate();
    let key = write_identity(tmp.path(), &id);
    let plain = data(len, len as u64);
    let ct_path = tmp.path().join("x.age");
    let mut file = fs::File::create(&ct_path).unwrap();
    let summary = crypto::encrypt(plain.as_slice(), &mut file, &[id.to_public()]).unwrap();
    drop(file);
    crypto::verify_file(&ct_path, &summary).unwrap();
    let out = run(Command::new(age)
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .arg(&ct_path));
    assert!(out == plain, "age CLI output differs for {len} bytes");
}

#[rstest]
#[case(0)]
#[case(1)]
#[case(CHUNK_BYTES - 1)]
#[case(CHUNK_BYTES)]
#[case(CHUNK_BYTES + 1)]
#[case(2 * CHUNK_BYTES)]
#[case(BATCH - 1)]
#[case(BATCH)]
#[case(BATCH + 1)]
#[case(2 * BATCH + 3 * CHUNK_BYTES + 5)]
fn age_cli_encrypts_ours_decrypts(#[case] len: usize) {
    let Some(age) = age_cli() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let id = AgeIdentity::generate();
    let plain = data(len, !(len as u64));
    let pt_path = tmp.path().join("x");
    let ct_path = tmp.path().join("x.age");
    fs::write(&pt_path, &plain).unwrap();
    run(Command::new(age)
        .arg("-r")
        .arg(id.to_public().as_str())
        .arg("-o")
        .arg(&ct_path)
        .arg(&pt_path));
    let mut out = Vec::new();
    let got = crypto::decrypt(fs::File::open(&ct_path).unwrap(), &mut out, &id, None).unwrap();
    assert!(out == plain, "decrypted output differs for {len} bytes");
    assert_eq!(got.ciphertext, crypto::summarize_file(&ct_path).unwrap());
}

/// Several recipients, and a tampered CLI-made file is rejected by us.
#[test]
fn multiple_recipients_and_tampering() {
    let Some(age) = age_cli() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ours = AgeIdentity::generate();
    let theirs_text = run(&mut Command::new("age-keygen"));
    let theirs = AgeIdentity::parse_file_text(&String::from_utf8(theirs_text).unwrap()).unwrap();
    let plain = data(3 * CHUNK_BYTES + 17, 99);
    let pt_path = tmp.path().join("x");
    fs::write(&pt_path, &plain).unwrap();

    // Ours to both recipients; the CLI decrypts with the second identity.
    let mut ct = Vec::new();
    crypto::encrypt(
        plain.as_slice(),
        &mut ct,
        &[ours.to_public(), theirs.to_public()],
    )
    .unwrap();
    let ct_path = tmp.path().join("ours.age");
    fs::write(&ct_path, &ct).unwrap();
    let key = write_identity(tmp.path(), &theirs);
    let out = run(Command::new(&age)
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .arg(&ct_path));
    assert!(out == plain);

    // The CLI to both; we decrypt with the first, and reject a flipped payload byte.
    let cli_path = tmp.path().join("cli.age");
    run(Command::new(&age)
        .arg("-r")
        .arg(theirs.to_public().as_str())
        .arg("-r")
        .arg(ours.to_public().as_str())
        .arg("-o")
        .arg(&cli_path)
        .arg(&pt_path));
    let mut ct = fs::read(&cli_path).unwrap();
    let mut out = Vec::new();
    crypto::decrypt(ct.as_slice(), &mut out, &ours, None).unwrap();
    assert!(out == plain);
    let at = ct.len() - 100;
    ct[at] ^= 0x01;
    let err = crypto::decrypt(ct.as_slice(), std::io::sink(), &ours, None).unwrap_err();
    assert!(
        matches!(err, crypto::CryptoError::Decrypt { .. }),
        "unexpected {err}"
    );
}
