//! `/etc/hpcs/node.ini`: the node's configuration, validated once.
//!
//! ```ini
//! [node]
//! name = node1                        ; default: the host name
//! scratch_dir = /run/hpcs             ; must be tmpfs unless require_tmpfs = false
//! require_tmpfs = true
//! engine_socket = unix:///run/docker.sock   ; the engine (daemon) or a rootless Podman socket (direct)
//! broker_socket = /run/hpcs-node.sock ; when set, `hpcs-node run` goes through the daemon
//! hook_timeout = 300                  ; seconds per hook
//!
//! [policy]
//! path = /etc/hpcs/policy.ini
//!
//! [vault]
//! url = https://vault.example.org:8200
//! ca = /etc/hpcs/vault-ca.pem         ; optional
//! auth_mount = jwt
//! kv_mount = hpcs
//! audience = vault
//!
//! [spire-agent]
//! socket = /run/spire/agent/public/api.sock
//! trust_domain = example.org
//! ```
//!
//! Keys may be spelled with `-` or `_`; values may be quoted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hpcs_core::ids::TrustDomain;

use crate::keys::KeySource;

/// Default per-hook timeout.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(300);
/// Default scratch directory (a tmpfs on every systemd machine).
pub const DEFAULT_SCRATCH: &str = "/run/hpcs";

/// Errors of loading node.ini.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// Unreadable.
    #[error("failed to read {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Malformed.
    #[error("{path}: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What, naming section and key.
        message: String,
    },
}

/// The validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Node name for image rules.
    pub name: String,
    /// Scratch root.
    pub scratch_dir: PathBuf,
    /// Refuse non-tmpfs scratch.
    pub require_tmpfs: bool,
    /// Engine socket.
    pub engine_socket: Option<String>,
    /// Daemon socket.
    pub broker_socket: Option<PathBuf>,
    /// Per-hook timeout.
    pub hook_timeout: Duration,
    /// Policy file.
    pub policy: PathBuf,
    /// Trust domain of reader IDs.
    pub trust_domain: TrustDomain,
    /// Agent and Vault.
    pub keys: KeySource,
}

type Raw = BTreeMap<String, BTreeMap<String, String>>;

