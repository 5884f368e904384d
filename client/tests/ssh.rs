//! `hpcs_client::ssh` against the test stack's real sshd: host-key checking, key
//! authentication, quoted remote commands, SFTP transfers.

use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use hpcs_client::prepare::SshDestination;
use hpcs_client::ssh::{SshError, SshSession, SshTarget, shell_join};
use hpcs_test_support::{Stack, ns};

fn target(stack: &Stack, key: &Path, known_hosts: &Path) -> SshTarget {
    SshTarget {
        connect_timeout: Duration::from_secs(10),
        op_timeout: Duration::from_secs(60),
        ..SshTarget::new(
            stack.ssh_host.clone(),
            stack.ssh_port,
            "alice",
            Some(key.to_owned()),
            known_hosts.to_owned(),
        )
    }
}

fn alice(stack: &Stack) -> SshTarget {
    target(stack, &stack.alice.ssh_key, &stack.ssh_known_hosts)
}

/// A remote scratch directory owned by alice, removed on drop.
struct RemoteDir<'a> {
    ssh: &'a SshSession,
    path: String,
}

impl<'a> RemoteDir<'a> {
    fn new(ssh: &'a SshSession) -> Self {
        let path = format!("/tmp/{}", ns("hpcs-ssh-test"));
        ssh.mkdir_p(&path, 0o700)
            .expect("create a remote scratch directory");
        Self { ssh, path }
    }
}

impl Drop for RemoteDir<'_> {
    fn drop(&mut self) {
        let _ = self.ssh.exec(&["rm", "-rf", "--", &self.path]);
    }
}

#[test]
fn hostile_arguments_reach_the_remote_command_verbatim() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let ssh = SshSession::connect(&alice(&stack)).unwrap();
    let dir = RemoteDir::new(&ssh);
    let canary = format!("{}/pwned", dir.path);
    let args = [
        "it's".to_owned(),
        format!("$(touch {canary})"),
        format!("`touch {canary}`"),
        format!("; touch {canary}"),
        "a\nb".to_owned(),
        "\"$HOME\" \\ *".to_owned(),
        String::new(),
        "é ☃".to_owned(),
    ];
    let mut argv = vec!["printf".to_owned(), "%s\\0".to_owned()];
    argv.extend(args.iter().cloned());
    let out = ssh.exec(&argv).unwrap();
    assert_eq!(out.status, 0, "{}", out.stderr_text());
    let mut want = Vec::new();
    for a in &args {
        want.extend_from_slice(a.as_bytes());
        want.push(0);
    }
    assert_eq!(out.stdout, want);
    assert_eq!(ssh.stat(&canary).unwrap(), None, "an argument was executed");
    assert!(shell_join(&["a\0b"]).is_err());
}

#[test]
fn exec_reports_status_and_stderr() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let ssh = SshSession::connect(&alice(&stack)).unwrap();
    let out = ssh
        .exec(&["sh", "-c", "echo out; echo err >&2; exit 3"])
        .unwrap();
    assert_eq!(out.status, 3);
    assert_eq!(out.stdout_text(), "out\n");
    assert_eq!(out.stderr_text(), "err");
    let err = ssh
        .exec_ok(&["sh", "-c", "echo nope >&2; exit 4"])
        .unwrap_err();
    assert!(matches!(err, SshError::Remote { status: 4, ref stderr, .. } if stderr == "nope"));
    assert!(ssh.has_command("sbatch").unwrap());
    assert!(!ssh.has_command("no-such-program-hpcs").unwrap());
    assert_eq!(ssh.remote_uid().unwrap(), stack.alice.uid);
    ssh.keepalive().unwrap();
}

#[test]
fn unknown_host_key_is_refused_before_authentication() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let kh = tmp.path().join("known_hosts");
    std::fs::write(&kh, "").unwrap();
    let err = SshSession::connect(&target(&stack, Path::new("/nonexistent-key"), &kh)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SshError::UnknownHostKey { .. }), "{text}");
    assert!(
        text.contains(&format!(
            "host key of {} port {}",
            stack.ssh_host, stack.ssh_port
        )) && text.contains(&kh.display().to_string())
            && text.contains("hint:"),
        "{text}"
    );
    // A missing known_hosts file is the same refusal, not a crash.
    let missing = tmp.path().join("missing");
    let err = SshSession::connect(&target(&stack, &stack.alice.ssh_key, &missing)).unwrap_err();
    assert!(matches!(err, SshError::UnknownHostKey { .. }), "{err}");
    assert!(!missing.exists());
}

