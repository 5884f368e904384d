//! The adversarial suite: every case goes through the real binaries on the test stack and must be
//! refused with a clear error, without the application ever running, and leave no trace (no
//! container, no scratch directory, no plaintext on the cluster side, nothing registered that
//! should not be). See docs/testing.md for what each case proves.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use common::{CuttingProxy, JobSpec, Run, World};

/// The job failed, the application never ran, and nothing is left.
fn assert_refused(w: &World, job: &common::Job, what: &str) {
    assert_ne!(
        job.run.code,
        Some(0),
        "{what}: job-prep succeeded\n--- stdout\n{}\n--- stderr\n{}",
        job.run.stdout,
        job.run.stderr
    );
    w.assert_app_never_ran(job);
    w.assert_no_trace(job);
}

/// The job's own logs (what hpcs-node printed) mention `needle`.
fn assert_logs_mention(job: &common::Job, needle: &str) {
    let logs = job.logs();
    assert!(
        logs.to_lowercase().contains(&needle.to_lowercase()),
        "job {} logs do not mention {needle:?}:\n{logs}",
        job.job_id
    );
}

/// hpcs-node said it got no identity for the reader ID of one of `ids`.
fn assert_no_key_for(job: &common::Job, ids: &[&str]) {
    assert_logs_mention(job, "issued no identity");
    let logs = job.logs();
    assert!(
        ids.iter().any(|id| logs.contains(id)),
        "job {} logs name none of the secrets {ids:?}:\n{logs}",
        job.job_id
    );
}

#[test]
fn bob_cannot_run_alices_job() {
    let w = World::new();
    let (app, data) = w.prepare(&w.alice);
    // Even with the ciphertexts and info files readable (shared project storage), bob's job
    // gets no key: the readers are alice's uid on node1.
    w.share_at_rest(&w.alice);
    let job = w.submit(&w.bob, &JobSpec::new("bob", &app.info, &[&data.info]));
    assert!(!job.job_id.is_empty(), "bob's job was not submitted");
    assert_refused(&w, &job, "bob runs alice's job");
    assert_no_key_for(&job, &[&app.secret_id, &data.secret_id]);
    // alice's registrations are untouched.
    let (status, _) = w.api(
        &w.alice,
        reqwest::Method::GET,
        &format!("/api/v1/secrets/{}", data.secret_id),
    );
    assert_eq!(status, 200);
}

#[test]
fn a_job_on_a_node_not_in_the_compute_nodes_gets_no_key() {
    let w = World::new();
    let (app, data) = w.prepare(&w.alice);
    let data_infos = [data.info.as_path()];
    let mut spec = JobSpec::new("node2", &app.info, &data_infos);
    spec.node = "node2";
    let job = w.submit(&w.alice, &spec);
    assert!(!job.job_id.is_empty(), "the job was not submitted");
    assert_refused(&w, &job, "alice's job on node2");
    assert_no_key_for(&job, &[&app.secret_id, &data.secret_id]);
}

#[test]
fn an_info_file_swapped_for_another_users_is_refused() {
    let w = World::new();
    let (app, data) = w.prepare(&w.alice);
    let bob_data = w.data_prep(&w.bob, "data", "node1");
    bob_data.expect_code(0, "data-prep as bob");
    w.share_at_rest(&w.bob);
    // Someone with write access to alice's storage puts bob's info file in place of hers: it
    // names bob's secret and bob's (intact) ciphertext.
    std::fs::copy(w.bob.at_rest.join("data.info.yaml"), &data.info).unwrap();
    let job = w.submit(&w.alice, &JobSpec::new("swapped", &app.info, &[&data.info]));
    assert!(!job.job_id.is_empty(), "the job was not submitted");
    assert_refused(&w, &job, "alice's job with bob's info file");
    let bob_id = common::info_field(&data.info, "secret_id");
    assert_no_key_for(&job, &[&bob_id]);
}

