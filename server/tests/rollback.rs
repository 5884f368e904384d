//! All-or-nothing: a failure at any step of a registration leaves nothing behind, in SPIRE or
//! Vault. Real OpenBao and devspire throughout; failures are real (a killed OpenBao, a missing
//! SPIRE socket) or injected between the service and the real backends, before or after the
//! backend acted (a lost answer).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{
    PrivateBao, TestServer, VaultNs, all_entries, client_token, create_body, entries_of, stack,
};
use hpcs_core::api::{ArtefactKind, CreateSecretRequest, Readers, VaultToken};
use hpcs_core::ids::{RoleName, SecretId, SpiffeId};
use hpcs_server::metrics::Metrics;
use hpcs_server::registry::SecretRecord;
use hpcs_server::secrets::{Aftermath, SecretService, SecretsError};
use hpcs_server::spire::{EntrySpec, EntryStore, EntryView, SpireEntries, SpireError};
use hpcs_server::vault::{
    IssuedToken, ReaderRole, Vault, VaultBackend, VaultError, VaultLogin, Versioned,
    owner_index_path,
};

/// Not a test: the entry point of the helper process that fetches SVIDs as another user (see
/// `common::fetch_jwt_as`); ignored in normal runs.
#[test]
#[ignore = "helper process entry point, run by common::fetch_jwt_as"]
fn zz_helper() {
    common::helper_main();
}

fn lost() -> VaultError {
    VaultError::Timeout {
        op: "injected",
        path: "injected".into(),
        timeout: Duration::from_secs(1),
    }
}

/// The real Vault backend, failing its `fail_at`-th write (1-based), before or after Vault acted.
struct FailingVault {
    inner: Vault,
    fail_at: usize,
    after: bool,
    writes: AtomicUsize,
}

impl FailingVault {
    async fn write<T>(
        &self,
        op: impl Future<Output = Result<T, VaultError>>,
    ) -> Result<T, VaultError> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n != self.fail_at {
            return op.await;
        }
        if self.after {
            op.await?;
        }
        Err(lost())
    }
}

#[async_trait]
impl VaultBackend for FailingVault {
    async fn write_policy(&self, name: &RoleName, hcl: &str) -> Result<(), VaultError> {
        self.write(self.inner.write_policy(name, hcl)).await
    }
    async fn delete_policy(&self, name: &RoleName) -> Result<(), VaultError> {
        self.inner.delete_policy(name).await
    }
    async fn write_reader_role(&self, role: &ReaderRole) -> Result<(), VaultError> {
        self.write(self.inner.write_reader_role(role)).await
    }
    async fn delete_reader_role(&self, name: &RoleName) -> Result<(), VaultError> {
        self.inner.delete_reader_role(name).await
    }
    async fn create_write_token(
        &self,
        policy: &RoleName,
        id: &SecretId,
    ) -> Result<IssuedToken, VaultError> {
        self.write(self.inner.create_write_token(policy, id)).await
    }
    async fn destroy_key(&self, id: &SecretId) -> Result<(), VaultError> {
        self.inner.destroy_key(id).await
    }
    async fn read_record(
        &self,
        id: &SecretId,
    ) -> Result<Option<Versioned<SecretRecord>>, VaultError> {
        self.inner.read_record(id).await
    }
    async fn create_record(&self, record: &SecretRecord) -> Result<u64, VaultError> {
        self.write(self.inner.create_record(record)).await
    }
    async fn update_record(&self, record: &SecretRecord, version: u64) -> Result<u64, VaultError> {
        self.write(self.inner.update_record(record, version)).await
    }
    async fn delete_record(&self, id: &SecretId) -> Result<(), VaultError> {
        self.inner.delete_record(id).await
    }
    async fn index_owner(&self, owner: &SpiffeId, id: &SecretId) -> Result<(), VaultError> {
        self.write(self.inner.index_owner(owner, id)).await
    }
    async fn unindex_owner(&self, owner: &SpiffeId, id: &SecretId) -> Result<(), VaultError> {
        self.inner.unindex_owner(owner, id).await
    }
    async fn owned(&self, owner: &SpiffeId) -> Result<Vec<SecretId>, VaultError> {
        self.inner.owned(owner).await
    }
    async fn all_records(&self) -> Result<Vec<SecretId>, VaultError> {
        self.inner.all_records().await
    }
    async fn check(&self) -> Result<(), VaultError> {
        self.inner.check().await
    }
}

