//! Compiles the .proto files under `proto/` with protox (no system `protoc`) and generates
//! prost messages plus tonic clients and servers.

use std::path::Path;

const PROTOS: &[&str] = &[
    "spiffe/workload/workload.proto",
    "spire/api/types/entry.proto",
    "spire/api/types/jointoken.proto",
    "spire/api/types/selector.proto",
    "spire/api/types/spiffeid.proto",
    "spire/api/types/status.proto",
    "spire/api/server/entry/v1/entry.proto",
    "spire/api/server/agent/v1/agent.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("proto");
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, [root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .compile_fds(fds)?;
    Ok(())
}
