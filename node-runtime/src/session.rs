//! One job's privileged side: policy decisions, private scratch, image, containers, cleanup.
//!
//! A [`Session`] is what the root daemon runs for each connection, and what `hpcs-node run` runs
//! in-process when it talks to a rootless engine directly. It only ever acts for the [`Caller`]
//! it was opened for, builds every container from the policy's [`Granted`] settings and the
//! caller's own ids, and tracks everything it creates so [`Session::close`] (or the daemon, when
//! the caller disconnects) can remove it.
//!
//! Scratch layout, on tmpfs (checked) under the configured scratch directory:
//!
//! ```text
//! hpcs-<job>-<random>/        direct mode: the user's, 0700; daemon: root's, 0711
//!   data/    0700 user        decrypted input data, mounted read-only at /data
//!   output/  0700 user        mounted read-write at /output, packed and encrypted afterwards
//!   hooks/   0700 user        copies of the job's hooks, mounted read-only at /hooks
//!   etc/passwd, etc/group     synthesised, mounted read-only over the image's
//! ```
//!
//! Under the daemon the job directory itself belongs to root, so the user cannot swap `data/`
//! for a symlink between the daemon's checks and the engine's bind mount (which the engine would
//! follow as root). Wiping: the directories live on tmpfs, so removing them frees the pages;
//! overwriting first would add nothing (no journal, no remapped blocks).

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::container::{
    Bind, ContainerSpec, Engine, EngineError, ImageStream, MANAGED_LABEL, OutputSink,
};
use crate::job::Caller;
use crate::policy::{Granted, ImageGrant, Policy, PolicyError, Request};

/// Largest environment accepted from a job (entries and total bytes).
pub const MAX_ENV_ENTRIES: usize = 512;
/// Largest total size of the job's environment.
pub const MAX_ENV_BYTES: usize = 256 * 1024;

/// Errors of a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The policy refused the request.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Scratch storage could not be prepared or removed.
    #[error("failed to {op} scratch directory {path}")]
    Scratch {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The scratch directory is not on tmpfs.
    #[error(
        "scratch directory {path} is not on tmpfs\nhint: mount a tmpfs there; decrypted data must never reach a disk"
    )]
    NotTmpfs {
        /// The path.
        path: PathBuf,
    },
    /// The request is malformed or out of order.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The image archive was refused or could not be read.
    #[error("image archive rejected")]
    Image(#[source] std::io::Error),
    /// A hook ran longer than allowed.
    #[error("{phase} hook {name} timed out after {secs} s")]
    HookTimeout {
        /// input or output.
        phase: String,
        /// The hook.
        name: String,
        /// The limit.
        secs: u64,
    },
    /// Cleanup failed (the errors are listed).
    #[error("cleanup failed: {0}")]
    Cleanup(String),
}

impl SessionError {
    /// Stable kind string for the daemon protocol.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Policy(PolicyError::Denied { .. }) => "denied",
            Self::Policy(_) => "policy",
            Self::Engine(_) => "engine",
            Self::Scratch { .. } | Self::NotTmpfs { .. } => "scratch",
            Self::Invalid(_) => "invalid",
            Self::Image(_) => "image",
            Self::HookTimeout { .. } => "hook-timeout",
            Self::Cleanup(_) => "cleanup",
        }
    }
}

/// Node-wide settings of sessions.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// This node's name (for image rules).
    pub node: String,
    /// Where per-job directories are created.
    pub scratch_root: PathBuf,
    /// Refuse a scratch root that is not tmpfs.
    pub require_tmpfs: bool,
    /// The admin policy.
    pub policy: Arc<Policy>,
    /// Per-hook time limit.
    pub hook_timeout: Duration,
    /// Whether this session runs as root for another user (daemon) or as the user (direct).
    pub privileged: bool,
}

/// What a job asks for when it opens a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenRequest {
    /// The image name the job claims (from its application info).
    pub image: String,
    /// The image id the job claims, if any.
    pub image_digest: Option<String>,
    /// Container settings asked for.
    pub request: Request,
    /// Environment for the containers (`SLURM_*` and the job's env file), `NAME=value`.
    pub env: Vec<String>,
}

/// The per-job directories handed back to the job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScratchPaths {
    /// The job directory.
    pub root: PathBuf,
    /// Decrypted data (mounted at /data).
    pub data: PathBuf,
    /// Output (mounted at /output).
    pub output: PathBuf,
    /// Hooks (mounted at /hooks).
    pub hooks: PathBuf,
}

