//! HPCS API server: binds artefact keys in Vault to SPIFFE workload identities.
//!
//! The only component allowed to create SPIRE registration entries and Vault roles and policies.
//! Every caller is authenticated by a JWT-SVID; the caller that registers a secret owns it, and
//! only the owner may read, change or revoke it.
//!
//! Modules:
//! - [`config`]: typed, validated settings.
//! - [`auth`]: JWT-SVID validation against the trust bundle from the Workload API.
//! - [`spire`]: SPIRE registration entries over the server's admin socket ([`spire::EntryStore`]).
//! - [`vault`]: least-privilege Vault access: policies, roles, write-once tokens, registry storage
//!   ([`vault::VaultBackend`]).
//! - [`registry`]: the server's record of each secret (stored in Vault KV).
//! - [`secrets`]: the service: register, list, read, change, revoke, with rollback.
//! - [`routes`]: axum handlers; [`server`]: state, router, middleware and [`server::serve`].
//! - [`error`]: [`error::ApiError`], the one error answer.
//! - [`audit`]: the hash-chained append-only audit log.
//! - [`metrics`]: Prometheus metrics.
//! - [`openapi`]: the generated OpenAPI document.
//! - [`tls`]: rustls listener.
//! - [`run`]: wiring it all together for the binary.

pub mod audit;
pub mod auth;
pub mod config;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod registry;
pub mod routes;
pub mod run;
pub mod secrets;
pub mod server;
pub mod spire;
pub mod tls;
pub mod vault;

#[cfg(test)]
mod testing;
