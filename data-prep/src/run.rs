//! One run of data-prep: check the tree, plan, check the destination, encrypt the tar stream
//! straight into the upload, then register, write the key and publish (see
//! `hpcs_client::prepare`).

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context as _;
use hpcs_client::prepare::{self, Outcome, Pipeline, Plan};
use hpcs_core::api::Readers;
use hpcs_core::info::ArtefactKind;
use serde::Serialize;

use crate::cli::Cli;
use crate::stream::{TarStream, check_dir};
use crate::{EXIT_FAILURE, EXIT_ORPHAN, EXIT_USAGE};

/// What a run produced.
#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Report {
    /// `--dry-run`: what would be done.
    Plan {
        /// Artefact name.
        name: String,
        /// Entries in the archive.
        entries: u64,
        /// Bytes of file content.
        file_bytes: u64,
        /// Remote ciphertext.
        ciphertext_path: String,
        /// Remote info file.
        info_path: String,
        /// SSH destination.
        destination: String,
        /// HPCS server.
        server: String,
    },
    /// Done.
    Prepared(Outcome),
}

/// A failed run with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// The error chain.
    pub error: anyhow::Error,
}

fn usage(error: anyhow::Error) -> Failure {
    Failure {
        code: EXIT_USAGE,
        error,
    }
}

fn failed(error: anyhow::Error) -> Failure {
    Failure {
        code: EXIT_FAILURE,
        error,
    }
}

/// Runs data-prep.
///
/// # Errors
///
/// A [`Failure`] carrying the exit code.
pub async fn run(cli: &Cli) -> Result<Report, Failure> {
    let config = hpcs_core::config::load_client(&cli.config)
        .context("cannot load the client config")
        .map_err(usage)?;
    let pipeline = Pipeline::from_config(&config, cli.username.as_ref(), cli.accept_new_host_key)
        .context("cannot set up the clients")
        .map_err(usage)?;
    let dir = cli.input_data.clone();
    let name = match &cli.name {
        Some(n) => n.clone(),
        None => {
            let base = std::path::absolute(&dir)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            base.parse()
                .with_context(|| {
                    format!("cannot derive an artefact name from {base:?}; use --name")
                })
                .map_err(usage)?
        }
    };

    // Refuse a bad tree before anything is registered or uploaded.
    let check = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || check_dir(&dir))
            .await
            .context("packer task failed")
            .map_err(failed)?
            .with_context(|| format!("cannot pack {}", cli.input_data.display()))
            .map_err(failed)?
    };

    let plan = Plan {
        name,
        kind: ArtefactKind::Data,
        readers: Readers {
            users: cli.users.iter().cloned().collect(),
            groups: cli.groups.iter().cloned().collect(),
        },
        compute_nodes: cli.compute_nodes.iter().cloned().collect::<BTreeSet<_>>(),
        remote_dir: cli.data_path_at_rest.clone(),
    };
    let ciphertext_path = plan
        .ciphertext_remote()
        .context("invalid remote path")
        .map_err(usage)?;
    let info_path = plan
        .info_remote()
        .context("invalid remote path")
        .map_err(usage)?;
    if cli.dry_run {
        return Ok(Report::Plan {
            name: plan.name.to_string(),
            entries: check.entries,
            file_bytes: check.file_bytes,
            ciphertext_path: ciphertext_path.to_string(),
            info_path: info_path.to_string(),
            destination: pipeline.destination.describe(),
            server: config.hpcs_server.url.to_string(),
        });
    }

    pipeline
        .check_destination(&plan)
        .await
        .context("nothing was registered")
        .map_err(failed)?;

    let what = format!("directory {}", dir.display());
    let bar = prepare::progress_bar(None, cli.json);
    let tick = bar.clone();
    let dest = Arc::clone(&pipeline.destination);
    let staging = plan.clone();
    let staged = tokio::task::spawn_blocking(move || {
        let mut stream = TarStream::start(dir);
        let staged = prepare::stage(&*dest, &staging, &mut stream, &what, &mut |n| {
            tick.set_position(n);
        });
        let packed = stream.finish();
        match (staged, packed) {
            (Ok(s), Ok(_)) => Ok(s),
            (Err(e), _) => Err(anyhow::Error::new(e)),
            (Ok(s), Err(e)) => {
                // The archive is incomplete: its staged ciphertext must not be registered.
                prepare::discard(&*dest, s);
                Err(anyhow::Error::new(e).context(format!("cannot pack {what}")))
            }
        }
    })
    .await
    .context("encryption task failed")
    .map_err(failed)?;
    bar.finish_and_clear();
    let staged = staged.context("nothing was registered").map_err(failed)?;
    let outcome = pipeline.run(&plan, staged).await;
    match outcome {
        Ok(o) => Ok(Report::Prepared(o)),
        Err(e) => Err(Failure {
            code: if e.may_leave_orphan() {
                EXIT_ORPHAN
            } else {
                EXIT_FAILURE
            },
            error: anyhow::Error::new(e),
        }),
    }
}

/// Human-readable lines for a report.
#[must_use]
pub fn human(report: &Report) -> String {
    match report {
        Report::Plan {
            name,
            entries,
            file_bytes,
            ciphertext_path,
            info_path,
            destination,
            server,
        } => format!(
            "dry run: nothing registered or uploaded\nname:          {name}\ncontent:       {entries} entries, {file_bytes} bytes\nciphertext:    {destination}:{ciphertext_path}\ninfo file:     {destination}:{info_path}\nserver:        {server}\n"
        ),
        Report::Prepared(o) => format!(
            "secret id:     {}\nciphertext:    {}\ninfo file:     {}\nsha256:        {}\nsize:          {}\n",
            o.secret_id, o.ciphertext_path, o.info_path, o.sha256, o.size
        ),
    }
}
