//! devspire — DEVELOPMENT AND TEST ONLY. A small service that speaks SPIRE's wire protocols so
//! HPCS can be tested through its real SPIFFE code paths on machines where SPIRE cannot be
//! installed. It is never used in production: `compose/` and `deploy/` run the real SPIRE
//! server, agents and OIDC discovery provider.
//!
//! What it serves:
//! - one SPIFFE Workload API socket per simulated node ("agent"), attesting callers from the
//!   socket's peer credentials and `/proc`, and serving only entries whose parent is that agent
//!   and whose `unix` selectors all match;
//! - the SPIRE Server API subset HPCS uses (`Entry`: List/Get/Count/BatchCreate/BatchDelete;
//!   `Agent`: CreateJoinToken) plus devspire's own `Admin` service (JWT key rotation) on an
//!   admin socket;
//! - OIDC discovery (`/.well-known/openid-configuration`, `/keys`) for Vault's `jwt` auth.
//!
//! Modules:
//! - [`cli`]: clap definitions; [`config`]: the validated serve plan.
//! - [`ids`]: trust domain, agent names, and the agent ID scheme
//!   `spiffe://<td>/spire/agent/devspire/<name>`.
//! - [`attest`]: workload attestation from peer credentials and `/proc`.
//! - [`selectors`]: selector parsing and matching.
//! - [`store`]: persisted registration entries and join tokens.
//! - [`jwt`]: the JWT-SVID signing authority (ES256, rotation); [`x509`]: CA and X.509-SVIDs.
//! - [`state`]: what every service shares.
//! - [`workload`], [`entry_api`], [`agent_api`], [`admin`], [`oidc`]: the services.
//! - [`server`]: binding and running all endpoints; [`client`]: admin and Workload API clients.
//! - [`proto`]: generated code of devspire's own admin API.

pub mod admin;
pub mod agent_api;
pub mod attest;
pub mod cli;
pub mod client;
pub mod config;
pub mod entry_api;
mod fsutil;
pub mod ids;
pub mod jwt;
pub mod oidc;
mod secret;
pub mod selectors;
pub mod server;
pub mod state;
pub mod store;
pub mod workload;
pub mod x509;

/// Generated code of devspire's own admin API (`devspire.admin.v1`), not part of SPIRE.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod proto {
    /// `devspire.admin`.
    pub mod admin {
        /// `devspire.admin.v1`.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/devspire.admin.v1.rs"));
        }
    }
}
