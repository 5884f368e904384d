//! Load test of the HPCS server against the real test stack (OpenBao and devspire).
//!
//! ```text
//! scripts/test-stack up
//! cargo run --release -p hpcs-server --example load -- [--clients 50] [--registrations 1000]
//! ```
//!
//! Sets up its own Vault namespace with deploy/vault/setup, runs the server in-process on
//! 127.0.0.1:0 (its own runtime and worker threads), and drives it with `--clients` concurrent
//! HTTP clients, each with its own connection, alternating the identities of alice and bob
//! (real JWT-SVIDs from devspire's laptop agent). Every registration names 2 users on 2 nodes
//! (4 SPIRE entries, 3 Vault policies/roles, 2 registry writes, 1 token). Then it checks that no
//! registration was lost or duplicated (API listing, Vault registry, SPIRE entries), revokes
//! everything with the same concurrency, and checks nothing is left. Prints a Markdown report.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hpcs_core::ids::{ClientPrefix, NodeName, SpiffeId};
use hpcs_server::config::{Settings, Transport};
use hpcs_server::run::{Assembled, assemble};
use hpcs_server::secrets::AgentMap;
use hpcs_server::server::serve;
use hpcs_server::spire::{EntrySpec, EntryStore, SpireEntries, SpireError};
use hpcs_server::vault::VaultSettings;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// Load test of the HPCS server against the test stack.
#[derive(Debug, Parser)]
struct Args {
    /// Concurrent clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Registrations in total.
    #[arg(long, default_value_t = 1000)]
    registrations: usize,
    /// Server worker threads.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Run a private devspire with its state on tmpfs (/dev/shm) instead of the stack's: the
    /// stack's devspire is a debug build whose entry file (rewritten and fsynced whole on every
    /// commit) also holds every other test's entries, on disk.
    #[arg(long)]
    private_devspire: bool,
    /// The devspire binary for --private-devspire (default: the stack's).
    #[arg(long, value_name = "PATH", requires = "private_devspire")]
    devspire_bin: Option<std::path::PathBuf>,
    /// (internal) Print a JWT-SVID: SOCKET AUDIENCE SPIFFE_ID.
    #[arg(long, num_args = 3, hide = true)]
    fetch_jwt: Option<Vec<String>>,
}

fn fetch_jwt_here(args: &[String]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token = rt.block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", args[0]))
            .await
            .unwrap();
        let id: spiffe::SpiffeId = args[2].parse().unwrap();
        client
            .fetch_jwt_svid([args[1].as_str()], Some(&id))
            .await
            .unwrap()
            .token()
            .to_owned()
    });
    println!("{token}");
}

