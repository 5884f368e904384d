//! Wire-compatible gRPC definitions of the SPIFFE Workload API and of the SPIRE Server API subset
//! that HPCS uses, with tonic clients and servers.
//!
//! The `.proto` files under `proto/` are our own, written to match the published upstream
//! definitions (same packages, services, messages, field names and numbers; each file names its
//! upstream source) so these stubs talk to a real SPIRE agent and server.
//!
//! Modules:
//! - [`workload`]: the SPIFFE Workload API (`SpiffeWorkloadAPI`, no protobuf package).
//! - [`types`]: `spire.api.types` (Entry, Selector, SPIFFEID, Status, JoinToken).
//! - [`server::entry::v1`]: `spire.api.server.entry.v1.Entry` (List/Get/Count, BatchCreate,
//!   BatchDelete).
//! - [`server::agent::v1`]: `spire.api.server.agent.v1.Agent` (CreateJoinToken).
//! - [`spiffe_id`]: conversion between `spiffe://` URIs and [`types::Spiffeid`], with validation.
//! - [`channel`]: a tonic [`Channel`](tonic::transport::Channel) over a unix socket (the SPIRE
//!   server admin socket and agent sockets are unix sockets).
//! - [`WORKLOAD_API_HEADER`]: the metadata every Workload API call must carry.

pub mod channel;
pub mod spiffe_id;

/// The metadata key a Workload API client must send with value `true`; servers reject calls
/// without it (a guard against server-side request forgery through proxies).
pub const WORKLOAD_API_HEADER: &str = "workload.spiffe.io";

/// SPIFFE Workload API messages, `SpiffeWorkloadAPI` client and server.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod workload {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// Generated code for the `spire.*` protobuf packages, nested the way the generated code refers
/// to itself. Use the re-exports [`types`] and [`server`].
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod spire {
    /// `spire.api`.
    pub mod api {
        /// `spire.api.types`.
        pub mod types {
            include!(concat!(env!("OUT_DIR"), "/spire.api.types.rs"));
        }
        /// `spire.api.server`.
        pub mod server {
            /// `spire.api.server.entry`.
            pub mod entry {
                /// `spire.api.server.entry.v1`.
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.entry.v1.rs"));
                }
            }
            /// `spire.api.server.agent`.
            pub mod agent {
                /// `spire.api.server.agent.v1`.
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.agent.v1.rs"));
                }
            }
        }
    }
}

pub use spire::api::{server, types};

#[cfg(test)]
mod tests {
    // The gRPC paths are the wire contract with SPIRE; pin them.
    #[test]
    fn service_names_match_upstream() {
        assert_eq!(
            super::workload::spiffe_workload_api_server::SERVICE_NAME,
            "SpiffeWorkloadAPI"
        );
        assert_eq!(
            super::server::entry::v1::entry_server::SERVICE_NAME,
            "spire.api.server.entry.v1.Entry"
        );
        assert_eq!(
            super::server::agent::v1::agent_server::SERVICE_NAME,
            "spire.api.server.agent.v1.Agent"
        );
    }
}