/// The real SPIRE client, whose create answer is lost after SPIRE created the entries.
struct LostSpireAnswer(SpireEntries);

#[async_trait]
impl EntryStore for LostSpireAnswer {
    async fn create_entries(&self, specs: &[EntrySpec]) -> Result<Vec<String>, SpireError> {
        self.0.create_entries(specs).await?;
        Err(SpireError::Timeout {
            op: "BatchCreateEntry",
            timeout: Duration::from_secs(1),
        })
    }
    async fn delete_entries(&self, ids: &[String]) -> Result<(), SpireError> {
        self.0.delete_entries(ids).await
    }
    async fn list_by_spiffe_id(&self, id: &SpiffeId) -> Result<Vec<EntryView>, SpireError> {
        self.0.list_by_spiffe_id(id).await
    }
    async fn check(&self) -> Result<(), SpireError> {
        self.0.check().await
    }
}

fn request() -> CreateSecretRequest {
    CreateSecretRequest {
        kind: ArtefactKind::Data,
        name: "input".parse().unwrap(),
        readers: Readers {
            users: ["alice".parse().unwrap()].into(),
            groups: ["hpcs-users".parse().unwrap()].into(),
        },
        compute_nodes: ["node1".parse().unwrap(), "node2".parse().unwrap()].into(),
        expires_at: None,
    }
}

async fn server_vault(v: &VaultNs) -> Vault {
    let token = v.server_token().await;
    Vault::new(v.settings(), VaultLogin::Token(VaultToken::new(token))).unwrap()
}

fn service(
    stack: &common::Stack,
    v: &VaultNs,
    spire: Arc<dyn EntryStore>,
    vault: Arc<dyn VaultBackend>,
) -> SecretService {
    SecretService::new(
        spire,
        vault,
        stack.trust_domain.parse().unwrap(),
        v.kv_mount.clone(),
        stack.agents(),
        Arc::new(Metrics::new()),
    )
}

