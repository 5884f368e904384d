//! The job-prep library against the test stack's real sshd and Slurm: sbatch/scontrol/scancel,
//! and fetching an output sealed on the "node" with the standard `age` CLI.

use std::time::{Duration, Instant};

use hpcs_client::ssh::SshSession;
use hpcs_core::secret::AgeIdentity;
use hpcs_test_support::{Stack, ns};
use job_prep::output::{OutputError, fetch_output};
use job_prep::slurm::{self, JobId, JobState};
use job_prep::spec::WorkDir;

mod common;

/// A work directory of alice's on the cluster, removed on drop.
struct RemoteDir<'a> {
    ssh: &'a SshSession,
    path: String,
}

impl<'a> RemoteDir<'a> {
    fn new(ssh: &'a SshSession, prefix: &str) -> Self {
        let path = format!("/tmp/{}", ns(prefix));
        ssh.mkdir_p(&path, 0o700)
            .expect("create a remote work directory");
        Self { ssh, path }
    }

    fn workdir(&self) -> WorkDir {
        self.path.parse().expect("a valid work directory")
    }
}

impl Drop for RemoteDir<'_> {
    fn drop(&mut self) {
        let _ = self.ssh.exec(&["rm", "-rf", "--", &self.path]);
    }
}

fn wait_for(ssh: &SshSession, job: &JobId, done: impl Fn(&JobState) -> bool) -> JobState {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = slurm::status(ssh, job).expect("job status");
        if done(&st.state) {
            return st.state;
        }
        assert!(Instant::now() < deadline, "job {job} stuck in {st:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn submit_status_and_cancel() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let ssh = SshSession::connect(&common::alice_target(&stack)).unwrap();
    let dir = RemoteDir::new(&ssh, "jp-slurm");
    let script = format!("{}/job.sh", dir.path);
    let body = format!(
        "#!/bin/sh\n#SBATCH --partition={}\n#SBATCH --chdir={}\n#SBATCH --output=out\n#SBATCH --time=5\nsleep 120\n",
        stack.slurm_partition, dir.path
    );
    ssh.upload(body.as_bytes(), &script, 0o700, |_| {}).unwrap();
    let job = slurm::submit(&ssh, &script).unwrap();
    let st = slurm::status(&ssh, &job).unwrap();
    assert!(!st.state.is_terminal(), "{st:?}");
    assert_eq!(st.source, "scontrol");
    assert_eq!(st.work_dir.as_deref(), Some(dir.path.as_str()));
    slurm::cancel(&ssh, &job).unwrap();
    let end = wait_for(&ssh, &job, JobState::is_terminal);
    assert_eq!(end, JobState::Cancelled);
    let st = slurm::status(&ssh, &job).unwrap();
    assert_eq!(st.process_exit_code(), 1);
}

#[test]
fn failing_job_reports_its_exit_code() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let ssh = SshSession::connect(&common::alice_target(&stack)).unwrap();
    let dir = RemoteDir::new(&ssh, "jp-fail");
    let script = format!("{}/job.sh", dir.path);
    let body = format!(
        "#!/bin/sh\n#SBATCH --partition={}\n#SBATCH --output={}/out\nexit 7\n",
        stack.slurm_partition, dir.path
    );
    ssh.upload(body.as_bytes(), &script, 0o700, |_| {}).unwrap();
    let job = slurm::submit(&ssh, &script).unwrap();
    assert_eq!(
        wait_for(&ssh, &job, JobState::is_terminal),
        JobState::Failed
    );
    let st = slurm::status(&ssh, &job).unwrap();
    assert_eq!(st.process_exit_code(), 7, "{st:?}");
}

#[test]
fn sbatch_refusal_and_unknown_jobs() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let ssh = SshSession::connect(&common::alice_target(&stack)).unwrap();
    let dir = RemoteDir::new(&ssh, "jp-refuse");
    let script = format!("{}/job.sh", dir.path);
    ssh.upload(
        &b"#!/bin/sh\n#SBATCH --partition=no-such-partition\ntrue\n"[..],
        &script,
        0o700,
        |_| {},
    )
    .unwrap();
    let err = slurm::submit(&ssh, &script).unwrap_err().to_string();
    assert!(err.starts_with("sbatch refused the job"), "{err}");
    assert!(err.contains("partition"), "{err}");
    // A job id Slurm never issued: unknown, not an error (accounting is disabled here).
    let never: JobId = "999999999".parse().unwrap();
    let st = slurm::status(&ssh, &never).unwrap();
    assert_eq!(st.state, JobState::Unknown);
    let err = slurm::cancel(&ssh, &never).unwrap_err().to_string();
    assert!(
        err.contains("scancel 999999999 failed") && err.contains("Invalid job id"),
        "{err}"
    );
}

