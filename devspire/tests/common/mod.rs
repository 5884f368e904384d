//! Shared helpers of devspire's integration tests: an in-process devspire on temporary sockets
//! (port 0 for OIDC), SPIRE Server API calls, and running the `devspire api` client as another
//! uid.

#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use devspire::config::{Config, RawConfig};
use devspire::server::{ServeError, Server};
use hpcs_spire_api::server::entry::v1::entry_client::EntryClient;
use hpcs_spire_api::server::entry::v1::{BatchCreateEntryRequest, BatchDeleteEntryRequest};
use hpcs_spire_api::types::{Entry, Selector, Spiffeid};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub const TD: &str = "hpcs.test";
pub const NODES: [&str; 2] = ["node1", "node2"];

/// A running in-process devspire.
pub struct Devspire {
    pub dir: tempfile::TempDir,
    pub admin: PathBuf,
    pub sockets: HashMap<&'static str, PathBuf>,
    pub issuer: String,
    /// `http://<bound OIDC address>` (equals `issuer` unless overridden).
    pub oidc_url: String,
    pub jwt_ttl: u64,
    issuer_override: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

pub fn agent_id(node: &str) -> String {
    format!("spiffe://{TD}/spire/agent/devspire/{node}")
}

pub fn spiffe_id(path: &str) -> String {
    format!("spiffe://{TD}{path}")
}

impl Devspire {
    pub async fn start() -> Self {
        Self::start_with_ttl(300).await
    }

    pub async fn start_with_ttl(jwt_ttl: u64) -> Self {
        Self::start_with(jwt_ttl, None).await
    }

    pub async fn start_with(jwt_ttl: u64, issuer: Option<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Other uids must reach the agent sockets inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Self::start_in(dir, jwt_ttl, issuer).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        jwt_ttl: u64,
        issuer_override: Option<String>,
    ) -> Self {
        let admin = dir.path().join("admin.sock");
        let sockets: HashMap<&'static str, PathBuf> = NODES
            .iter()
            .map(|n| (*n, dir.path().join(format!("{n}.sock"))))
            .collect();
        let config = Config::new(RawConfig {
            state_dir: dir.path().join("state"),
            trust_domain: TD.parse().unwrap(),
            admin_socket: admin.clone(),
            oidc_listen: "127.0.0.1:0".parse().unwrap(),
            oidc_issuer: issuer_override.clone(),
            agents: NODES
                .iter()
                .map(|n| format!("{n}={}", sockets[n].display()).parse().unwrap())
                .collect(),
            jwt_ttl,
            x509_ttl: 3600,
        })
        .unwrap();
        let server = Server::bind(config).await.unwrap();
        let issuer = server.issuer().to_owned();
        let oidc_url = format!("http://{}", server.oidc_addr());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.serve(async {
            let _ = rx.await;
        }));
        Self {
            dir,
            admin,
            sockets,
            issuer,
            oidc_url,
            jwt_ttl,
            issuer_override,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the server and starts a new one on the same state directory and sockets.
    pub async fn restart(mut self) -> Self {
        self.stop().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::start_in(dir, self.jwt_ttl, self.issuer_override.clone()).await
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("devspire did not stop within 10 s")
                .unwrap()
                .unwrap();
        }
    }

    pub fn socket(&self, node: &str) -> &Path {
        &self.sockets[node]
    }

    pub async fn admin_channel(&self) -> Channel {
        hpcs_spire_api::channel::connect_unix(&self.admin, Duration::from_secs(10))
            .await
            .unwrap()
    }

    pub async fn entries(&self) -> EntryClient<Channel> {
        EntryClient::new(self.admin_channel().await)
    }

    /// Creates one entry (selectors as "type:value") and returns its ID; panics on failure.
    pub async fn create_entry(&self, path: &str, node: &str, selectors: &[&str]) -> String {
        let response = self
            .entries()
            .await
            .batch_create_entry(BatchCreateEntryRequest {
                entries: vec![entry(path, node, selectors)],
                output_mask: None,
            })
            .await
            .unwrap()
            .into_inner();
        let result = &response.results[0];
        let status = result.status.as_ref().unwrap();
        assert_eq!(status.code, 0, "create {path}: {}", status.message);
        result.entry.as_ref().unwrap().id.clone()
    }