#[test]
fn changed_host_key_is_refused_even_with_accept_new() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // A key of the same type as the server's, but a different one.
    let line = std::fs::read_to_string(&stack.ssh_known_hosts).unwrap();
    let key_type = line.split_whitespace().nth(1).unwrap().to_owned();
    let (kind, bits) = match key_type.as_str() {
        "ssh-ed25519" => ("ed25519", "256"),
        "ssh-rsa" => ("rsa", "2048"),
        t => ("ecdsa", t.rsplit("nistp").next().unwrap()),
    };
    let keyfile = tmp.path().join("other");
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-t", kind, "-b", bits, "-f"])
        .arg(&keyfile)
        .status()
        .unwrap();
    assert!(ok.success());
    let other = std::fs::read_to_string(keyfile.with_extension("pub")).unwrap();
    let other_key = other.split_whitespace().nth(1).unwrap();
    let kh = tmp.path().join("known_hosts");
    std::fs::write(
        &kh,
        format!(
            "[{}]:{} {key_type} {other_key}\n",
            stack.ssh_host, stack.ssh_port
        ),
    )
    .unwrap();
    let mut t = target(&stack, &stack.alice.ssh_key, &kh);
    t.accept_new = true;
    let err = SshSession::connect(&t).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{text}");
    assert!(
        text.contains("man-in-the-middle") && text.contains("hint:"),
        "{text}"
    );
}

#[test]
fn accept_new_records_the_key_once() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let kh = tmp.path().join("known_hosts");
    let mut t = target(&stack, &stack.alice.ssh_key, &kh);
    t.accept_new = true;
    SshSession::connect(&t).unwrap();
    let recorded = std::fs::read_to_string(&kh).unwrap();
    assert!(
        recorded.contains(&format!("[{}]:{}", stack.ssh_host, stack.ssh_port)),
        "{recorded}"
    );
    t.accept_new = false;
    SshSession::connect(&t).unwrap();
}

#[test]
fn wrong_key_is_a_clear_authentication_error() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let t = target(&stack, &stack.bob.ssh_key, &stack.ssh_known_hosts);
    let err = SshSession::connect(&t).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SshError::Auth { .. }), "{text}");
    assert!(
        text.contains("authentication as alice")
            && text.contains(&stack.bob.ssh_key.display().to_string())
            && text.contains("hint:"),
        "{text}"
    );
}

#[test]
fn closed_port_is_a_connect_error() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    // Bind and drop to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut t = alice(&stack);
    t.port = port;
    let err = SshSession::connect(&t).unwrap_err();
    assert!(
        matches!(err, SshError::Connect { port: p, .. } if p == port),
        "{err}"
    );
}

#[test]
fn sftp_round_trip() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let ssh = SshSession::connect(&alice(&stack)).unwrap();
    let dir = RemoteDir::new(&ssh);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let remote = format!("{}/blob.bin", dir.path);
    let mut seen = Vec::new();
    let n = ssh
        .upload(data.as_slice(), &remote, 0o600, |p| seen.push(p))
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(seen.last(), Some(&n));
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    let st = ssh.stat(&remote).unwrap().unwrap();
    assert!(st.is_file() && !st.is_dir());
    assert_eq!(st.size, n);
    assert_eq!(st.perm(), 0o600);
    assert_eq!(st.uid, Some(stack.alice.uid));
    assert_eq!(ssh.file_size(&remote).unwrap(), n);
    assert!(ssh.stat(&dir.path).unwrap().unwrap().is_dir());
    assert_eq!(
        ssh.sha256(&remote).unwrap(),
        hpcs_core::crypto::Sha256Digest::of(&data)
    );

    let mut back = Vec::new();
    assert_eq!(ssh.download(&remote, &mut back).unwrap(), n);
    assert_eq!(back, data);
    let mut streamed = Vec::new();
    ssh.open_read(&remote)
        .unwrap()
        .read_to_end(&mut streamed)
        .unwrap();
    assert_eq!(streamed, data);
    assert_eq!(
        ssh.read_from(&remote, 299_990, 100).unwrap(),
        &data[299_990..]
    );
    assert_eq!(
        ssh.read_from(&format!("{}/missing", dir.path), 0, 10)
            .unwrap(),
        b""
    );
    let err = ssh.read_small(&remote, 1000).unwrap_err();
    assert!(
        matches!(err, SshError::FileTooLarge { max: 1000, .. }),
        "{err}"
    );

    // Replacing an existing file is atomic and leaves no temporary file behind.
    ssh.upload(&b"second"[..], &remote, 0o600, |_| {}).unwrap();
    assert_eq!(ssh.read_small(&remote, 100).unwrap(), b"second");
    let listing = ssh.exec_ok(&["ls", "-A", "--", &dir.path]).unwrap();
    assert_eq!(listing.stdout_text(), "blob.bin\n");

    // Uploading into a missing directory fails and leaves nothing.
    let err = ssh
        .upload(
            &b"x"[..],
            &format!("{}/no/such/file", dir.path),
            0o600,
            |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, SshError::Channel { .. }), "{err}");
    assert_eq!(ssh.stat(&format!("{}/no", dir.path)).unwrap(), None);
}