/// What to run in a container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunWhat {
    /// The application with these arguments (empty: the image's command).
    App {
        /// Arguments.
        args: Vec<String>,
    },
    /// A hook from the hooks directory.
    Hook {
        /// `input` or `output`.
        phase: HookPhase,
        /// File name in `hooks/<phase>/`.
        name: String,
    },
}

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookPhase {
    /// After decryption, before the application.
    Input,
    /// After the application, before output encryption.
    Output,
}

impl HookPhase {
    /// Directory name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
        }
    }
}

/// One job's privileged side. See the module docs.
#[derive(Debug)]
pub struct Session<E: Engine> {
    engine: Arc<E>,
    config: SessionConfig,
    caller: Caller,
    granted: Granted,
    grant: ImageGrant,
    env: Vec<String>,
    scratch: ScratchPaths,
    image: Option<String>,
    containers: Vec<String>,
    tag: String,
    closed: bool,
}

impl<E: Engine> Session<E> {
    /// Check the request against the policy (before the job fetches any key) and create the
    /// job's scratch directories.
    ///
    /// # Errors
    ///
    /// [`SessionError::Policy`] naming the rule that refused, or scratch errors.
    pub fn open(
        engine: Arc<E>,
        config: SessionConfig,
        caller: Caller,
        req: &OpenRequest,
    ) -> Result<Self, SessionError> {
        let subject = caller.subject();
        let granted = config.policy.check_request(&subject, &req.request)?;
        let grant = config.policy.authorise_image(
            &config.node,
            &subject,
            &req.image,
            req.image_digest.as_deref(),
        )?;
        validate_env(&req.env)?;
        let tag = format!(
            "hpcs-{}-{}",
            caller.job.as_ref().map_or("nojob", |j| j.id.as_str()),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let scratch = create_scratch(&config, &caller, &tag)?;
        Ok(Self {
            engine,
            config,
            caller,
            granted,
            grant,
            env: req.env.clone(),
            scratch,
            image: None,
            containers: Vec::new(),
            tag,
            closed: false,
        })
    }

    /// The job's directories.
    #[must_use]
    pub fn scratch(&self) -> &ScratchPaths {
        &self.scratch
    }

    /// The caller this session serves.
    #[must_use]
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Load the job's image from a plaintext `docker save` stream. The archive is checked and
    /// stripped of tags on the way (see [`crate::image`]), and the loaded image must satisfy an
    /// image rule that authorised the job's claim.
    ///
    /// # Errors
    ///
    /// The stream failed, the engine refused it, or the policy refused the loaded image (it is
    /// then removed again).
    pub async fn load_image(&mut self, plaintext: ImageStream) -> Result<String, SessionError> {
        if self.image.is_some() {
            return Err(SessionError::Invalid("an image is already loaded".into()));
        }
        let reader = tokio_util::io::StreamReader::new(plaintext);
        let (stream, facts) = crate::image::spawn_sanitized(move || {
            Ok(Box::new(tokio_util::io::SyncIoBridge::new(reader))
                as Box<dyn std::io::Read + Send>)
        });
        let loaded = self.engine.load_image(stream).await;
        let facts = facts
            .await
            .map_err(|e| SessionError::Image(std::io::Error::other(e)))?;
        let id = match (loaded, facts) {
            (Ok(id), Ok(facts)) => {
                // Tracked first, so it is removed even when the policy refuses it below.
                self.image = Some(id.clone());
                self.grant.verify_loaded(&id, &facts.tags)?;
                id
            }
            (_, Err(e)) => return Err(SessionError::Image(e)),
            (Err(e), Ok(_)) => return Err(e.into()),
        };
        tracing::info!(image = %id, user = %self.caller.user, "image loaded");
        Ok(id)
    }

    /// Run the application or a hook in a confined container, streaming its output into `sink`;
    /// returns its exit code. Hooks are limited to the configured hook timeout.
    ///
    /// # Errors
    ///
    /// No image loaded, the hook is not there, the engine failed, or a hook timed out.
    pub async fn run(
        &mut self,
        what: &RunWhat,
        sink: &mut (dyn OutputSink + '_),
    ) -> Result<i64, SessionError> {
        let image = self
            .image
            .clone()
            .ok_or_else(|| SessionError::Invalid("no image loaded".into()))?;
        let (entrypoint, cmd, suffix, read_only_output) = match what {
            RunWhat::App { args } => (None, args.clone(), "app".to_owned(), false),
            RunWhat::Hook { phase, name } => {
                if !valid_hook_name(name) {
                    return Err(SessionError::Invalid(format!("hook name {name:?}")));
                }
                let path = self.scratch.hooks.join(phase.as_str()).join(name);
                let meta = std::fs::symlink_metadata(&path).map_err(|_| {
                    SessionError::Invalid(format!("{} hook {name} does not exist", phase.as_str()))
                })?;
                if !meta.is_file() {
                    return Err(SessionError::Invalid(format!(
                        "{} hook {name} is not a file",
                        phase.as_str()
                    )));
                }
                (
                    Some(vec![format!("/hooks/{}/{name}", phase.as_str())]),
                    Vec::new(),
                    format!("{}-hook", phase.as_str()),
                    // Input hooks see the output directory too, but cannot write it yet.
                    *phase == HookPhase::Input,
                )
            }
        };
        let spec = self.spec(image, entrypoint, cmd, &suffix, read_only_output);
        let id = self.engine.create(&spec).await?;
        self.containers.push(id.clone());
        let result = match what {
            RunWhat::App { .. } => self
                .engine
                .run_attached(&id, sink)
                .await
                .map_err(Into::into),
            RunWhat::Hook { phase, name } => {
                match tokio::time::timeout(
                    self.config.hook_timeout,
                    self.engine.run_attached(&id, sink),
                )
                .await
                {
                    Ok(r) => r.map_err(Into::into),
                    Err(_) => {
                        let _ = self.engine.kill(&id).await;
                        Err(SessionError::HookTimeout {
                            phase: phase.as_str().to_owned(),
                            name: name.clone(),
                            secs: self.config.hook_timeout.as_secs(),
                        })
                    }
                }
            }
        };
        // Each container is removed as soon as it ends; close() retries whatever is left.
        if self.engine.remove_container(&id).await.is_ok() {
            self.containers.retain(|c| *c != id);
        }
        result
    }

    fn spec(
        &self,
        image: String,
        entrypoint: Option<Vec<String>>,
        cmd: Vec<String>,
        suffix: &str,
        read_only_output: bool,
    ) -> ContainerSpec {
        let s = &self.scratch;
        let mut binds = vec![
            Bind {
                host: s.data.clone(),
                container: "/data".into(),
                read_only: true,
            },
            Bind {
                host: s.output.clone(),
                container: "/output".into(),
                read_only: read_only_output,
            },
            Bind {
                host: s.hooks.clone(),
                container: "/hooks".into(),
                read_only: true,
            },
            Bind {
                host: s.root.join("etc/passwd"),
                container: "/etc/passwd".into(),
                read_only: true,
            },
            Bind {
                host: s.root.join("etc/group"),
                container: "/etc/group".into(),
                read_only: true,
            },
        ];
        binds.extend(self.granted.mounts.iter().map(|m| Bind {
            host: m.host.clone(),
            container: m.container.clone(),
            read_only: m.read_only,
        }));
        let mut env = vec![
            format!("USER={}", self.caller.user),
            "HOME=/tmp".to_owned(),
            "HPCS_DATA=/data".to_owned(),
            "HPCS_OUTPUT=/output".to_owned(),
        ];
        env.extend(self.env.iter().cloned());
        let mut labels = HashMap::from([
            (MANAGED_LABEL.to_owned(), "true".to_owned()),
            ("io.hpcs.uid".to_owned(), self.caller.uid.to_string()),
        ]);
        if let Some(job) = &self.caller.job {
            labels.insert("io.hpcs.job".to_owned(), job.id.clone());
        }
        ContainerSpec {
            name: format!("{}-{suffix}-{}", self.tag, self.containers.len()),
            image,
            entrypoint,
            cmd,
            uid: self.caller.uid,
            gid: self.caller.gid,
            groups: self.caller.groups.clone(),
            env,
            binds,
            granted: self.granted.clone(),
            cgroup_parent: self
                .caller
                .job
                .as_ref()
                .and_then(|j| j.cgroup.clone())
                .filter(|_| self.engine.supports_cgroup_parent()),
            labels,
        }
    }

    /// Kill every container of this session (cancellation); [`Session::close`] still has to run.
    pub async fn kill_all(&self) {
        for id in &self.containers {
            let _ = self.engine.kill(id).await;
        }
    }

    /// Remove the containers, the image and the scratch directory. Every step is attempted;
    /// the failures are reported together.
    ///
    /// # Errors
    ///
    /// [`SessionError::Cleanup`] listing what could not be removed.
    pub async fn close(&mut self) -> Result<(), SessionError> {
        let mut errors = Vec::new();
        for id in std::mem::take(&mut self.containers) {
            if let Err(e) = self.engine.remove_container(&id).await {
                errors.push(format!("{e}: {}", error_chain(&e)));
                self.containers.push(id);
            }
        }
        if let Some(id) = self.image.take()
            && let Err(e) = self.engine.remove_image(&id).await
        {
            errors.push(format!("{e}: {}", error_chain(&e)));
            self.image = Some(id);
        }
        if self.scratch.root.exists()
            && let Err(e) = remove_scratch(&self.scratch.root)
        {
            errors.push(format!(
                "failed to remove {}: {e}",
                self.scratch.root.display()
            ));
        }
        self.closed = errors.is_empty();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SessionError::Cleanup(errors.join("; ")))
        }
    }
}

