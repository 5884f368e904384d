//! container-prep: encrypt a container image, register its key, ship it to the cluster.
//!
//! - [`cli`]: the command line (HPCS flag names).
//! - [`image`]: the image as a plaintext stream (Docker Engine API export or a `docker save`
//!   archive) and its ID and settings.
//! - [`run`]: plan, encrypt, then the shared pipeline of `hpcs_client::prepare`.
//!
//! Exit codes: 0 success (or a valid `--dry-run`), 1 failure (nothing left registered),
//! 2 usage or configuration error, 3 failure after which a secret may still be registered
//! (revocation failed; the message names it).

pub mod cli;
pub mod image;
pub mod run;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: failure; nothing is left registered.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: usage or configuration error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: failure, and revoking the registered secret failed too.
pub const EXIT_ORPHAN: u8 = 3;
