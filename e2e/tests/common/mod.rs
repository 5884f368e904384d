//! The whole HPCS path on the test stack, with the real binaries, as the real test users.
//!
//! A [`World`] is one test's private deployment on the shared stack (`scripts/test-stack up`):
//!
//! - Vault configured by `deploy/vault/setup` with mounts, policy and roles of its own
//!   (`e2e-kv-<id>`, `e2e-jwt-<id>`, ...), so worlds never see each other's keys;
//! - the devspire entries of the server (uid 0 on the laptop agent) and of alice and bob (their
//!   uids on the laptop agent), as an administrator registers them;
//! - an `hpcs-server` process on a free loopback port with its own audit log;
//! - the root broker `hpcs-node daemon` on a private socket, with a private tmpfs scratch root;
//! - `node1.ini` and `node2.ini` (node2's SPIRE agent) and, for job-prep's `--hpcs-node`, one
//!   root-owned wrapper per node that points `hpcs-node` at its node.ini: Slurm does not carry
//!   the test's environment into the job;
//! - per user, a "laptop" directory (client.ini, SSH key, output identity, plaintext inputs)
//!   and a "cluster" directory (data at rest, job work directories), owned by the user.
//!
//! Dropping a world revokes what is still registered through the server (as the owner, like a
//! user would), stops the server and the broker, removes the Vault mounts and the directories.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hpcs_client::ssh::shell_quote;
use hpcs_test_support::{Stack, TestUser};

/// In the dataset only: must never be found in plaintext on the cluster side.
pub const DATA_MARKER: &str = "HPCS-E2E-PLAINTEXT-DATA-5d1c9e";
/// In the image only: must never be found in plaintext on the cluster side.
pub const IMAGE_MARKER: &str = "HPCS-E2E-PLAINTEXT-IMAGE-a83f07";
/// What the application prints first; its absence in a job's output proves it never ran.
pub const APP_STARTED: &str = "HPCS-E2E-APP-STARTED";
/// First application argument that makes it sleep (for the interruption cases).
pub const SLEEP_ARG: &str = "hpcs-e2e-sleep";

/// The application in the test image. It proves it ran, records its argument vector
/// NUL-separated and its environment, copies the dataset's secret line into the output, and
/// with [`SLEEP_ARG`] first sleeps until killed.
const APP: &str = r#"#!/bin/sh
echo HPCS-E2E-APP-STARTED
: > /output/app-ran
for a in "$@"; do printf '%s\0' "$a"; done > /output/argv
env > /output/env
find /data -type f | sort > /output/data-files
cat $(find /data -name secret.txt) > /output/secret-copy
if [ "${1:-}" = hpcs-e2e-sleep ]; then echo HPCS-E2E-APP-SLEEPING; sleep 300; fi
echo HPCS-E2E-APP-DONE
"#;

/// The node admin policy of every world: the test images on node1 and node2, so that binding
/// keys to nodes is the server's and SPIRE's job, not the policy's.
const POLICY: &str = "[defaults]\nnetwork = none\npids-limit = 128\nread-only-rootfs = true\n\
                      gpus = none\nrequire-job-cgroup = false\n\n\
                      [image:e2e]\nnodes = node1, node2\nname = hpcs-e2e-*\n";

/// A command's result, with its streams as text.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn of(out: &Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the exit code is `code`.
    pub fn expect_code(&self, code: i32, what: &str) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "{what}: expected exit code {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless stderr mentions `needle` (case-insensitive).
    pub fn expect_stderr(&self, needle: &str, what: &str) -> &Self {
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "{what}: stderr does not mention {needle:?}\n--- stderr\n{}",
            self.stderr
        );
        self
    }
}

/// The directory of the workspace's binaries: the test executable lives in `<dir>/deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test executable is in <target>/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary, or a panic naming the command that builds it.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace --all-targets`, as \
         scripts/run-tests does)",
        p.display()
    );
    p
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn chown(path: &Path, uid: u32, gid: u32) {
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Creates `path` (and parents as root), owned by `uid:gid` with `mode`.
fn mkdir_owned(path: &Path, uid: u32, gid: u32, mode: u32) {
    std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    chown(path, uid, gid);
    chmod(path, mode);
}

fn write_owned(path: &Path, data: &[u8], uid: u32, gid: u32, mode: u32) {
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chown(path, uid, gid);
    chmod(path, mode);
}

/// Recursively changes owner (a test-time stand-in for files a user made).
pub fn chown_r(path: &Path, uid: u32, gid: u32) {
    chown(path, uid, gid);
    if path.is_dir() && !path.is_symlink() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_r(&e.unwrap().path(), uid, gid);
        }
    }
}

/// Files under `dir` whose bytes contain `needle` (symlinks are not followed).
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, needle: &[u8], hits: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                walk(&e.path(), needle, hits);
            } else if t.is_file() && file_contains(&e.path(), needle) {
                hits.push(e.path());
            }
        }
    }
    assert!(
        !needle.is_empty(),
        "files_containing needs a non-empty needle"
    );
    let mut hits = Vec::new();
    walk(dir, needle.as_bytes(), &mut hits);
    hits
}

