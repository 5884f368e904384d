//! Submit an HPCS Slurm job over SSH, follow it, and manage it.
//!
//! - [`cli`]: command line (clap) and the glue that runs it.
//! - [`spec`]: the validated job specification.
//! - [`script`]: the batch script rendered from a spec.
//! - [`slurm`]: `sbatch`, `scontrol`, `scancel` over SSH.

pub mod cli;
pub mod script;
pub mod slurm;
pub mod spec;
