//! The image as a plaintext stream and its metadata: exported from the local Docker engine
//! (bollard, API version negotiated) or read from a `docker save` archive.
//!
//! The engine's export is a stream of chunks; a task forwards them through a bounded channel to
//! a blocking [`Read`] adapter that the encryptor consumes on a blocking thread, so memory stays
//! bounded by the channel and nothing is written to disk in plaintext.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use hpcs_core::crypto::Sha256Digest;
use hpcs_core::info::{ImageDigest, ImageMeta};
use tokio::sync::mpsc;

/// Chunks in flight between the engine and the encryptor.
const CHANNEL_CHUNKS: usize = 16;
/// Largest JSON member (manifest or config) read from an archive.
const MAX_JSON_BYTES: u64 = 4 * 1024 * 1024;
/// Timeout of the engine's non-streaming calls.
pub const ENGINE_TIMEOUT: Duration = Duration::from_secs(120);

/// Errors of reading the image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The engine could not be reached.
    #[error("failed to connect to the container engine at {host}")]
    Connect {
        /// Socket.
        host: String,
        /// Cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// Inspecting the image failed.
    #[error("failed to inspect image {image}")]
    Inspect {
        /// Image.
        image: String,
        /// Cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// The engine reported an unusable image ID.
    #[error("image {image} has an unusable ID {id:?}")]
    BadId {
        /// Image.
        image: String,
        /// ID.
        id: String,
    },
    /// The archive could not be read.
    #[error("failed to read image archive {path}")]
    ReadArchive {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The archive is not a `docker save` archive we understand.
    #[error("image archive {path} is not usable: {reason}")]
    BadArchive {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A [`Read`] over chunks arriving on a channel (used from a blocking thread).
#[derive(Debug)]
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// The local container engine.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: bollard::Docker,
    host: String,
}

impl Engine {
    /// Connects to `host` (`unix:///path`, a plain socket path, or `None` for the engine's
    /// defaults, which honour `DOCKER_HOST`) and negotiates the API version.
    ///
    /// # Errors
    ///
    /// [`ImageError::Connect`].
    pub async fn connect(host: Option<&str>) -> Result<Self, ImageError> {
        let name = host.unwrap_or("the default socket").to_owned();
        let err = |source| ImageError::Connect {
            host: name.clone(),
            source,
        };
        let docker = match host {
            Some(h) => bollard::Docker::connect_with_unix(
                h,
                ENGINE_TIMEOUT.as_secs(),
                bollard::API_DEFAULT_VERSION,
            ),
            None => bollard::Docker::connect_with_local_defaults(),
        }
        .map_err(err)?;
        let docker = docker.negotiate_version().await.map_err(err)?;
        Ok(Self { docker, host: name })
    }

    /// The image's ID and container settings.
    ///
    /// # Errors
    ///
    /// [`ImageError::Inspect`], [`ImageError::BadId`].
    pub async fn inspect(&self, image: &str) -> Result<ImageMeta, ImageError> {
        let info =
            self.docker
                .inspect_image(image)
                .await
                .map_err(|source| ImageError::Inspect {
                    image: image.to_owned(),
                    source,
                })?;
        let id = info.id.unwrap_or_default();
        let digest: ImageDigest = id.parse().map_err(|_| ImageError::BadId {
            image: image.to_owned(),
            id: id.clone(),
        })?;
        let cfg = info.config.unwrap_or_default();
        Ok(meta(
            digest,
            cfg.entrypoint,
            cfg.cmd,
            cfg.user,
            cfg.env,
            cfg.working_dir,
        ))
    }

    /// Starts exporting `image` (`docker save`) and returns a blocking reader of the tarball.
    /// Must be called inside a Tokio runtime; read the result on a blocking thread.
    #[must_use]
    pub fn export(&self, image: &str) -> ChannelReader {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let docker = self.docker.clone();
        let image = image.to_owned();
        let host = self.host.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(docker.export_image(&image));
            while let Some(item) = stream.next().await {
                let item = item.map_err(|e| {
                    io::Error::other(format!("exporting {image} from {host} failed: {e}"))
                });
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    // The reader is gone (encryption failed) or the export failed.
                    return;
                }
            }
        });
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn meta(
    digest: ImageDigest,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    user: Option<String>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
) -> ImageMeta {
    ImageMeta {
        digest,
        entrypoint: entrypoint.filter(|v| !v.is_empty()),
        cmd: cmd.filter(|v| !v.is_empty()),
        user: non_empty(user),
        env: env.unwrap_or_default(),
        working_dir: non_empty(working_dir).filter(|w| w.starts_with('/')),
    }
}

#[derive(serde::Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
}

#[derive(serde::Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: ConfigSection,
}

