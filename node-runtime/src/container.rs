//! The container engine, behind a small trait, and the confined container configuration.
//!
//! [`Engine`] is what the runtime needs from an engine: load an image from a byte stream, run a
//! container to completion while streaming its output, and remove both. [`DockerEngine`] is the
//! real implementation over the Docker Engine API (bollard), which rootful dockerd and (rootless)
//! Podman both speak. The API version is negotiated because nodes run old engines.
//!
//! [`ContainerSpec::to_create_body`] is the single place where the container's confinement is
//! decided: the job user's uid:gid and supplementary groups, `CapDrop ALL`, `no-new-privileges`,
//! the granted network mode, a pids limit, a read-only root filesystem, only the runtime's own
//! bind mounts plus admin-allowed ones, no log driver (container output is streamed to the job,
//! never written to the engine's disk), and the job's cgroup as parent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, ImportImageOptions, KillContainerOptions,
    RemoveContainerOptions, RemoveImageOptions,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::policy::{Gpus, Granted};

/// Timeout of short control calls to the engine.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of an image load (the whole upload counts): generous for multi-GB images.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(3 * 3600);
/// Label put on every container the runtime creates, so leftovers can be found.
pub const MANAGED_LABEL: &str = "io.hpcs.managed";
/// Size of the `/tmp` tmpfs in every container.
pub const TMP_TMPFS: &str = "rw,nosuid,nodev,noexec,size=268435456,mode=1777";

