//! The state shared by every devspire service: settings, the entry store, the JWT authority, the
//! X.509 CA, a cache of issued X.509-SVIDs, and a change signal for streaming RPCs.
//!
//! Keys live in `keys.json` (mode 0600) in the state directory, next to `entries.json`, so tokens
//! and certificates issued before a restart still validate after it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::attest::Workload;
use crate::fsutil;
use crate::ids::TrustDomain;
use crate::jwt::{Claims, Jwks, JwtAuthority, JwtError, KeyInfo, StoredJwtKey};
use crate::selectors::all_match;
use crate::store::{Entry, Store, StoreError};
use crate::x509::{CertificateAuthority, LeafSvid, StoredCa, X509Error};

/// File name of the key store inside the state directory.
pub const KEYS_FILE: &str = "keys.json";

const KEYS_VERSION: u32 = 1;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The state directory cannot be created.
    #[error("failed to create state directory {path}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file cannot be read.
    #[error("failed to read {path}")]
    ReadKeys {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file is malformed.
    #[error("failed to parse {path}")]
    ParseKeys {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The key file was made for another trust domain.
    #[error(
        "{path} belongs to trust domain {found:?}, not {expected:?}\nhint: use another --state-dir, or delete the directory to start afresh"
    )]
    TrustDomainMismatch {
        /// The file.
        path: PathBuf,
        /// Its trust domain.
        found: String,
        /// The configured one.
        expected: String,
    },
    /// A stored JWT key is invalid.
    #[error("invalid JWT key in {path}")]
    JwtKeys {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: JwtError,
    },
    /// The CA cannot be created or restored.
    #[error("failed to set up the X.509 CA")]
    Ca(#[source] X509Error),
    /// The key file cannot be written.
    #[error("failed to write {path}")]
    WriteKeys {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The entry store failed.
    #[error("entry store failure")]
    Store(#[from] StoreError),
    /// A blocking task died.
    #[error("a background task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Trust domain.
    pub trust_domain: TrustDomain,
    /// OIDC issuer URL; also the `iss` claim of JWT-SVIDs.
    pub issuer: String,
    /// Default JWT-SVID lifetime.
    pub jwt_ttl: Duration,
    /// Default X.509-SVID lifetime.
    pub x509_ttl: Duration,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    version: u32,
    trust_domain: String,
    ca: StoredCa,
    jwt_keys: Vec<StoredJwtKey>,
}

/// Seconds since the Unix epoch.
#[must_use]
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Shared state of a running devspire.
#[derive(Debug)]
pub struct Shared {
    settings: Settings,
    store: Store,
    keys_path: PathBuf,
    keys_writer: tokio::sync::Mutex<()>,
    jwt: RwLock<JwtAuthority>,
    ca: CertificateAuthority,
    svids: Mutex<HashMap<String, Arc<LeafSvid>>>,
    changes: watch::Sender<u64>,
    closing: watch::Sender<bool>,
}

impl Shared {
    /// Opens (or initialises) the state directory. Blocking.
    ///
    /// # Errors
    ///
    /// A [`StateError`] naming the file that cannot be read, parsed or written.
    pub fn open(state_dir: &Path, settings: Settings) -> Result<Self, StateError> {
        fsutil::ensure_private_dir(state_dir).map_err(|source| StateError::StateDir {
            path: state_dir.to_owned(),
            source,
        })?;
        let td = &settings.trust_domain;
        let keys_path = state_dir.join(KEYS_FILE);
        let (ca, jwt) = match std::fs::read(&keys_path) {
            Ok(bytes) => {
                let file: KeysFile =
                    serde_json::from_slice(&bytes).map_err(|source| StateError::ParseKeys {
                        path: keys_path.clone(),
                        source,
                    })?;
                if file.trust_domain != td.as_str() {
                    return Err(StateError::TrustDomainMismatch {
                        path: keys_path,
                        found: file.trust_domain,
                        expected: td.to_string(),
                    });
                }
                let ca = CertificateAuthority::from_stored(td, &file.ca).map_err(StateError::Ca)?;
                let mut jwt = JwtAuthority::from_stored(&file.jwt_keys).map_err(|source| {
                    StateError::JwtKeys {
                        path: keys_path.clone(),
                        source,
                    }
                })?;
                jwt.prune(unix_now());
                (ca, jwt)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let now = unix_now();
                let ca = CertificateAuthority::generate(td, now).map_err(StateError::Ca)?;
                let jwt = JwtAuthority::generate(now);
                write_keys(&keys_path, td, &ca, &jwt)?;
                (ca, jwt)
            }
            Err(source) => {
                return Err(StateError::ReadKeys {
                    path: keys_path,
                    source,
                });
            }
        };
        let store = Store::open(state_dir, td)?;
        Ok(Self {
            settings,
            store,
            keys_path,
            keys_writer: tokio::sync::Mutex::new(()),
            jwt: RwLock::new(jwt),
            ca,
            svids: Mutex::new(HashMap::new()),
            changes: watch::Sender::new(0),
            closing: watch::Sender::new(false),
        })
    }

    /// Settings.
    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The entry store.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A receiver that sees a new value whenever entries or keys change.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Tells streaming RPCs to re-evaluate.
    pub fn notify(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that turns `true` when the server shuts down (streams end then).
    #[must_use]
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Resolves once the server is shutting down.
    pub async fn until_closed(closing: &mut watch::Receiver<bool>) {
        // The guard `wait_for` returns is not Send; drop it here, not in callers' select arms.
        let _ = closing.wait_for(|c| *c).await;
    }

    /// Starts the shutdown of streaming RPCs.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Entries served to `workload` on the agent `agent_id`: parent is that agent, not expired,
    /// every selector matches. Sorted by SPIFFE ID then entry ID. May hash the workload's
    /// executable: call it off the async runtime.
    #[must_use]
    pub fn entries_for(&self, agent_id: &str, workload: &Workload) -> Vec<Arc<Entry>> {
        let now = unix_now();
        let snapshot = self.store.snapshot();
        let mut entries: Vec<Arc<Entry>> = snapshot
            .entries
            .values()
            .filter(|e| e.parent_id == agent_id && !e.is_expired(now))
            .filter(|e| all_match(&e.selectors, workload))
            .cloned()
            .collect();
        entries.sort_by(|a, b| (&a.spiffe_id, &a.id).cmp(&(&b.spiffe_id, &b.id)));
        entries
    }

    fn jwt(&self) -> std::sync::RwLockReadGuard<'_, JwtAuthority> {
        self.jwt.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The JWT bundle (JWKS JSON) of the trust domain, as the Workload API serves it.
    #[must_use]
    pub fn jwt_bundle(&self) -> Vec<u8> {
        serde_json::to_vec(&self.jwt().jwks(Jwks::Bundle)).unwrap_or_default()
    }

    /// The JWKS served by the OIDC discovery endpoint.
    #[must_use]
    pub fn oidc_jwks(&self) -> serde_json::Value {
        self.jwt().jwks(Jwks::Oidc)
    }

    /// The default or the entry's JWT-SVID lifetime.
    fn jwt_ttl(&self, entry: &Entry) -> Duration {
        u64::try_from(entry.jwt_svid_ttl)
            .ok()
            .filter(|s| *s > 0)
            .map_or(self.settings.jwt_ttl, Duration::from_secs)
    }

    /// Signs a JWT-SVID for `entry` and `audience`.
    #[must_use]
    pub fn sign_jwt(&self, entry: &Entry, audience: &[String]) -> String {
        let now = unix_now();
        self.jwt().sign(&Claims {
            sub: &entry.spiffe_id,
            aud: audience,
            exp: now.saturating_add(secs(self.jwt_ttl(entry))),
            iat: now,
            iss: Some(&self.settings.issuer),
        })
    }

    /// Validates a JWT-SVID for `audience`.
    ///
    /// # Errors
    ///
    /// The [`JwtError`] saying why it is invalid.
    pub fn validate_jwt(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<(String, serde_json::Map<String, serde_json::Value>), JwtError> {
        self.jwt()
            .verify(token, audience, &self.settings.trust_domain, unix_now())
    }

    /// The CA certificate (DER).
    #[must_use]
    pub fn ca_der(&self) -> &[u8] {
        self.ca.cert_der()
    }

    /// The cached X.509-SVID of `entry`, reissued once past half its life.
    ///
    /// # Errors
    ///
    /// An [`X509Error`] when issuing fails.
    pub fn x509_svid(&self, entry: &Entry) -> Result<Arc<LeafSvid>, X509Error> {
        let now = unix_now();
        let mut cache = self.svids.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(svid) = cache.get(&entry.id).filter(|s| now < s.refresh_at()) {
            return Ok(Arc::clone(svid));
        }
        let ttl = u64::try_from(entry.x509_svid_ttl)
            .ok()
            .filter(|s| *s > 0)
            .map_or(self.settings.x509_ttl, Duration::from_secs);
        let svid = Arc::new(
            self.ca
                .issue(&entry.spiffe_id, &entry.dns_names, ttl, now)?,
        );
        cache.insert(entry.id.clone(), Arc::clone(&svid));
        Ok(svid)
    }

    /// Drops cached X.509-SVIDs of deleted entries.
    pub fn forget_svids<'a>(&self, entry_ids: impl IntoIterator<Item = &'a str>) {
        let mut cache = self.svids.lock().unwrap_or_else(PoisonError::into_inner);
        for id in entry_ids {
            cache.remove(id);
        }
    }

    /// Public facts about the JWT keys.
    #[must_use]
    pub fn jwt_keys(&self) -> Vec<KeyInfo> {
        self.jwt().key_info()
    }

    /// When the next retired JWT key is due to leave the bundle.
    #[must_use]
    pub fn next_key_retirement(&self) -> Option<i64> {
        self.jwt().next_retirement()
    }

    /// Makes a fresh JWT key active. The previous one stays published until every token it can
    /// have signed has expired (the longest JWT TTL in use from now). Persists, then notifies.
    ///
    /// # Errors
    ///
    /// A [`StateError`] when the key file cannot be written; the rotation is then undone.
    pub async fn rotate_jwt_key(&self) -> Result<String, StateError> {
        let _guard = self.keys_writer.lock().await;
        let now = unix_now();
        let longest_entry_ttl = self
            .store
            .snapshot()
            .entries
            .values()
            .map(|e| i64::from(e.jwt_svid_ttl))
            .max()
            .unwrap_or(0);
        let keep_until = now.saturating_add(secs(self.settings.jwt_ttl).max(longest_entry_ttl));
        let stored_before = self.jwt().to_stored();
        let kid = {
            let mut jwt = self.jwt.write().unwrap_or_else(PoisonError::into_inner);
            jwt.rotate(now, keep_until)
        };
        if let Err(e) = self.persist_keys().await {
            if let Ok(restored) = JwtAuthority::from_stored(&stored_before) {
                *self.jwt.write().unwrap_or_else(PoisonError::into_inner) = restored;
            }
            return Err(e);
        }
        self.notify();
        Ok(kid)
    }

    /// Drops retired JWT keys whose tokens have expired; persists and notifies if any was.
    ///
    /// # Errors
    ///
    /// A [`StateError`] when the key file cannot be written.
    pub async fn prune_jwt_keys(&self) -> Result<bool, StateError> {
        let _guard = self.keys_writer.lock().await;
        let pruned = self
            .jwt
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .prune(unix_now());
        if pruned {
            self.persist_keys().await?;
            self.notify();
        }
        Ok(pruned)
    }

    async fn persist_keys(&self) -> Result<(), StateError> {
        let bytes = keys_file_bytes(&self.settings.trust_domain, &self.ca, &self.jwt());
        let path = self.keys_path.clone();
        tokio::task::spawn_blocking(move || fsutil::write_private_atomic(&path, &bytes))
            .await
            .map_err(StateError::Task)?
            .map_err(|source| StateError::WriteKeys {
                path: self.keys_path.clone(),
                source,
            })
    }
}

/// The key file's content (private keys: zeroed when dropped).
fn keys_file_bytes(
    td: &TrustDomain,
    ca: &CertificateAuthority,
    jwt: &JwtAuthority,
) -> zeroize::Zeroizing<Vec<u8>> {
    let file = KeysFile {
        version: KEYS_VERSION,
        trust_domain: td.to_string(),
        ca: ca.to_stored(),
        jwt_keys: jwt.to_stored(),
    };
    // Plain strings and numbers always serialise.
    zeroize::Zeroizing::new(serde_json::to_vec_pretty(&file).unwrap_or_default())
}

fn write_keys(
    path: &Path,
    td: &TrustDomain,
    ca: &CertificateAuthority,
    jwt: &JwtAuthority,
) -> Result<(), StateError> {
    let bytes = keys_file_bytes(td, ca, jwt);
    fsutil::write_private_atomic(path, &bytes).map_err(|source| StateError::WriteKeys {
        path: path.to_owned(),
        source,
    })
}
