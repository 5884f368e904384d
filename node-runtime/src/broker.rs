//! `hpcs-node daemon`: the root broker between unprivileged jobs and a rootful engine.
//!
//! Access to a rootful Docker socket is root-equivalent, so jobs never get it. Instead the
//! daemon (root) listens on a unix socket and, for each connection:
//!
//! 1. identifies the caller with `SO_PEERCRED` (uid, gid, pid) and root-owned `/proc/<pid>`
//!    (supplementary groups, Slurm job cgroup) — never the caller's environment or claims;
//! 2. accepts only the narrow run protocol below, never engine API calls: the caller cannot
//!    choose the user, capabilities, mounts (other than admin-allowed ones by name), devices,
//!    privileges or the image's tag; the policy decides, exactly as in direct mode (both run
//!    [`Session`]);
//! 3. removes the containers, the image and the scratch directory when the caller says `close`,
//!    disconnects, or dies (scancel kills the job step, which closes the socket), and when the
//!    daemon itself is told to stop.
//!
//! # Protocol
//!
//! JSON lines, each at most [`MAX_HEADER`] bytes; a line with a `len` field is followed by that
//! many raw bytes (at most [`MAX_CHUNK`]).
//!
//! | client | daemon |
//! |---|---|
//! | (connects) | `{"op":"hello","user":"alice","job":"123"}` or an error, then closes |
//! | `{"op":"open","open":{...}}` | `{"op":"opened","scratch":{...}}` |
//! | `{"op":"image","len":N}` + N bytes, repeated; then `{"op":"image_end"}` or `{"op":"image_abort","error":"..."}` | `{"op":"loaded","image":"sha256:..."}` |
//! | `{"op":"run","what":{"app":{"args":[...]}}}` or `{"op":"run","what":{"hook":{"phase":"input","name":"..."}}}` | `{"op":"out","stream":"stdout","len":N}` + N bytes, repeated; `{"op":"exited","code":0}` |
//! | `{"op":"close"}` | `{"op":"closed"}`, then the daemon closes the connection |
//!
//! Any refusal is `{"op":"error","kind":"denied","message":"..."}`. A client that wants to
//! abandon a request mid-way shuts its write side down: the daemon cleans up and closes the
//! connection, and the client's read of end-of-file is its confirmation.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::container::{DockerEngine, ImageStream, OutputKind, OutputSink};
use crate::job::Caller;
use crate::policy::{Policy, Subject};
use crate::run::{ExecError, Executor};
use crate::session::{OpenRequest, RunWhat, ScratchPaths, Session, SessionConfig, SessionError};

/// Largest JSON line.
pub const MAX_HEADER: usize = 1 << 20;
/// Largest binary payload after a line.
pub const MAX_CHUNK: usize = 1 << 20;
/// Output queued for a slow client before the container is stopped.
pub const MAX_QUEUED_OUTPUT: usize = 64 << 20;
/// How long a client waits for the daemon to confirm cleanup.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Client-to-daemon messages.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Open the session.
    Open {
        /// The request.
        open: OpenRequest,
    },
    /// A chunk of the plaintext image archive follows.
    Image {
        /// Bytes following.
        len: usize,
    },
    /// The image archive is complete.
    ImageEnd,
    /// The image archive failed on the client side (decryption, verification).
    ImageAbort {
        /// Why.
        error: String,
    },
    /// Run the app or a hook.
    Run {
        /// What.
        what: RunWhat,
    },
    /// Clean up and end.
    Close,
}

/// Daemon-to-client messages.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DaemonMsg {
    /// Sent first: who the daemon takes the caller to be.
    Hello {
        /// User name.
        user: String,
        /// Slurm job id, if the caller is in a job cgroup.
        job: Option<String>,
    },
    /// Session open.
    Opened {
        /// The job's directories.
        scratch: ScratchPaths,
    },
    /// Image loaded and authorised.
    Loaded {
        /// Image id.
        image: String,
    },
    /// Container output follows.
    Out {
        /// Which stream.
        stream: OutputKind,
        /// Bytes following.
        len: usize,
    },
    /// The container ended.
    Exited {
        /// Exit code.
        code: i64,
    },
    /// Cleanup done.
    Closed,
    /// A refusal or failure.
    Error {
        /// Stable kind (`denied`, `engine`, `scratch`, `invalid`, `image`, `hook-timeout`, ...).
        kind: String,
        /// Message.
        message: String,
    },
}

