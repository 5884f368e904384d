//! Client-side plumbing shared by the HPCS prep tools.
//!
//! - [`ssh`]: blocking SSH/SFTP session with strict host keys, key auth, quoted remote commands,
//!   atomic uploads and streaming downloads.

pub mod ssh;
