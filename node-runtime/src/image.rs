//! The plaintext image path: a `docker save` archive flowing from the decryptor to the engine.
//!
//! [`sanitize`] re-writes the archive entry by entry on its way through: it records and then
//! removes the image's tags (`RepoTags` in `manifest.json`, the legacy `repositories` file, and
//! name annotations in an OCI `index.json`), so loading a job's image never re-tags somebody
//! else's image on a shared engine; the runtime refers to the image only by the id the engine
//! reports. It refuses archives with more than one image and top-level entries that are neither
//! files, directories nor symlinks. Nothing is buffered beyond one small JSON entry.
//!
//! [`channel`] connects the blocking world (age decryption runs on a blocking thread) to the
//! async engine upload through a bounded channel: memory stays constant and no plaintext byte
//! touches a disk on its way to the engine.

use std::io::{Read, Write};

use bytes::Bytes;

use crate::container::ImageStream;

/// Largest JSON entry (manifest.json, index.json) accepted.
pub const MAX_JSON_ENTRY: u64 = 1 << 20;
/// Size of the chunks sent to the engine.
pub const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the decryptor and the engine upload.
pub const CHANNEL_DEPTH: usize = 8;

/// Errors of the image archive checks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// Reading the archive failed (this includes decryption and digest failures underneath).
    #[error("failed to read the image archive")]
    Read(#[source] std::io::Error),
    /// Writing to the engine upload failed.
    #[error("failed to pass the image archive on")]
    Write(#[source] std::io::Error),
    /// The archive is not an acceptable `docker save` archive.
    #[error("invalid image archive: {0}")]
    Invalid(String),
}

impl From<ImageError> for std::io::Error {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Read(e) | ImageError::Write(e) => e,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}

/// What the archive said about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveFacts {
    /// Tags the archive carried (and that were removed).
    pub tags: Vec<String>,
    /// Whether a `manifest.json` was seen.
    pub has_manifest: bool,
}

/// Copy a `docker save` archive from `input` to `output`, stripping tags. See the module docs.
///
/// # Errors
///
/// [`ImageError`] naming the problem; the output is then incomplete and must be discarded.
pub fn sanitize<R: Read, W: Write>(input: R, output: W) -> Result<ArchiveFacts, ImageError> {
    let mut archive = tar::Archive::new(input);
    let mut builder = tar::Builder::new(output);
    let mut facts = ArchiveFacts::default();
    for entry in archive.entries().map_err(ImageError::Read)? {
        let mut entry = entry.map_err(ImageError::Read)?;
        let path = entry.path().map_err(ImageError::Read)?.into_owned();
        let name = path.to_string_lossy().into_owned();
        let mut header = entry.header().clone();
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Directory => {
                builder
                    .append_data(&mut header, &path, std::io::empty())
                    .map_err(ImageError::Write)?;
                continue;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(ImageError::Read)?
                    .ok_or_else(|| ImageError::Invalid(format!("symlink {name} without target")))?
                    .into_owned();
                builder
                    .append_link(&mut header, &path, &target)
                    .map_err(ImageError::Write)?;
                continue;
            }
            other => {
                return Err(ImageError::Invalid(format!(
                    "entry {name} has type {other:?}"
                )));
            }
        }
        match name.trim_start_matches("./") {
            "manifest.json" => {
                let mut json = read_json_entry(&mut entry, &name)?;
                let images = json
                    .as_array_mut()
                    .ok_or_else(|| ImageError::Invalid("manifest.json is not a list".into()))?;
                if images.len() != 1 {
                    return Err(ImageError::Invalid(format!(
                        "manifest.json lists {} images; exactly one is allowed",
                        images.len()
                    )));
                }
                let image = images[0].as_object_mut().ok_or_else(|| {
                    ImageError::Invalid("manifest.json entry is not an object".into())
                })?;
                if let Some(tags) = image.get("RepoTags").and_then(|t| t.as_array()) {
                    facts.tags = tags
                        .iter()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect();
                }
                image.insert("RepoTags".into(), serde_json::Value::Null);
                facts.has_manifest = true;
                append_json(&mut builder, &mut header, &path, &json)?;
            }
            // Legacy tag file: dropping it keeps the engine from tagging anything.
            "repositories" => {}
            "index.json" => {
                let mut json = read_json_entry(&mut entry, &name)?;
                if let Some(ms) = json.get_mut("manifests").and_then(|m| m.as_array_mut()) {
                    for m in ms.iter_mut().filter_map(|m| m.as_object_mut()) {
                        m.remove("annotations");
                    }
                }
                append_json(&mut builder, &mut header, &path, &json)?;
            }
            _ => {
                builder
                    .append_data(&mut header, &path, &mut entry)
                    .map_err(ImageError::Write)?;
            }
        }
    }
    if !facts.has_manifest {
        return Err(ImageError::Invalid(
            "no manifest.json: not a docker save archive".into(),
        ));
    }
    builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(ImageError::Write)?;
    Ok(facts)
}

fn read_json_entry<R: Read>(entry: &mut R, name: &str) -> Result<serde_json::Value, ImageError> {
    let mut buf = Vec::new();
    entry
        .take(MAX_JSON_ENTRY + 1)
        .read_to_end(&mut buf)
        .map_err(ImageError::Read)?;
    if buf.len() as u64 > MAX_JSON_ENTRY {
        return Err(ImageError::Invalid(format!(
            "{name} is larger than {MAX_JSON_ENTRY} bytes"
        )));
    }
    serde_json::from_slice(&buf).map_err(|e| ImageError::Invalid(format!("{name}: {e}")))
}

