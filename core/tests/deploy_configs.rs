//! The server INI files shipped for deployment parse with the code the server itself uses.
//!
//! - `compose/server/config/hpcs-server.ini`, with `@TRUST_DOMAIN@` replaced as
//!   `compose/server/bootstrap` does;
//! - every file listed in `HPCS_EXTRA_SERVER_INIS` (colon-separated), in the ignored test
//!   `extra_server_inis_parse`: `scripts/check-deploy` runs it with the `server.ini` the Helm
//!   chart renders for each of its value sets.

use std::path::{Path, PathBuf};

use hpcs_core::config::ServerConfig;
use hpcs_core::ids::NodeName;

const TRUST_DOMAIN: &str = "hpcs.example.org";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn parse(path: &Path, text: &str) -> Result<ServerConfig, String> {
    ServerConfig::from_ini_str(text, path)
        .map_err(|e| format!("{} does not parse as a server config: {e}", path.display()))
}

#[test]
fn compose_server_ini_parses_and_matches_the_compose_stack() {
    let path = repo().join("compose/server/config/hpcs-server.ini");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .replace("@TRUST_DOMAIN@", TRUST_DOMAIN);
    let config = parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(config.spire.trust_domain.as_str(), TRUST_DOMAIN);
    // The sockets are the volumes docker-compose.yml mounts.
    assert_eq!(
        config.spire.socket_path,
        Path::new("/run/spire/server/private/api.sock")
    );
    assert_eq!(
        config.spire_agent.socket_path,
        Path::new("/run/spire/agent/public/api.sock")
    );
    assert_eq!(config.server.listen.port(), 10080);
    // Node agents are named by x509pop after the certificate's CN (config/spire-server.conf).
    let node: NodeName = "nid003044".parse().expect("a valid node name");
    assert_eq!(
        config
            .spire
            .agent_id(&node)
            .map(|id| id.as_str().to_owned()),
        Some(format!(
            "spiffe://{TRUST_DOMAIN}/spire/agent/x509pop/cn/nid003044"
        ))
    );
    assert_eq!(config.vault.url.as_str(), "http://openbao:8200/");
}

#[test]
#[ignore = "run by scripts/check-deploy, which sets HPCS_EXTRA_SERVER_INIS"]
fn extra_server_inis_parse() {
    let list = std::env::var("HPCS_EXTRA_SERVER_INIS")
        .expect("HPCS_EXTRA_SERVER_INIS lists the rendered server.ini files to check");
    let paths: Vec<PathBuf> = list
        .split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    assert!(!paths.is_empty(), "HPCS_EXTRA_SERVER_INIS lists no file");
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let config = parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            config.server.tls.is_some() || config.server.allow_plain_http,
            "{}: neither TLS nor an explicit allow-plain-http",
            path.display()
        );
    }
}