#[test]
fn a_tampered_ciphertext_is_refused() {
    let w = World::new();
    let (app, data) = w.prepare(&w.alice);
    let mut ct = std::fs::read(&data.ciphertext).unwrap();
    let mid = ct.len() / 2;
    ct[mid] ^= 0x01;
    std::fs::write(&data.ciphertext, &ct).unwrap();

    // 1. As it is: job-prep checks size and SHA-256 on the cluster and submits nothing.
    let job = w.submit(
        &w.alice,
        &JobSpec::new("tampered", &app.info, &[&data.info]),
    );
    job.run
        .expect_code(1, "job-prep with a tampered ciphertext")
        .expect_stderr("does not match", "job-prep with a tampered ciphertext");
    assert!(
        job.job_id.is_empty(),
        "a job was submitted: {}",
        job.run.stdout
    );
    w.assert_no_plaintext();

    // 2. With the info file rewritten to match (shared storage is writable by the attacker):
    // job-prep's check passes, and hpcs-node refuses against the key record in Vault.
    let sha = hpcs_core::crypto::summarize(ct.as_slice())
        .unwrap()
        .sha256
        .to_string();
    common::edit_info(&data.info, &[("sha256", sha.clone()), ("checksum", sha)]);
    let job = w.submit(
        &w.alice,
        &JobSpec::new("tampered2", &app.info, &[&data.info]),
    );
    assert!(!job.job_id.is_empty(), "the job was not submitted");
    assert_refused(&w, &job, "a tampered ciphertext with a matching info file");
    assert_logs_mention(&job, "does not match its key record");
}

#[test]
fn a_secret_revoked_before_the_job_runs_is_refused() {
    let w = World::new();
    let (app, data) = w.prepare(&w.alice);
    w.assert_registered(&data.secret_id);
    w.revoke(&w.alice, &data.secret_id);
    let (status, _) = w.api(
        &w.alice,
        reqwest::Method::GET,
        &format!("/api/v1/secrets/{}", data.secret_id),
    );
    assert_eq!(status, 404, "a revoked secret is still listed");
    w.assert_not_registered(&data.secret_id);
    let job = w.submit(&w.alice, &JobSpec::new("revoked", &app.info, &[&data.info]));
    assert!(!job.job_id.is_empty(), "the job was not submitted");
    assert_refused(&w, &job, "a job whose data key was revoked");
    assert_no_key_for(&job, &[&data.secret_id]);
}

#[test]
fn hostile_names_and_paths_are_refused_before_anything_is_registered() {
    let w = World::new();
    let canary = w.dir.join("pwned");
    let c = canary.display().to_string();
    let at_rest = w.alice.at_rest.display().to_string();
    let input = w.alice.laptop.join("input");
    let base = |name: &str, user: &str, nodes: &str, dest: &str| -> Vec<String> {
        common::prep_args("-i", &input, name, user, nodes, Path::new(dest))
    };
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("name ../", base("../evil", "alice", "node1", &at_rest)),
        ("name with a quote", base("a'b", "alice", "node1", &at_rest)),
        (
            "name with $()",
            base(&format!("$(touch {c})"), "alice", "node1", &at_rest),
        ),
        (
            "name with ;",
            base(&format!("x;touch {c}"), "alice", "node1", &at_rest),
        ),
        (
            "name with a newline",
            base("a\nb", "alice", "node1", &at_rest),
        ),
        (
            "user with ;",
            base("d", &format!("alice;touch {c}"), "node1", &at_rest),
        ),
        ("user with a space", base("d", "ali ce", "node1", &at_rest)),
        (
            "node with $()",
            base("d", "alice", &format!("node1,$(touch {c})"), &at_rest),
        ),
        ("node with ..", base("d", "alice", "../node1", &at_rest)),
        ("relative path", base("d", "alice", "node1", "relative/dir")),
        (
            "path with a newline",
            base("d", "alice", "node1", &format!("{at_rest}/a\nb")),
        ),
        (
            "path with ..",
            base("d", "alice", "node1", &format!("{at_rest}/../../etc")),
        ),
    ];
    for (what, args) in &cases {
        let run = w.client_with(&w.alice, "data-prep", args, &w.alice.config);
        run.expect_code(2, what);
        assert!(
            run.stderr.contains("invalid value") || run.stderr.contains("error"),
            "{what}: no clear error: {}",
            run.stderr
        );
    }
    // container-prep validates the same way.
    let args = common::prep_args(
        "--image-archive",
        &w.image_archive,
        &format!("$(touch {c})"),
        "alice",
        "node1",
        &w.alice.at_rest,
    );
    let run = w.client_with(&w.alice, "container-prep", &args, &w.alice.config);
    run.expect_code(2, "container-prep with a hostile name");

    // A destination with spaces and quotes is a legal path: it must be used exactly as given.
    let odd = format!("{at_rest}/it's a \"dir\" $(touch {c}) `touch {c}`");
    let args = base("odd", "alice", "node1", &odd);
    let run = w.client_with(&w.alice, "data-prep", &args, &w.alice.config);
    eprintln!("data-prep to a destination with quotes: {run:?}");
    if run.code == Some(0) {
        assert!(
            Path::new(&odd).join("odd.info.yaml").is_file(),
            "data-prep succeeded but {odd:?}/odd.info.yaml is missing"
        );
    } else {
        run.expect_code(2, "data-prep with a quoted destination");
    }

    // job-prep: hostile job names and work directories are refused before anything is run.
    let fake = w.alice.at_rest.join("none.info.yaml");
    for (what, name, workdir) in [
        ("job name with $()", format!("$(touch {c})"), None),
        ("job name with a newline", "a\nb".to_owned(), None),
        (
            "workdir with a quote",
            "ok".to_owned(),
            Some(format!("{at_rest}/it's")),
        ),
        (
            "workdir with $()",
            "ok".to_owned(),
            Some(format!("{at_rest}/$(touch {c})")),
        ),
    ] {
        let wd = workdir.unwrap_or_else(|| w.alice.workdir("ok").display().to_string());
        let run = w.client(
            &w.alice,
            "job-prep",
            &[
                "-N",
                "1",
                "-p",
                &w.stack.slurm_partition,
                "-t",
                "5",
                "-J",
                &name,
                "-s",
                &wd,
                "--application-info",
                &fake.display().to_string(),
            ],
        );
        run.expect_code(2, what);
    }

    assert!(!canary.exists(), "a hostile string was executed");
    // Nothing was registered by the refused runs (at most the one legal odd-path run).
    let created: Vec<_> = w
        .audit("server")
        .into_iter()
        .filter(|e| e["action"] == "secret.create")
        .collect();
    assert!(
        created.len() <= usize::from(run.code == Some(0)),
        "refused runs registered secrets: {created:?}"
    );
    assert!(
        w.key_records().len() <= usize::from(run.code == Some(0)),
        "refused runs wrote key records: {:?}",
        w.key_records()
    );
    w.assert_no_plaintext();
}

