//! HPCS compute-node runtime: attest, fetch keys, decrypt, run as the user, encrypt output, wipe.
//!
//! - [`artefact`]: verified streaming decryption, safe unpacking of data, sealing the output.
//! - [`policy`]: the admin policy (layered INI): authorised images per node, mounts, network,
//!   extra arguments, GPUs.
//! - [`container`]: a small trait over the container engine and its bollard implementation;
//!   builds the confined container configuration from a validated plan.
//! - [`images`]: `hpcs-node images`, the authorised images of a node.
//! - [`image`]: the plaintext image path from the decryptor to the engine: tag stripping,
//!   archive checks, a bounded channel.
//! - [`job`]: who the caller is and which Slurm job it runs in, from unforgeable sources.
//! - [`keys`]: attest with the SPIRE agent and fetch one artefact key from Vault.
//! - [`session`]: one job's privileged side (policy, scratch, image, containers, cleanup),
//!   run by the daemon per connection or in-process in direct mode.
//! - [`run`]: `hpcs-node run`, the job from info files to sealed output, cleanup on every path.
//! - [`broker`]: `hpcs-node daemon`, the root broker (SO_PEERCRED, /proc, narrow protocol),
//!   and the job-side client.
//! - [`settings`]: `/etc/hpcs/node.ini`, validated.
//! - [`cli`]: command-line interface of `hpcs-node`.

pub mod artefact;
pub mod broker;
pub mod cli;
pub mod container;
pub mod image;
pub mod images;
pub mod job;
pub mod keys;
pub mod policy;
pub mod run;
pub mod session;
pub mod settings;
