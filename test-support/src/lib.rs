//! Development only: lets integration tests find the local test stack that `scripts/test-stack up`
//! starts (real OpenBao, sshd, Slurm, dockerd and devspire on loopback).
//!
//! - [`Stack`]: the typed contents of the stack's env file.
//! - [`ns`]: a unique namespace per test, so tests sharing one stack run in parallel.
//! - [`run_as`]: a `Command` that runs as one of the test users.
//! - [`cli_docs`]: checks that `docs/cli.md` documents every flag of a binary (no stack needed).
//! - [`append_bench_summary`]: the summary rows benches hand to `scripts/bench`.
//!
//! A test that needs the stack calls [`Stack::load`], which panics with the command that starts the
//! stack when it is missing. A developer may opt out with `HPCS_ALLOW_NO_STACK=1` through
//! [`Stack::load_or_skip`]; CI (`CI=true`) ignores that variable, so a missing stack fails there.

#![allow(clippy::panic, clippy::expect_used)] // Test support: a broken stack must fail the test loudly.

pub mod cli_docs;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The command that starts the stack, named in every failure message.
pub const UP_COMMAND: &str = "scripts/test-stack up";

/// A test user of the stack.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// Login name (`alice`, `bob`).
    pub name: &'static str,
    /// Numeric uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Private key for SSH logins to the stack's sshd (mode 0600, readable by root).
    pub ssh_key: PathBuf,
}

/// One simulated SPIRE agent of devspire.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Node name (`node1`, `node2`, `laptop`).
    pub name: &'static str,
    /// Workload API socket.
    pub socket: PathBuf,
    /// The agent's SPIFFE ID (parent of the entries it serves).
    pub id: String,
}

/// The typed contents of the test stack's env file.
#[derive(Debug, Clone)]
pub struct Stack {
    /// State directory of the stack.
    pub dir: PathBuf,
    /// `http://127.0.0.1:PORT` of the OpenBao dev server.
    pub bao_addr: String,
    /// Root token of the dev server: tests only, never product code.
    pub bao_token: String,
    /// The `bao` binary, for tests that need a private server (e.g. to stop it mid-test).
    pub bao_bin: PathBuf,
    /// sshd host (127.0.0.1).
    pub ssh_host: String,
    /// sshd port.
    pub ssh_port: u16,
    /// known_hosts file with the sshd host key.
    pub ssh_known_hosts: PathBuf,
    /// alice: uid 2001, in `hpcs-users` and `hpcs-alice-proj`.
    pub alice: TestUser,
    /// bob: uid 2002, in `hpcs-users`.
    pub bob: TestUser,
    /// gid of `hpcs-users` (alice and bob).
    pub users_gid: u32,
    /// gid of `hpcs-alice-proj` (alice only).
    pub alice_proj_gid: u32,
    /// Slurm partition.
    pub slurm_partition: String,
    /// Slurm node name.
    pub slurm_node: String,
    /// The stack's `slurm.conf` (`SLURM_CONF`): Slurm commands run outside an SSH session to the
    /// stack's sshd need it in their environment (see [`Stack::run_as`]).
    pub slurm_conf: PathBuf,
    /// `unix:///...` of the stack's dockerd.
    pub docker_host: String,
    /// A small local image (busybox) whose /etc/passwd knows alice and bob.
    pub test_image: String,
    /// SPIFFE trust domain of devspire.
    pub trust_domain: String,
    /// The devspire binary the stack runs.
    pub devspire_bin: PathBuf,
    /// devspire's SPIRE Server API socket (root only).
    pub devspire_admin_socket: PathBuf,
    /// devspire's OIDC discovery base URL (for Vault's jwt auth).
    pub devspire_oidc_url: String,
    /// Agents `node1`, `node2` and `laptop`.
    pub agents: Vec<Agent>,
}

