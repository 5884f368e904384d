//! Shared harness of the server's integration tests, against the real test stack (OpenBao and
//! devspire from `scripts/test-stack up`).
//!
//! Each test gets its own namespace: its own KV mount, jwt auth mount, token role and server
//! policy in Vault (configured by `deploy/vault/setup`, the script operators run), its own
//! in-process server on port 0 with its own audit log. SPIRE entries for the server and the test
//! clients are shared (created if missing); reader entries are unique per secret.
//!
//! Acting as alice or bob: the test binary re-executes itself through `runuser` (which sets the
//! user's supplementary groups, as a login does), runs [`helper_main`] and prints a JWT-SVID
//! fetched from the given Workload API socket.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_debug_implementations
)]

#[path = "../../src/testing.rs"]
pub mod testing;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hpcs_core::ids::{NodeName, SpiffeId};
use hpcs_server::config::{Settings, Transport};
use hpcs_server::run::{Assembled, assemble};
use hpcs_server::secrets::AgentMap;
use hpcs_server::server::{AppState, serve};
use hpcs_server::spire::{EntrySpec, EntryStore, SpireEntries, SpireError};
use hpcs_server::vault::VaultSettings;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Audience of the server.
pub const SERVER_AUD: &str = "hpcs-server";
/// Audience of Vault.
pub const VAULT_AUD: &str = "vault";

/// The test stack, from its env file.
#[derive(Clone, Debug)]
pub struct Stack {
    pub bao_addr: String,
    pub bao_token: String,
    pub bao_bin: Option<PathBuf>,
    pub trust_domain: String,
    pub admin_socket: PathBuf,
    pub oidc_url: String,
    pub sockets: HashMap<&'static str, PathBuf>,
    pub agent_ids: HashMap<&'static str, String>,
    pub uids: HashMap<&'static str, u32>,
}

/// The stack (through `hpcs_test_support`), or `None` when the developer opted out with
/// `HPCS_ALLOW_NO_STACK=1` (the test then returns early).
pub fn stack() -> Option<Stack> {
    let st = hpcs_test_support::Stack::load_or_skip()?;
    let names = ["node1", "node2", "laptop"];
    Some(Stack {
        bao_addr: st.bao_addr.clone(),
        bao_token: st.bao_token.clone(),
        bao_bin: Some(st.bao_bin.clone()),
        trust_domain: st.trust_domain.clone(),
        admin_socket: st.devspire_admin_socket.clone(),
        oidc_url: st.devspire_oidc_url.clone(),
        sockets: names
            .iter()
            .map(|n| (*n, st.agent(n).socket.clone()))
            .collect(),
        agent_ids: names.iter().map(|n| (*n, st.agent(n).id.clone())).collect(),
        uids: [("alice", st.alice.uid), ("bob", st.bob.uid), ("root", 0)].into(),
    })
}

impl Stack {
    pub fn id(&self, path: &str) -> SpiffeId {
        format!("spiffe://{}{path}", self.trust_domain)
            .parse()
            .unwrap()
    }

    pub fn client_id(&self, user: &str) -> SpiffeId {
        self.id(&format!("/client/{user}"))
    }

    pub fn spire(&self) -> SpireEntries {
        SpireEntries::new(&self.admin_socket, Duration::from_secs(10))
    }

    /// Node name to agent ID for node1 and node2 (the laptop is not a compute node).
    pub fn agents(&self) -> AgentMap {
        AgentMap {
            explicit: ["node1", "node2"]
                .iter()
                .map(|n| {
                    (
                        n.parse::<NodeName>().unwrap(),
                        self.agent_ids[n].parse().unwrap(),
                    )
                })
                .collect(),
            template: None,
        }
    }