impl<E: Engine> Drop for Session<E> {
    fn drop(&mut self) {
        if !self.closed {
            // Async cleanup is impossible here; at least the plaintext on tmpfs goes.
            let _ = remove_scratch(&self.scratch.root);
            if !self.containers.is_empty() || self.image.is_some() {
                tracing::error!(containers = ?self.containers, image = ?self.image, "session dropped without cleanup");
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

fn valid_hook_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn validate_env(env: &[String]) -> Result<(), SessionError> {
    if env.len() > MAX_ENV_ENTRIES || env.iter().map(String::len).sum::<usize>() > MAX_ENV_BYTES {
        return Err(SessionError::Invalid("environment too large".into()));
    }
    for e in env {
        let Some((k, _)) = e.split_once('=') else {
            return Err(SessionError::Invalid(
                "environment entry without '='".into(),
            ));
        };
        if k.is_empty()
            || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || k.starts_with(|c: char| c.is_ascii_digit())
            || e.contains('\0')
        {
            return Err(SessionError::Invalid(format!(
                "environment variable name {k:?}"
            )));
        }
    }
    Ok(())
}

/// Is `path` on a tmpfs?
///
/// # Errors
///
/// `statfs` failed.
pub fn is_tmpfs(path: &Path) -> std::io::Result<bool> {
    let st = nix::sys::statfs::statfs(path).map_err(std::io::Error::from)?;
    Ok(st.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

fn create_scratch(
    config: &SessionConfig,
    caller: &Caller,
    tag: &str,
) -> Result<ScratchPaths, SessionError> {
    let err = |op, path: &Path| {
        let path = path.to_owned();
        move |source| SessionError::Scratch { op, path, source }
    };
    let root_dir = &config.scratch_root;
    if config.require_tmpfs && !is_tmpfs(root_dir).map_err(err("inspect", root_dir))? {
        return Err(SessionError::NotTmpfs {
            path: root_dir.clone(),
        });
    }
    let root = root_dir.join(tag);
    let mode = if config.privileged { 0o711 } else { 0o700 };
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(&root)
        .map_err(err("create", &root))?;
    let paths = ScratchPaths {
        data: root.join("data"),
        output: root.join("output"),
        hooks: root.join("hooks"),
        root: root.clone(),
    };
    let build = || -> Result<(), SessionError> {
        // The mode is set explicitly: the umask must not widen or narrow it.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode))
            .map_err(err("chmod", &root))?;
        for d in [&paths.data, &paths.output, &paths.hooks] {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(d)
                .map_err(err("create", d))?;
        }
        for d in [paths.hooks.join("input"), paths.hooks.join("output")] {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&d)
                .map_err(err("create", &d))?;
        }
        let etc = root.join("etc");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&etc)
            .map_err(err("create", &etc))?;
        let passwd = format!(
            "root:x:0:0:root:/root:/sbin/nologin\n{}:x:{}:{}:{}:/tmp:/bin/sh\n",
            caller.user, caller.uid, caller.gid, caller.user
        );
        let mut group = "root:x:0:\n".to_owned();
        for gid in std::iter::once(caller.gid).chain(caller.groups.iter().copied()) {
            let name = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                .ok()
                .flatten()
                .map_or_else(|| format!("g{gid}"), |g| g.name);
            let members = if gid == caller.gid {
                String::new()
            } else {
                caller.user.clone()
            };
            group.push_str(&format!("{name}:x:{gid}:{members}\n"));
        }
        for (name, text) in [("passwd", passwd), ("group", group)] {
            let p = etc.join(name);
            std::fs::write(&p, text).map_err(err("write", &p))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444))
                .map_err(err("chmod", &p))?;
        }
        if config.privileged {
            for d in [&paths.data, &paths.output, &paths.hooks] {
                chown(d, caller)?;
            }
            for d in [paths.hooks.join("input"), paths.hooks.join("output")] {
                chown(&d, caller)?;
            }
        }
        Ok(())
    };
    if let Err(e) = build() {
        let _ = remove_scratch(&root);
        return Err(e);
    }
    Ok(paths)
}

fn chown(path: &Path, caller: &Caller) -> Result<(), SessionError> {
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(caller.uid)),
        Some(nix::unistd::Gid::from_raw(caller.gid)),
    )
    .map_err(|e| SessionError::Scratch {
        op: "chown",
        path: path.to_owned(),
        source: e.into(),
    })
}