/// Errors of talking to the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The engine socket could not be used.
    #[error("failed to connect to the container engine at {socket}")]
    Connect {
        /// The socket path.
        socket: String,
        /// The cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// Loading an image failed.
    #[error("failed to load the image into the engine")]
    LoadImage(#[source] bollard::errors::Error),
    /// The engine loaded something, but did not say which image.
    #[error("the engine did not report the loaded image id (output: {output:?})")]
    LoadedImageUnknown {
        /// What the engine printed.
        output: String,
    },
    /// The image stream itself failed (decryption, verification, tar checks).
    #[error("the image stream failed")]
    ImageStream(#[source] std::io::Error),
    /// Creating the container failed.
    #[error("failed to create container {name}")]
    CreateContainer {
        /// Container name.
        name: String,
        /// The cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// Another container operation failed.
    #[error("failed to {op} container {id}")]
    Container {
        /// The operation.
        op: &'static str,
        /// Container id.
        id: String,
        /// The cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// Removing an image failed.
    #[error("failed to remove image {id}")]
    RemoveImage {
        /// Image id.
        id: String,
        /// The cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// The container's output could not be delivered; the container was killed.
    #[error("failed to forward container output")]
    ForwardOutput(#[source] std::io::Error),
    /// A container specification was refused before reaching the engine.
    #[error("invalid container specification: {0}")]
    InvalidSpec(String),
}

/// A stream of image tarball bytes (a `docker save` archive).
pub type ImageStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Receives a running container's output as it is produced.
pub trait OutputSink: Send {
    /// Called for every chunk of output.
    ///
    /// # Errors
    ///
    /// An I/O error stops forwarding (the container keeps running until it ends or is killed).
    fn write(&mut self, kind: OutputKind, data: &[u8]) -> std::io::Result<()>;
}

/// Forwards container output to this process's stdout and stderr (the Slurm job's output).
#[derive(Debug, Default)]
pub struct StdioSink;

impl OutputSink for StdioSink {
    fn write(&mut self, kind: OutputKind, data: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        match kind {
            OutputKind::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(data)?;
                out.flush()
            }
            OutputKind::Stderr => {
                let mut err = std::io::stderr().lock();
                err.write_all(data)?;
                err.flush()
            }
        }
    }
}

/// One bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Host path.
    pub host: PathBuf,
    /// Container path.
    pub container: String,
    /// Read-only?
    pub read_only: bool,
}

/// Everything the engine needs to create one confined container. Built only from validated
/// parts: a policy [`Granted`] and identities established by the runtime, never raw user input.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Container name (unique per engine).
    pub name: String,
    /// Image id (`sha256:...`), never a mutable tag.
    pub image: String,
    /// Replaces the image's entrypoint when set (hooks run this way).
    pub entrypoint: Option<Vec<String>>,
    /// Arguments (the image's command when empty and no entrypoint override).
    pub cmd: Vec<String>,
    /// Numeric user.
    pub uid: u32,
    /// Numeric primary group.
    pub gid: u32,
    /// Numeric supplementary groups.
    pub groups: Vec<u32>,
    /// Environment, `NAME=value`.
    pub env: Vec<String>,
    /// Bind mounts: the runtime's own (data, output, passwd, group, hooks) and admin-allowed ones.
    pub binds: Vec<Bind>,
    /// What the policy granted.
    pub granted: Granted,
    /// The job's cgroup, when known and supported by the engine.
    pub cgroup_parent: Option<String>,
    /// Labels (job id, user), for operators and leftover sweeps.
    pub labels: HashMap<String, String>,
}

impl ContainerSpec {
    /// Check the specification's invariants.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidSpec`] naming the problem.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::InvalidSpec(m));
        if self.uid == 0 || self.gid == 0 || self.groups.contains(&0) {
            return bad("containers never run as root or with group root".to_owned());
        }
        if !crate::policy::is_image_id(&self.image) {
            return bad(format!("image {:?} is not an image id", self.image));
        }
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return bad(format!("container name {:?} is invalid", self.name));
        }
        for e in &self.env {
            let Some((k, _)) = e.split_once('=') else {
                return bad("environment entry without '='".to_owned());
            };
            if k.is_empty() || e.contains('\0') {
                return bad(format!("environment variable name {k:?} is invalid"));
            }
        }
        for b in &self.binds {
            if !b.host.is_absolute() || !b.container.starts_with('/') {
                return bad(format!(
                    "bind {} -> {} is not absolute",
                    b.host.display(),
                    b.container
                ));
            }
            if b.host.to_string_lossy().contains(':') || b.container.contains(':') {
                return bad(format!(
                    "bind {} -> {} contains ':'",
                    b.host.display(),
                    b.container
                ));
            }
        }
        Ok(())
    }

    /// The Docker API body for this container.
    #[must_use]
    pub fn to_create_body(&self) -> ContainerCreateBody {
        let g = &self.granted;
        let binds = self
            .binds
            .iter()
            .map(|b| {
                format!(
                    "{}:{}:{}",
                    b.host.display(),
                    b.container,
                    if b.read_only { "ro" } else { "rw" }
                )
            })
            .collect();
        let device_requests = (g.gpus == Gpus::All).then(|| {
            vec![DeviceRequest {
                driver: Some(String::new()),
                count: Some(-1),
                capabilities: Some(vec![vec!["gpu".to_owned()]]),
                ..DeviceRequest::default()
            }]
        });
        let host_config = HostConfig {
            binds: Some(binds),
            cap_drop: Some(vec!["ALL".to_owned()]),
            cap_add: Some(Vec::new()),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            privileged: Some(false),
            group_add: Some(self.groups.iter().map(u32::to_string).collect()),
            network_mode: Some(g.network.as_str().to_owned()),
            pids_limit: Some(g.pids_limit),
            readonly_rootfs: Some(g.read_only_rootfs),
            tmpfs: Some(HashMap::from([("/tmp".to_owned(), TMP_TMPFS.to_owned())])),
            ipc_mode: Some("private".to_owned()),
            // Output goes to the job through attach; a log driver would keep a copy on disk.
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".to_owned()),
                config: Some(HashMap::new()),
            }),
            cgroup_parent: self.cgroup_parent.clone(),
            device_requests,
            shm_size: g.shm_size,
            auto_remove: Some(false),
            ..HostConfig::default()
        };
        ContainerCreateBody {
            image: Some(self.image.clone()),
            entrypoint: self.entrypoint.clone(),
            cmd: (!self.cmd.is_empty()).then(|| self.cmd.clone()),
            user: Some(format!("{}:{}", self.uid, self.gid)),
            env: Some(self.env.clone()),
            working_dir: g.workdir.clone(),
            labels: Some(self.labels.clone()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(false),
            open_stdin: Some(false),
            tty: Some(false),
            network_disabled: Some(false),
            host_config: Some(host_config),
            ..ContainerCreateBody::default()
        }
    }
}

/// What the runtime needs from a container engine.
pub trait Engine: Send + Sync {
    /// Load a `docker save` archive; returns the image id.
    fn load_image(
        &self,
        tar: ImageStream,
    ) -> impl Future<Output = Result<String, EngineError>> + Send;

