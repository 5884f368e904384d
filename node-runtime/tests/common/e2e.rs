//! End-to-end fixtures: Vault secrets and roles, devspire entries, encrypted artefacts, the
//! daemon, and the `hpcs-node` binary run as a test user.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

use super::Env;

pub const MARKER_DATA: &str = "HPCS-PLAINTEXT-MARKER-DATA-7f3a";
pub const MARKER_IMAGE: &str = "HPCS-PLAINTEXT-MARKER-IMAGE-91c2";
pub const AUDIENCE: &str = "hpcs-node-test";

/// One test's namespace: its own Vault mounts, temp dirs, secrets.
pub struct Ns {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub workdir: PathBuf,
    pub scratch: PathBuf,
    pub kv_mount: String,
    pub jwt_mount: String,
    pub vault: VaultClient,
    pub td: String,
}

impl Ns {
    pub async fn new(env: &Env) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let dir = tempfile::Builder::new()
            .prefix("hpcs-node-e2e-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let workdir = dir.path().join("work");
        std::fs::create_dir(&workdir).unwrap();
        let scratch = PathBuf::from(format!("/dev/shm/hpcs-node-e2e-{id}"));
        std::fs::create_dir(&scratch).unwrap();
        std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o755)).unwrap();
        let vault = VaultClient::new(
            VaultClientSettingsBuilder::default()
                .address(env.get("HPCS_BAO_ADDR"))
                .token(env.get("HPCS_BAO_TOKEN"))
                .build()
                .unwrap(),
        )
        .unwrap();
        let kv_mount = format!("hpcs-t-{id}");
        let jwt_mount = format!("jwt-t-{id}");
        let mut kv_opts = vaultrs::api::sys::requests::EnableEngineRequest::builder();
        kv_opts.options(std::collections::HashMap::from([(
            "version".to_owned(),
            "2".to_owned(),
        )]));
        vaultrs::sys::mount::enable(&vault, &kv_mount, "kv", Some(&mut kv_opts))
            .await
            .unwrap();
        vaultrs::sys::auth::enable(&vault, &jwt_mount, "jwt", None)
            .await
            .unwrap();
        let mut cfg = vaultrs::api::auth::oidc::requests::SetConfigurationRequest::builder();
        cfg.oidc_discovery_url(env.get("HPCS_DEVSPIRE_OIDC_URL"));
        vaultrs::auth::oidc::config::set(&vault, &jwt_mount, Some(&mut cfg))
            .await
            .unwrap();
        Self {
            id,
            dir,
            workdir,
            scratch,
            kv_mount,
            jwt_mount,
            vault,
            td: env.get("HPCS_TRUST_DOMAIN").to_owned(),
        }
    }

    /// Give the workdir to `uid:gid` (shared storage belongs to the job user).
    pub fn chown_workdir(&self, uid: u32, gid: u32) {
        chown_r(&self.workdir, uid, gid);
    }

    /// Give the workdir to alice (`HPCS_ALICE_UID`:`HPCS_ALICE_GID`), the job user of the tests.
    pub fn chown_workdir_to_alice(&self, env: &Env) {
        self.chown_workdir(
            env.get("HPCS_ALICE_UID").parse().unwrap(),
            env.get("HPCS_ALICE_GID").parse().unwrap(),
        );
    }

    /// [`Ns::register_secret`] plus a devspire entry for alice's uid on node1: the key is
    /// readable by alice's jobs on node1 only.
    pub async fn register_for_alice_on_node1(
        &self,
        env: &Env,
        secret: &str,
        record: serde_json::Value,
    ) {
        self.register_secret(secret, record).await;
        let alice = format!("uid:{}", env.get("HPCS_ALICE_UID"));
        register_entry(env, secret, "node1", &alice).await;
    }

    /// Register a secret as the HPCS server would: KV record, read policy, jwt role bound to the
    /// reader SPIFFE ID.
    pub async fn register_secret(&self, secret: &str, record: serde_json::Value) {
        vaultrs::kv2::set(&self.vault, &self.kv_mount, secret, &record)
            .await
            .unwrap();
        let policy = format!("hpcs-t-{}-{secret}", self.id);
        vaultrs::sys::policy::set(
            &self.vault,
            &policy,
            &format!(
                "path \"{}/data/{secret}\" {{ capabilities = [\"read\"] }}",
                self.kv_mount
            ),
        )
        .await
        .unwrap();
        let mut role = vaultrs::api::auth::oidc::requests::SetRoleRequest::builder();
        role.role_type("jwt")
            .bound_subject(format!("spiffe://{}/hpcs/secret/{secret}", self.td))
            .bound_audiences(vec![AUDIENCE.to_owned()])
            .token_policies(vec![policy])
            .token_ttl("120")
            .token_num_uses(4u64);
        vaultrs::auth::oidc::role::set(
            &self.vault,
            &self.jwt_mount,
            &role_name(secret),
            "sub",
            vec![],
            Some(&mut role),
        )
        .await
        .unwrap();
    }

    pub fn node_ini(&self, env: &Env, node: &str, broker: Option<&Path>, policy: &Path) -> PathBuf {
        let agent = env.get(&format!(
            "HPCS_DEVSPIRE_AGENT_SOCKET_{}",
            node.to_uppercase()
        ));
        let text = format!(
            "[node]\nname = {node}\nscratch-dir = {}\nengine-socket = {}\n{}hook-timeout = 20\n\
             [policy]\npath = {}\n[vault]\nurl = {}\nauth-mount = {}\nkv-mount = {}\naudience = {AUDIENCE}\n\
             [spire-agent]\nsocket-path = {agent}\ntrust-domain = {}\n",
            self.scratch.display(),
            env.get("HPCS_DOCKER_HOST").trim_start_matches("unix://"),
            broker
                .map(|b| format!("broker-socket = {}\n", b.display()))
                .unwrap_or_default(),
            policy.display(),
            env.get("HPCS_BAO_ADDR"),
            self.jwt_mount,
            self.kv_mount,
            self.td,
        );
        let p = self.dir.path().join(format!("node-{node}.ini"));
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn policy(&self, text: &str) -> PathBuf {
        let p = self
            .dir
            .path()
            .join(format!("policy-{}.ini", uuid::Uuid::new_v4().simple()));
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Files under the workdir containing `needle`.
    pub fn scan_workdir(&self, needle: &str) -> Vec<PathBuf> {
        let mut hits = Vec::new();
        scan(&self.workdir, needle.as_bytes(), &mut hits);
        hits
    }

    /// Leftover per-job directories under the scratch root.
    pub fn scratch_entries(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.scratch)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

pub fn role_name(secret: &str) -> String {
    format!("hpcs-secret-{secret}")
}

fn scan(dir: &Path, needle: &[u8], hits: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            scan(&e.path(), needle, hits);
        } else if t.is_file() {
            let data = std::fs::read(e.path()).unwrap();
            if data.windows(needle.len()).any(|w| w == needle) {
                hits.push(e.path());
            }
        }
    }
}