#[derive(serde::Deserialize, Default)]
struct ConfigSection {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "User", default)]
    user: Option<String>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
}

/// Reads the image ID and settings from a `docker save` archive: `manifest.json` names one
/// image whose config file's sha256 is the image ID. Blocking.
///
/// # Errors
///
/// [`ImageError::ReadArchive`], [`ImageError::BadArchive`].
pub fn archive_meta(path: &Path) -> Result<ImageMeta, ImageError> {
    let read_err = |source| ImageError::ReadArchive {
        path: path.to_owned(),
        source,
    };
    let bad = |reason: String| ImageError::BadArchive {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    let mut json: HashMap<String, Vec<u8>> = HashMap::new();
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let name = entry
            .path()
            .map_err(read_err)?
            .to_string_lossy()
            .into_owned();
        let name = name.trim_start_matches("./").to_owned();
        let small = entry.header().size().unwrap_or(u64::MAX) <= MAX_JSON_BYTES;
        // Configs are `<hex>.json` (docker) or `blobs/sha256/<hex>` (OCI layout); keep small
        // members only, and only as many as a real archive has.
        if small && entry.header().entry_type().is_file() && json.len() < 10_000 {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(read_err)?;
            if name == "manifest.json" || buf.first() == Some(&b'{') {
                json.insert(name, buf);
            }
        }
    }
    let manifest = json
        .get("manifest.json")
        .ok_or_else(|| bad("no manifest.json (is it a `docker save` archive?)".into()))?;
    let entries: Vec<ManifestEntry> = serde_json::from_slice(manifest)
        .map_err(|e| bad(format!("manifest.json is malformed: {e}")))?;
    let [entry] = entries.as_slice() else {
        return Err(bad(format!(
            "manifest.json names {} images; exactly one is supported",
            entries.len()
        )));
    };
    let config_name = entry.config.trim_start_matches("./");
    let config = json
        .get(config_name)
        .ok_or_else(|| bad(format!("the config {config_name} is missing")))?;
    let digest = ImageDigest(Sha256Digest::of(config));
    let parsed: ConfigFile = serde_json::from_slice(config)
        .map_err(|e| bad(format!("the config {config_name} is malformed: {e}")))?;
    let c = parsed.config;
    Ok(meta(
        digest,
        c.entrypoint,
        c.cmd,
        c.user,
        c.env,
        c.working_dir,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(members: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(f.reopen().unwrap());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.finish().unwrap();
        f
    }

    #[test]
    fn reads_digest_and_settings() {
        let config =
            br#"{"config":{"Entrypoint":["/bin/sh"],"Env":["A=1"],"User":"","WorkingDir":"/w"}}"#;
        let f = archive(&[
            ("abc.json", config),
            (
                "manifest.json",
                br#"[{"Config":"abc.json","RepoTags":["x:1"],"Layers":[]}]"#,
            ),
        ]);
        let m = archive_meta(f.path()).unwrap();
        assert_eq!(m.digest, ImageDigest(Sha256Digest::of(config)));
        assert_eq!(m.entrypoint, Some(vec!["/bin/sh".to_owned()]));
        assert_eq!(m.env, ["A=1"]);
        assert_eq!(m.user, None);
        assert_eq!(m.working_dir.as_deref(), Some("/w"));
    }

    #[test]
    fn refuses_archives_without_one_image() {
        let f = archive(&[("manifest.json", b"[]")]);
        let err = archive_meta(f.path()).unwrap_err().to_string();
        assert!(err.contains("exactly one"), "{err}");
        let f = archive(&[("x", b"y")]);
        let err = archive_meta(f.path()).unwrap_err().to_string();
        assert!(err.contains("no manifest.json"), "{err}");
    }
}