/// Whether the file at `path` holds `needle` (non-empty), read in chunks with an overlap of
/// `needle.len() - 1` bytes so that a match across two chunks is found; unreadable is `false`.
fn file_contains(path: &Path, needle: &[u8]) -> bool {
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut buf = vec![0u8; 64 * 1024 + needle.len()];
    let mut kept = 0;
    loop {
        let n = match file.read(&mut buf[kept..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let end = kept + n;
        if buf[..end].windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        kept = (needle.len() - 1).min(end);
        buf.copy_within(end - kept..end, 0);
    }
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    name: &'static str,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr to `log`.
    pub fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self {
            child: Some(child),
            name,
            log,
        }
    }

    /// The process id (0 once stopped).
    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .map_or(0, |c| i32::try_from(c.id()).expect("a pid"))
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the process: `signal`, then SIGKILL after 10 s.
    pub fn stop(&mut self, signal: nix::sys::signal::Signal) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
            let _ = nix::sys::signal::kill(pid, signal);
            let t = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Waits up to 30 s for `ready`, failing with the log if the process exits first.
    pub fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let t = Instant::now();
        while !ready() {
            assert!(
                self.alive(),
                "{} exited before {what}:\n{}",
                self.name,
                self.log()
            );
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{} not {what} after 30 s:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(nix::sys::signal::Signal::SIGTERM);
    }
}

/// Where a user's files are: a laptop side and a cluster side (on this one machine).
#[derive(Debug, Clone)]
pub struct Home {
    pub user: TestUser,
    /// `<world>/<user>`: owned by the user, 0711.
    pub root: PathBuf,
    /// Laptop side: client.ini, SSH key, output identity, plaintext inputs, fetched results.
    pub laptop: PathBuf,
    pub config: PathBuf,
    /// Cluster side: data at rest and job work directories.
    pub cluster: PathBuf,
    pub at_rest: PathBuf,
}

impl Home {
    pub fn uid(&self) -> u32 {
        self.user.uid
    }

    pub fn gid(&self) -> u32 {
        self.user.gid
    }

    /// A fresh job work directory path on the cluster (job-prep creates it).
    pub fn workdir(&self, name: &str) -> PathBuf {
        self.cluster.join("jobs").join(name)
    }
}

/// What container-prep or data-prep reported (`--json`).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub secret_id: String,
    pub secret_path: String,
    pub info: PathBuf,
    pub ciphertext: PathBuf,
}

impl Prepared {
    fn from_json(stdout: &str) -> Self {
        let start = stdout
            .find('{')
            .unwrap_or_else(|| panic!("no JSON report on stdout: {stdout:?}"));
        let line = &stdout[start..];
        let v: serde_json::Value = serde_json::from_str(line.trim_end())
            .unwrap_or_else(|e| panic!("not a JSON report ({e}): {stdout:?}"));
        let field = |k: &str| -> String {
            find_field(&v, k)
                .unwrap_or_else(|| panic!("report has no {k}: {line}"))
                .to_owned()
        };
        Self {
            secret_id: field("secret_id"),
            secret_path: field("secret_path"),
            info: field("info_path").into(),
            ciphertext: field("ciphertext_path").into(),
        }
    }
}

fn find_field<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .and_then(serde_json::Value::as_str)
            .or_else(|| m.values().find_map(|x| find_field(x, key))),
        _ => None,
    }
}

/// A submitted job and what job-prep said about it.
#[derive(Debug)]
pub struct Job {
    pub run: Run,
    pub job_id: String,
    pub workdir: PathBuf,
    pub results: PathBuf,
}

impl Job {
    /// The job's stdout and stderr files (what hpcs-node and the app printed).
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for ext in ["out", "err"] {
            let p = self.workdir.join(format!("hpcs-{}.{ext}", self.job_id));
            s.push_str(&std::fs::read_to_string(p).unwrap_or_default());
        }
        s
    }

    /// The fetched, decrypted output directory.
    pub fn output_dir(&self) -> PathBuf {
        self.results.join(&self.job_id)
    }
}

/// One test's private HPCS deployment on the shared stack.
#[derive(Debug)]
pub struct World {
    pub stack: Stack,
    pub id: String,
    /// `/tmp/hpcs-e2e-<id>`, root 0755 (`server/` and `logs/` 0700).
    pub dir: PathBuf,
    /// Private scratch root of the node runtime (tmpfs).
    pub scratch: PathBuf,
    pub kv_mount: String,
    pub auth_mount: String,
    server_policy: String,
    token_role: String,
    pub bao_addr: String,
    pub server_url: String,
    pub server: Proc,
    broker: Proc,
    /// The image's name (its archive's repository) and its artefact name.
    pub app_name: String,
    pub image_tag: String,
    /// The `docker save` archive of this world's unique test image (laptop side, alice's).
    pub image_archive: PathBuf,
    pub alice: Home,
    pub bob: Home,
    rt: tokio::runtime::Runtime,
}

impl World {
    /// Sets up the deployment; panics (naming `scripts/test-stack up`) without the stack.
    pub fn new() -> Self {
        let stack = Stack::load();
        // ns's `e-<pid>-<counter>-<random>` without the separators: short, unique per call.
        let id = hpcs_test_support::ns("e")["e-".len()..].replace('-', "");
        let dir = PathBuf::from(format!("/tmp/hpcs-e2e-{id}"));
        mkdir_owned(&dir, 0, 0, 0o755);
        for sub in ["server", "node", "bin", "run", "logs"] {
            mkdir_owned(&dir.join(sub), 0, 0, 0o755);
        }
        // Root's only: server state, and the logs of root processes (a dev Vault prints its root
        // token).
        chmod(&dir.join("server"), 0o700);
        chmod(&dir.join("logs"), 0o700);
        let scratch = PathBuf::from(format!("/dev/shm/hpcs-e2e-{id}"));
        mkdir_owned(&scratch, 0, 0, 0o711);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let kv_mount = format!("e2e-kv-{id}");
        let auth_mount = format!("e2e-jwt-{id}");
        let server_policy = format!("e2e-server-{id}");
        let token_role = format!("e2e-write-{id}");

        let alice = make_home(&stack.alice, &dir);
        let bob = make_home(&stack.bob, &dir);
        let bao_addr = stack.bao_addr.clone();
        let server_port = free_port();
        let server_url = format!("http://127.0.0.1:{server_port}");
        // Placeholders replaced right below; a World is only returned complete.
        let mut w = Self {
            app_name: format!("hpcs-e2e-{id}"),
            image_tag: format!("hpcs-e2e-{id}:1"),
            image_archive: alice.laptop.join("app.tar"),
            server: Proc {
                child: None,
                name: "hpcs-server",
                log: dir.join("logs/hpcs-server.log"),
            },
            broker: Proc {
                child: None,
                name: "hpcs-node daemon",
                log: dir.join("logs/broker.log"),
            },
            stack,
            id,
            dir,
            scratch,
            kv_mount,
            auth_mount,
            server_policy,
            token_role,
            bao_addr,
            server_url,
            alice,
            bob,
            rt,
        };
        w.vault_setup(&w.bao_addr.clone(), &w.stack.bao_token.clone());
        w.devspire_entries();
        w.server = w.start_server(&w.bao_addr.clone(), server_port, "server");
        w.write_node_files();
        w.broker = w.start_broker();
        for home in [&w.alice, &w.bob] {
            w.write_client_config(home, &w.server_url, &w.bao_addr, w.stack.ssh_port);
        }
        w.make_inputs();
        w
    }

