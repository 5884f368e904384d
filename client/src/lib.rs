//! Client-side plumbing shared by the HPCS prep tools.
//!
//! - [`ssh`]: blocking SSH/SFTP session with strict host keys, key auth, quoted remote commands,
//!   atomic uploads and streaming downloads.
//! - [`identity`]: the client's JWT-SVID from the laptop's SPIRE agent (Workload API).
//! - [`server_api`]: the HPCS server API client.
//! - [`vault`]: writing an artefact's key record with the server's single-use credential.
//! - [`prepare`]: the prep tools' pipeline (encrypt, register, write key, ship, revoke on failure).

pub mod identity;
pub mod logging;
pub mod prepare;
pub mod server_api;
pub mod ssh;
pub mod vault;

/// An error and its sources, joined with ": ", for log fields and messages.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