    pub async fn delete_entry(&self, id: &str) {
        let response = self
            .entries()
            .await
            .batch_delete_entry(BatchDeleteEntryRequest {
                ids: vec![id.to_owned()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.results[0].status.as_ref().unwrap().code, 0);
    }

    /// The unmodified spiffe crate client on a node's socket.
    pub async fn workload(&self, node: &str) -> spiffe::WorkloadApiClient {
        spiffe::WorkloadApiClient::connect_to(format!("unix:{}", self.socket(node).display()))
            .await
            .unwrap()
    }
}

impl Drop for Devspire {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// An API entry for `spiffe://TD<path>` under `node`'s agent; selectors as "type:value".
pub fn entry(path: &str, node: &str, selectors: &[&str]) -> Entry {
    Entry {
        spiffe_id: Some(Spiffeid {
            trust_domain: TD.into(),
            path: path.into(),
        }),
        parent_id: Some(Spiffeid {
            trust_domain: TD.into(),
            path: format!("/spire/agent/devspire/{node}"),
        }),
        selectors: selectors
            .iter()
            .map(|s| {
                let (kind, value) = s.split_once(':').unwrap();
                Selector {
                    r#type: kind.into(),
                    value: value.into(),
                }
            })
            .collect(),
        ..Entry::default()
    }
}

/// The devspire binary (its `api` subcommands use the spiffe crate client).
pub fn devspire_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_devspire"))
}

/// Result of `devspire api fetch-jwt --json` run as some user.
pub struct Fetched {
    pub ok: bool,
    pub spiffe_ids: Vec<String>,
    pub tokens: Vec<String>,
    pub stderr: String,
}

fn parse_fetch(output: &std::process::Output) -> Fetched {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let mut spiffe_ids = Vec::new();
    let mut tokens = Vec::new();
    if output.status.success() {
        let list: Vec<serde_json::Value> = serde_json::from_str(stdout.trim()).unwrap();
        for item in list {
            spiffe_ids.push(item["spiffe_id"].as_str().unwrap().to_owned());
            if let Some(t) = item["token"].as_str() {
                tokens.push(t.to_owned());
            }
        }
    }
    Fetched {
        ok: output.status.success(),
        spiffe_ids,
        tokens,
        stderr,
    }
}

/// Runs `devspire api <args> --json` as `uid`/`gid` (no supplementary groups).
pub async fn api_as_uid(uid: u32, gid: u32, args: &[&str]) -> Fetched {
    let output = tokio::process::Command::new(devspire_bin())
        .arg("api")
        .args(args)
        .arg("--json")
        .uid(uid)
        .gid(gid)
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    parse_fetch(&output)
}

/// Runs `devspire api <args> --json` via `setpriv` as `uid`/`gid` with exactly the supplementary
/// groups `groups`.
pub async fn api_with_groups(uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> Fetched {
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    let groups_arg = if groups.is_empty() {
        "--clear-groups".to_owned()
    } else {
        format!("--groups={}", groups.join(","))
    };
    let output = tokio::process::Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg(groups_arg)
        .arg("--")
        .arg(devspire_bin())
        .arg("api")
        .args(args)
        .arg("--json")
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    parse_fetch(&output)
}

/// Runs `devspire api <args> --json` through `runuser -u <user>` (initgroups: the user's
/// supplementary groups, as after a login).
pub async fn api_as_user(user: &str, args: &[&str]) -> Fetched {
    let output = tokio::process::Command::new("runuser")
        .args(["-u", user, "--"])
        .arg(devspire_bin())
        .arg("api")
        .args(args)
        .arg("--json")
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    parse_fetch(&output)
}

/// Values of the test stack env file (`$HPCS_STACK_ENV`, else `<repo>/.stack/env`), if present.
pub fn stack_env() -> Option<HashMap<String, String>> {
    let path = std::env::var_os("HPCS_STACK_ENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.stack/env"),
        PathBuf::from,
    );
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| {
                let v = v.trim();
                let v = v
                    .strip_prefix('\'')
                    .and_then(|v| v.strip_suffix('\''))
                    .unwrap_or(v);
                (k.trim().to_owned(), v.to_owned())
            })
            .collect(),
    )
}

/// Whether a test needing the stack may skip (developer opt-out; never in CI).
pub fn may_skip_without_stack() -> bool {
    std::env::var("HPCS_ALLOW_NO_STACK").is_ok_and(|v| v == "1")
        && !std::env::var("CI").is_ok_and(|v| v == "true")
}