/// Transfers of two 4 MiB blocks or more go over `streams` connections: blocks written at their
/// offsets by several connections, and read by several, arrive whole and in order, whatever
/// the size's remainder (none, one byte, a ragged tail); one block exactly stays on one.
#[test]
fn large_transfers_over_several_connections_arrive_intact() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    const BLOCK: usize = 4 * 1024 * 1024;
    let ssh = SshSession::connect(&alice(&stack)).unwrap();
    let dir = RemoteDir::new(&ssh);
    for (streams, size) in [
        (1, 2 * BLOCK + 1),
        (2, BLOCK),
        (2, 2 * BLOCK),
        (2, 2 * BLOCK + 1),
        (3, 3 * BLOCK + 12_345),
    ] {
        let case = format!("{streams} streams, {size} bytes");
        let target = SshTarget {
            streams,
            ..alice(&stack)
        };
        let ssh = SshSession::connect(&target).unwrap();
        let data = hpcs_test_support::incompressible(size, size as u64);
        let remote = format!("{}/big-{streams}-{size}.bin", dir.path);
        let mut seen = Vec::new();
        let n = ssh
            .upload(data.as_slice(), &remote, 0o600, |p| seen.push(p))
            .unwrap();
        assert_eq!(n, size as u64, "{case}");
        assert_eq!(seen.last(), Some(&n), "{case}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{case}: {seen:?}");
        assert_eq!(
            ssh.sha256(&remote).unwrap(),
            hpcs_core::crypto::Sha256Digest::of(&data),
            "{case}"
        );
        let mut back = Vec::new();
        assert_eq!(ssh.download(&remote, &mut back).unwrap(), n, "{case}");
        assert!(back == data, "{case}: download differs");
        // The decryptor's pattern: small reads from the streaming reader.
        let mut reader = ssh.open_read(&remote).unwrap();
        let mut streamed = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let k = reader.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            streamed.extend_from_slice(&buf[..k]);
        }
        assert!(streamed == data, "{case}: open_read differs");
    }
    // Every upload was renamed into place: no temporary file is left.
    let listing = ssh.exec_ok(&["ls", "-A", "--", &dir.path]).unwrap();
    assert!(
        listing.stdout_text().lines().all(|l| l.starts_with("big-")),
        "{}",
        listing.stdout_text()
    );
}

/// Dropping a parallel reader part-way stops its connections without hanging.
#[test]
fn a_parallel_download_can_be_abandoned() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let target = SshTarget {
        streams: 3,
        ..alice(&stack)
    };
    let ssh = SshSession::connect(&target).unwrap();
    let dir = RemoteDir::new(&ssh);
    let data = hpcs_test_support::incompressible(6 * 4 * 1024 * 1024, 7);
    let remote = format!("{}/big.bin", dir.path);
    ssh.upload(data.as_slice(), &remote, 0o600, |_| {}).unwrap();
    let mut reader = ssh.open_read(&remote).unwrap();
    let mut head = vec![0u8; 100_000];
    reader.read_exact(&mut head).unwrap();
    assert!(head == data[..100_000]);
    drop(reader);
    // The session is still usable afterwards.
    assert_eq!(ssh.file_size(&remote).unwrap(), data.len() as u64);
}

