//! HPCS compute-node runtime: attest, fetch keys, decrypt, run as the user, encrypt output, wipe.
//!
//! - [`policy`]: the admin policy (layered INI): authorised images per node, mounts, network,
//!   extra arguments, GPUs.
//! - [`container`]: a small trait over the container engine and its bollard implementation;
//!   builds the confined container configuration from a validated plan.
//! - [`images`]: `hpcs-node images`, the authorised images of a node.
//! - [`image`]: the plaintext image path from the decryptor to the engine: tag stripping,
//!   archive checks, a bounded channel.
//! - [`cli`]: command-line interface of `hpcs-node`.

pub mod cli;
pub mod container;
pub mod image;
pub mod images;
pub mod policy;