    /// Create a container; returns its id.
    fn create(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, EngineError>> + Send;

    /// Start the container, stream its output into `sink` until it exits, return the exit code.
    fn run_attached(
        &self,
        id: &str,
        sink: &mut (dyn OutputSink + '_),
    ) -> impl Future<Output = Result<i64, EngineError>> + Send;

    /// Kill a running container (no-op when it is not running).
    fn kill(&self, id: &str) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Remove a container, killing it first if needed; absent containers are fine.
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Remove an image; absent images, and images another container still uses, are fine.
    fn remove_image(&self, id: &str) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Does the engine support `CgroupParent` (false for rootless engines)?
    fn supports_cgroup_parent(&self) -> bool;
}

/// The real engine: Docker Engine API over a unix socket.
#[derive(Debug, Clone)]
pub struct DockerEngine {
    control: Docker,
    long: Docker,
    rootless: bool,
}

impl DockerEngine {
    /// Connect to the engine socket (`unix:///path` or a plain path) and negotiate the API version.
    ///
    /// # Errors
    ///
    /// [`EngineError::Connect`] when the socket cannot be used.
    pub async fn connect(socket: &str) -> Result<Self, EngineError> {
        let path = socket.strip_prefix("unix://").unwrap_or(socket);
        let connect_err = |source| EngineError::Connect {
            socket: socket.to_owned(),
            source,
        };
        let docker = Docker::connect_with_unix(
            path,
            CONTROL_TIMEOUT.as_secs(),
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(connect_err)?
        .negotiate_version()
        .await
        .map_err(connect_err)?;
        let info = docker.info().await.map_err(connect_err)?;
        let rootless = info
            .security_options
            .unwrap_or_default()
            .iter()
            .any(|o| o.contains("rootless"));
        let long = docker.clone().with_timeout(LOAD_TIMEOUT);
        Ok(Self {
            control: docker,
            long,
            rootless,
        })
    }

    /// The underlying client, for tests and diagnostics.
    #[must_use]
    pub fn docker(&self) -> &Docker {
        &self.control
    }
}

fn is_status(e: &bollard::errors::Error, codes: &[u16]) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if codes.contains(status_code))
}

impl Engine for DockerEngine {
    async fn load_image(&self, tar: ImageStream) -> Result<String, EngineError> {
        // The stream's own error (failed decryption or verification) is kept aside so the caller
        // sees it rather than the engine's report of a truncated upload.
        let (err_tx, mut err_rx) = tokio::sync::mpsc::channel::<std::io::Error>(1);
        let tar = tar.map(move |item| {
            if let Err(e) = &item {
                let _ = err_tx.try_send(std::io::Error::new(e.kind(), e.to_string()));
            }
            item
        });
        let opts = ImportImageOptions {
            quiet: true,
            ..ImportImageOptions::default()
        };
        let mut progress = self.long.import_image_stream(opts, tar, None);
        let mut output = String::new();
        let mut failure = None;
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => {
                    if let Some(s) = info.stream.or(info.status) {
                        output.push_str(&s);
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(progress);
        if let Ok(e) = err_rx.try_recv() {
            return Err(EngineError::ImageStream(e));
        }
        if let Some(e) = failure {
            return Err(EngineError::LoadImage(e));
        }
        output
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Loaded image ID: ")
                    .map(str::to_owned)
            })
            .filter(|id| crate::policy::is_image_id(id))
            .ok_or(EngineError::LoadedImageUnknown { output })
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        spec.validate()?;
        let mut spec = spec.clone();
        if self.rootless {
            // Rootless engines cannot place containers in a foreign cgroup.
            spec.cgroup_parent = None;
        }
        let mut body = spec.to_create_body();
        if self.rootless
            && let Some(hc) = body.host_config.as_mut()
        {
            // Rootless Podman: keep the user's own uid inside the user namespace, so files in
            // /output belong to the user on the host (needs Podman's compat API; untested here).
            hc.userns_mode = Some("keep-id".to_owned());
        }
        let opts = CreateContainerOptions {
            name: Some(spec.name.clone()),
            platform: String::new(),
        };
        let created = self
            .control
            .create_container(Some(opts), body)
            .await
            .map_err(|source| EngineError::CreateContainer {
                name: spec.name.clone(),
                source,
            })?;
        Ok(created.id)
    }