pub fn chown_r(p: &Path, uid: u32, gid: u32) {
    nix::unistd::chown(
        p,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .unwrap();
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_r(&e.unwrap().path(), uid, gid);
        }
    }
}

/// Register a devspire entry: `reader` on `node`'s agent for `selector` (e.g. `uid:2001`).
pub async fn register_entry(env: &Env, secret: &str, node: &str, selector: &str) {
    use hpcs_spire_api::server::entry::v1::{BatchCreateEntryRequest, entry_client::EntryClient};
    use hpcs_spire_api::types::{Entry, Selector, Spiffeid};
    let channel = hpcs_spire_api::channel::connect_unix(
        env.get("HPCS_DEVSPIRE_ADMIN_SOCKET"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let mut client = EntryClient::new(channel);
    let td = env.get("HPCS_TRUST_DOMAIN");
    let entry = Entry {
        spiffe_id: Some(
            Spiffeid::from_uri(&format!("spiffe://{td}/hpcs/secret/{secret}")).unwrap(),
        ),
        parent_id: Some(
            Spiffeid::from_uri(env.get(&format!("HPCS_DEVSPIRE_AGENT_ID_{}", node.to_uppercase())))
                .unwrap(),
        ),
        selectors: vec![Selector {
            r#type: "unix".into(),
            value: selector.into(),
        }],
        ..Entry::default()
    };
    let resp = client
        .batch_create_entry(BatchCreateEntryRequest {
            entries: vec![entry],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    for r in resp.results {
        let code = r.status.map_or(0, |s| s.code);
        assert!(code == 0 || code == 6, "entry creation failed: {code}");
    }
}

/// An age-encrypted artefact in the workdir plus its info file (the shared format); returns
/// (info path, Vault record). `image_digest` makes it an image artefact.
pub fn encrypt_artefact(
    ns: &Ns,
    file: &str,
    artefact_name: &str,
    image_digest: Option<&str>,
    secret: &str,
    plaintext: &[u8],
) -> (PathBuf, serde_json::Value) {
    let id = age::x25519::Identity::generate();
    let r = id.to_public();
    let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
    let mut ct = Vec::new();
    let mut w = enc.wrap_output(&mut ct).unwrap();
    w.write_all(plaintext).unwrap();
    w.finish().unwrap();
    let sha = hex::encode(Sha256::digest(&ct));
    let ct_path = ns.workdir.join(format!("{file}.tar.age"));
    std::fs::write(&ct_path, &ct).unwrap();
    let (kind, image) = match image_digest {
        Some(d) => ("image", format!("  image:\n    digest: {d}\n")),
        None => ("data", String::new()),
    };
    let info = format!(
        "info:\n  version: 1\n  kind: {kind}\n  name: {artefact_name}\n  path_at_rest: {}\n  \
         secret_path: {}/data/{secret}\n  access_role: {}\n  checksum: {sha}\n  \
         spiffeID: spiffe://{}/hpcs/secret/{secret}\n  sha256: {sha}\n  size: {}\n  \
         owner: spiffe://{}/client/alice\n  created: 2026-01-31T12:00:00Z\n  secret_id: {secret}\n{image}",
        ct_path.display(),
        ns.kv_mount,
        role_name(secret),
        ns.td,
        ct.len(),
        ns.td,
    );
    let info_path = ns.workdir.join(format!("{file}.info.yaml"));
    std::fs::write(&info_path, info).unwrap();
    use age::secrecy::ExposeSecret as _;
    let record = serde_json::json!({
        "age_identity": id.to_string().expose_secret(),
        "sha256": sha,
        "size": ct.len(),
        "kind": kind,
    });
    (info_path, record)
}

/// A data tarball holding `input.txt` with the data marker.
pub fn data_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let body = format!("{MARKER_DATA}\nline two\n");
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "input.txt", body.as_bytes()).unwrap();
    b.into_inner().unwrap()
}

/// The hpcs-node daemon, spawned as root for one test; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(ns: &Ns, node_ini: &Path) -> Self {
        let socket = ns.dir.path().join(format!(
            "hpcs-node-{}.sock",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_hpcs-node"))
            .args(["--config"])
            .arg(node_ini)
            .args(["daemon", "--socket"])
            .arg(&socket)
            .env("HPCS_LOG", "info")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !socket.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, socket }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// The words of `hpcs-node run` for an image (and optionally a dataset) in `workdir`, sealing
/// the output to `recipient`: `extra` options, then `--` and `app`.
pub fn run_args(
    app_info: &Path,
    data_info: Option<&Path>,
    workdir: &Path,
    recipient: &str,
    extra: &[&str],
    app: &[&str],
) -> Vec<String> {
    let mut a = vec![
        "run".to_owned(),
        "--application-info".into(),
        app_info.display().to_string(),
    ];
    if let Some(data) = data_info {
        a.extend(["--data-info".into(), data.display().to_string()]);
    }
    a.extend([
        "--workdir".into(),
        workdir.display().to_string(),
        "--output-recipient".into(),
        recipient.to_owned(),
    ]);
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    a.push("--".into());
    a.extend(app.iter().map(|s| (*s).to_owned()));
    a
}

/// `hpcs-node run ...` as `user` (with the user's groups, through setpriv).
pub fn node_cmd(user: &str, node_ini: &Path, args: &[impl AsRef<std::ffi::OsStr>]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", user, "--regid", user, "--init-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_hpcs-node"))
        .arg("--config")
        .arg(node_ini)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HPCS_LOG", "info");
    c
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn output(mut c: Command) -> Output {
    let o = c.output().unwrap();
    Output {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Decrypt a sealed output and list its files with contents.
pub fn open_output(path: &Path, identity: &age::x25519::Identity) -> Vec<(String, Vec<u8>)> {
    use std::io::Read as _;
    let ct = std::fs::read(path).unwrap();
    let d = age::Decryptor::new(ct.as_slice()).unwrap();
    let r = d
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .unwrap();
    let mut a = tar::Archive::new(r);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type().is_file() {
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.push((name, data));
        }
    }
    out
}