    /// `deploy/vault/setup` with this world's names, against `addr`.
    pub fn vault_setup(&self, addr: &str, token: &str) {
        let out = Command::new(hpcs_test_support::workspace_root().join("deploy/vault/setup"))
            .env("BAO_ADDR", addr)
            .env("BAO_TOKEN", token)
            .args(["--oidc-discovery-url", &self.stack.devspire_oidc_url])
            .args([
                "--server-spiffe-id",
                &format!("spiffe://{}/hpcs/server", self.stack.trust_domain),
            ])
            .args(["--kv-mount", &self.kv_mount])
            .args(["--auth-mount", &self.auth_mount])
            .args(["--server-policy", &self.server_policy])
            .args(["--token-role", &self.token_role])
            .output()
            .expect("run deploy/vault/setup");
        let run = Run::of(&out);
        run.expect_code(0, "deploy/vault/setup");
    }

    /// The server's and the users' identities on the laptop agent (as an administrator would).
    fn devspire_entries(&self) {
        let laptop = self.stack.agent("laptop").id.clone();
        let td = &self.stack.trust_domain;
        for (id, uid) in [
            (format!("spiffe://{td}/hpcs/server"), 0),
            (format!("spiffe://{td}/client/alice"), self.stack.alice.uid),
            (format!("spiffe://{td}/client/bob"), self.stack.bob.uid),
        ] {
            let out = Command::new(&self.stack.devspire_bin)
                .args(["entry", "create", "--admin-socket"])
                .arg(&self.stack.devspire_admin_socket)
                .args(["--spiffe-id", &id, "--parent-id", &laptop])
                .args(["--selector", &format!("unix:uid:{uid}")])
                .output()
                .expect("run devspire entry create");
            Run::of(&out).expect_code(0, "devspire entry create");
        }
    }

    /// Starts an hpcs-server on `port` against Vault at `vault` (config and audit log under
    /// `<dir>/<name>/`) and waits until it is ready.
    pub fn start_server(&self, vault: &str, port: u16, name: &str) -> Proc {
        let sdir = self.dir.join(name);
        mkdir_owned(&sdir, 0, 0, 0o700);
        let ini = format!(
            "[server]\nlisten = 127.0.0.1:{port}\nallow-plain-http = true\naudit-log = {}\n\n\
             [spire-server]\ntrust-domain = {}\nsocket-path = {}\n\n\
             [node-agents]\nnode1 = {}\nnode2 = {}\n\n\
             [spire-agent]\nsocket-path = {}\n\n\
             [vault]\nurl = {vault}\nauth-mount = {}\nkv-mount = {}\ntoken-role = {}\n",
            sdir.join("audit.jsonl").display(),
            self.stack.trust_domain,
            self.stack.devspire_admin_socket.display(),
            self.stack.agent("node1").id,
            self.stack.agent("node2").id,
            self.stack.agent("laptop").socket.display(),
            self.auth_mount,
            self.kv_mount,
            self.token_role,
        );
        let cfg = sdir.join("server.ini");
        std::fs::write(&cfg, ini).unwrap();
        let mut cmd = Command::new(bin("hpcs-server"));
        cmd.arg("--config").arg(&cfg).env("HPCS_LOG", "info");
        let mut p = Proc::spawn(
            "hpcs-server",
            cmd,
            self.dir.join(format!("logs/{name}.log")),
        );
        let url = format!("http://127.0.0.1:{port}/readyz");
        p.wait_until("ready", || self.http_ok(&url));
        p
    }

    /// Whether a GET of `url` answers with a success status (readiness probes).
    pub fn http_ok(&self, url: &str) -> bool {
        self.rt
            .block_on(reqwest::get(url))
            .is_ok_and(|r| r.status().is_success())
    }

    fn node_ini(&self, node: &str, broker: bool) -> String {
        format!(
            "[node]\nname = {node}\nscratch-dir = {}\nengine-socket = {}\n{}hook-timeout = 60\n\n\
             [policy]\npath = {}\n\n\
             [vault]\nurl = {}\nauth-mount = {}\nkv-mount = {}\n\n\
             [spire-agent]\nsocket-path = {}\ntrust-domain = {}\n",
            self.scratch.display(),
            self.stack.docker_socket().display(),
            if broker {
                format!("broker-socket = {}\n", self.broker_socket().display())
            } else {
                String::new()
            },
            self.dir.join("node/policy.ini").display(),
            self.bao_addr,
            self.auth_mount,
            self.kv_mount,
            self.stack.agent(node).socket.display(),
            self.stack.trust_domain,
        )
    }

    fn broker_socket(&self) -> PathBuf {
        self.dir.join("run/hpcs-node.sock")
    }