    async fn run_attached(
        &self,
        id: &str,
        sink: &mut (dyn OutputSink + '_),
    ) -> Result<i64, EngineError> {
        let err = |op: &'static str| {
            move |source| EngineError::Container {
                op,
                id: id.to_owned(),
                source,
            }
        };
        let opts = AttachContainerOptions {
            stream: true,
            stdout: true,
            stderr: true,
            ..AttachContainerOptions::default()
        };
        // Attach before starting so no output is lost and none needs a log driver.
        let attached = self
            .long
            .attach_container(id, Some(opts))
            .await
            .map_err(err("attach to"))?;
        let mut wait = self
            .long
            .wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>);
        self.control
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(err("start"))?;
        let mut output = attached.output;
        while let Some(chunk) = output.next().await {
            let Ok(chunk) = chunk else { break };
            let (kind, data) = match chunk {
                bollard::container::LogOutput::StdOut { message }
                | bollard::container::LogOutput::Console { message } => {
                    (OutputKind::Stdout, message)
                }
                bollard::container::LogOutput::StdErr { message } => (OutputKind::Stderr, message),
                bollard::container::LogOutput::StdIn { .. } => continue,
            };
            if let Err(e) = sink.write(kind, &data) {
                // Output that cannot be delivered stops the job rather than piling up.
                let _ = self.kill(id).await;
                return Err(EngineError::ForwardOutput(e));
            }
        }
        match wait.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard reports a non-zero exit as an error; it is a result here.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(err("wait for")(e)),
            None => Err(EngineError::Container {
                op: "wait for",
                id: id.to_owned(),
                source: bollard::errors::Error::RequestTimeoutError,
            }),
        }
    }

    async fn kill(&self, id: &str) -> Result<(), EngineError> {
        let opts = KillContainerOptions {
            signal: "SIGKILL".to_owned(),
        };
        match self.control.kill_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            // 404: gone; 409: not running.
            Err(e) if is_status(&e, &[404, 409]) => Ok(()),
            Err(source) => Err(EngineError::Container {
                op: "kill",
                id: id.to_owned(),
                source,
            }),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.control.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, &[404]) => Ok(()),
            Err(source) => Err(EngineError::Container {
                op: "remove",
                id: id.to_owned(),
                source,
            }),
        }
    }

    async fn remove_image(&self, id: &str) -> Result<(), EngineError> {
        // Loads never tag (see the image module); a tag means the same image also belongs to
        // somebody else (e.g. an admin's identical image), and removing by id would delete it.
        match self.control.inspect_image(id).await {
            Ok(img) if img.repo_tags.as_ref().is_some_and(|t| !t.is_empty()) => {
                tracing::info!(image = id, "image is tagged by someone else; left in place");
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if is_status(&e, &[404]) => return Ok(()),
            Err(source) => {
                return Err(EngineError::RemoveImage {
                    id: id.to_owned(),
                    source,
                });
            }
        }
        let opts = RemoveImageOptions {
            force: false,
            noprune: false,
            platforms: None,
        };
        match self.control.remove_image(id, Some(opts), None).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, &[404]) => Ok(()),
            Err(e) if is_status(&e, &[409]) => {
                // Another job's container still uses the same image; that job removes it.
                tracing::info!(
                    image = id,
                    "image still in use by another container; left in place"
                );
                Ok(())
            }
            Err(source) => Err(EngineError::RemoveImage {
                id: id.to_owned(),
                source,
            }),
        }
    }

    fn supports_cgroup_parent(&self) -> bool {
        !self.rootless
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NetworkMode;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "hpcs-job-1".into(),
            image: format!("sha256:{}", "a".repeat(64)),
            entrypoint: None,
            cmd: vec!["sh".into(), "-c".into(), "id".into()],
            uid: 2001,
            gid: 2001,
            groups: vec![3000, 3001],
            env: vec!["SLURM_JOB_ID=1".into()],
            binds: vec![Bind {
                host: "/run/hpcs/j/data".into(),
                container: "/data".into(),
                read_only: true,
            }],
            granted: Granted {
                network: NetworkMode::None,
                gpus: Gpus::None,
                mounts: vec![],
                pids_limit: 128,
                read_only_rootfs: true,
                workdir: None,
                shm_size: None,
            },
            cgroup_parent: Some("/slurm/uid_2001/job_1".into()),
            labels: HashMap::new(),
        }
    }

    #[test]
    fn confinement_is_in_the_body() {
        let body = spec().to_create_body();
        assert_eq!(body.user.as_deref(), Some("2001:2001"));
        let hc = body.host_config.expect("host config");
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(hc.security_opt, Some(vec!["no-new-privileges".to_owned()]));
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.pids_limit, Some(128));
        assert_eq!(hc.privileged, Some(false));
        assert_eq!(
            hc.group_add,
            Some(vec!["3000".to_owned(), "3001".to_owned()])
        );
        assert_eq!(hc.binds, Some(vec!["/run/hpcs/j/data:/data:ro".to_owned()]));
        assert_eq!(hc.cgroup_parent.as_deref(), Some("/slurm/uid_2001/job_1"));
        assert_eq!(hc.log_config.and_then(|l| l.typ).as_deref(), Some("none"));
        assert!(hc.device_requests.is_none());
    }

    #[test]
    fn root_and_bad_specs_are_refused() {
        let mut s = spec();
        s.uid = 0;
        assert!(s.validate().is_err());
        let mut s = spec();
        s.groups.push(0);
        assert!(s.validate().is_err());
        let mut s = spec();
        s.image = "busybox:latest".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.env.push("NOEQUALS".into());
        assert!(s.validate().is_err());
        let mut s = spec();
        s.binds.push(Bind {
            host: "/a:b".into(),
            container: "/x".into(),
            read_only: true,
        });
        assert!(s.validate().is_err());
        assert!(spec().validate().is_ok());
    }
}