async fn read_msg<T: serde::de::DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> std::io::Result<Option<T>> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(MAX_HEADER as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "message too long or truncated",
        ));
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    len: usize,
) -> std::io::Result<Bytes> {
    if len > MAX_CHUNK {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "chunk too large",
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}

async fn write_msg<T: serde::Serialize, W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &T,
    payload: Option<&[u8]>,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    if let Some(p) = payload {
        w.write_all(p).await?;
    }
    w.flush().await
}

fn error_msg(e: &SessionError) -> DaemonMsg {
    DaemonMsg::Error {
        kind: e.kind().to_owned(),
        message: format!("{e}{}", chain(e)),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = String::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Settings of the daemon.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Policy file, re-read for every connection so edits apply to the next job.
    pub policy_path: PathBuf,
    /// Session settings (the policy in it is replaced per connection).
    pub session: SessionConfig,
    /// Root of `/proc` (tests may point elsewhere).
    pub proc_root: PathBuf,
}

/// Serve connections on `listener` until `shutdown` fires; then clean up every session.
pub async fn serve(
    listener: UnixListener,
    engine: Arc<DockerEngine>,
    config: DaemonConfig,
    shutdown: CancellationToken,
) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let engine = engine.clone();
                    let config = config.clone();
                    let stop = shutdown.child_token();
                    tasks.spawn(async move { serve_conn(stream, engine, config, stop).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Connections see the cancellation and clean up; wait for them.
    while tasks.join_next().await.is_some() {}
}

/// Output queued from the container to the client.
struct QueueSink {
    tx: tokio::sync::mpsc::UnboundedSender<(OutputKind, Bytes)>,
    queued: Arc<AtomicUsize>,
}

impl OutputSink for QueueSink {
    fn write(&mut self, kind: OutputKind, data: &[u8]) -> std::io::Result<()> {
        if self.queued.fetch_add(data.len(), Ordering::SeqCst) + data.len() > MAX_QUEUED_OUTPUT {
            return Err(std::io::Error::other(
                "the client does not read the container output",
            ));
        }
        self.tx
            .send((kind, Bytes::copy_from_slice(data)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))
    }
}

async fn serve_conn(
    stream: UnixStream,
    engine: Arc<DockerEngine>,
    config: DaemonConfig,
    stop: CancellationToken,
) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no peer credentials");
            return;
        }
    };
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let refuse = |kind: &str, message: String| DaemonMsg::Error {
        kind: kind.to_owned(),
        message,
    };
    let policy = match Policy::load(&config.policy_path) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            tracing::error!(error = %e, "policy unusable; refusing jobs");
            let _ = write_msg(&mut wr, &refuse("policy", e.to_string()), None).await;
            return;
        }
    };
    // require-job-cgroup may only be set in [defaults]: any subject sees the same value.
    let require = policy
        .effective(&Subject {
            user: String::new(),
            groups: Default::default(),
        })
        .require_job_cgroup;
    let pid = cred.pid().unwrap_or(0);
    let caller = match Caller::from_peer(&config.proc_root, cred.uid(), cred.gid(), pid, require) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(uid = cred.uid(), pid, error = %e, "caller refused");
            let _ = write_msg(&mut wr, &refuse("identity", e.to_string()), None).await;
            return;
        }
    };
    tracing::info!(user = %caller.user, uid = caller.uid, job = ?caller.job, "connection");
    let hello = DaemonMsg::Hello {
        user: caller.user.clone(),
        job: caller.job.as_ref().map(|j| j.id.clone()),
    };
    if write_msg(&mut wr, &hello, None).await.is_err() {
        return;
    }
    let mut session_config = config.session.clone();
    session_config.policy = policy;
    session_config.privileged = true;
    let mut session: Option<Session<DockerEngine>> = None;

    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => break,
            m = read_msg::<ClientMsg, _>(&mut rd) => m,
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                let _ = write_msg(&mut wr, &refuse("protocol", e.to_string()), None).await;
                break;
            }
        };
        let reply = match msg {
            ClientMsg::Open { open } => {
                if session.is_some() {
                    refuse("invalid", "session already open".into())
                } else {
                    match Session::open(
                        engine.clone(),
                        session_config.clone(),
                        caller.clone(),
                        &open,
                    ) {
                        Ok(s) => {
                            let scratch = s.scratch().clone();
                            session = Some(s);
                            DaemonMsg::Opened { scratch }
                        }
                        Err(e) => error_msg(&e),
                    }
                }
            }
            ClientMsg::Image { len } => {
                let Some(s) = session.as_mut() else {
                    let _ = write_msg(&mut wr, &refuse("invalid", "no session".into()), None).await;
                    break;
                };
                let Ok(first) = read_payload(&mut rd, len).await else {
                    break;
                };
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
                let image: ImageStream =
                    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|item| (item, rx))
                    }));
                let (rd_ref, stop_ref) = (&mut rd, &stop);
                let feed = async move {
                    let rd = rd_ref;
                    let stop = stop_ref;
                    if tx.send(Ok(first)).await.is_err() {
                        return true;
                    }
                    loop {
                        let m = tokio::select! {
                            () = stop.cancelled() => None,
                            m = read_msg::<ClientMsg, _>(rd) => m.ok().flatten(),
                        };
                        let item = match m {
                            Some(ClientMsg::Image { len }) => match read_payload(rd, len).await {
                                Ok(b) => Ok(b),
                                Err(e) => {
                                    let _ = tx.send(Err(e)).await;
                                    return false;
                                }
                            },
                            Some(ClientMsg::ImageEnd) => return true,
                            Some(ClientMsg::ImageAbort { error }) => {
                                let _ = tx.send(Err(std::io::Error::other(error))).await;
                                return true;
                            }
                            _ => {
                                let _ = tx
                                    .send(Err(std::io::Error::other("client went away")))
                                    .await;
                                return false;
                            }
                        };
                        if tx.send(item).await.is_err() {
                            // The load ended early (refused archive); swallow the rest.
                            continue;
                        }
                    }
                };
                let (loaded, connected) = tokio::join!(s.load_image(image), feed);
                if !connected {
                    break;
                }
                match loaded {
                    Ok(image) => DaemonMsg::Loaded { image },
                    Err(e) => error_msg(&e),
                }
            }
            ClientMsg::Run { what } => {
                let Some(s) = session.as_mut() else {
                    let _ = write_msg(&mut wr, &refuse("invalid", "no session".into()), None).await;
                    break;
                };
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let queued = Arc::new(AtomicUsize::new(0));
                let mut sink = QueueSink {
                    tx,
                    queued: queued.clone(),
                };
                let mut probe = [0u8; 1];
                let mut client_ok = true;
                let result = {
                    let run = s.run(&what, &mut sink);
                    tokio::pin!(run);
                    loop {
                        tokio::select! {
                            r = &mut run => break Some(r),
                            Some((stream, data)) = rx.recv() => {
                                queued.fetch_sub(data.len(), Ordering::SeqCst);
                                if write_msg(&mut wr, &DaemonMsg::Out { stream, len: data.len() }, Some(&data)).await.is_err() {
                                    client_ok = false;
                                    break None;
                                }
                            }
                            // The client sends nothing while a container runs: any read is the end.
                            _ = rd.read(&mut probe) => { client_ok = false; break None; }
                            () = stop.cancelled() => { client_ok = false; break None; }
                        }
                    }
                };
                if !client_ok {
                    break;
                }
                drop(sink);
                while let Ok((stream, data)) = rx.try_recv() {
                    if write_msg(
                        &mut wr,
                        &DaemonMsg::Out {
                            stream,
                            len: data.len(),
                        },
                        Some(&data),
                    )
                    .await
                    .is_err()
                    {
                        client_ok = false;
                    }
                }
                if !client_ok {
                    break;
                }
                match result {
                    Some(Ok(code)) => DaemonMsg::Exited { code },
                    Some(Err(e)) => error_msg(&e),
                    None => break,
                }
            }
            ClientMsg::Close => {
                let reply = match session.as_mut() {
                    Some(s) => match s.close().await {
                        Ok(()) => DaemonMsg::Closed,
                        Err(e) => error_msg(&e),
                    },
                    None => DaemonMsg::Closed,
                };
                let _ = write_msg(&mut wr, &reply, None).await;
                break;
            }
            ClientMsg::ImageEnd | ClientMsg::ImageAbort { .. } => {
                refuse("protocol", "no image upload in progress".into())
            }
        };
        if write_msg(&mut wr, &reply, None).await.is_err() {
            break;
        }
    }
    if let Some(mut s) = session {
        if let Err(e) = s.close().await {
            tracing::error!(user = %caller.user, error = %e, "cleanup after disconnect failed");
        } else {
            tracing::info!(user = %caller.user, "session cleaned up");
        }
    }
    // Dropping the halves closes the connection: the client's confirmation.
}