    /// node.ini files, the policy, and the `--hpcs-node` wrappers.
    fn write_node_files(&self) {
        let node = self.dir.join("node");
        write_owned(&node.join("policy.ini"), POLICY.as_bytes(), 0, 0, 0o644);
        write_owned(
            &node.join("daemon.ini"),
            self.node_ini("node1", false).as_bytes(),
            0,
            0,
            0o644,
        );
        for n in ["node1", "node2"] {
            let ini = node.join(format!("{n}.ini"));
            write_owned(&ini, self.node_ini(n, true).as_bytes(), 0, 0, 0o644);
            let word = |p: &Path| {
                let s = p.to_str().expect("a UTF-8 path");
                shell_quote(s).unwrap_or_else(|e| panic!("quote {s:?}: {e}"))
            };
            let wrapper = format!(
                "#!/bin/sh\n# hpcs-node as it runs on {n} (its node.ini at the standard place)\n\
                 HPCS_NODE_CONFIG={}\nexport HPCS_NODE_CONFIG\nexec {} \"$@\"\n",
                word(&ini),
                word(&bin("hpcs-node"))
            );
            write_owned(&self.wrapper(n), wrapper.as_bytes(), 0, 0, 0o755);
        }
    }

    /// The `--hpcs-node` program for jobs landing on `node`.
    pub fn wrapper(&self, node: &str) -> PathBuf {
        self.dir.join(format!("bin/hpcs-node-{node}"))
    }

    fn start_broker(&self) -> Proc {
        let mut cmd = Command::new(bin("hpcs-node"));
        cmd.arg("--config")
            .arg(self.dir.join("node/daemon.ini"))
            .args(["daemon", "--socket"])
            .arg(self.broker_socket())
            .env("HPCS_LOG", "info");
        let mut p = Proc::spawn("hpcs-node daemon", cmd, self.dir.join("logs/broker.log"));
        let sock = self.broker_socket();
        p.wait_until("listening", || sock.exists());
        p
    }

    /// A client.ini for `home` (server, Vault and SSH port as given).
    pub fn write_client_config(&self, home: &Home, server: &str, vault: &str, ssh_port: u16) {
        self.write_client_config_to(home, &home.config, server, vault, ssh_port);
    }

    /// A client.ini for `home` at `path`.
    pub fn write_client_config_to(
        &self,
        home: &Home,
        path: &Path,
        server: &str,
        vault: &str,
        ssh_port: u16,
    ) {
        let known_hosts = home.laptop.join(format!("known_hosts-{ssh_port}"));
        let kh = std::fs::read_to_string(&self.stack.ssh_known_hosts)
            .expect("the stack's known_hosts")
            .replace(
                &format!("]:{}", self.stack.ssh_port),
                &format!("]:{ssh_port}"),
            );
        write_owned(&known_hosts, kh.as_bytes(), home.uid(), home.gid(), 0o644);
        let ini = format!(
            "[spire-server]\naddress = 127.0.0.1\ntrust-domain = {}\n\n\
             [hpcs-server]\nurl = {server}\n\n[vault]\nurl = {vault}\ntimeout = 10s\n\n\
             [supercomputer]\naddress = {}\nusername = {}\n\n\
             [ssh]\nkey = {}\nknown-hosts = {}\nport = {ssh_port}\nconnect-timeout = 10s\n\n\
             [spire-agent]\nsocket-path = {}\n\n\
             [client]\nidentity-file = {}\n",
            self.stack.trust_domain,
            self.stack.ssh_host,
            home.user.name,
            home.laptop.join("id_ssh").display(),
            known_hosts.display(),
            self.stack.agent("laptop").socket.display(),
            home.laptop.join("id/output-identity.txt").display(),
        );
        write_owned(path, ini.as_bytes(), home.uid(), home.gid(), 0o600);
    }

    /// The plaintext inputs: alice's dataset and this world's unique image.
    fn make_inputs(&self) {
        for home in [&self.alice, &self.bob] {
            let input = home.laptop.join("input");
            mkdir_owned(&input.join("nested"), home.uid(), home.gid(), 0o700);
            chown(&input, home.uid(), home.gid());
            for (name, body) in [
                (
                    "secret.txt",
                    format!("{DATA_MARKER} of {}\n", home.user.name),
                ),
                ("nested/table.csv", "a,b\n1,2\n".to_owned()),
            ] {
                write_owned(
                    &input.join(name),
                    body.as_bytes(),
                    home.uid(),
                    home.gid(),
                    0o600,
                );
            }
        }
        self.build_image();
    }

