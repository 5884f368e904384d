//! Command-line interface (clap). The doc comments are the help text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{AgentSpec, ConfigError, RawConfig};
use crate::ids::TrustDomain;

/// DEVELOPMENT AND TEST ONLY: a SPIRE-compatible Workload API, Server API subset and OIDC
/// discovery.
///
/// devspire stands in for a SPIRE server and its agents on machines where SPIRE cannot be
/// installed, so HPCS is tested through its real SPIFFE code paths. It is NEVER used in
/// production: compose/ and deploy/ run the real SPIRE server, agents and OIDC discovery
/// provider.
#[derive(Debug, Parser)]
#[command(name = "devspire", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Workload API sockets (one per simulated node), the SPIRE Server API subset and
    /// OIDC discovery (DEVELOPMENT AND TEST ONLY).
    ///
    /// Ready when the admin socket accepts connections and GET
    /// /.well-known/openid-configuration answers 200. SIGTERM/SIGINT stop it; SIGHUP rotates the
    /// JWT signing key.
    Serve(ServeArgs),
    /// Rotate the JWT signing key of a running devspire (same as sending it SIGHUP).
    ///
    /// Prints the new key ID. The previous key stays in the bundle and the OIDC JWKS until every
    /// token it signed has expired.
    Rotate(RotateArgs),
    /// Call a Workload API socket through the spiffe crate client, like `spire-agent api`.
    #[command(subcommand)]
    Api(ApiCommand),
    /// Manage registration entries over the SPIRE Server API, like `spire-server entry`.
    #[command(subcommand)]
    Entry(EntryCommand),
}

/// Registration entry commands.
#[derive(Debug, Subcommand)]
pub enum EntryCommand {
    /// Create an entry (an identical existing entry counts as success); prints its ID.
    Create {
        /// Admin socket of the running devspire.
        #[arg(long, value_name = "PATH")]
        admin_socket: PathBuf,
        /// SPIFFE ID the entry issues.
        #[arg(long, value_name = "ID")]
        spiffe_id: String,
        /// Parent: the agent SPIFFE ID whose socket serves it.
        #[arg(long, value_name = "ID")]
        parent_id: String,
        /// Selector `type:value`, e.g. `unix:uid:1000` (repeat: all must match).
        #[arg(long = "selector", value_name = "TYPE:VALUE", required = true)]
        selectors: Vec<String>,
    },
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory for entries.json and keys.json (created with mode 0700).
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Trust domain, e.g. hpcs.test.
    #[arg(long, value_name = "TD")]
    pub trust_domain: TrustDomain,
    /// Unix socket of the SPIRE Server API subset (Entry, Agent) and devspire's admin API;
    /// mode 0600.
    #[arg(long, value_name = "PATH")]
    pub admin_socket: PathBuf,
    /// Address of the OIDC discovery HTTP server (port 0: any free port).
    #[arg(long, value_name = "ADDR:PORT")]
    pub oidc_listen: SocketAddr,
    /// Issuer URL in the discovery document and the JWT-SVID `iss` claim
    /// [default: http://<bound oidc address>].
    #[arg(long, value_name = "URL")]
    pub oidc_issuer: Option<String>,
    /// A simulated node: its name and Workload API socket (mode 0666). Its agent SPIFFE ID is
    /// spiffe://<TD>/spire/agent/devspire/<NAME>. Repeat for more nodes.
    #[arg(long = "agent", value_name = "NAME=SOCKET_PATH", required = true)]
    pub agents: Vec<AgentSpec>,
    /// Default JWT-SVID lifetime in seconds (an entry's jwt_svid_ttl overrides it).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub jwt_ttl: u64,
    /// Default X.509-SVID lifetime in seconds (an entry's x509_svid_ttl overrides it).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub x509_ttl: u64,
}

impl ServeArgs {
    /// The raw plan, for [`crate::config::Config::new`].
    #[must_use]
    pub fn into_raw(self) -> RawConfig {
        RawConfig {
            state_dir: self.state_dir,
            trust_domain: self.trust_domain,
            admin_socket: self.admin_socket,
            oidc_listen: self.oidc_listen,
            oidc_issuer: self.oidc_issuer,
            agents: self.agents,
            jwt_ttl: self.jwt_ttl,
            x509_ttl: self.x509_ttl,
        }
    }
}

/// Flags of `rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Admin socket of the running devspire.
    #[arg(long, value_name = "PATH")]
    pub admin_socket: PathBuf,
    /// Print the result as JSON (active key and every published key).
    #[arg(long)]
    pub json: bool,
}

/// Workload API client commands.
#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Fetch JWT-SVIDs for an audience; prints `<spiffe id> <token>` lines, or JSON.
    FetchJwt {
        /// Workload API socket.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// Audience (repeatable).
        #[arg(long = "audience", value_name = "AUD", required = true)]
        audiences: Vec<String>,
        /// Only this SPIFFE ID.
        #[arg(long, value_name = "ID")]
        spiffe_id: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch X.509-SVIDs; prints their SPIFFE IDs and expiry (never the private key).
    FetchX509 {
        /// Workload API socket.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Re-exported so `main` can name the error of the plan.
pub type PlanError = ConfigError;