impl Stack {
    /// Loads the env file of a running stack.
    ///
    /// # Panics
    ///
    /// When the file is missing or incomplete, with a message naming [`UP_COMMAND`].
    #[must_use]
    pub fn load() -> Self {
        let path = env_file();
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) => panic!(
                "the test stack is not running: cannot read {} ({e}); start it with `{UP_COMMAND}` \
                 (or set HPCS_STACK_ENV to its env file)",
                path.display()
            ),
        }
    }

    /// Like [`Stack::load`], but returns `None` (and says so) when the stack is missing and the
    /// developer set `HPCS_ALLOW_NO_STACK=1` outside CI.
    #[must_use]
    pub fn load_or_skip() -> Option<Self> {
        if !env_file().exists() && skip_allowed() {
            eprintln!(
                "skipped: no test stack and HPCS_ALLOW_NO_STACK=1 (start it with `{UP_COMMAND}`)"
            );
            return None;
        }
        Some(Self::load())
    }

    fn parse(text: &str, path: &Path) -> Self {
        let vars = parse_env(text);
        let get = |key: &str| -> String {
            vars.get(key).cloned().unwrap_or_else(|| {
                panic!(
                    "{} has no {key}: the stack is from an older version or did not finish; \
                     rerun `{UP_COMMAND}`",
                    path.display()
                )
            })
        };
        let num = |key: &str| -> u32 {
            get(key).parse().unwrap_or_else(|_| {
                panic!(
                    "{} has a non-numeric {key}; rerun `{UP_COMMAND}`",
                    path.display()
                )
            })
        };
        let agents = ["node1", "node2", "laptop"]
            .into_iter()
            .map(|name| {
                let up = name.to_ascii_uppercase();
                Agent {
                    name,
                    socket: get(&format!("HPCS_DEVSPIRE_AGENT_SOCKET_{up}")).into(),
                    id: get(&format!("HPCS_DEVSPIRE_AGENT_ID_{up}")),
                }
            })
            .collect();
        Self {
            dir: get("HPCS_STACK_DIR").into(),
            bao_addr: get("HPCS_BAO_ADDR"),
            bao_token: get("HPCS_BAO_TOKEN"),
            bao_bin: get("HPCS_BAO_BIN").into(),
            ssh_host: get("HPCS_SSH_HOST"),
            ssh_port: u16::try_from(num("HPCS_SSH_PORT")).expect("HPCS_SSH_PORT is not a port"),
            ssh_known_hosts: get("HPCS_SSH_KNOWN_HOSTS").into(),
            alice: TestUser {
                name: "alice",
                uid: num("HPCS_ALICE_UID"),
                gid: num("HPCS_ALICE_GID"),
                ssh_key: get("HPCS_SSH_KEY_ALICE").into(),
            },
            bob: TestUser {
                name: "bob",
                uid: num("HPCS_BOB_UID"),
                gid: num("HPCS_BOB_GID"),
                ssh_key: get("HPCS_SSH_KEY_BOB").into(),
            },
            users_gid: num("HPCS_GROUP_GID"),
            alice_proj_gid: num("HPCS_ALICE_PROJ_GID"),
            slurm_partition: get("HPCS_SLURM_PARTITION"),
            slurm_node: get("HPCS_SLURM_NODE"),
            slurm_conf: get("SLURM_CONF").into(),
            docker_host: get("HPCS_DOCKER_HOST"),
            test_image: get("HPCS_TEST_IMAGE"),
            trust_domain: get("HPCS_TRUST_DOMAIN"),
            devspire_bin: get("HPCS_DEVSPIRE_BIN").into(),
            devspire_admin_socket: get("HPCS_DEVSPIRE_ADMIN_SOCKET").into(),
            devspire_oidc_url: get("HPCS_DEVSPIRE_OIDC_URL"),
            agents,
        }
    }

    /// The devspire agent simulating node `name`.
    ///
    /// # Panics
    ///
    /// When the stack has no such agent.
    #[must_use]
    pub fn agent(&self, name: &str) -> &Agent {
        self.agents
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("the test stack has no agent {name}"))
    }

    /// Like [`run_as`], with the stack's `SLURM_CONF`, so `sbatch` and friends reach its cluster.
    #[must_use]
    pub fn run_as(&self, user: &TestUser, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = run_as(user, program);
        cmd.env("SLURM_CONF", &self.slurm_conf);
        cmd
    }

    /// The docker socket path (without `unix://`).
    #[must_use]
    pub fn docker_socket(&self) -> PathBuf {
        PathBuf::from(self.docker_host.trim_start_matches("unix://"))
    }

    /// Exports the stack's variables into this process's environment view of a child command,
    /// so binaries under test see the same stack.
    pub fn apply_env(&self, cmd: &mut Command) {
        for (k, v) in parse_env(&std::fs::read_to_string(env_file()).unwrap_or_default()) {
            cmd.env(k, v);
        }
    }
}

fn skip_allowed() -> bool {
    skip_allowed_by(
        std::env::var("HPCS_ALLOW_NO_STACK").ok().as_deref(),
        std::env::var("CI").ok().as_deref(),
    )
}

/// `HPCS_ALLOW_NO_STACK=1` lets a developer skip, never CI.
fn skip_allowed_by(allow_no_stack: Option<&str>, ci: Option<&str>) -> bool {
    allow_no_stack == Some("1") && ci != Some("true")
}

