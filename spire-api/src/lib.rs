//! Wire-compatible gRPC definitions of the SPIFFE Workload API and of the SPIRE Server API subset
//! that HPCS uses.
