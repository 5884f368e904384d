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
        key: stack.alice.ssh_key.clone(),
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