fn fetch_jwt_as(user: &hpcs_test_support::TestUser, socket: &Path, id: &str) -> String {
    // runuser sets the user's groups as a login would.
    let out = Command::new("runuser")
        .args(["-u", user.name, "--"])
        .arg(std::env::current_exe().unwrap())
        .arg("--fetch-jwt")
        .arg(socket)
        .arg("hpcs-server")
        .arg(id)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fetching a JWT-SVID as {}: {}",
        user.name,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn ensure(spire: &SpireEntries, spec: EntrySpec) {
    match spire.create_entries(std::slice::from_ref(&spec)).await {
        Ok(_) | Err(SpireError::Refused { code: 6, .. }) => {}
        Err(e) => panic!("cannot register {}: {e:?}", spec.spiffe_id),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

struct Phase {
    latencies: Vec<Duration>,
    failures: BTreeMap<u16, usize>,
    elapsed: Duration,
}

impl Phase {
    fn row(&self, name: &str) -> String {
        let mut l = self.latencies.clone();
        l.sort();
        format!(
            "| {name} | {} | {} | {:.1} | {} | {} | {} | {} |",
            l.len(),
            self.failures.values().sum::<usize>(),
            l.len() as f64 / self.elapsed.as_secs_f64(),
            ms(percentile(&l, 50.0)),
            ms(percentile(&l, 90.0)),
            ms(percentile(&l, 99.0)),
            ms(l.last().copied().unwrap_or_default()),
        )
    }
}

/// Runs `total` jobs over `clients` workers; `job(i, client)` returns the status and body.
async fn drive<F, Fut>(clients: usize, total: usize, job: F) -> (Phase, Vec<Value>)
where
    F: Fn(usize, reqwest::Client) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (u16, Value)> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results = Arc::new(Mutex::new((Vec::new(), BTreeMap::new(), Vec::new())));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (job, next, results) = (job.clone(), next.clone(), results.clone());
            tokio::spawn(async move {
                // One connection pool per client, as separate laptops would have.
                let http = reqwest::Client::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= total {
                        break;
                    }
                    let t = Instant::now();
                    let (status, body) = job(i, http.clone()).await;
                    let d = t.elapsed();
                    let mut r = results.lock().await;
                    if (200..300).contains(&status) {
                        r.0.push(d);
                        r.2.push(body);
                    } else {
                        *r.1.entry(status).or_insert(0) += 1;
                        eprintln!("request {i}: {status} {body}");
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed();
    let (latencies, failures, bodies) = Arc::try_unwrap(results).ok().unwrap().into_inner();
    (
        Phase {
            latencies,
            failures,
            elapsed,
        },
        bodies,
    )
}

async fn vault_call(addr: &str, token: &str, method: &str, path: &str) -> Value {
    let res = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{addr}/v1/{path}"))
        .header("X-Vault-Token", token)
        .send()
        .await
        .unwrap();
    res.json().await.unwrap_or(Value::Null)
}

/// A devspire of our own, stopped on drop.
struct PrivateDevspire {
    admin: std::path::PathBuf,
    oidc_url: String,
    sockets: BTreeMap<&'static str, std::path::PathBuf>,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for PrivateDevspire {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_private_devspire(stack: &hpcs_test_support::Stack, bin: &Path) -> PrivateDevspire {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::Builder::new()
        .prefix("hpcs-load-")
        .tempdir_in("/dev/shm")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sockets: BTreeMap<&'static str, std::path::PathBuf> = ["node1", "node2", "laptop"]
        .into_iter()
        .map(|n| (n, dir.path().join(format!("{n}.sock"))))
        .collect();
    let admin = dir.path().join("admin.sock");
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--trust-domain", &stack.trust_domain])
        .arg("--admin-socket")
        .arg(&admin)
        .args(["--oidc-listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (n, s) in &sockets {
        cmd.arg("--agent").arg(format!("{n}={}", s.display()));
    }
    let mut child = cmd.spawn().unwrap();
    let oidc_url = format!("http://127.0.0.1:{port}");
    let discovery = format!("{oidc_url}/.well-known/openid-configuration");
    for _ in 0..100 {
        if http_ok(&discovery) && std::os::unix::net::UnixStream::connect(&admin).is_ok() {
            return PrivateDevspire {
                admin,
                oidc_url,
                sockets,
                child,
                _dir: dir,
            };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("private devspire did not start");
}

/// Whether GET `url` answers 200 (a blocking probe on a throwaway runtime).
fn http_ok(url: &str) -> bool {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { reqwest::get(url).await.is_ok_and(|r| r.status() == 200) })
}

fn main() {
    let args = Args::parse();
    if let Some(a) = &args.fetch_jwt {
        fetch_jwt_here(a);
        return;
    }
    let mut stack = hpcs_test_support::Stack::load();
    let private = args.private_devspire.then(|| {
        let bin = args
            .devspire_bin
            .clone()
            .unwrap_or_else(|| stack.devspire_bin.clone());
        start_private_devspire(&stack, &bin)
    });
    if let Some(p) = &private {
        stack.devspire_admin_socket = p.admin.clone();
        stack.devspire_oidc_url = p.oidc_url.clone();
        for a in &mut stack.agents {
            a.socket = p.sockets[a.name].clone();
        }
    }
    let ns = format!("load{:08x}", rand::random::<u32>());
    let (kv, auth, token_role, policy) = (
        format!("hpcs-{ns}"),
        format!("jwt-{ns}"),
        format!("hpcs-client-write-{ns}"),
        format!("hpcs-server-{ns}"),
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/vault/setup");
    let out = Command::new(script)
        .env("BAO_ADDR", &stack.bao_addr)
        .env("BAO_TOKEN", &stack.bao_token)
        .args(["--oidc-discovery-url", &stack.devspire_oidc_url])
        .args([
            "--server-spiffe-id",
            &format!("spiffe://{}/hpcs/server", stack.trust_domain),
        ])
        .args(["--kv-mount", &kv, "--auth-mount", &auth])
        .args(["--token-role", &token_role, "--server-policy", &policy])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let td = stack.trust_domain.clone();
    let laptop: SpiffeId = stack.agent("laptop").id.parse().unwrap();
    let client_id = |u: &str| format!("spiffe://{td}/client/{u}");
    let dir = tempfile::tempdir().unwrap();
    let mut vault = VaultSettings::with_defaults(stack.bao_addr.parse().unwrap());
    vault.kv_mount = kv.clone();
    vault.auth_mount = auth;
    vault.writer_token_role = token_role;
    let settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        transport: Transport::PlainHttp,
        audience: "hpcs-server".into(),
        audit_log: dir.path().join("audit.jsonl"),
        max_body_bytes: 64 * 1024,
        request_timeout: Duration::from_secs(60),
        trust_domain: td.parse().unwrap(),
        client_prefix: ClientPrefix::default(),
        spire_admin_socket: stack.devspire_admin_socket.clone(),
        spire_timeout: Duration::from_secs(10),
        agents: AgentMap {
            explicit: ["node1", "node2"]
                .iter()
                .map(|n| {
                    (
                        n.parse::<NodeName>().unwrap(),
                        stack.agent(n).id.parse().unwrap(),
                    )
                })
                .collect(),
            template: None,
        },
        workload_socket: stack.agent("laptop").socket.clone(),
        vault,
        expiry_sweep: None,
        secret_ttl: None,
    };

    // The server: its own runtime and threads.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .enable_all()
        .build()
        .unwrap();
    let (base, state, stop) = server_rt.block_on(async {
        let spire = SpireEntries::new(&stack.devspire_admin_socket, Duration::from_secs(10));
        ensure(
            &spire,
            EntrySpec {
                spiffe_id: format!("spiffe://{td}/hpcs/server").parse().unwrap(),
                parent_id: laptop.clone(),
                selectors: vec![("unix".into(), "uid:0".into())],
                expires_at: 0,
            },
        )
        .await;
        for u in [&stack.alice, &stack.bob] {
            ensure(
                &spire,
                EntrySpec {
                    spiffe_id: client_id(u.name).parse().unwrap(),
                    parent_id: laptop.clone(),
                    selectors: vec![("unix".into(), format!("uid:{}", u.uid))],
                    expires_at: 0,
                },
            )
            .await;
        }
        let Assembled {
            state,
            source: _source,
        } = assemble(&settings).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(serve(
            listener,
            async {
                let _ = rx.await;
            },
            state.clone(),
        ));
        (base, state, (tx, handle))
    });

    let socket = stack.agent("laptop").socket.clone();
    let tokens = Arc::new([
        fetch_jwt_as(&stack.alice, &socket, &client_id("alice")),
        fetch_jwt_as(&stack.bob, &socket, &client_id("bob")),
    ]);

    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = load_rt.block_on(async {
        let body = json!({
            "kind": "image",
            "name": "load",
            "readers": { "users": ["alice", "bob"] },
            "compute_nodes": ["node1", "node2"],
        });
        let (t, b) = (tokens.clone(), base.clone());
        let (create, created) = drive(args.clients, args.registrations, move |i, http| {
            let (t, b, body) = (t.clone(), b.clone(), body.clone());
            async move {
                let res = http
                    .post(format!("{b}/api/v1/secrets"))
                    .bearer_auth(&t[i % 2])
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
            }
        })
        .await;

        // Nothing lost, nothing duplicated.
        let ids: Vec<String> = created
            .iter()
            .map(|c| c["secret"]["id"].as_str().unwrap().to_owned())
            .collect();
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "duplicate secret IDs");
        let mut listed = BTreeSet::new();
        for t in tokens.iter() {
            let l: Value = reqwest::Client::new()
                .get(format!("{base}/api/v1/secrets"))
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for s in l["secrets"].as_array().unwrap() {
                assert!(listed.insert(s["id"].as_str().unwrap().to_owned()), "listed twice");
            }
        }
        let registry = vault_call(
            &stack.bao_addr,
            &stack.bao_token,
            "LIST",
            &format!("{kv}/metadata/_registry/secrets"),
        )
        .await;
        let in_vault: BTreeSet<String> = registry["data"]["keys"]
            .as_array()
            .map(|a| a.iter().map(|k| k.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        let returned: BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!(listed, returned, "API listing differs from the registrations");
        assert_eq!(in_vault, returned, "Vault registry differs from the registrations");
        let spire = SpireEntries::new(&stack.devspire_admin_socket, Duration::from_secs(30));
        for id in &ids {
            let n = spire
                .list_by_spiffe_id(&format!("spiffe://{td}/hpcs/secret/{id}").parse().unwrap())
                .await
                .unwrap()
                .len();
            assert_eq!(n, 4, "secret {id} has {n} SPIRE entries, not 4");
        }

        let (t, b, ids2) = (tokens.clone(), base.clone(), Arc::new(created.clone()));
        let total = ids.len();
        let (revoke, _) = drive(args.clients, total, move |i, http| {
            let (t, b, created) = (t.clone(), b.clone(), ids2.clone());
            async move {
                let id = created[i]["secret"]["id"].as_str().unwrap();
                let owner = created[i]["secret"]["owner"].as_str().unwrap();
                let token = if owner.ends_with("/alice") { &t[0] } else { &t[1] };
                let res = http
                    .delete(format!("{b}/api/v1/secrets/{id}"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap();
                (res.status().as_u16(), Value::Null)
            }
        })
        .await;
        let registry = vault_call(
            &stack.bao_addr,
            &stack.bao_token,
            "LIST",
            &format!("{kv}/metadata/_registry/secrets"),
        )
        .await;
        assert!(registry["data"]["keys"].is_null(), "registry not empty after revocation");
        for id in &ids {
            let left = spire
                .list_by_spiffe_id(&format!("spiffe://{td}/hpcs/secret/{id}").parse().unwrap())
                .await
                .unwrap();
            assert!(left.is_empty(), "secret {id} kept SPIRE entries");
        }
        let audit = hpcs_server::audit::verify_file(&settings.audit_log).unwrap();
        format!(
            "devspire: {}; clients: {}, registrations: {}, server worker threads: {}, registered {} and listed, \
             found in the Vault registry and SPIRE ({} entries each) exactly once; all revoked; \
             audit chain of {audit} records intact.\n\n\
             | phase | ok | failed | per second | p50 ms | p90 ms | p99 ms | max ms |\n\
             |---|---|---|---|---|---|---|---|\n{}\n{}\n",
            if args.private_devspire { "private, state on tmpfs" } else { "the test stack's" },
            args.clients,
            args.registrations,
            args.server_threads,
            ids.len(),
            4,
            create.row("register (POST)"),
            revoke.row("revoke (DELETE)"),
        )
    });
    println!("{report}");
    let metrics = state.metrics();
    eprintln!(
        "server counters: registrations ok {}, failed {}; rollbacks {}",
        metrics.counter("hpcs_registrations_total", &[("result", "ok")]),
        metrics.counter("hpcs_registrations_total", &[("result", "failed")]),
        metrics.counter("hpcs_rollbacks_total", &[("result", "complete")])
    );
    // Mean latency of each backend call, from the server's own histograms.
    let text = metrics.render();
    let mut sums = BTreeMap::new();
    for line in text.lines() {
        for (suffix, idx) in [("_sum", 0), ("_count", 1)] {
            let prefix = format!("hpcs_backend_duration_seconds{suffix}{{");
            if let Some(rest) = line.strip_prefix(&prefix) {
                let (labels, value) = rest.rsplit_once("} ").unwrap();
                let e = sums.entry(labels.to_owned()).or_insert([0.0_f64; 2]);
                e[idx] = value.parse().unwrap();
            }
        }
    }
    eprintln!("| backend call | calls | mean ms |\n|---|---|---|");
    for (labels, [sum, count]) in sums {
        eprintln!("| {labels} | {count} | {:.2} |", sum / count * 1000.0);
    }
    server_rt.block_on(async {
        let (tx, handle) = stop;
        let _ = tx.send(());
        handle.await.unwrap().unwrap();
        // Leave the shared OpenBao as we found it.
        for path in [
            format!("sys/mounts/{kv}"),
            format!("sys/auth/jwt-{ns}"),
            format!("auth/token/roles/hpcs-client-write-{ns}"),
            format!("sys/policy/{policy}"),
        ] {
            vault_call(&stack.bao_addr, &stack.bao_token, "DELETE", &path).await;
        }
    });
}