/// Runs `test` with a session as alice, a remote scratch directory and an SSH destination.
fn with_staging(test: impl FnOnce(&SshSession, &RemoteDir<'_>, &SshDestination)) {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let target = alice(&stack);
    let ssh = SshSession::connect(&target).expect("connect as alice");
    let dir = RemoteDir::new(&ssh);
    test(&ssh, &dir, &SshDestination::new(target));
}

fn staging_plan(dir: &RemoteDir<'_>, name: &str) -> hpcs_client::prepare::Plan {
    hpcs_client::prepare::Plan {
        name: name.parse().expect("a valid artefact name"),
        kind: hpcs_core::info::ArtefactKind::Data,
        readers: hpcs_core::api::Readers::default(),
        compute_nodes: std::collections::BTreeSet::new(),
        remote_dir: dir.path.parse().expect("a valid remote directory"),
    }
}

/// `prepare::stage` encrypts straight into the upload: the staged file is hidden, holds the
/// ciphertext of exactly the input (over two connections for this size), and matches the
/// digest and size it reports.
#[test]
fn staging_encrypts_into_the_upload() {
    with_staging(|ssh, dir, dest| {
        let plain = hpcs_test_support::incompressible(9 * 1024 * 1024 + 17, 3);
        let mut seen = 0u64;
        let staged = hpcs_client::prepare::stage(
            dest,
            &staging_plan(dir, "staged"),
            plain.as_slice(),
            "test input",
            &mut |n| seen = n,
        )
        .unwrap();
        let name = staged
            .path()
            .as_str()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        assert!(
            name.starts_with(".staged.age.") && name.ends_with(".staged"),
            "{name}"
        );
        assert_eq!(seen, staged.summary().size);
        let listing = ssh.exec_ok(&["ls", "-A", "--", &dir.path]).unwrap();
        assert_eq!(
            listing.stdout_text(),
            format!("{name}\n"),
            "only the staged file"
        );
        let mut ct = Vec::new();
        ssh.download(staged.path().as_str(), &mut ct).unwrap();
        let mut back = Vec::new();
        hpcs_core::crypto::decrypt(
            &ct[..],
            &mut back,
            staged.identity(),
            Some(staged.summary()),
        )
        .unwrap();
        assert!(
            back == plain,
            "the staged ciphertext does not decrypt to the input"
        );
        hpcs_client::prepare::discard(dest, staged);
        let listing = ssh.exec_ok(&["ls", "-A", "--", &dir.path]).unwrap();
        assert_eq!(listing.stdout_text(), "", "discard left files");
    });
}

/// A source that fails part-way fails the staging with an error naming the input, and leaves
/// nothing remote: the upload saw a short stream, the staged file is removed.
#[test]
fn a_failing_source_stages_nothing() {
    struct Failing(usize);
    impl std::io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("the disk went away"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }
    with_staging(|ssh, dir, dest| {
        let err = hpcs_client::prepare::stage(
            dest,
            &staging_plan(dir, "broken"),
            Failing(10 * 1024 * 1024),
            "the test input",
            &mut |_| {},
        )
        .unwrap_err();
        let text = format!("{err}");
        assert!(text.contains("the test input"), "{text}");
        assert!(
            matches!(err, hpcs_client::prepare::PrepareError::Encrypt { .. }),
            "{err:?}"
        );
        let listing = ssh.exec_ok(&["ls", "-A", "--", &dir.path]).unwrap();
        assert_eq!(
            listing.stdout_text(),
            "",
            "left remote: {}",
            listing.stdout_text()
        );
    });
}

/// Checking the destination removes the hidden files that earlier, interrupted runs left
/// (staged ciphertexts and uploader temporaries untouched for hours), and nothing else.
#[test]
fn checking_the_destination_removes_stale_upload_files_only() {
    use hpcs_client::prepare::Destination as _;
    with_staging(|ssh, dir, dest| {
        let old = [
            ".app.age.4242.18eab77f10b14eda.staged",
            ".blob.bin.99.partial",
        ];
        let kept_old = [
            ".bashrc.partial",
            "app.age",
            ".app.age.staged",
            ".notes.age.1.zz.staged",
        ];
        let fresh = [
            ".app.age.4243.18eab77f10b14edb.staged",
            ".app.age.77.partial",
        ];
        for name in old.iter().chain(&kept_old).chain(&fresh) {
            let path = format!("{}/{name}", dir.path);
            ssh.exec_ok(&["touch", "--", &path]).unwrap();
        }
        for name in old.iter().chain(&kept_old) {
            let path = format!("{}/{name}", dir.path);
            ssh.exec_ok(&["touch", "-d", "7 hours ago", "--", &path])
                .unwrap();
        }
        dest.check(&dir.path.parse().unwrap()).unwrap();
        let listing = ssh.exec_ok(&["ls", "-A", "--", &dir.path]).unwrap();
        let mut left: Vec<_> = listing.stdout_text().lines().map(str::to_owned).collect();
        left.sort();
        let mut want: Vec<_> = kept_old
            .iter()
            .chain(&fresh)
            .map(|s| (*s).to_owned())
            .collect();
        want.sort();
        assert_eq!(left, want);
    });
}
