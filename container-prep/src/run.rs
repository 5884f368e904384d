//! One run of container-prep: plan, check the destination, encrypt the image stream straight
//! into the upload, then register, write the key and publish (see `hpcs_client::prepare`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use hpcs_client::prepare::{self, Outcome, Pipeline, Plan};
use hpcs_core::api::Readers;
use hpcs_core::info::{ArtefactKind, ImageMeta};
use serde::Serialize;

use crate::cli::{Cli, default_name};
use crate::image::{self, Engine};
use crate::{EXIT_FAILURE, EXIT_ORPHAN, EXIT_USAGE};

/// What a run produced.
#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Report {
    /// `--dry-run`: what would be done.
    Plan {
        /// Artefact name.
        name: String,
        /// Image ID.
        image_digest: String,
        /// Remote ciphertext.
        ciphertext_path: String,
        /// Remote info file.
        info_path: String,
        /// SSH destination.
        destination: String,
        /// HPCS server.
        server: String,
        /// Readers.
        users: Vec<String>,
        /// Reader groups.
        groups: Vec<String>,
        /// Compute nodes.
        compute_nodes: Vec<String>,
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

enum Input {
    Engine(Engine, String),
    Archive(PathBuf),
}

/// Runs container-prep.
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

    let (input, label) = match (&cli.base_oci_image, &cli.image_archive) {
        (Some(img), _) => {
            let engine = Engine::connect(cli.docker_host.as_deref())
                .await
                .context("cannot reach the container engine")
                .map_err(failed)?;
            (Input::Engine(engine, img.clone()), img.clone())
        }
        (None, Some(path)) => (
            Input::Archive(path.clone()),
            path.file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".tar").to_owned())
                .unwrap_or_default(),
        ),
        (None, None) => return Err(usage(anyhow::anyhow!("no image given"))),
    };
    let name = match &cli.name {
        Some(n) => n.clone(),
        None => default_name(&label)
            .parse()
            .with_context(|| format!("cannot derive an artefact name from {label:?}; use --name"))
            .map_err(usage)?,
    };

    let meta: ImageMeta = match &input {
        Input::Engine(engine, img) => engine
            .inspect(img)
            .await
            .context("cannot read the image")
            .map_err(failed)?,
        Input::Archive(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || image::archive_meta(&path))
                .await
                .context("archive reader task failed")
                .map_err(failed)?
                .context("cannot read the image archive")
                .map_err(failed)?
        }
    };
    let plan = Plan {
        name,
        kind: ArtefactKind::Image(meta.clone()),
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
            image_digest: meta.digest.to_string(),
            ciphertext_path: ciphertext_path.to_string(),
            info_path: info_path.to_string(),
            destination: pipeline.destination.describe(),
            server: config.hpcs_server.url.to_string(),
            users: cli.users.iter().map(ToString::to_string).collect(),
            groups: cli.groups.iter().map(ToString::to_string).collect(),
            compute_nodes: cli.compute_nodes.iter().map(ToString::to_string).collect(),
        });
    }

    pipeline
        .check_destination(&plan)
        .await
        .context("nothing was registered")
        .map_err(failed)?;

    tracing::info!(image = %label, digest = %meta.digest, "encrypting and uploading");
    let (reader, len_hint, what): (Box<dyn std::io::Read + Send>, Option<u64>, String) = match input
    {
        Input::Engine(engine, img) => {
            let what = format!("image {img}");
            (Box::new(engine.export(&img)), None, what)
        }
        Input::Archive(path) => {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("cannot open {}", path.display()))
                .map_err(failed)?;
            // The ciphertext is the archive plus about 0.03% of age framing.
            let len = file.metadata().ok().map(|m| m.len());
            let what = format!("image archive {}", path.display());
            (Box::new(file), len, what)
        }
    };
    let bar = prepare::progress_bar(len_hint, cli.json);
    let tick = bar.clone();
    let dest = Arc::clone(&pipeline.destination);
    let staging = plan.clone();
    let staged = tokio::task::spawn_blocking(move || {
        prepare::stage(&*dest, &staging, reader, &what, &mut |n| {
            tick.set_position(n);
        })
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
            image_digest,
            ciphertext_path,
            info_path,
            destination,
            server,
            users,
            groups,
            compute_nodes,
        } => format!(
            "dry run: nothing registered or uploaded\nname:          {name}\nimage:         {image_digest}\nciphertext:    {destination}:{ciphertext_path}\ninfo file:     {destination}:{info_path}\nserver:        {server}\nusers:         {}\ngroups:        {}\ncompute nodes: {}\n",
            users.join(","),
            groups.join(","),
            compute_nodes.join(",")
        ),
        Report::Prepared(o) => format!(
            "secret id:     {}\nciphertext:    {}\ninfo file:     {}\nsha256:        {}\nsize:          {}\n{}",
            o.secret_id,
            o.ciphertext_path,
            o.info_path,
            o.sha256,
            o.size,
            o.image_digest
                .as_ref()
                .map(|d| format!("image:         {d}\n"))
                .unwrap_or_default()
        ),
    }
}