fn append_json<W: Write>(
    builder: &mut tar::Builder<W>,
    header: &mut tar::Header,
    path: &std::path::Path,
    json: &serde_json::Value,
) -> Result<(), ImageError> {
    let bytes = serde_json::to_vec(json).map_err(|e| ImageError::Invalid(e.to_string()))?;
    header.set_size(bytes.len() as u64);
    builder
        .append_data(header, path, bytes.as_slice())
        .map_err(ImageError::Write)
}

/// The blocking side of [`channel`]: a [`Write`] that sends chunks to the async side.
#[derive(Debug)]
pub struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "image upload ended"))
    }

    /// Pass a failure to the async side, so the upload fails instead of ending cleanly.
    pub fn fail(self, error: std::io::Error) {
        let _ = self.tx.blocking_send(Err(error));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A bounded pipe from a blocking writer to an [`ImageStream`].
#[must_use]
pub fn channel() -> (ChannelWriter, ImageStream) {
    let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL_DEPTH);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        },
        Box::pin(stream),
    )
}

/// Run `produce` on a blocking thread, writing a sanitised archive into the returned stream.
/// The returned handle yields the archive facts, or the error that also ended the stream.
pub fn spawn_sanitized<F>(
    produce: F,
) -> (
    ImageStream,
    tokio::task::JoinHandle<Result<ArchiveFacts, std::io::Error>>,
)
where
    F: FnOnce() -> std::io::Result<Box<dyn Read + Send>> + Send + 'static,
{
    let (mut writer, stream) = channel();
    let handle = tokio::task::spawn_blocking(move || {
        let result = produce()
            .and_then(|reader| sanitize(reader, &mut writer).map_err(std::io::Error::from));
        match result {
            Ok(facts) => Ok(facts),
            Err(e) => {
                writer.fail(std::io::Error::new(e.kind(), e.to_string()));
                Err(e)
            }
        }
    });
    (stream, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).expect("append");
        }
        b.into_inner().expect("finish")
    }

    fn entries(tar_bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .expect("entries")
            .map(|e| {
                let mut e = e.expect("entry");
                let name = e.path().expect("path").to_string_lossy().into_owned();
                let mut data = Vec::new();
                e.read_to_end(&mut data).expect("read");
                (name, data)
            })
            .collect()
    }

    #[test]
    fn tags_are_recorded_and_stripped() {
        let manifest =
            br#"[{"Config":"abc.json","RepoTags":["hpcs-test:busybox"],"Layers":["l/layer.tar"]}]"#;
        let input = archive(&[
            ("l/layer.tar", b"layer"),
            ("abc.json", b"{}"),
            ("manifest.json", manifest),
            ("repositories", br#"{"hpcs-test":{"busybox":"l"}}"#),
        ]);
        let mut out = Vec::new();
        let facts = sanitize(input.as_slice(), &mut out).expect("sanitize");
        assert_eq!(facts.tags, vec!["hpcs-test:busybox".to_owned()]);
        let got = entries(&out);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["l/layer.tar", "abc.json", "manifest.json"]);
        let m: serde_json::Value = serde_json::from_slice(&got[2].1).expect("json");
        assert!(m[0]["RepoTags"].is_null());
        assert_eq!(m[0]["Config"], "abc.json");
        assert_eq!(got[0].1, b"layer");
    }

    #[test]
    fn refuses_multi_image_and_missing_manifest() {
        let two = archive(&[("manifest.json", br#"[{"Config":"a"},{"Config":"b"}]"#)]);
        let err = sanitize(two.as_slice(), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
        let none = archive(&[("x", b"y")]);
        let err = sanitize(none.as_slice(), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("no manifest.json"), "{err}");
    }

    #[test]
    fn refuses_device_entries() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Char);
        h.set_size(0);
        b.append_data(&mut h, "dev", std::io::empty())
            .expect("append");
        let bytes = b.into_inner().expect("finish");
        let err = sanitize(bytes.as_slice(), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("has type"), "{err}");
    }

    #[tokio::test]
    async fn channel_carries_bytes_and_failures() {
        use futures::StreamExt;
        let (stream, handle) = spawn_sanitized(|| {
            let manifest: &[u8] = br#"[{"Config":"a.json","RepoTags":null,"Layers":[]}]"#;
            let big = vec![7u8; 3 * CHUNK + 5];
            Ok(Box::new(std::io::Cursor::new(archive(&[
                ("big", &big),
                ("manifest.json", manifest),
            ]))) as Box<dyn Read + Send>)
        });
        let collected: Vec<_> = stream.collect().await;
        assert!(collected.iter().all(Result::is_ok));
        let bytes: Vec<u8> = collected
            .into_iter()
            .flat_map(|c| c.expect("chunk").to_vec())
            .collect();
        assert_eq!(entries(&bytes)[0].1.len(), 3 * CHUNK + 5);
        handle.await.expect("join").expect("facts");

        let (stream, handle) = spawn_sanitized(|| Err(std::io::Error::other("digest mismatch")));
        let collected: Vec<_> = stream.collect().await;
        assert!(collected.last().is_some_and(Result::is_err));
        assert!(handle.await.expect("join").is_err());
    }
}
