//! job-prep: turns prepared artefacts into a Slurm job on the cluster and brings the encrypted
//! results home.
//!
//! - [`cli`]: the command line (clap derive), with the mapping from HPCS's flags.
//! - [`spec`]: the validated job specification, built once from the raw flags.
//! - [`script`]: the batch script rendered from a spec; every shell word single-quoted.
//! - [`remote`]: info-file and ciphertext checks, the work directory, uploads.
//! - [`slurm`]: `sbatch`, `scontrol`, `sacct`, `scancel` over SSH, and their output parsed.
//! - [`follow`]: streaming a job's logs and state changes until it ends.
//! - [`output`]: the user's output identity; fetching, verifying, decrypting and unpacking a
//!   job's output.
//! - [`run`]: the glue from flags to the above, with exit codes.
//!
//! Everything blocks (ssh2 is blocking); there is no async runtime.

pub mod cli;
pub mod follow;
pub mod output;
pub mod remote;
pub mod run;
pub mod script;
pub mod slurm;
pub mod spec;