/// Remove what a previous daemon on this scratch root left behind (it crashed or was killed
/// with SIGKILL): containers with the runtime's label whose mounts come from `scratch_root`,
/// their images (unless tagged or still in use), and `hpcs-*` job directories. Returns how many
/// job directories were removed.
///
/// # Errors
///
/// The engine could not list containers.
pub async fn sweep(
    engine: &DockerEngine,
    scratch_root: &Path,
) -> Result<usize, crate::container::EngineError> {
    use crate::container::Engine as _;
    let opts = bollard::query_parameters::ListContainersOptions {
        all: true,
        filters: Some(std::collections::HashMap::from([(
            "label".to_owned(),
            vec![format!("{}=true", crate::container::MANAGED_LABEL)],
        )])),
        ..Default::default()
    };
    let list = engine
        .docker()
        .list_containers(Some(opts))
        .await
        .map_err(|source| crate::container::EngineError::Connect {
            socket: "engine".into(),
            source,
        })?;
    for c in list {
        let ours = c.mounts.iter().flatten().any(|m| {
            m.source
                .as_deref()
                .is_some_and(|s| Path::new(s).starts_with(scratch_root))
        });
        if let (true, Some(id)) = (ours, c.id) {
            tracing::warn!(container = %id, "removing a container left by a previous daemon");
            let _ = engine.remove_container(&id).await;
            if let Some(image) = c.image_id {
                let _ = engine.remove_image(&image).await;
            }
        }
    }
    let mut removed = 0;
    if let Ok(entries) = std::fs::read_dir(scratch_root) {
        for e in entries.flatten() {
            let name = e.file_name();
            let is_job = name.to_str().is_some_and(|n| n.starts_with("hpcs-"));
            if is_job && e.file_type().is_ok_and(|t| t.is_dir()) {
                tracing::warn!(dir = %e.path().display(), "removing a job directory left by a previous daemon");
                if crate::session::remove_scratch(&e.path()).is_ok() {
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

/// Bind the daemon socket: stale sockets are replaced, and the mode lets every local user
/// connect (the daemon does its own authorisation on every connection).
///
/// # Errors
///
/// The socket cannot be created.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_socket() {
            std::fs::remove_file(path)?;
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ));
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// The job side of the protocol.
#[derive(Debug)]
pub struct BrokerClient {
    socket: String,
    rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    wr: tokio::net::unix::OwnedWriteHalf,
    /// A request was interrupted; the stream is mid-message.
    dirty: bool,
    closed: bool,
}

impl BrokerClient {
    /// Connect to the daemon.
    ///
    /// # Errors
    ///
    /// [`ExecError::BrokerIo`].
    pub async fn connect(socket: &Path) -> Result<Self, ExecError> {
        let name = socket.display().to_string();
        let stream = tokio::time::timeout(Duration::from_secs(10), UnixStream::connect(socket))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))
            .and_then(|r| r)
            .map_err(|source| ExecError::BrokerIo {
                socket: name.clone(),
                source,
            })?;
        let (rd, wr) = stream.into_split();
        let mut client = Self {
            socket: name,
            rd: BufReader::new(rd),
            wr,
            dirty: false,
            closed: false,
        };
        match client.recv().await? {
            DaemonMsg::Hello { user, job } => {
                tracing::info!(%user, ?job, "the daemon identified this job");
                Ok(client)
            }
            other => {
                client.closed = true;
                Err(Self::unexpected(other))
            }
        }
    }

    fn io(&self) -> impl Fn(std::io::Error) -> ExecError + '_ {
        |source| ExecError::BrokerIo {
            socket: self.socket.clone(),
            source,
        }
    }

    async fn send(&mut self, msg: &ClientMsg, payload: Option<&[u8]>) -> Result<(), ExecError> {
        write_msg(&mut self.wr, msg, payload)
            .await
            .map_err(self.io())
    }

    async fn recv(&mut self) -> Result<DaemonMsg, ExecError> {
        match read_msg::<DaemonMsg, _>(&mut self.rd)
            .await
            .map_err(self.io())?
        {
            Some(m) => Ok(m),
            None => Err(ExecError::BrokerIo {
                socket: self.socket.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the daemon closed the connection",
                ),
            }),
        }
    }

    fn unexpected(m: DaemonMsg) -> ExecError {
        match m {
            DaemonMsg::Error { kind, message } => ExecError::Broker { kind, message },
            other => ExecError::Broker {
                kind: "protocol".into(),
                message: format!("unexpected reply {other:?}"),
            },
        }
    }
}