/// What hpcs-node leaves, sealed with the `age` CLI: `<workdir>/output/<job>.tar.age` (and a
/// tampered copy as job 4343).
fn seal(ssh: &SshSession, workdir: &str, recipient: &str) {
    let seal = format!(
        "set -e; umask 077; cd '{workdir}'; mkdir -p src/sub output; printf 'result 42\\n' > src/report.txt; \
         printf 'x' > src/sub/n.txt; ln -s report.txt src/link; \
         tar -C src -cf - . | age -r '{recipient}' > output/4242.tar.age; \
         cp output/4242.tar.age output/4343.tar.age; \
         printf 'X' | dd of=output/4343.tar.age bs=1 seek=300 conv=notrunc 2>/dev/null; \
         tar -C src -cf - . | age -r '{recipient}' | head -c 200 > output/4444.tar.age",
    );
    ssh.exec_ok(&["sh", "-c", &seal])
        .expect("seal outputs with the age CLI");
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("list a local directory")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn fetch_output_round_trips_a_sealed_tarball() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let ssh = SshSession::connect(&common::alice_target(&stack)).unwrap();
    let dir = RemoteDir::new(&ssh, "jp-out");
    let identity = AgeIdentity::generate();
    seal(&ssh, &dir.path, identity.to_public().as_str());
    let local = tempfile::tempdir().unwrap();
    let dest = local.path().join("results");

    let job: JobId = "4242".parse().unwrap();
    let got = fetch_output(&ssh, &job, &dir.workdir(), &dest, &identity).unwrap();
    assert_eq!(got.output_dir, dest.join("4242"));
    assert_eq!(
        std::fs::read_to_string(got.output_dir.join("report.txt")).unwrap(),
        "result 42\n"
    );
    assert_eq!(
        std::fs::read_to_string(got.output_dir.join("sub/n.txt")).unwrap(),
        "x"
    );
    assert_eq!(
        std::fs::read_link(got.output_dir.join("link")).unwrap(),
        std::path::Path::new("report.txt")
    );
    assert_eq!(
        got.sha256,
        ssh.sha256(&format!("{}/output/4242.tar.age", dir.path))
            .unwrap()
            .to_string()
    );

    // Fetching again refuses to overwrite.
    let err = fetch_output(&ssh, &job, &dir.workdir(), &dest, &identity).unwrap_err();
    assert!(matches!(err, OutputError::Exists { .. }), "{err}");

    // A tampered or truncated ciphertext fails and leaves neither plaintext nor staging files.
    for bad in ["4343", "4444"] {
        let bad: JobId = bad.parse().unwrap();
        let err = fetch_output(&ssh, &bad, &dir.workdir(), &dest, &identity).unwrap_err();
        assert!(
            matches!(err, OutputError::Decrypt { .. }),
            "{bad}: {err:#?}"
        );
        assert_eq!(entries(&dest), ["4242"], "only the good output remains");
    }

    // Another identity cannot open it.
    let other = AgeIdentity::generate();
    let err =
        fetch_output(&ssh, &job, &dir.workdir(), &local.path().join("o"), &other).unwrap_err();
    assert!(matches!(err, OutputError::Decrypt { .. }), "{err}");
    assert!(entries(&local.path().join("o")).is_empty());

    // No output (yet): a clear error with a hint.
    let none: JobId = "5555".parse().unwrap();
    let err = fetch_output(&ssh, &none, &dir.workdir(), &dest, &identity).unwrap_err();
    assert!(matches!(err, OutputError::NoOutput { .. }), "{err}");
    assert!(err.to_string().contains("hint:"), "{err}");
}

/// Anyone can encrypt to a public key, so an output someone else could have replaced is refused.
#[test]
fn fetch_output_refuses_a_replaceable_output() {
    let Some(stack) = Stack::load_or_skip() else {
        return;
    };
    let ssh = SshSession::connect(&common::alice_target(&stack)).unwrap();
    let dir = RemoteDir::new(&ssh, "jp-untrusted");
    let identity = AgeIdentity::generate();
    seal(&ssh, &dir.path, identity.to_public().as_str());
    let local = tempfile::tempdir().unwrap();
    let job: JobId = "4242".parse().unwrap();
    for (path, mode) in [("output", "0770"), ("output/4242.tar.age", "0622")] {
        let full = format!("{}/{path}", dir.path);
        ssh.exec_ok(&["chmod", mode, "--", &full]).unwrap();
        let err = fetch_output(&ssh, &job, &dir.workdir(), local.path(), &identity).unwrap_err();
        assert!(
            matches!(err, OutputError::Untrusted { .. }) && err.to_string().contains("writable"),
            "{err}"
        );
        let restore = if path == "output" { "0700" } else { "0600" };
        ssh.exec_ok(&["chmod", restore, "--", &full]).unwrap();
    }
    assert!(entries(local.path()).is_empty());
    fetch_output(&ssh, &job, &dir.workdir(), local.path(), &identity).unwrap();
}