/// Asserts nothing of secret `id` exists in SPIRE or Vault.
async fn assert_nothing_left(stack: &common::Stack, v: &VaultNs, owner: &SpiffeId, id: &SecretId) {
    let reader = format!("spiffe://{}/hpcs/secret/{id}", stack.trust_domain);
    assert!(
        entries_of(stack, &reader).await.is_empty(),
        "SPIRE entries of {id} left"
    );
    let kv = &v.kv_mount;
    for p in [
        format!("auth/{}/role/hpcs-secret-{id}", v.auth_mount),
        format!("sys/policy/hpcs-secret-{id}-read"),
        format!("sys/policy/hpcs-secret-{id}-write"),
        format!("{kv}/metadata/_registry/secrets/{id}"),
        format!("{kv}/metadata/{}/{id}", owner_index_path(owner)),
        format!("{kv}/metadata/{id}"),
    ] {
        assert!(!v.exists(&p).await, "{p} left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_any_vault_step_rolls_everything_back() {
    let Some(stack) = stack() else { return };
    let v = VaultNs::for_stack(&stack);
    let owner = stack.client_id("alice");
    // Writes of a registration: read policy, role, write policy, record, owner index, token.
    for fail_at in 1..=6 {
        for after in [false, true] {
            let vault = FailingVault {
                inner: server_vault(&v).await,
                fail_at,
                after,
                writes: AtomicUsize::new(0),
            };
            let svc = service(&stack, &v, Arc::new(stack.spire()), Arc::new(vault));
            let err = svc.create(&owner, request()).await.unwrap_err();
            let SecretsError::Backend {
                id,
                aftermath,
                cleanup_failures,
                ..
            } = err
            else {
                panic!("step {fail_at}: {err:?}");
            };
            assert_eq!(aftermath, Aftermath::NothingChanged);
            assert!(
                cleanup_failures.is_empty(),
                "step {fail_at} after={after}: {cleanup_failures:?}"
            );
            assert_nothing_left(&stack, &v, &owner, &id).await;
        }
    }
    // And without injected failures the same service registers.
    let svc = service(
        &stack,
        &v,
        Arc::new(stack.spire()),
        Arc::new(server_vault(&v).await),
    );
    let (record, _) = svc.create(&owner, request()).await.unwrap();
    assert_eq!(record.entries.len(), 4);
    v.cleanup(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_created_behind_a_lost_answer_are_found_and_deleted() {
    let Some(stack) = stack() else { return };
    let v = VaultNs::for_stack(&stack);
    let owner = stack.client_id("alice");
    let svc = service(
        &stack,
        &v,
        Arc::new(LostSpireAnswer(stack.spire())),
        Arc::new(server_vault(&v).await),
    );
    let err = svc.create(&owner, request()).await.unwrap_err();
    let SecretsError::Backend {
        id,
        cleanup_failures,
        ..
    } = err
    else {
        panic!("{err:?}");
    };
    assert!(cleanup_failures.is_empty(), "{cleanup_failures:?}");
    assert_nothing_left(&stack, &v, &owner, &id).await;
    v.cleanup(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_stopped_mid_registration_leaves_no_spire_entries() {
    let Some(stack) = stack() else { return };
    let mut bao = PrivateBao::start(&stack).await;
    let v = VaultNs::create(&bao.addr, &bao.token, &stack.oidc_url, &stack.trust_domain);
    let srv = TestServer::start_with(&stack, v, |_| {}).await;
    let alice = client_token(&stack, "alice");
    // The server works against this Vault...
    let (s, created) = srv
        .call(
            Some(&alice),
            "POST",
            "/api/v1/secrets",
            Some(create_body(&["alice"], &[], &["node1"])),
        )
        .await;
    assert_eq!(s, 201, "{created}");

    // ... until it stops. SPIRE is still up, so the entries the registration creates first
    // must be deleted again. A group name unique to this test marks them.
    bao.kill();
    let marker = format!("g{}", common::ns());
    let (s, body) = srv
        .call(
            Some(&alice),
            "POST",
            "/api/v1/secrets",
            Some(create_body(&["alice"], &[&marker], &["node1", "node2"])),
        )
        .await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["kind"], "unavailable");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was changed"),
        "{body}"
    );
    let selector = format!("unix:supplementary_group:{marker}");
    let left: Vec<_> = all_entries(&stack)
        .await
        .into_iter()
        .filter(|(_, sels)| sels.contains(&selector))
        .collect();
    assert!(left.is_empty(), "SPIRE entries left behind: {left:?}");
    let metrics = srv.state.metrics().render();
    assert!(
        metrics.contains(
            "hpcs_backend_failures_total{backend=\"vault\",op=\"write the read policy\"} 1"
        ),
        "{metrics}"
    );
    let (s, ready) = srv.call(None, "GET", "/readyz", None).await;
    assert_eq!(s, 503);
    assert_eq!(ready["checks"]["vault"], "failing");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_unreachable_registration_changes_nothing_in_vault() {
    let Some(stack) = stack() else { return };
    let v = VaultNs::for_stack(&stack);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-spire.sock");
    let srv = TestServer::start_with(&stack, v, |s| {
        s.spire_admin_socket = missing.clone();
        s.spire_timeout = Duration::from_secs(2);
    })
    .await;
    let alice = client_token(&stack, "alice");
    let (s, body) = srv
        .call(
            Some(&alice),
            "POST",
            "/api/v1/secrets",
            Some(create_body(&["alice"], &[], &["node1"])),
        )
        .await;
    assert_eq!(s, 503, "{body}");
    let v = &srv.vault;
    let (_, list) = v
        .call(
            None,
            "LIST",
            &format!("{}/metadata/_registry/secrets", v.kv_mount),
            None,
        )
        .await;
    assert!(list["data"]["keys"].is_null(), "registry not empty: {list}");
    let (_, roles) = v
        .call(None, "LIST", &format!("auth/{}/role", v.auth_mount), None)
        .await;
    assert_eq!(roles["data"]["keys"], serde_json::json!(["hpcs-server"]));
    let (s, ready) = srv.call(None, "GET", "/readyz", None).await;
    assert_eq!(s, 503);
    assert_eq!(ready["checks"]["spire_server"], "failing");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_secrets_are_revoked_by_the_sweep() {
    let Some(stack) = stack() else { return };
    let v = VaultNs::for_stack(&stack);
    let owner = stack.client_id("alice");
    let svc = service(
        &stack,
        &v,
        Arc::new(stack.spire()),
        Arc::new(server_vault(&v).await),
    );
    let mut req = request();
    req.expires_at = Some(time::OffsetDateTime::now_utc() + Duration::from_secs(2));
    let (short, _) = svc.create(&owner, req).await.unwrap();
    let (long, _) = svc.create(&owner, request()).await.unwrap();
    assert_eq!(svc.sweep_expired().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(svc.sweep_expired().await.unwrap(), 1);
    assert_nothing_left(&stack, &v, &owner, &short.id).await;
    assert_eq!(svc.get(&owner, &long.id).await.unwrap().id, long.id);
    v.cleanup(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_versions_conflict_and_failed_changes_undo_their_additions() {
    let Some(stack) = stack() else { return };
    let v = VaultNs::for_stack(&stack);
    let owner = stack.client_id("alice");
    let vault = Arc::new(server_vault(&v).await);
    let svc = service(&stack, &v, Arc::new(stack.spire()), vault.clone());
    let (record, _) = svc.create(&owner, request()).await.unwrap();
    // Another replica bumps the record between our read and our write: simulate by writing
    // the same record again (version 2), then updating with the version we read (1).
    let current = vault.read_record(&record.id).await.unwrap().unwrap();
    vault.update_record(&record, current.version).await.unwrap();
    let err = vault
        .update_record(&record, current.version)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Conflict { .. }), "{err:?}");
    // A change through the service still works: it reads the fresh version.
    let mut add = hpcs_core::api::UpdateSecretRequest::default();
    add.add_readers.users.insert("bob".parse().unwrap());
    let updated = svc.update(&owner, &record.id, add).await.unwrap();
    assert_eq!(updated.entries.len(), 6);
    assert_eq!(
        entries_of(&stack, updated.reader_id.as_str()).await.len(),
        6
    );

    // A change whose record update fails deletes the entries it added: still 6, not 8.
    let failing = FailingVault {
        inner: server_vault(&v).await,
        fail_at: 1,
        after: false,
        writes: AtomicUsize::new(0),
    };
    let svc = service(&stack, &v, Arc::new(stack.spire()), Arc::new(failing));
    let mut add = hpcs_core::api::UpdateSecretRequest::default();
    add.add_readers.users.insert("carol".parse().unwrap());
    let err = svc.update(&owner, &record.id, add).await.unwrap_err();
    assert!(
        matches!(
            err,
            SecretsError::Backend {
                aftermath: Aftermath::NothingChanged,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        entries_of(&stack, updated.reader_id.as_str()).await.len(),
        6
    );
    assert_eq!(svc.get(&owner, &record.id).await.unwrap(), updated);
    v.cleanup(&stack).await;
}