/// One tar entry with raw header fields, bypassing the tar crate's own path checks (an attacker
/// writes whatever bytes they like).
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    link: Option<&str>,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    let raw = name.as_bytes();
    h.as_old_mut().name[..raw.len()].copy_from_slice(raw);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    if let Some(l) = link {
        h.set_link_name_literal(l.as_bytes()).unwrap();
    }
    if kind == tar::EntryType::Char {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// A hostile tar entry: name, type, link target.
type Entry = (String, tar::EntryType, Option<String>);

#[test]
fn malicious_data_archives_are_refused_before_the_app_runs() {
    let w = World::new();
    let (app, data) = w.prepare(&w.alice);
    // The data key, as its owner has it (read here with the administrator token).
    let (status, record) = w.vault_get(&data.secret_path);
    assert_eq!(status, 200, "key record {}: {record}", data.secret_path);
    let mut fields = record["data"]["data"].clone();
    let identity = hpcs_core::secret::AgeIdentity::parse(
        fields["age_identity"]
            .as_str()
            .or_else(|| fields["key"].as_str())
            .expect("an age identity in the key record"),
    )
    .expect("a valid age identity");
    let recipients = [identity.to_public()];
    let escape = w.dir.join("escape");
    std::fs::create_dir(&escape).unwrap();
    std::fs::set_permissions(&escape, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let esc = escape.display().to_string();
    let dots = "../".repeat(12);
    let f = tar::EntryType::Regular;
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        (
            "dotdot",
            vec![(
                format!("{dots}{}/dotdot", esc.trim_start_matches('/')),
                f,
                None,
            )],
        ),
        ("absolute", vec![(format!("{esc}/absolute"), f, None)]),
        (
            "symlink",
            vec![
                ("link".into(), tar::EntryType::Symlink, Some(esc)),
                ("link/through-symlink".into(), f, None),
            ],
        ),
        (
            "hardlink",
            vec![(
                "hard".into(),
                tar::EntryType::Link,
                Some("/etc/passwd".into()),
            )],
        ),
        ("device", vec![("null".into(), tar::EntryType::Char, None)]),
    ];
    for (what, entries) in cases {
        let mut b = tar::Builder::new(Vec::new());
        let ok = format!("{} plain file\n", common::DATA_MARKER);
        raw_entry(&mut b, "ok.txt", f, None, ok.as_bytes());
        for (name, kind, link) in &entries {
            let body: &[u8] = if *kind == f { b"escaped\n" } else { b"" };
            raw_entry(&mut b, name, *kind, link.as_deref(), body);
        }
        let tar = b.into_inner().unwrap();
        // Encrypted with the project's own age encryptor, straight into the shipped file; its
        // summary is the digest and size of what was written.
        let ct = std::fs::File::create(&data.ciphertext).unwrap();
        let summary = hpcs_core::crypto::encrypt(tar.as_slice(), ct, &recipients).unwrap();
        let sha = summary.sha256.to_string();
        common::edit_info(
            &data.info,
            &[
                ("sha256", sha.clone()),
                ("checksum", sha.clone()),
                ("size", summary.size.to_string()),
            ],
        );
        // The owner registered exactly this ciphertext: the record matches it.
        fields["sha256"] = sha.clone().into();
        if fields.get("checksum").is_some() {
            fields["checksum"] = sha.into();
        }
        fields["size"] = serde_json::json!(summary.size);
        let (status, body) = w.vault_req(
            reqwest::Method::POST,
            &data.secret_path,
            Some(serde_json::json!({ "data": fields })),
        );
        assert!(status < 300, "rewrite the key record: {status} {body}");

        let job = w.submit(&w.alice, &JobSpec::new(what, &app.info, &[&data.info]));
        assert!(!job.job_id.is_empty(), "{what}: the job was not submitted");
        assert_refused(&w, &job, what);
        assert_logs_mention(&job, "refused data archive entry");
        let left: Vec<_> = std::fs::read_dir(&escape)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(
            left.is_empty(),
            "{what}: files escaped the data directory: {left:?}"
        );
    }
}

#[test]
fn sigterm_during_the_run_kills_the_app_and_leaves_nothing_behind() {
    let w = World::new();
    let (app, data) = w.prepare(&w.alice);
    let data_infos = [data.info.as_path()];
    let mut spec = JobSpec::new("sigterm", &app.info, &data_infos);
    spec.args = &[common::SLEEP_ARG];
    spec.follow = false;
    let job = w.submit(&w.alice, &spec);
    job.run.expect_code(0, "job-prep submission");
    assert!(!job.job_id.is_empty(), "no job id: {}", job.run.stdout);
    let t = Instant::now();
    while !job.logs().contains("HPCS-E2E-APP-SLEEPING") {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the app did not start:\n{}",
            job.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        !w.containers().is_empty(),
        "no container while the app runs"
    );
    // Plaintext exists now, but only in the private scratch directory.
    assert!(!w.scratch_entries().is_empty());
    w.client(&w.alice, "job-prep", &["cancel", &job.job_id])
        .expect_code(0, "job-prep cancel");
    w.assert_no_trace(&job);
    let logs = job.logs();
    assert!(
        !logs.contains("HPCS-E2E-APP-DONE"),
        "the app finished:\n{logs}"
    );
    let sealed = job
        .workdir
        .join("output")
        .join(format!("{}.tar.age", job.job_id));
    assert!(!sealed.exists(), "an output was sealed after SIGTERM");
}

/// A private OpenBao dev server (address, root token); killed when dropped.
fn private_bao(w: &World) -> (common::Proc, String, String) {
    let port = common::free_port();
    let token = format!("e2e-root-{}", hpcs_test_support::ns("bao"));
    let addr = format!("http://127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(&w.stack.bao_bin);
    // The root token through the environment: argv is readable by every local user.
    cmd.args(["server", "-dev"])
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
        .env("BAO_DEV_ROOT_TOKEN_ID", &token);
    let mut p = common::Proc::spawn("bao", cmd, w.dir.join("logs/bao.log"));
    let health = format!("{addr}/v1/sys/health");
    p.wait_until("ready", || w.http_ok(&health));
    (p, addr, token)
}

#[test]
fn vault_stopped_during_preparation_leaves_nothing_registered_or_reports_it() {
    let w = World::new();
    let (mut bao, addr, token) = private_bao(&w);
    let pid = bao.pid();
    w.vault_setup(&addr, &token);
    let port = common::free_port();
    let _server = w.start_server(&addr, port, "server-private");
    let server_url = format!("http://127.0.0.1:{port}");

    // The client reaches Vault through a proxy that stops Vault the moment the client connects:
    // after the registration, before the key write.
    let killed = Arc::new(AtomicI32::new(0));
    let k = killed.clone();
    let proxy = CuttingProxy::start(
        addr.trim_start_matches("http://").to_owned(),
        u64::MAX,
        move || {
            if k.swap(1, Ordering::SeqCst) == 0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            false
        },
    );
    let config = w.alice.laptop.join("client-vault-stops.ini");
    w.write_client_config_to(
        &w.alice,
        &config,
        &server_url,
        &format!("http://127.0.0.1:{}", proxy.port),
        w.stack.ssh_port,
    );
    let input = w.alice.laptop.join("input");
    let at_rest = &w.alice.at_rest;
    let args = common::prep_args("-i", &input, "vault-stops", "alice", "node1", at_rest);
    let run = w.client_with(&w.alice, "data-prep", &args, &config);
    eprintln!("data-prep with Vault stopping: {run:?}");
    assert_eq!(
        killed.load(Ordering::SeqCst),
        1,
        "the client never reached Vault: {}",
        run.stderr
    );
    bao.stop(nix::sys::signal::Signal::SIGKILL);
    let created = w.created_secret_ids("server-private");
    assert_eq!(created.len(), 1, "one registration expected: {created:?}");
    let id = &created[0];
    // Vault is gone, so the server cannot revoke the key's policies and role: the documented
    // outcome is exit 3 with the secret named so the user can revoke it later.
    assert!(
        matches!(run.code, Some(1 | 3)),
        "data-prep with Vault stopped: exit {:?}\n{}",
        run.code,
        run.stderr
    );
    if run.code == Some(3) {
        run.expect_stderr(id, "the orphaned secret is reported");
        run.expect_stderr("may still be registered", "the orphaned secret is reported");
        // The server changed nothing: the reported secret is exactly what is left. An
        // administrator removes its SPIRE entry (its Vault side died with the dev server).
        assert_eq!(
            w.reader_entries(id),
            1,
            "the reported secret {id} has no entry"
        );
        w.delete_reader_entries(id);
        assert_eq!(w.reader_entries(id), 0);
    } else {
        assert_eq!(w.reader_entries(id), 0, "SPIRE entry of {id} left");
    }
    assert!(
        !w.alice.at_rest.join("vault-stops.info.yaml").exists(),
        "an info file was shipped"
    );

    // Vault already down before the preparation starts: the server refuses to register.
    let config = w.alice.laptop.join("client-vault-down.ini");
    w.write_client_config_to(&w.alice, &config, &server_url, &addr, w.stack.ssh_port);
    let args = common::prep_args("-i", &input, "vault-down", "alice", "node1", at_rest);
    let run = w.client_with(&w.alice, "data-prep", &args, &config);
    eprintln!("data-prep with Vault down: {run:?}");
    run.expect_code(1, "data-prep with Vault down");
    let created_after = w.created_secret_ids("server-private").len();
    assert_eq!(created_after, 1, "a secret was registered with Vault down");
    assert!(!w.alice.at_rest.join("vault-down.info.yaml").exists());
    w.assert_no_plaintext();
}

#[test]
fn ssh_connection_dropped_mid_upload_registers_nothing() {
    let w = World::new();
    let size = std::fs::metadata(&w.image_archive).unwrap().len();
    // Cut every connection once half the image went up.
    let proxy = CuttingProxy::start(
        format!("{}:{}", w.stack.ssh_host, w.stack.ssh_port),
        size / 2,
        || true,
    );
    let config = w.alice.laptop.join("client-ssh-drops.ini");
    w.write_client_config_to(&w.alice, &config, &w.server_url, &w.bao_addr, proxy.port);
    let args = common::prep_args(
        "--image-archive",
        &w.image_archive,
        &w.app_name,
        "alice",
        "node1",
        &w.alice.at_rest,
    );
    let run: Run = w.client_with(&w.alice, "container-prep", &args, &config);
    eprintln!("container-prep with the SSH connection cut: {run:?}");
    run.expect_code(1, "container-prep with the SSH connection dropped");
    run.expect_stderr(
        "nothing was registered",
        "the failure says nothing was registered",
    );
    assert!(
        proxy.cuts.load(Ordering::Relaxed) >= 1,
        "the proxy never cut"
    );
    // The upload comes before the registration, so a cut upload registers nothing at all.
    let ids = w.audited_secret_ids("server");
    assert_eq!(ids, Vec::<String>::new(), "a registration was made");
    assert_eq!(w.key_records(), Vec::<String>::new(), "key records left");
    // What may remain is the uploader's hidden temporary file (ciphertext of a key that was
    // never registered, which the dropped connection kept it from removing), never a file
    // under the final names.
    for e in std::fs::read_dir(&w.alice.at_rest).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name.starts_with('.') && (name.ends_with(".partial") || name.ends_with(".staged")),
            "unexpected file {name} left at rest"
        );
    }
    for name in [
        format!("{}.age", w.app_name),
        format!("{}.info.yaml", w.app_name),
    ] {
        assert!(
            !w.alice.at_rest.join(&name).exists(),
            "a partial {name} is left under its final name"
        );
    }
    w.assert_no_plaintext();
}