impl Executor for BrokerClient {
    async fn open(&mut self, req: &OpenRequest) -> Result<ScratchPaths, ExecError> {
        self.dirty = true;
        self.send(&ClientMsg::Open { open: req.clone() }, None)
            .await?;
        let m = self.recv().await?;
        self.dirty = false;
        match m {
            DaemonMsg::Opened { scratch } => Ok(scratch),
            other => Err(Self::unexpected(other)),
        }
    }

    async fn load_image(&mut self, mut plaintext: ImageStream) -> Result<String, ExecError> {
        use futures::StreamExt as _;
        self.dirty = true;
        let mut sent_any = false;
        let mut failure = None;
        while let Some(item) = plaintext.next().await {
            match item {
                Ok(bytes) => {
                    for chunk in bytes.chunks(MAX_CHUNK) {
                        self.send(&ClientMsg::Image { len: chunk.len() }, Some(chunk))
                            .await?;
                        sent_any = true;
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if !sent_any {
            // The daemon starts an upload on its first chunk; an empty one starts it.
            self.send(&ClientMsg::Image { len: 0 }, Some(&[])).await?;
        }
        match failure {
            Some(e) => {
                self.send(
                    &ClientMsg::ImageAbort {
                        error: e.to_string(),
                    },
                    None,
                )
                .await?;
            }
            None => self.send(&ClientMsg::ImageEnd, None).await?,
        }
        let m = self.recv().await?;
        self.dirty = false;
        match m {
            DaemonMsg::Loaded { image } => Ok(image),
            other => Err(Self::unexpected(other)),
        }
    }

    async fn run(
        &mut self,
        what: &RunWhat,
        sink: &mut (dyn OutputSink + '_),
    ) -> Result<i64, ExecError> {
        self.dirty = true;
        self.send(&ClientMsg::Run { what: what.clone() }, None)
            .await?;
        loop {
            match self.recv().await? {
                DaemonMsg::Out { stream, len } => {
                    let data = read_payload(&mut self.rd, len).await.map_err(self.io())?;
                    // A broken local stdout must not stop the job's bookkeeping.
                    let _ = sink.write(stream, &data);
                }
                DaemonMsg::Exited { code } => {
                    self.dirty = false;
                    return Ok(code);
                }
                other => {
                    self.dirty = false;
                    return Err(Self::unexpected(other));
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), ExecError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        if !self.dirty {
            self.send(&ClientMsg::Close, None).await?;
            let m = tokio::time::timeout(CLOSE_TIMEOUT, self.recv())
                .await
                .map_err(|_| ExecError::Broker {
                    kind: "timeout".into(),
                    message: "the daemon did not confirm cleanup".into(),
                })??;
            return match m {
                DaemonMsg::Closed => Ok(()),
                other => Err(Self::unexpected(other)),
            };
        }
        // Mid-message: end our side; the daemon cleans up and then closes, which we wait for.
        let _ = self.wr.shutdown().await;
        let drain = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match self.rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(CLOSE_TIMEOUT, drain)
            .await
            .map_err(|_| ExecError::Broker {
                kind: "timeout".into(),
                message: "the daemon did not confirm cleanup".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let m = ClientMsg::Run {
            what: RunWhat::App {
                args: vec!["a".into()],
            },
        };
        assert_eq!(
            serde_json::to_string(&m).expect("json"),
            r#"{"op":"run","what":{"app":{"args":["a"]}}}"#
        );
        let m: ClientMsg = serde_json::from_str(r#"{"op":"image","len":3}"#).expect("parse");
        assert!(matches!(m, ClientMsg::Image { len: 3 }));
        let m = DaemonMsg::Out {
            stream: OutputKind::Stderr,
            len: 2,
        };
        assert_eq!(
            serde_json::to_string(&m).expect("json"),
            r#"{"op":"out","stream":"stderr","len":2}"#
        );
        assert!(serde_json::from_str::<ClientMsg>(r#"{"op":"exec","cmd":"sh"}"#).is_err());
    }

    #[tokio::test]
    async fn oversized_lines_are_refused() {
        let (a, b) = tokio::io::duplex(64);
        let mut w = a;
        tokio::spawn(async move {
            let big = vec![b'x'; MAX_HEADER + 10];
            let _ = w.write_all(&big).await;
        });
        let mut r = BufReader::new(b);
        assert!(read_msg::<ClientMsg, _>(&mut r).await.is_err());
    }
}
