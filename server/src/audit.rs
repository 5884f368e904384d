//! Append-only audit log of every decision, as JSON lines chained by SHA-256.
//!
//! Each line is an [`AuditRecord`] whose `hash` is `sha256(prev || "\n" || json)` where `json` is
//! the record serialised without its `hash` field (fields in declaration order) and `prev` is the
//! previous line's hash (64 zeros for the first). Deleting, reordering or editing a line breaks
//! the chain at that point; [`verify_file`] finds it. The file is opened in append mode with mode
//! 0600, each record is written with one `write` call and synced to disk before the decision's
//! answer leaves the server.
//!
//! The chain proves integrity relative to the last hash you trust: ship the log (or periodically
//! its last hash) to another host to detect truncation.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The log could not be opened.
    #[error("failed to open audit log {path}")]
    Open {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The log could not be read.
    #[error("failed to read audit log {path}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A record could not be written.
    #[error("failed to write audit log {path}")]
    Write {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The chain is broken.
    #[error("audit log {path} is broken at line {line}: {problem}")]
    Broken {
        /// Path.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        problem: String,
    },
}

/// Outcome of a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused (authentication, authorisation, validation).
    Denied,
    /// Allowed but failed (backend down); rolled back where possible.
    Failed,
}

/// One decision, as the server hands it to the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// Caller's SPIFFE ID, if authenticated.
    pub actor: Option<String>,
    /// What was attempted, e.g. `secret.create`.
    pub action: &'static str,
    /// The secret concerned.
    pub secret_id: Option<String>,
    /// Outcome.
    pub outcome: Outcome,
    /// Short stable reason for denials and failures.
    pub reason: Option<String>,
    /// Remote address (informational; never used for identity).
    pub peer: Option<String>,
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1-based sequence number.
    pub seq: u64,
    /// Time (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Caller.
    pub actor: Option<String>,
    /// Action.
    pub action: String,
    /// Secret ID.
    pub secret_id: Option<String>,
    /// Outcome.
    pub outcome: Outcome,
    /// Reason.
    pub reason: Option<String>,
    /// Remote address.
    pub peer: Option<String>,
    /// Previous record's hash.
    pub prev: String,
    /// This record's hash.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

impl AuditRecord {
    fn compute_hash(&self) -> String {
        let mut unsealed = self.clone();
        unsealed.hash = String::new();
        let json = serde_json::to_string(&unsealed).expect("audit records serialize");
        let mut h = Sha256::new();
        h.update(self.prev.as_bytes());
        h.update(b"\n");
        h.update(json.as_bytes());
        hex::encode(h.finalize())
    }
}

struct Inner {
    file: File,
    path: PathBuf,
    seq: u64,
    last_hash: String,
}

/// The audit log writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log at `path` and continues its chain.
    ///
    /// # Errors
    ///
    /// [`AuditError`] if it cannot be opened or read, or its last line is not a valid record.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let open_err = |source| AuditError::Open {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)
            .map_err(open_err)?;
        let (seq, last_hash) = match last_line(&mut file).map_err(|source| AuditError::Read {
            path: path.to_owned(),
            source,
        })? {
            None => (0, GENESIS.to_owned()),
            Some(line) => {
                let rec: AuditRecord =
                    serde_json::from_str(&line).map_err(|e| AuditError::Broken {
                        path: path.to_owned(),
                        line: 0,
                        problem: format!("last line is not a record: {e}"),
                    })?;
                if rec.compute_hash() != rec.hash {
                    return Err(AuditError::Broken {
                        path: path.to_owned(),
                        line: rec.seq,
                        problem: "the last record's hash does not match its content".into(),
                    });
                }
                (rec.seq, rec.hash)
            }
        };
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                file,
                path: path.to_owned(),
                seq,
                last_hash,
            })),
        })
    }

    /// Appends one record and syncs it to disk (off the async runtime).
    ///
    /// # Errors
    ///
    /// [`AuditError::Write`] if the record could not be written.
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || append(&inner, event))
            .await
            .unwrap_or_else(|e| {
                Err(AuditError::Write {
                    path: PathBuf::new(),
                    source: std::io::Error::other(e),
                })
            })
    }

    /// Whether the log file is still writable (readiness).
    #[must_use]
    pub fn is_writable(&self) -> bool {
        self.inner
            .lock()
            .is_ok_and(|g| g.file.metadata().is_ok_and(|m| !m.permissions().readonly()))
    }
}

