//! Against the test stack's real sshd and Slurm.

use std::time::Duration;

use hpcs_client::ssh::{SshError, SshSession, SshTarget};
use hpcs_test_support::{Stack, ns};
use job_prep::slurm;

fn target(stack: &Stack) -> SshTarget {
    SshTarget {
        host: stack.ssh_host.clone(),
        port: stack.ssh_port,
        user: "alice".into(),
        key: Some(stack.alice.ssh_key.clone()),
        known_hosts: stack.ssh_known_hosts.clone(),
        accept_new: false,
        connect_timeout: Duration::from_secs(10),
        op_timeout: Duration::from_secs(60),
        keepalive: Duration::from_secs(15),
    }
}

#[test]
fn unknown_host_key_is_refused_before_auth() {
    let stack = Stack::load();
    let dir = tempfile::tempdir().unwrap();
    let mut t = target(&stack);
    t.known_hosts = dir.path().join("known_hosts");
    let err = SshSession::connect(&t).unwrap_err();
    assert!(matches!(err, SshError::UnknownHostKey { .. }), "{err}");
    assert!(err.to_string().contains("hint:"));
}

#[test]
fn hostile_words_reach_the_remote_command_unchanged() {
    let stack = Stack::load();
    let ssh = SshSession::connect(&target(&stack)).unwrap();
    let words = ["it's", "$(id)", "`id`", "a\nb", "; echo pwned", ""];
    let mut argv = vec!["printf", "%s\\0"];
    argv.extend(words);
    let out = ssh.exec_ok(&argv).unwrap();
    let got: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
    let want: Vec<&[u8]> = words
        .iter()
        .map(|w| w.as_bytes())
        .chain([&b""[..]])
        .collect();
    assert_eq!(got, want);
}

#[test]
fn submit_status_and_cancel() {
    let stack = Stack::load();
    let ssh = SshSession::connect(&target(&stack)).unwrap();
    let dir = format!("/home/alice/{}", ns("jp"));
    ssh.mkdir_p(&dir, 0o700).unwrap();
    let script = format!("{dir}/job.sh");
    let body = format!(
        "#!/bin/sh\n#SBATCH --partition={}\n#SBATCH --output={dir}/out\nsleep 60\n",
        stack.slurm_partition
    );
    ssh.upload(body.as_bytes(), &script, 0o700, |_| {}).unwrap();
    let job = slurm::submit(&ssh, &script).unwrap();
    let st = slurm::status(&ssh, &job).unwrap();
    assert!(!st.is_terminal(), "{st:?}");
    slurm::cancel(&ssh, &job).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = slurm::status(&ssh, &job).unwrap();
        if st.is_terminal() {
            assert_eq!(st.state, "CANCELLED");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{st:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    ssh.exec_ok(&["rm", "-rf", "--", &dir]).unwrap();
}

/// fetch-output: an output sealed on the "node" with the standard `age` CLI to the user's
/// recipient is downloaded, decrypted and unpacked; a tampered one leaves nothing behind.
#[test]
fn fetch_output_round_trips_a_sealed_tarball() {
    let stack = Stack::load();
    let ssh = SshSession::connect(&target(&stack)).unwrap();
    let local = tempfile::tempdir().unwrap();
    let identity = hpcs_core::secret::AgeIdentity::generate();
    let recipient = identity.to_public().as_str().to_owned();
    let workdir = format!("/home/alice/{}", ns("jp-out"));
    // What hpcs-node leaves: <workdir>/output/<job>.tar.age, age-encrypted to the recipient.
    let seal = format!(
        "set -e; mkdir -p {workdir}/src/sub {workdir}/output; printf 'result 42\\n' > {workdir}/src/report.txt; \
         printf 'x' > {workdir}/src/sub/n.txt; tar -C {workdir}/src -cf - . | age -r {recipient} > {workdir}/output/4242.tar.age; \
         cp {workdir}/output/4242.tar.age {workdir}/output/4343.tar.age; \
         printf 'X' | dd of={workdir}/output/4343.tar.age bs=1 seek=300 conv=notrunc 2>/dev/null",
    );
    ssh.exec_ok(&["sh", "-c", &seal]).unwrap();

    let job: slurm::JobId = "4242".parse().unwrap();
    let dir = job_prep::cli::fetch_output(&ssh, &job, &workdir, local.path(), &identity).unwrap();
    assert_eq!(dir, local.path().join("4242"));
    assert_eq!(
        std::fs::read_to_string(dir.join("report.txt")).unwrap(),
        "result 42\n"
    );
    assert_eq!(std::fs::read_to_string(dir.join("sub/n.txt")).unwrap(), "x");

    // Fetching again refuses to overwrite.
    let again = job_prep::cli::fetch_output(&ssh, &job, &workdir, local.path(), &identity);
    assert!(format!("{:#}", again.unwrap_err()).contains("exists already"));

    // A tampered ciphertext fails and leaves neither plaintext nor staging files.
    let bad: slurm::JobId = "4343".parse().unwrap();
    let err =
        job_prep::cli::fetch_output(&ssh, &bad, &workdir, local.path(), &identity).unwrap_err();
    assert!(format!("{err:#}").contains("4343"), "{err:#}");
    let left: Vec<_> = std::fs::read_dir(local.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        left,
        vec!["4242".to_owned()],
        "only the good output remains"
    );

    // Another identity cannot open it.
    let other = hpcs_core::secret::AgeIdentity::generate();
    let other_dir = tempfile::tempdir().unwrap();
    assert!(job_prep::cli::fetch_output(&ssh, &job, &workdir, other_dir.path(), &other).is_err());
    ssh.exec_ok(&["rm", "-rf", &workdir]).unwrap();
}
