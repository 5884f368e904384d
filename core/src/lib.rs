//! Contracts that several HPCS crates must agree on byte for byte.
//!
//! - [`ids`]: the SPIFFE ID scheme and validated names (users, groups, nodes, secrets).
//! - [`config`]: INI configuration parsed into raw structs, then validated into typed config.
//! - [`info`]: the `<name>.info.yaml` file that travels next to every ciphertext.
//! - [`crypto`]: streaming, multi-core age encryption/decryption with on-the-fly ciphertext hashing.
//! - [`secret`]: secret types that never print and are zeroized on drop.
//! - [`archive`]: deterministic tar packing and safe unpacking of directory trees.
//! - [`api`]: request and response types of the HPCS server API.

pub mod api;
pub mod archive;
pub mod config;
pub mod crypto;
pub mod envfile;
pub mod ids;
pub mod info;
pub mod secret;