    /// Registers the server's identity (root on the laptop agent) and the test clients, once.
    pub async fn ensure_identities(&self) {
        let laptop: SpiffeId = self.agent_ids["laptop"].parse().unwrap();
        let mut specs = vec![EntrySpec {
            spiffe_id: self.id("/hpcs/server"),
            parent_id: laptop.clone(),
            selectors: vec![("unix".into(), "uid:0".into())],
            expires_at: 0,
        }];
        for user in ["alice", "bob"] {
            specs.push(EntrySpec {
                spiffe_id: self.client_id(user),
                parent_id: laptop.clone(),
                selectors: vec![("unix".into(), format!("uid:{}", self.uids[user]))],
                expires_at: 0,
            });
        }
        ensure_entries(&self.spire(), &specs).await;
    }
}

/// Creates entries unless identical ones exist (tests run in parallel and share these).
pub async fn ensure_entries(spire: &SpireEntries, specs: &[EntrySpec]) {
    for spec in specs {
        match spire.create_entries(std::slice::from_ref(spec)).await {
            Ok(_) => {}
            // ALREADY_EXISTS: another test (or an earlier run) registered it.
            Err(SpireError::Refused { code: 6, .. }) => {}
            Err(e) => panic!("cannot register {}: {e:?}", spec.spiffe_id),
        }
    }
}

/// A short random namespace for Vault names.
pub fn ns() -> String {
    let n: u32 = rand::random();
    format!("t{n:08x}")
}

/// One test's Vault namespace, configured by deploy/vault/setup.
#[derive(Clone, Debug)]
pub struct VaultNs {
    pub addr: String,
    pub root: String,
    pub ns: String,
    pub kv_mount: String,
    pub auth_mount: String,
    pub token_role: String,
    pub server_policy: String,
    pub trust_domain: String,
}

impl VaultNs {
    /// Runs the setup script with names unique to this test.
    pub fn create(addr: &str, root: &str, oidc_url: &str, trust_domain: &str) -> Self {
        let ns = ns();
        let v = Self {
            addr: addr.to_owned(),
            root: root.to_owned(),
            kv_mount: format!("hpcs-{ns}"),
            auth_mount: format!("jwt-{ns}"),
            token_role: format!("hpcs-client-write-{ns}"),
            server_policy: format!("hpcs-server-{ns}"),
            trust_domain: trust_domain.to_owned(),
            ns,
        };
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/vault/setup");
        let out = Command::new(&script)
            .env("BAO_ADDR", addr)
            .env("BAO_TOKEN", root)
            .args(["--oidc-discovery-url", oidc_url])
            .args([
                "--server-spiffe-id",
                &format!("spiffe://{trust_domain}/hpcs/server"),
            ])
            .args(["--kv-mount", &v.kv_mount])
            .args(["--auth-mount", &v.auth_mount])
            .args(["--token-role", &v.token_role])
            .args(["--server-policy", &v.server_policy])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "deploy/vault/setup failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        v
    }

    pub fn for_stack(stack: &Stack) -> Self {
        Self::create(
            &stack.bao_addr,
            &stack.bao_token,
            &stack.oidc_url,
            &stack.trust_domain,
        )
    }

    pub fn settings(&self) -> VaultSettings {
        let mut s = VaultSettings::with_defaults(self.addr.parse().unwrap());
        s.kv_mount = self.kv_mount.clone();
        s.auth_mount = self.auth_mount.clone();
        s.writer_token_role = self.token_role.clone();
        s.timeout = Duration::from_secs(5);
        s
    }

