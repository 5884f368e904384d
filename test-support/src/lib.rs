//! Dev-only: locates the local test stack for integration tests.