/// Path of the stack's env file, found the way `scripts/test-stack` writes it: `$HPCS_STACK_ENV`,
/// else `$HPCS_STACK_DIR/env`, else `<workspace>/.stack/env`.
#[must_use]
pub fn env_file() -> PathBuf {
    env_file_from(
        std::env::var_os("HPCS_STACK_ENV"),
        std::env::var_os("HPCS_STACK_DIR"),
    )
}

fn env_file_from(env: Option<OsString>, dir: Option<OsString>) -> PathBuf {
    match (env, dir) {
        (Some(env), _) if !env.is_empty() => PathBuf::from(env),
        (_, Some(dir)) if !dir.is_empty() => PathBuf::from(dir).join("env"),
        _ => workspace_root().join(".stack").join("env"),
    }
}

/// The workspace root (parent of this crate's directory).
#[must_use]
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives inside the workspace")
        .to_path_buf()
}

/// Parses `KEY=value` lines as `scripts/test-stack` writes them: blank lines and `#` comments are
/// ignored; a value may be single-quoted, with `'\''` standing for a quote inside.
#[must_use]
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), unquote(v.trim())))
        .collect()
}

fn unquote(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut in_quote = false;
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => in_quote = !in_quote,
            '\\' if !in_quote => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// A name unique to this test run and call, safe in Vault paths, SPIFFE IDs, file names and Slurm
/// job names: `<prefix>-<pid>-<counter>-<random>`.
#[must_use]
pub fn ns(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{n}-{nanos:08x}", std::process::id())
}

/// A command that runs `program` as `user` (tests run as root) through `runuser`, with a clean
/// environment of `PATH` and `HOME` only. Add arguments and variables to it as usual.
#[must_use]
pub fn run_as(user: &TestUser, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", format!("/home/{}", user.name))
        .args(["-u", user.name, "--"])
        .arg(program);
    cmd
}

/// Words a shell would split, expand or execute if they were not quoted all the way, for tests
/// that pass user strings through scripts and SSH; each `{canary}` stands for a canary path that
/// must never be created ([`hostile_words`] substitutes it).
pub const HOSTILE_WORDS: [&str; 15] = [
    "it's",
    "'; touch {canary}; '",
    "$(touch {canary})",
    "`touch {canary}`",
    "a\nb",
    "line1\ntouch {canary}",
    "; touch {canary}",
    "&& touch {canary} || touch {canary}",
    "| tee {canary}",
    "\"$HOME\" ${PATH} $0 $@ * ~",
    "\\'\\",
    "",
    "--workdir=/etc",
    "tab\there and a trailing backslash \\",
    "é ☃ \t tab",
];

/// [`HOSTILE_WORDS`] with `{canary}` replaced by `canary`.
pub fn hostile_words(canary: &str) -> Vec<String> {
    HOSTILE_WORDS
        .iter()
        .map(|w| w.replace("{canary}", canary))
        .collect()
}

/// Appends `rows` (Markdown table rows) to the file named by `HPCS_BENCH_SUMMARY`, if set:
/// `scripts/bench` collects every bench's rows there into one summary table.
///
/// # Panics
///
/// If the file cannot be opened or written (a bench run should stop loudly).
pub fn append_bench_summary(rows: &[String]) {
    use std::io::Write as _;
    let Ok(path) = std::env::var("HPCS_BENCH_SUMMARY") else {
        return;
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open HPCS_BENCH_SUMMARY file {path}: {e}"));
    for row in rows {
        writeln!(f, "{row}")
            .unwrap_or_else(|e| panic!("write HPCS_BENCH_SUMMARY file {path}: {e}"));
    }
}

/// Pseudo-random bytes (xorshift64): incompressible, so no layer of a path (engine, archive,
/// transport) can shortcut them, and cheap to make. For benches and large-input tests.
#[derive(Debug, Clone)]
pub struct Incompressible(u64);

impl Incompressible {
    /// The stream of `seed`: the same seed gives the same bytes.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(0x9e37_79b9_7f4a_7c15 ^ seed)
    }

    /// Fills `buf` with the next bytes; calls whose lengths are multiples of 8 continue one
    /// stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// `len` bytes of the [`Incompressible`] stream of `seed`.
#[must_use]
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Incompressible::new(seed).fill(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incompressible_is_one_stream_per_seed() {
        let whole = incompressible(4096 + 3, 7);
        let mut parts = vec![0u8; whole.len()];
        let mut filler = Incompressible::new(7);
        let (a, b) = parts.split_at_mut(1024);
        filler.fill(a);
        filler.fill(b);
        assert_eq!(parts, whole);
        assert_ne!(incompressible(64, 8), whole[..64]);
        // No byte value dominates (a compressor would find nothing to take out).
        let mut counts = [0usize; 256];
        for b in &whole {
            counts[usize::from(*b)] += 1;
        }
        assert!(counts.iter().all(|&c| c < 64), "{counts:?}");
    }

    #[test]
    fn parses_quoted_values() {
        let vars = parse_env("# c\nA='x y'\nB='it'\\''s'\nC=plain\n\n");
        assert_eq!(vars["A"], "x y");
        assert_eq!(vars["B"], "it's");
        assert_eq!(vars["C"], "plain");
    }

    #[test]
    fn namespaces_are_unique() {
        let a = ns("t");
        let b = ns("t");
        assert_ne!(a, b);
        assert!(a.starts_with("t-"));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }

    #[test]
    fn env_file_is_found_like_the_script_writes_it() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(env_file_from(os("/e"), os("/d")), Path::new("/e"));
        assert_eq!(env_file_from(None, os("/d")), Path::new("/d/env"));
        assert_eq!(env_file_from(os(""), os("/d")), Path::new("/d/env"));
        assert_eq!(
            env_file_from(None, None),
            workspace_root().join(".stack/env")
        );
    }

    #[test]
    fn only_a_developer_may_skip() {
        assert!(skip_allowed_by(Some("1"), None));
        assert!(skip_allowed_by(Some("1"), Some("false")));
        assert!(!skip_allowed_by(Some("1"), Some("true")));
        assert!(!skip_allowed_by(None, None));
        assert!(!skip_allowed_by(Some("0"), None));
        assert!(!skip_allowed_by(Some("yes"), None));
    }

    #[test]
    fn parses_a_complete_env_file() {
        let text = "HPCS_STACK_DIR='/s'\nHPCS_BAO_ADDR='http://127.0.0.1:1'\nHPCS_BAO_TOKEN='t'\n\
            HPCS_BAO_BIN='/b'\nHPCS_SSH_HOST='127.0.0.1'\nHPCS_SSH_PORT='2222'\n\
            HPCS_SSH_KNOWN_HOSTS='/s/kh'\nHPCS_SSH_KEY_ALICE='/s/a'\nHPCS_SSH_KEY_BOB='/s/b'\n\
            HPCS_ALICE_UID='2001'\nHPCS_ALICE_GID='2001'\nHPCS_BOB_UID='2002'\nHPCS_BOB_GID='2002'\n\
            HPCS_GROUP_GID='2100'\nHPCS_ALICE_PROJ_GID='2101'\nHPCS_SLURM_PARTITION='debug'\n\
            HPCS_SLURM_NODE='localhost'\nSLURM_CONF='/s/slurm.conf'\n\
            HPCS_DOCKER_HOST='unix:///s/docker.sock'\nHPCS_TEST_IMAGE='img:latest'\n\
            HPCS_TRUST_DOMAIN='hpcs.test'\nHPCS_DEVSPIRE_BIN='/d'\nHPCS_DEVSPIRE_ADMIN_SOCKET='/s/admin.sock'\n\
            HPCS_DEVSPIRE_OIDC_URL='http://127.0.0.1:3'\n\
            HPCS_DEVSPIRE_AGENT_SOCKET_NODE1='/s/node1.sock'\n\
            HPCS_DEVSPIRE_AGENT_ID_NODE1='spiffe://hpcs.test/spire/agent/devspire/node1'\n\
            HPCS_DEVSPIRE_AGENT_SOCKET_NODE2='/s/node2.sock'\n\
            HPCS_DEVSPIRE_AGENT_ID_NODE2='spiffe://hpcs.test/spire/agent/devspire/node2'\n\
            HPCS_DEVSPIRE_AGENT_SOCKET_LAPTOP='/s/laptop.sock'\n\
            HPCS_DEVSPIRE_AGENT_ID_LAPTOP='spiffe://hpcs.test/spire/agent/devspire/laptop'\n";
        let stack = Stack::parse(text, Path::new("env"));
        assert_eq!(stack.ssh_port, 2222);
        assert_eq!(stack.alice.uid, 2001);
        assert_eq!(stack.bob.gid, 2002);
        assert_eq!(stack.slurm_conf, Path::new("/s/slurm.conf"));
        assert_eq!(stack.docker_socket(), Path::new("/s/docker.sock"));
        assert_eq!(stack.agent("node2").socket, Path::new("/s/node2.sock"));
        assert_eq!(
            stack.agent("laptop").id,
            "spiffe://hpcs.test/spire/agent/devspire/laptop"
        );
    }

    #[test]
    #[should_panic(expected = "scripts/test-stack up")]
    fn missing_key_names_the_up_command() {
        let _ = Stack::parse("HPCS_STACK_DIR='/x'\n", Path::new("env"));
    }
}