    /// A raw Vault API call with `token` (`None`: the root token). Returns status and JSON body.
    pub async fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let client = reqwest::Client::new();
        let mut req = client
            .request(method.parse().unwrap(), format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", token.unwrap_or(&self.root));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Removes what this namespace left in the shared stack: the SPIRE entries of every secret in
    /// its registry, its mounts, token role and server policy (the per-secret policies go with
    /// the secrets' revocation; leftovers of failed tests are harmless and named per secret).
    pub async fn cleanup(&self, stack: &Stack) {
        let client = reqwest::Client::new();
        let call = |method: &str, path: String| {
            client
                .request(method.parse().unwrap(), format!("{}/v1/{path}", self.addr))
                .header("X-Vault-Token", &self.root)
                .timeout(Duration::from_secs(5))
                .send()
        };
        // Best effort: a test may have stopped this Vault on purpose.
        let Ok(res) = call(
            "LIST",
            format!("{}/metadata/_registry/secrets", self.kv_mount),
        )
        .await
        else {
            return;
        };
        let list: Value = res.json().await.unwrap_or(Value::Null);
        let spire = stack.spire();
        for id in list["data"]["keys"].as_array().into_iter().flatten() {
            let Some(id) = id.as_str() else { continue };
            let reader = stack.id(&format!("/hpcs/secret/{id}"));
            if let Ok(entries) = spire.list_by_spiffe_id(&reader).await {
                let ids: Vec<String> = entries.into_iter().map(|e| e.id).collect();
                let _ = spire.delete_entries(&ids).await;
            }
            for name in [
                format!("hpcs-secret-{id}-read"),
                format!("hpcs-secret-{id}-write"),
            ] {
                let _ = call("DELETE", format!("sys/policy/{name}")).await;
            }
        }
        for path in [
            format!("sys/mounts/{}", self.kv_mount),
            format!("sys/auth/{}", self.auth_mount),
            format!("auth/token/roles/{}", self.token_role),
            format!("sys/policy/{}", self.server_policy),
        ] {
            let _ = call("DELETE", path).await;
        }
    }

    /// A token carrying exactly the server policy (what the server's login yields).
    pub async fn server_token(&self) -> String {
        let (status, body) = self
            .call(
                None,
                "POST",
                "auth/token/create",
                Some(serde_json::json!({
                    "policies": [self.server_policy],
                    "no_default_policy": true,
                    "ttl": "10m",
                })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["auth"]["client_token"].as_str().unwrap().to_owned()
    }

    /// Whether `path` exists (root GET answers 200).
    pub async fn exists(&self, path: &str) -> bool {
        let (status, _) = self.call(None, "GET", path, None).await;
        assert!(status == 200 || status == 404, "GET {path}: {status}");
        status == 200
    }

    /// Logs in with a reader JWT to `role` and reads the key record of `id`.
    pub async fn read_key_with_jwt(
        &self,
        role: &str,
        jwt: &str,
        id: &str,
    ) -> Result<Value, String> {
        let (status, body) = self
            .call(
                Some(""),
                "POST",
                &format!("auth/{}/login", self.auth_mount),
                Some(serde_json::json!({ "role": role, "jwt": jwt })),
            )
            .await;
        if status != 200 {
            return Err(format!("login {status}: {body}"));
        }
        let token = body["auth"]["client_token"].as_str().unwrap().to_owned();
        let (status, body) = self
            .call(
                Some(&token),
                "GET",
                &format!("{}/data/{id}", self.kv_mount),
                None,
            )
            .await;
        if status != 200 {
            return Err(format!("read {status}: {body}"));
        }
        Ok(body["data"]["data"].clone())
    }
}

/// Env var selecting the helper mode of a re-executed test binary.
const HELPER_ENV: &str = "HPCS_SERVER_TEST_HELPER";
/// Prefix of the helper's result line.
const HELPER_OUT: &str = "HPCS-HELPER-RESULT";

/// Fetches a JWT-SVID as `user` (via runuser) from `socket`, for `audience`, optionally for one
/// SPIFFE ID. `Err` carries the Workload API's refusal.
pub fn fetch_jwt_as(
    user: &str,
    socket: &Path,
    audience: &str,
    spiffe_id: Option<&SpiffeId>,
) -> Result<String, String> {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = if user == "root" {
        Command::new("/usr/bin/env")
    } else {
        let mut c = Command::new("runuser");
        c.args(["-u", user, "--", "/usr/bin/env"]);
        c
    };
    cmd.arg(format!("{HELPER_ENV}=fetch-jwt"))
        .arg(format!("HPCS_HELPER_SOCKET={}", socket.display()))
        .arg(format!("HPCS_HELPER_AUDIENCE={audience}"))
        .arg(format!(
            "HPCS_HELPER_SPIFFE_ID={}",
            spiffe_id.map(ToString::to_string).unwrap_or_default()
        ))
        .arg(exe)
        .args([
            "--exact",
            "zz_helper",
            "--include-ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ]);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once(HELPER_OUT).map(|(_, rest)| rest))
        .unwrap_or_else(|| {
            panic!(
                "helper printed no result (status {}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let line = line.trim();
    match line.split_once(' ') {
        Some(("ok", token)) => Ok(token.to_owned()),
        Some(("err", msg)) => Err(msg.to_owned()),
        _ => panic!("bad helper output {line:?}"),
    }
}

/// The helper side of [`fetch_jwt_as`]; a no-op unless the test binary was re-executed for it.
/// Every test binary using the harness calls it from `#[test] fn zz_helper()`.
pub fn helper_main() {
    if std::env::var(HELPER_ENV).as_deref() != Ok("fetch-jwt") {
        return;
    }
    let socket = std::env::var("HPCS_HELPER_SOCKET").unwrap();
    let audience = std::env::var("HPCS_HELPER_AUDIENCE").unwrap();
    let id = std::env::var("HPCS_HELPER_SPIFFE_ID").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let result: Result<String, String> = rt.block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{socket}"))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let id: Option<spiffe::SpiffeId> = if id.is_empty() {
            None
        } else {
            Some(id.parse().map_err(|e| format!("{e}"))?)
        };
        let svid = client
            .fetch_jwt_svid([audience.as_str()], id.as_ref())
            .await
            .map_err(|e| format!("fetch: {e}"))?;
        Ok(svid.token().to_owned())
    });
    match result {
        Ok(t) => println!("{HELPER_OUT} ok {t}"),
        Err(e) => println!("{HELPER_OUT} err {}", e.replace('\n', " ")),
    }
}

/// A client JWT-SVID for `user` from the laptop agent.
pub fn client_token(stack: &Stack, user: &str) -> String {
    fetch_jwt_as(
        user,
        &stack.sockets["laptop"],
        SERVER_AUD,
        Some(&stack.client_id(user)),
    )
    .unwrap_or_else(|e| panic!("no client SVID for {user}: {e}"))
}

/// An in-process server on 127.0.0.1:0.
pub struct TestServer {
    pub base: String,
    pub audit: PathBuf,
    pub state: AppState,
    pub vault: VaultNs,
    source: Arc<spiffe::JwtSource>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// Settings for a test server in `vault`'s namespace.
pub fn settings(stack: &Stack, vault: &VaultNs, dir: &Path) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        transport: Transport::PlainHttp,
        audience: SERVER_AUD.to_owned(),
        audit_log: dir.join("audit.jsonl"),
        max_body_bytes: 16 * 1024,
        request_timeout: Duration::from_secs(30),
        trust_domain: stack.trust_domain.parse().unwrap(),
        client_prefix: hpcs_core::ids::ClientPrefix::default(),
        spire_admin_socket: stack.admin_socket.clone(),
        spire_timeout: Duration::from_secs(5),
        agents: stack.agents(),
        workload_socket: stack.sockets["laptop"].clone(),
        vault: vault.settings(),
        expiry_sweep: None,
        secret_ttl: None,
    }
}

impl TestServer {
    pub async fn start(stack: &Stack) -> Self {
        let vault = VaultNs::for_stack(stack);
        Self::start_with(stack, vault, |_| {}).await
    }

    pub async fn start_with(
        stack: &Stack,
        vault: VaultNs,
        customize: impl FnOnce(&mut Settings),
    ) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        stack.ensure_identities().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(stack, &vault, dir.path());
        customize(&mut s);
        let Assembled { state, source } = assemble(&s).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(serve(
            listener,
            async {
                let _ = rx.await;
            },
            state.clone(),
        ));
        Self {
            base,
            audit: s.audit_log,
            state,
            vault,
            source,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with `token` as bearer.
    pub async fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let client = reqwest::Client::new();
        let mut req = client.request(method.parse().unwrap(), self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self.source.shutdown().await;
        if let Some(stack) = stack() {
            self.vault.cleanup(&stack).await;
        }
    }
}

/// A create request body.
pub fn create_body(users: &[&str], groups: &[&str], nodes: &[&str]) -> Value {
    serde_json::json!({
        "kind": "image",
        "name": "test_image",
        "readers": { "users": users, "groups": groups },
        "compute_nodes": nodes,
    })
}

/// The key record an owner writes.
pub fn key_record(owner: &str) -> Value {
    serde_json::json!({
        "identity": "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ",
        "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "size": 0,
        "owner": owner,
    })
}

/// Writes the key record with the write credential of a create answer; returns the status.
pub async fn write_key(vault: &VaultNs, created: &Value, record: &Value) -> u16 {
    let cred = &created["write_credential"];
    let (status, _) = vault
        .call(
            Some(cred["token"].as_str().unwrap()),
            "POST",
            &format!(
                "{}/data/{}",
                cred["kv_mount"].as_str().unwrap(),
                cred["kv_path"].as_str().unwrap()
            ),
            Some(serde_json::json!({ "data": record })),
        )
        .await;
    status
}

/// Entries SPIRE has for `spiffe_id`.
pub async fn entries_of(stack: &Stack, spiffe_id: &str) -> Vec<hpcs_server::spire::EntryView> {
    stack
        .spire()
        .list_by_spiffe_id(&spiffe_id.parse().unwrap())
        .await
        .unwrap()
}

/// Every SPIRE entry (all pages), as `type:value` selector lists with their SPIFFE IDs.
pub async fn all_entries(stack: &Stack) -> Vec<(String, Vec<String>)> {
    use hpcs_spire_api::server::entry::v1::ListEntriesRequest;
    use hpcs_spire_api::server::entry::v1::entry_client::EntryClient;
    let channel =
        hpcs_spire_api::channel::connect_unix(&stack.admin_socket, Duration::from_secs(5))
            .await
            .unwrap();
    let mut client = EntryClient::new(channel);
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let res = client
            .list_entries(ListEntriesRequest {
                filter: None,
                output_mask: None,
                page_size: 1000,
                page_token: page_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        for e in res.entries {
            let id = e
                .spiffe_id
                .map(|i| format!("spiffe://{}{}", i.trust_domain, i.path))
                .unwrap_or_default();
            let sels = e
                .selectors
                .iter()
                .map(|s| format!("{}:{}", s.r#type, s.value))
                .collect();
            out.push((id, sels));
        }
        if res.next_page_token.is_empty() {
            return out;
        }
        page_token = res.next_page_token;
    }
}

/// A private `bao server -dev` that a test may stop.
pub struct PrivateBao {
    pub addr: String,
    pub token: String,
    child: Option<std::process::Child>,
}

impl PrivateBao {
    /// Starts one from `HPCS_BAO_BIN` on a free loopback port.
    pub async fn start(stack: &Stack) -> Self {
        let bin = stack
            .bao_bin
            .clone()
            .expect("HPCS_BAO_BIN is needed for a private OpenBao: run `scripts/test-stack up`");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let token = format!("root-{}", ns());
        let child = Command::new(bin)
            .args(["server", "-dev"])
            .arg(format!("-dev-root-token-id={token}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("http://127.0.0.1:{port}");
        let bao = Self {
            addr,
            token,
            child: Some(child),
        };
        for _ in 0..100 {
            if let Ok(r) = reqwest::get(format!("{}/v1/sys/health", bao.addr)).await
                && r.status().is_success()
            {
                return bao;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("private OpenBao did not become ready on {}", bao.addr);
    }

    /// Kills it (SIGKILL: as abrupt as a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateBao {
    fn drop(&mut self) {
        self.kill();
    }
}