/// Remove a job directory. Symlinks inside are removed, never followed.
///
/// # Errors
///
/// The directory could not be removed.
pub fn remove_scratch(root: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // The job may have left directories without write permission; restore and retry.
            make_writable(root);
            std::fs::remove_dir_all(root)
        }
        Err(e) => Err(e),
    }
}

fn make_writable(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(&["SLURM_JOB_ID=1", "A_B=x=y"], true)]
    #[case(&["=x"], false)]
    #[case(&["NOEQ"], false)]
    #[case(&["1X=a"], false)]
    #[case(&["A-B=1"], false)]
    fn env_validation(#[case] env: &[&str], #[case] ok: bool) {
        let env: Vec<String> = env.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(validate_env(&env).is_ok(), ok);
    }

    #[rstest]
    #[case("10-check", true)]
    #[case("check.sh", true)]
    #[case("../x", false)]
    #[case(".hidden", false)]
    #[case("a/b", false)]
    #[case("", false)]
    fn hook_names(#[case] n: &str, #[case] ok: bool) {
        assert_eq!(valid_hook_name(n), ok);
    }

    #[test]
    fn scratch_layout_and_removal() {
        let dir = tempfile::tempdir().expect("tmp");
        let caller = Caller::this_process().ok();
        // Tests run as root: use a synthetic unprivileged caller for the passwd content.
        let caller = caller.unwrap_or(Caller {
            uid: 4242,
            gid: 4242,
            groups: vec![],
            user: "u".into(),
            home: "/".into(),
            group_names: Default::default(),
            job: None,
        });
        let config = SessionConfig {
            node: "n".into(),
            scratch_root: dir.path().to_owned(),
            require_tmpfs: false,
            policy: Arc::new(Policy::parse(Path::new("p"), "").expect("policy")),
            hook_timeout: Duration::from_secs(1),
            privileged: false,
        };
        let paths = create_scratch(&config, &caller, "hpcs-1-abc").expect("scratch");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&paths.root), 0o700);
        assert_eq!(mode(&paths.data), 0o700);
        assert_eq!(mode(&paths.root.join("etc/passwd")), 0o444);
        let passwd = std::fs::read_to_string(paths.root.join("etc/passwd")).expect("passwd");
        assert!(
            passwd.contains(&format!(":x:{}:{}:", caller.uid, caller.gid)),
            "{passwd}"
        );
        std::fs::write(paths.data.join("secret"), "x").expect("write");
        std::fs::set_permissions(&paths.data, std::fs::Permissions::from_mode(0o500))
            .expect("chmod");
        remove_scratch(&paths.root).expect("remove");
        assert!(!paths.root.exists());
        let refused = SessionConfig {
            require_tmpfs: true,
            ..config
        };
        if !is_tmpfs(dir.path()).expect("statfs") {
            assert!(matches!(
                create_scratch(&refused, &caller, "x"),
                Err(SessionError::NotTmpfs { .. })
            ));
        }
    }
}