/// Load and validate `path`.
///
/// # Errors
///
/// [`SettingsError`] naming the section and key.
pub fn load(path: &Path) -> Result<NodeSettings, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parse node.ini text; `path` is only used in messages.
///
/// # Errors
///
/// [`SettingsError::Invalid`].
pub fn parse(path: &Path, text: &str) -> Result<NodeSettings, SettingsError> {
    let bad = |message: String| SettingsError::Invalid {
        path: path.to_owned(),
        message,
    };
    let raw: Raw = serde_ini::from_str(text).map_err(|e| bad(e.to_string()))?;
    let raw: Raw = raw
        .into_iter()
        .map(|(s, kv)| {
            let kv = kv
                .into_iter()
                .map(|(k, v)| {
                    let v = v.trim();
                    let v = v
                        .strip_prefix('"')
                        .and_then(|x| x.strip_suffix('"'))
                        .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
                        .unwrap_or(v);
                    (k.trim().replace('-', "_"), v.to_owned())
                })
                .collect();
            (s.trim().to_owned(), kv)
        })
        .collect();
    let get = |section: &str, key: &str| {
        raw.get(section)
            .and_then(|s| s.get(key))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let need = |section: &str, key: &str| {
        get(section, key).ok_or_else(|| bad(format!("[{section}] {key} is required")))
    };
    let boolean = |section: &str, key: &str, default: bool| match get(section, key).as_deref() {
        None => Ok(default),
        Some("true" | "yes" | "1") => Ok(true),
        Some("false" | "no" | "0") => Ok(false),
        Some(other) => Err(bad(format!(
            "[{section}] {key}: expected true or false, got {other:?}"
        ))),
    };
    let abs = |section: &str, key: &str, v: String| {
        let p = PathBuf::from(v);
        if p.is_absolute() {
            Ok(p)
        } else {
            Err(bad(format!("[{section}] {key} must be an absolute path")))
        }
    };
    let hook_timeout = match get("node", "hook_timeout") {
        None => DEFAULT_HOOK_TIMEOUT,
        Some(v) => {
            let secs: u64 = v
                .trim_end_matches('s')
                .parse()
                .map_err(|_| bad(format!("[node] hook_timeout: expected seconds, got {v:?}")))?;
            if secs == 0 {
                return Err(bad("[node] hook_timeout must be positive".into()));
            }
            Duration::from_secs(secs)
        }
    };
    let trust_domain: TrustDomain = get("spire-agent", "trust_domain")
        .or_else(|| get("node", "trust_domain"))
        .ok_or_else(|| bad("[spire-agent] trust_domain is required".into()))?
        .parse()
        .map_err(|e| bad(format!("[spire-agent] trust_domain: {e}")))?;
    let url = need("vault", "url")?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(bad("[vault] url must be http(s)://".into()));
    }
    let keys = KeySource {
        agent_socket: abs("spire-agent", "socket", need("spire-agent", "socket")?)?,
        vault_url: url,
        vault_ca: get("vault", "ca")
            .map(|v| abs("vault", "ca", v))
            .transpose()?,
        auth_mount: get("vault", "auth_mount").unwrap_or_else(|| "jwt".to_owned()),
        kv_mount: get("vault", "kv_mount").unwrap_or_else(|| "hpcs".to_owned()),
        audience: get("vault", "audience").unwrap_or_else(|| "vault".to_owned()),
    };
    for (k, v) in [
        ("auth_mount", &keys.auth_mount),
        ("kv_mount", &keys.kv_mount),
    ] {
        if v.split('/').any(|c| c.is_empty() || c == "..") {
            return Err(bad(format!("[vault] {k} is not a mount path")));
        }
    }
    Ok(NodeSettings {
        name: get("node", "name").unwrap_or_else(crate::images::local_node_name),
        scratch_dir: abs(
            "node",
            "scratch_dir",
            get("node", "scratch_dir").unwrap_or_else(|| DEFAULT_SCRATCH.to_owned()),
        )?,
        require_tmpfs: boolean("node", "require_tmpfs", true)?,
        engine_socket: get("node", "engine_socket"),
        broker_socket: get("node", "broker_socket")
            .map(|v| abs("node", "broker_socket", v))
            .transpose()?,
        hook_timeout,
        policy: abs(
            "policy",
            "path",
            get("policy", "path").unwrap_or_else(|| crate::cli::DEFAULT_POLICY.to_owned()),
        )?,
        trust_domain,
        keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const GOOD: &str = "[node]\nname = node1\nscratch-dir = /dev/shm/hpcs\nhook_timeout = 5\n\
        broker_socket = /run/hpcs.sock\n[policy]\npath = /etc/hpcs/policy.ini\n\
        [vault]\nurl = \"http://127.0.0.1:8200\"\n[spire-agent]\nsocket = /tmp/a.sock\ntrust_domain = hpcs.test\n";

    #[test]
    fn good_config() {
        let s = parse(Path::new("node.ini"), GOOD).expect("parse");
        assert_eq!(s.name, "node1");
        assert_eq!(s.scratch_dir, PathBuf::from("/dev/shm/hpcs"));
        assert_eq!(s.hook_timeout, Duration::from_secs(5));
        assert_eq!(s.keys.vault_url, "http://127.0.0.1:8200");
        assert_eq!(s.keys.kv_mount, "hpcs");
        assert!(s.require_tmpfs);
    }

    #[rstest]
    #[case(
        "hook_timeout = 5",
        "hook_timeout = 0",
        "hook_timeout must be positive"
    )]
    #[case("url = \"http://127.0.0.1:8200\"", "url = ftp://x", "[vault] url")]
    #[case(
        "socket = /tmp/a.sock",
        "socket = a.sock",
        "[spire-agent] socket must be an absolute path"
    )]
    #[case("trust_domain = hpcs.test", "trust_domain = Bad!", "trust_domain")]
    #[case(
        "scratch-dir = /dev/shm/hpcs",
        "scratch-dir = rel",
        "[node] scratch_dir must be an absolute path"
    )]
    fn bad_config(#[case] from: &str, #[case] to: &str, #[case] want: &str) {
        let err = parse(Path::new("node.ini"), &GOOD.replace(from, to))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
    }
}