    /// A busybox image with the test application and a unique marker, saved as alice's
    /// `app.tar`, and removed from the engine again (the node loads it from the ciphertext).
    fn build_image(&self) {
        let rootfs = self.dir.join("rootfs");
        for d in ["bin", "etc", "tmp", "app", "data", "output"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("/bin/busybox");
        for a in [
            "sh", "cat", "env", "find", "sort", "printf", "echo", "sleep", "id",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        write_owned(&rootfs.join("app/run"), APP.as_bytes(), 0, 0, 0o755);
        std::fs::write(
            rootfs.join("marker.txt"),
            format!("{IMAGE_MARKER} {}\n", self.id),
        )
        .unwrap();
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
        chmod(&rootfs.join("tmp"), 0o1777);
        // No shell: every path and name is one argv word, whatever it contains.
        let docker = || {
            let mut cmd = Command::new("docker");
            cmd.args(["-H", &self.stack.docker_host]);
            cmd
        };
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["--numeric-owner", "--owner=0", "--group=0", "-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run tar");
        let import = docker()
            .args([
                "import",
                "-c",
                "ENTRYPOINT [\"/app/run\"]",
                "-",
                &self.image_tag,
            ])
            .stdin(tar.stdout.take().expect("tar's stdout"))
            .output()
            .expect("run docker import");
        let tar_status = tar.wait().expect("wait for tar");
        assert!(tar_status.success(), "tar of the test rootfs: {tar_status}");
        Run::of(&import).expect_code(0, "docker import of the test image");
        let save = docker()
            .args(["save", "-o"])
            .arg(&self.image_archive)
            .arg(&self.image_tag)
            .output()
            .expect("run docker save");
        Run::of(&save).expect_code(0, "docker save of the test image");
        let rmi = docker()
            .args(["rmi", &self.image_tag])
            .output()
            .expect("run docker rmi");
        Run::of(&rmi).expect_code(0, "docker rmi of the test image");
        std::fs::remove_dir_all(&rootfs).unwrap();
        chown(&self.image_archive, self.alice.uid(), self.alice.gid());
        chmod(&self.image_archive, 0o600);
    }

    /// Runs a workspace binary as `home`'s user with `--config <client.ini>` first.
    pub fn client(&self, home: &Home, tool: &str, args: &[&str]) -> Run {
        self.client_cmd(home, tool, args, &home.config)
    }

    pub fn client_cmd(&self, home: &Home, tool: &str, args: &[&str], config: &Path) -> Run {
        let mut cmd = self.stack.run_as(&home.user, bin(tool));
        cmd.arg("--config").arg(config).args(args);
        cmd.current_dir(&home.laptop).stdin(Stdio::null());
        Run::of(&cmd.output().unwrap_or_else(|e| panic!("run {tool}: {e}")))
    }

    /// Runs a workspace binary as `home`'s user with `--config <config>` and owned arguments.
    pub fn client_with(&self, home: &Home, tool: &str, args: &[String], config: &Path) -> Run {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.client_cmd(home, tool, &argv, config)
    }

    /// container-prep of this world's image for `home`'s user on `nodes`.
    pub fn container_prep(&self, home: &Home, name: &str, nodes: &str) -> Run {
        self.prep_json(
            home,
            "container-prep",
            "--image-archive",
            &self.image_archive,
            name,
            nodes,
        )
    }

    /// data-prep of `home`'s input directory for its user on `nodes`.
    pub fn data_prep(&self, home: &Home, name: &str, nodes: &str) -> Run {
        self.prep_json(
            home,
            "data-prep",
            "-i",
            &home.laptop.join("input"),
            name,
            nodes,
        )
    }

    /// `tool` as `home`'s user, shipping to its data at rest, with the `--json` report.
    fn prep_json(
        &self,
        home: &Home,
        tool: &str,
        input_flag: &str,
        input: &Path,
        name: &str,
        nodes: &str,
    ) -> Run {
        let mut args = prep_args(
            input_flag,
            input,
            name,
            home.user.name,
            nodes,
            &home.at_rest,
        );
        args.push("--json".into());
        self.client_with(home, tool, &args, &home.config)
    }

    /// Image and dataset of `home`'s user, readable on node1: the usual preparation.
    pub fn prepare(&self, home: &Home) -> (Prepared, Prepared) {
        let app = self.container_prep(home, &self.app_name, "node1");
        app.expect_code(0, "container-prep");
        let data = self.data_prep(home, "data", "node1");
        data.expect_code(0, "data-prep");
        (
            Prepared::from_json(&app.stdout),
            Prepared::from_json(&data.stdout),
        )
    }

    /// Submits a job with job-prep as `home`'s user, follows it and fetches its output.
    pub fn submit(&self, home: &Home, spec: &JobSpec<'_>) -> Job {
        let workdir = home.workdir(spec.name);
        let results = home.laptop.join("results");
        if !results.exists() {
            mkdir_owned(&results, home.uid(), home.gid(), 0o700);
        }
        let mut args: Vec<String> = vec![
            "--json".into(),
            "--poll-interval".into(),
            "0.5".into(),
            "-N".into(),
            "1".into(),
            "-p".into(),
            self.stack.slurm_partition.clone(),
            "-t".into(),
            "5".into(),
            "-J".into(),
            spec.name.into(),
            "-s".into(),
            workdir.display().to_string(),
            "--application-info".into(),
            spec.app.display().to_string(),
        ];
        for d in spec.data {
            args.push("--data-info".into());
            args.push(d.display().to_string());
        }
        args.push("--hpcs-node".into());
        args.push(self.wrapper(spec.node).display().to_string());
        if let Some(env) = spec.env_file {
            args.push("--env-file".into());
            args.push(env.display().to_string());
        }
        if spec.follow {
            args.push("--fetch-output".into());
            args.push(results.display().to_string());
        }
        args.push("--".into());
        args.extend(spec.args.iter().map(|a| (*a).to_owned()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = self.client(home, "job-prep", &argv);
        let job_id = run
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| {
                v.get("job_id").map(|j| match j {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
            })
            .unwrap_or_default();
        Job {
            run,
            job_id,
            workdir,
            results,
        }
    }

    /// Containers (any state) the node runtime made for this world: its label, and a mount from
    /// this world's scratch root. (The daemon labels containers with the Slurm job only when it
    /// can tell the job from the caller's cgroup, which this stack's Slurm does not provide.)
    pub fn containers(&self) -> Vec<String> {
        let docker = |args: &[&str]| -> Run {
            let out = Command::new("docker")
                .args(["-H", &self.stack.docker_host])
                .args(args)
                .output()
                .expect("docker");
            Run::of(&out)
        };
        let ids = docker(&["ps", "-a", "-q", "--filter", "label=io.hpcs.managed"]);
        ids.expect_code(0, "docker ps");
        let ids: Vec<&str> = ids.stdout.split_whitespace().collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let mut args = vec![
            "inspect",
            "--format",
            "{{.Id}}{{range .Mounts}} {{.Source}}{{end}}",
        ];
        args.extend(ids);
        // A container removed meanwhile makes inspect fail for it; the others are still listed.
        let run = docker(&args);
        let scratch = self.scratch.display().to_string();
        run.stdout
            .lines()
            .filter(|l| l.split(' ').skip(1).any(|m| m.starts_with(&scratch)))
            .filter_map(|l| l.split(' ').next().map(str::to_owned))
            .collect()
    }

    /// Whether the engine has an image with this id.
    pub fn image_present(&self, image_id: &str) -> bool {
        Command::new("docker")
            .args(["-H", &self.stack.docker_host, "image", "inspect", image_id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("docker image inspect")
            .success()
    }

    /// Entries of the node runtime's scratch root (per-job private directories).
    pub fn scratch_entries(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.scratch)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// The job left nothing behind: no container (waiting up to 30 s for the broker's cleanup),
    /// no per-job scratch directory, no plaintext of the image or the data anywhere on the
    /// cluster side, no unsealed output files in the work directory.
    pub fn assert_no_trace(&self, job: &Job) {
        let t = Instant::now();
        loop {
            let containers = self.containers();
            let scratch = self.scratch_entries();
            if containers.is_empty() && scratch.is_empty() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "job {} left containers {containers:?} and scratch entries {scratch:?}\n{}",
                job.job_id,
                self.broker.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.assert_no_plaintext();
    }

    /// No plaintext marker in any user's cluster-side files or the scratch root.
    pub fn assert_no_plaintext(&self) {
        for home in [&self.alice, &self.bob] {
            for marker in [DATA_MARKER, IMAGE_MARKER] {
                let hits = files_containing(&home.cluster, marker);
                assert!(
                    hits.is_empty(),
                    "plaintext {marker} on the cluster: {hits:?}"
                );
                let hits = files_containing(&self.scratch, marker);
                assert!(hits.is_empty(), "plaintext {marker} in scratch: {hits:?}");
            }
        }
    }

    /// The application never ran for `job`: it printed nothing and no output was sealed or
    /// fetched.
    pub fn assert_app_never_ran(&self, job: &Job) {
        let logs = job.logs();
        assert!(
            !logs.contains(APP_STARTED),
            "the application ran in job {}:\n{logs}",
            job.job_id
        );
        let sealed = job
            .workdir
            .join("output")
            .join(format!("{}.tar.age", job.job_id));
        assert!(
            !sealed.exists(),
            "an output was sealed: {}",
            sealed.display()
        );
        assert!(
            !job.output_dir().exists() || job.job_id.is_empty(),
            "an output was fetched: {}",
            job.output_dir().display()
        );
    }

    // ---- Vault and the server, as an administrator and as the users ----

    /// GET on this world's Vault with the stack's root token: (status, body).
    pub fn vault_get(&self, path: &str) -> (u16, serde_json::Value) {
        self.vault_req(reqwest::Method::GET, path, None)
    }

    pub fn vault_req(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let url = format!("{}/v1/{path}", self.bao_addr);
        self.rt.block_on(async {
            let mut req = reqwest::Client::new()
                .request(method, &url)
                .header("X-Vault-Token", &self.stack.bao_token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.expect("Vault reachable");
            let status = resp.status().as_u16();
            let v = resp.json().await.unwrap_or(serde_json::Value::Null);
            (status, v)
        })
    }

    /// Secret ids the server's audit log mentions.
    pub fn audited_secret_ids(&self, server_dir: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .audit(server_dir)
            .iter()
            .filter_map(|v| v["secret_id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Secret ids of the successful `secret.create` audit records of a server of this world, in
    /// log order (a panic if one names no secret).
    pub fn created_secret_ids(&self, server_dir: &str) -> Vec<String> {
        self.audit(server_dir)
            .iter()
            .filter(|e| e["action"] == "secret.create" && e["outcome"] == "ok")
            .map(|e| {
                e["secret_id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("secret.create record without a secret_id: {e}"))
                    .to_owned()
            })
            .collect()
    }

    /// Audit log lines (parsed) of a server of this world.
    pub fn audit(&self, server_dir: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join(server_dir).join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// devspire entries issuing the reader identity of secret `id`.
    pub fn reader_entries(&self, id: &str) -> usize {
        self.reader_entry_ids(id).len()
    }

    /// Deletes the reader entries of secret `id` as the SPIRE administrator (cleanup after a
    /// case whose server can no longer revoke).
    pub fn delete_reader_entries(&self, id: &str) {
        use hpcs_spire_api::server::entry::v1::BatchDeleteEntryRequest;
        let ids = self.reader_entry_ids(id);
        if ids.is_empty() {
            return;
        }
        self.rt.block_on(async {
            self.entry_client()
                .await
                .batch_delete_entry(BatchDeleteEntryRequest { ids })
                .await
                .expect("delete devspire entries");
        });
    }

    /// A client of devspire's entry API on its admin socket.
    async fn entry_client(
        &self,
    ) -> hpcs_spire_api::server::entry::v1::entry_client::EntryClient<tonic::transport::Channel>
    {
        let channel = hpcs_spire_api::channel::connect_unix(
            &self.stack.devspire_admin_socket,
            Duration::from_secs(10),
        )
        .await
        .expect("devspire admin socket");
        hpcs_spire_api::server::entry::v1::entry_client::EntryClient::new(channel)
    }

    fn reader_entry_ids(&self, id: &str) -> Vec<String> {
        use hpcs_spire_api::server::entry::v1::{ListEntriesRequest, list_entries_request::Filter};
        use hpcs_spire_api::types::Spiffeid;
        let spiffe = format!("spiffe://{}/hpcs/secret/{id}", self.stack.trust_domain);
        self.rt.block_on(async {
            let resp = self
                .entry_client()
                .await
                .list_entries(ListEntriesRequest {
                    filter: Some(Filter {
                        by_spiffe_id: Some(Spiffeid::from_uri(&spiffe).unwrap()),
                        ..Filter::default()
                    }),
                    ..ListEntriesRequest::default()
                })
                .await
                .expect("list devspire entries")
                .into_inner();
            resp.entries.into_iter().map(|e| e.id).collect()
        })
    }

    /// Vault paths of a registered secret `id`: its registry record, key record, reader role
    /// and read policy.
    fn secret_paths(&self, id: &str) -> [String; 4] {
        let kv = &self.kv_mount;
        [
            format!("{kv}/data/_registry/secrets/{id}"),
            format!("{kv}/metadata/{id}"),
            format!("auth/{}/role/hpcs-secret-{id}", self.auth_mount),
            format!("sys/policies/acl/hpcs-secret-{id}-read"),
        ]
    }

    /// Secret `id` is fully registered: its registry and key records, its reader role and read
    /// policy, its SPIRE entry (the positive control of [`World::assert_not_registered`]).
    pub fn assert_registered(&self, id: &str) {
        for path in self.secret_paths(id) {
            let (status, body) = self.vault_get(&path);
            assert_eq!(status, 200, "{path} of a registered secret: {body}");
        }
        assert_eq!(self.reader_entries(id), 1, "SPIRE entry of secret {id}");
    }

    /// Nothing of secret `id` remains: no registry record, no key record, no reader role, no
    /// read or write policy, no SPIRE entry.
    pub fn assert_not_registered(&self, id: &str) {
        let write_policy = format!("sys/policies/acl/hpcs-secret-{id}-write");
        for path in self.secret_paths(id).into_iter().chain([write_policy]) {
            let (status, body) = self.vault_get(&path);
            assert_eq!(status, 404, "{path} still exists after revocation: {body}");
        }
        assert_eq!(
            self.reader_entries(id),
            0,
            "SPIRE entry of secret {id} left"
        );
    }

    /// No key record at all in this world's KV mount (apart from the server's registry).
    pub fn key_records(&self) -> Vec<String> {
        let (status, body) = self.vault_req(
            reqwest::Method::from_bytes(b"LIST").unwrap(),
            &format!("{}/metadata/", self.kv_mount),
            None,
        );
        if status == 404 {
            return Vec::new();
        }
        body["data"]["keys"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str())
                    .filter(|k| !k.starts_with("_registry"))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A JWT-SVID of `home`'s user for the server, fetched as that user from the laptop agent.
    pub fn user_token(&self, home: &Home) -> String {
        let mut cmd = self.stack.run_as(&home.user, &self.stack.devspire_bin);
        cmd.args(["api", "fetch-jwt", "--socket"])
            .arg(&self.stack.agent("laptop").socket)
            .args(["--audience", "hpcs-server"]);
        let run = Run::of(&cmd.output().expect("devspire api fetch-jwt"));
        run.expect_code(0, "devspire api fetch-jwt");
        let want = format!(
            "spiffe://{}/client/{}",
            self.stack.trust_domain, home.user.name
        );
        run.stdout
            .lines()
            .find_map(|l| {
                l.split_once(' ')
                    .filter(|(id, _)| *id == want)
                    .map(|(_, t)| t.to_owned())
            })
            .unwrap_or_else(|| panic!("no JWT-SVID for {want}: {}", run.stdout))
    }

    /// A request to this world's server as `home`'s user: (status, body).
    pub fn api(
        &self,
        home: &Home,
        method: reqwest::Method,
        path: &str,
    ) -> (u16, serde_json::Value) {
        let token = self.user_token(home);
        let url = format!("{}{path}", self.server_url);
        self.rt.block_on(async {
            let resp = reqwest::Client::new()
                .request(method, &url)
                .bearer_auth(token)
                .send()
                .await
                .expect("hpcs-server reachable");
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(serde_json::Value::Null))
        })
    }

    /// Revokes secret `id` as its owner, repeating while the server answers 202.
    pub fn revoke(&self, home: &Home, id: &str) {
        for _ in 0..20 {
            let (status, body) = self.api(
                home,
                reqwest::Method::DELETE,
                &format!("/api/v1/secrets/{id}"),
            );
            match status {
                204 | 404 => return,
                202 => std::thread::sleep(Duration::from_millis(500)),
                _ => panic!("revoking {id}: HTTP {status} {body}"),
            }
        }
        panic!("revoking {id}: still revoking after 20 attempts");
    }

    /// Makes `home`'s data at rest readable by everyone, as on a shared project directory: the
    /// cases where another user gets hold of the ciphertext and info files.
    pub fn share_at_rest(&self, home: &Home) {
        chmod(&home.root, 0o711);
        chmod(&home.cluster, 0o711);
        chmod(&home.at_rest, 0o755);
        for e in std::fs::read_dir(&home.at_rest).unwrap() {
            chmod(&e.unwrap().path(), 0o644);
        }
    }

    fn cleanup_registrations(&self) {
        // Whatever is still registered, revoked by its owner through the server.
        for home in [&self.alice, &self.bob] {
            let Some(token) =
                std::panic::catch_unwind(AssertUnwindSafe(|| self.user_token(home))).ok()
            else {
                continue;
            };
            let url = format!("{}/api/v1/secrets", self.server_url);
            let list: serde_json::Value = self.rt.block_on(async {
                match reqwest::Client::new()
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                {
                    Ok(r) => r.json().await.unwrap_or(serde_json::Value::Null),
                    Err(_) => serde_json::Value::Null,
                }
            });
            let ids: Vec<String> = list["secrets"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s["id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            for id in ids {
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| self.revoke(home, &id)));
            }
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.server.alive() {
            self.cleanup_registrations();
        }
        self.server.stop(nix::sys::signal::Signal::SIGTERM);
        self.broker.stop(nix::sys::signal::Signal::SIGTERM);
        let del = reqwest::Method::DELETE;
        for path in [
            format!("sys/mounts/{}", self.kv_mount),
            format!("sys/auth/{}", self.auth_mount),
            format!("sys/policies/acl/{}", self.server_policy),
            format!("auth/token/roles/{}", self.token_role),
        ] {
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.vault_req(del.clone(), &path, None)
            }));
        }
        let _ = Command::new("docker")
            .args(["-H", &self.stack.docker_host, "rmi", "-f", &self.image_tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if std::env::var_os("HPCS_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

fn make_home(user: &TestUser, world: &Path) -> Home {
    let root = world.join(user.name);
    let laptop = root.join("laptop");
    let cluster = root.join("cluster");
    mkdir_owned(&root, user.uid, user.gid, 0o700);
    for d in [&laptop, &cluster, &cluster.join("jobs")] {
        mkdir_owned(d, user.uid, user.gid, 0o700);
    }
    mkdir_owned(&laptop.join("id"), user.uid, user.gid, 0o700);
    let key = std::fs::read(&user.ssh_key).expect("the user's SSH key");
    write_owned(&laptop.join("id_ssh"), &key, user.uid, user.gid, 0o600);
    Home {
        user: user.clone(),
        config: laptop.join("client.ini"),
        at_rest: cluster.join("at-rest"),
        root,
        laptop,
        cluster,
    }
}

/// What to submit.
#[derive(Debug, Clone)]
pub struct JobSpec<'a> {
    /// Job name and work directory name.
    pub name: &'a str,
    pub app: &'a Path,
    pub data: &'a [&'a Path],
    /// `node1` or `node2`: which node's hpcs-node the job runs.
    pub node: &'a str,
    pub env_file: Option<&'a Path>,
    pub args: &'a [&'a str],
    /// Follow the job and fetch its output.
    pub follow: bool,
}

impl<'a> JobSpec<'a> {
    pub fn new(name: &'a str, app: &'a Path, data: &'a [&'a Path]) -> Self {
        Self {
            name,
            app,
            data,
            node: "node1",
            env_file: None,
            args: &[],
            follow: true,
        }
    }
}

/// The arguments of a preparation: `<input_flag> <input> --name <name> -u <user> -c <nodes>
/// --data-path-at-rest <at_rest>` (`--image-archive` for container-prep, `-i` for data-prep).
pub fn prep_args(
    input_flag: &str,
    input: &Path,
    name: &str,
    user: &str,
    nodes: &str,
    at_rest: &Path,
) -> Vec<String> {
    vec![
        input_flag.to_owned(),
        input.display().to_string(),
        "--name".to_owned(),
        name.to_owned(),
        "-u".to_owned(),
        user.to_owned(),
        "-c".to_owned(),
        nodes.to_owned(),
        "--data-path-at-rest".to_owned(),
        at_rest.display().to_string(),
    ]
}

/// Rewrites `key: value` lines of an info file (as someone with write access to shared storage
/// could).
pub fn edit_info(path: &Path, changes: &[(&str, String)]) {
    let text = std::fs::read_to_string(path).unwrap();
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let trimmed = l.trim_start();
            let indent = &l[..l.len() - trimmed.len()];
            changes
                .iter()
                .find(|(k, _)| trimmed.starts_with(&format!("{k}:")))
                .map_or_else(|| l.to_owned(), |(k, v)| format!("{indent}{k}: {v}"))
        })
        .collect();
    std::fs::write(path, out.join("\n") + "\n").unwrap();
}

/// The value of `key:` in an info file.
pub fn info_field(path: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .find_map(|l| {
            l.trim_start()
                .strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("{} has no {key}", path.display()))
}

/// A TCP proxy to `upstream` on a free loopback port. Each connection is cut (both directions
/// shut down) once `cut_after` bytes went from the client to the upstream; `on_connect` runs
/// when a client connects (before anything is forwarded) and may refuse the connection by
/// returning `false`.
#[derive(Debug)]
pub struct CuttingProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    pub forwarded: Arc<AtomicU64>,
    pub cuts: Arc<AtomicU64>,
}

impl CuttingProxy {
    pub fn start(
        upstream: String,
        cut_after: u64,
        on_connect: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicU64::new(0));
        let (s, f, c) = (stop.clone(), forwarded.clone(), cuts.clone());
        let on_connect = Arc::new(on_connect);
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        if !on_connect() {
                            drop(client);
                            continue;
                        }
                        let Ok(up) = TcpStream::connect(&upstream) else {
                            continue;
                        };
                        relay(client, up, cut_after, f.clone(), c.clone());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self {
            port,
            stop,
            forwarded,
            cuts,
        }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(
    client: TcpStream,
    up: TcpStream,
    cut_after: u64,
    forwarded: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
) {
    let (mut c_read, mut up_write) = (client.try_clone().unwrap(), up.try_clone().unwrap());
    let (mut up_read, mut c_write) = (up, client);
    let (c2, u2) = (c_write.try_clone().unwrap(), up_write.try_clone().unwrap());
    std::thread::spawn(move || {
        let mut sent = 0u64;
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match c_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let n64 = n as u64;
            if sent + n64 >= cut_after {
                let keep = usize::try_from(cut_after - sent).unwrap();
                let _ = up_write.write_all(&buf[..keep]);
                forwarded.fetch_add(keep as u64, Ordering::Relaxed);
                cuts.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if up_write.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n64;
            forwarded.fetch_add(n64, Ordering::Relaxed);
        }
        let _ = c2.shutdown(std::net::Shutdown::Both);
        let _ = u2.shutdown(std::net::Shutdown::Both);
    });
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_read, &mut c_write);
        let _ = c_write.shutdown(std::net::Shutdown::Both);
    });
}