fn append(inner: &Mutex<Inner>, event: AuditEvent) -> Result<(), AuditError> {
    // A poisoned lock means a writer panicked mid-record; the file itself is still consistent
    // up to its last complete line, which is what `seq` and `last_hash` describe.
    let mut g = inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut rec = AuditRecord {
        seq: g.seq + 1,
        time: OffsetDateTime::now_utc(),
        actor: event.actor,
        action: event.action.to_owned(),
        secret_id: event.secret_id,
        outcome: event.outcome,
        reason: event.reason,
        peer: event.peer,
        prev: g.last_hash.clone(),
        hash: String::new(),
    };
    rec.hash = rec.compute_hash();
    let mut line = serde_json::to_string(&rec).expect("audit records serialize");
    line.push('\n');
    let path = g.path.clone();
    let write_err = |source| AuditError::Write { path, source };
    if let Err(e) = g
        .file
        .write_all(line.as_bytes())
        .and_then(|()| g.file.sync_data())
    {
        return Err(write_err(e));
    }
    g.seq = rec.seq;
    g.last_hash = rec.hash;
    Ok(())
}

fn last_line(file: &mut File) -> std::io::Result<Option<String>> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(None);
    }
    // Records are small; the last 64 KiB certainly hold the last complete line.
    let start = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = String::new();
    file.read_to_string(&mut tail)?;
    Ok(tail
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_owned))
}

/// Verifies the whole chain of the log at `path`; returns the number of records.
///
/// # Errors
///
/// [`AuditError::Broken`] naming the first bad line, or a read error.
pub fn verify_file(path: &Path) -> Result<u64, AuditError> {
    let file = File::open(path).map_err(|source| AuditError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut prev = GENESIS.to_owned();
    let mut n = 0_u64;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line_no = i as u64 + 1;
        let line = line.map_err(|source| AuditError::Read {
            path: path.to_owned(),
            source,
        })?;
        let broken = |problem: String| AuditError::Broken {
            path: path.to_owned(),
            line: line_no,
            problem,
        };
        let rec: AuditRecord =
            serde_json::from_str(&line).map_err(|e| broken(format!("not a record: {e}")))?;
        if rec.prev != prev {
            return Err(broken(
                "prev does not match the previous record's hash".into(),
            ));
        }
        if rec.seq != n + 1 {
            return Err(broken(format!(
                "sequence {} where {} was due",
                rec.seq,
                n + 1
            )));
        }
        if rec.compute_hash() != rec.hash {
            return Err(broken("hash does not match the record".into()));
        }
        prev = rec.hash;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &'static str, outcome: Outcome) -> AuditEvent {
        AuditEvent {
            actor: Some("spiffe://hpcs.test/client/alice".into()),
            action,
            secret_id: Some("abc".into()),
            outcome,
            reason: None,
            peer: Some("127.0.0.1:1".into()),
        }
    }

    #[tokio::test]
    async fn chain_verifies_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.record(event("secret.create", Outcome::Ok))
            .await
            .unwrap();
        log.record(event("secret.read", Outcome::Denied))
            .await
            .unwrap();
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        log.record(event("secret.delete", Outcome::Ok))
            .await
            .unwrap();
        assert_eq!(verify_file(&path).unwrap(), 3);
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["prev"], GENESIS);
        assert_eq!(first["action"], "secret.create");
        assert_eq!(first["outcome"], "ok");
    }

    #[tokio::test]
    async fn tampering_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        for _ in 0..3 {
            log.record(event("secret.create", Outcome::Ok))
                .await
                .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Edit the second line's outcome.
        let lines: Vec<&str> = text.lines().collect();
        let edited = format!(
            "{}\n{}\n{}\n",
            lines[0],
            lines[1].replace("\"ok\"", "\"denied\""),
            lines[2]
        );
        std::fs::write(&path, &edited).unwrap();
        let err = verify_file(&path).unwrap_err();
        assert!(matches!(err, AuditError::Broken { line: 2, .. }), "{err}");
        // Dropping a line breaks the chain too.
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        let err = verify_file(&path).unwrap_err();
        assert!(matches!(err, AuditError::Broken { line: 2, .. }), "{err}");
    }

    #[tokio::test]
    async fn concurrent_writers_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let log = log.clone();
                tokio::spawn(async move { log.record(event("secret.create", Outcome::Ok)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(verify_file(&path).unwrap(), 32);
    }

    #[test]
    fn corrupt_last_line_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"seq\":1}\n").unwrap();
        assert!(matches!(
            AuditLog::open(&path).unwrap_err(),
            AuditError::Broken { .. }
        ));
    }
}
