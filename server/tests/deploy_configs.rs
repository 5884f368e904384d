//! The server INI files shipped for deployment load with `hpcs_server::config::load`, the function
//! the binary itself starts with (file parsing and the server's own checks):
//!
//! - `compose/server/config/hpcs-server.ini`, with `@TRUST_DOMAIN@` replaced as
//!   `compose/server/bootstrap` does;
//! - in the ignored test `extra_server_inis_load`, every file listed in `HPCS_EXTRA_SERVER_INIS`
//!   (colon-separated): `scripts/check-deploy` runs it with the `server.ini` the Helm chart
//!   renders for each of its value sets.

use std::path::{Path, PathBuf};

use hpcs_core::ids::NodeName;
use hpcs_server::config::{Settings, Transport, load};

const TRUST_DOMAIN: &str = "hpcs.example.org";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load_or_explain(path: &Path) -> Result<Settings, String> {
    load(path).map_err(|e| {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            msg.push_str(": ");
            msg.push_str(&cause.to_string());
            source = cause.source();
        }
        msg
    })
}

#[test]
fn compose_server_ini_loads_and_matches_the_compose_stack() {
    let template = repo().join("compose/server/config/hpcs-server.ini");
    let text = std::fs::read_to_string(&template)
        .unwrap_or_else(|e| panic!("read {}: {e}", template.display()))
        .replace("@TRUST_DOMAIN@", TRUST_DOMAIN);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("hpcs-server.ini");
    std::fs::write(&path, text).expect("write the rendered file");
    let settings = load_or_explain(&path).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(settings.trust_domain.as_str(), TRUST_DOMAIN);
    // The sockets and files are the volumes docker-compose.yml mounts.
    assert_eq!(
        settings.spire_admin_socket,
        Path::new("/run/spire/server/private/api.sock")
    );
    assert_eq!(
        settings.workload_socket,
        Path::new("/run/spire/agent/public/api.sock")
    );
    assert_eq!(settings.audit_log, Path::new("/var/lib/hpcs/audit.log"));
    assert_eq!(settings.listen.port(), 10080);
    assert!(
        matches!(settings.transport, Transport::Tls { .. }),
        "the compose stack serves the API with TLS"
    );
    // Node agents are named by x509pop after the certificate's CN (config/spire-server.conf).
    let node: NodeName = "nid003044".parse().expect("a valid node name");
    assert_eq!(
        settings.agents.resolve(&node).map(|id| id.to_string()),
        Some(format!(
            "spiffe://{TRUST_DOMAIN}/spire/agent/x509pop/cn/nid003044"
        ))
    );
    assert_eq!(settings.vault.url.as_str(), "http://openbao:8200/");
}

#[test]
#[ignore = "run by scripts/check-deploy, which sets HPCS_EXTRA_SERVER_INIS"]
fn extra_server_inis_load() {
    let list = std::env::var("HPCS_EXTRA_SERVER_INIS")
        .expect("HPCS_EXTRA_SERVER_INIS lists the rendered server.ini files to check");
    let paths: Vec<PathBuf> = list
        .split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    assert!(!paths.is_empty(), "HPCS_EXTRA_SERVER_INIS lists no file");
    for path in paths {
        let settings = load_or_explain(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(settings.transport, Transport::Tls { .. }),
            "{}: the chart always serves the API with TLS",
            path.display()
        );
    }
}
