//! Blocking SSH/SFTP session to the cluster's login node (ssh2).
//!
//! - Strict host keys: the server's key is checked against a known_hosts file before any
//!   authentication; an unknown or changed key aborts with an error naming host, port and file
//!   (unless `accept_new` is set, which records an unknown key but still refuses a changed one).
//! - Key authentication only, a connect timeout, a per-operation timeout and keepalive.
//! - Remote commands are argument vectors: every word goes through [`shell_quote`], the one
//!   place that quotes for the remote shell.
//! - Uploads stream to a temporary name and are renamed into place; downloads stream to a writer.
//!
//! Everything here blocks; async callers use `spawn_blocking`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hpcs_core::crypto::Sha256Digest;

mod parallel;

/// Largest stdout or stderr kept from one [`SshSession::exec`].
pub const EXEC_OUTPUT_CAP: usize = 4 * 1024 * 1024;

/// Size of each read and write handed to libssh2's SFTP layer by the streaming transfers.
///
/// libssh2 pipelines within one call: a write is split into 30000-byte `FXP_WRITE` packets that
/// are all sent before their acknowledgements are awaited, and a read keeps up to 4x the
/// caller's buffer (at most 8 MiB) of `FXP_READ` requests in flight. With 8-64 KiB buffers only
/// one to three requests are outstanding and transfers are bound by round trips; 4 MiB keeps
/// about 140 writes or 280 reads in flight (OpenSSH's sftp client keeps 64 requests of 32 KiB),
/// and the write pipeline drains once per 4 MiB. See docs/performance.md.
const SFTP_IO_SIZE: usize = 4 * 1024 * 1024;

/// Errors of the SSH layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshError {
    /// The TCP connection could not be made.
    #[error("failed to connect to {host}:{port}")]
    Connect {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The SSH handshake failed.
    #[error("ssh handshake with {host}:{port} failed")]
    Handshake {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Cause.
        #[source]
        source: ssh2::Error,
    },
    /// The known_hosts file could not be read or written.
    #[error("failed to {op} known_hosts file {path}")]
    KnownHostsFile {
        /// Operation.
        op: &'static str,
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: ssh2::Error,
    },
    /// The server's host key is not in known_hosts.
    #[error(
        "host key of {host} port {port} is not in {known_hosts}\nhint: verify the key with the cluster's administrators, then add it (ssh-keyscan -p {port} {host} >> {known_hosts}) or set accept-new-host-keys = true in [ssh]"
    )]
    UnknownHostKey {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// File.
        known_hosts: PathBuf,
    },
    /// The server's host key differs from the one in known_hosts.
    #[error(
        "host key of {host} port {port} does not match {known_hosts}: possible man-in-the-middle attack\nhint: if the cluster's key really changed, remove the old line from {known_hosts} and add the new one"
    )]
    HostKeyMismatch {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// File.
        known_hosts: PathBuf,
    },
    /// Public-key authentication was refused.
    #[error(
        "ssh authentication as {user} on {host} port {port} failed (tried {tried})\nhint: check [supercomputer] username and [ssh] key, and that the public key is in the account's authorized_keys"
    )]
    Auth {
        /// User.
        user: String,
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// What was tried: key files and/or the SSH agent.
        tried: String,
        /// Cause of the last attempt.
        #[source]
        source: ssh2::Error,
    },
    /// An argument cannot be passed to a remote shell (it contains NUL).
    #[error("argument {0:?} contains a NUL byte and cannot be passed to the remote command")]
    Unquotable(String),
    /// A channel or SFTP operation failed.
    #[error("ssh: failed to {op}")]
    Channel {
        /// Operation, with its target.
        op: String,
        /// Cause.
        #[source]
        source: ssh2::Error,
    },
    /// Reading or writing a stream failed.
    #[error("failed to {op}")]
    Io {
        /// Operation, with its target.
        op: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A remote command's output exceeded [`EXEC_OUTPUT_CAP`].
    #[error("output of remote command {command} exceeds {cap} bytes")]
    OutputTooLarge {
        /// The command.
        command: String,
        /// Cap.
        cap: usize,
    },
    /// A remote command needed by the caller failed.
    #[error("remote command {command} exited with {status}: {stderr}")]
    Remote {
        /// The command.
        command: String,
        /// Exit status.
        status: i32,
        /// Its stderr (trimmed).
        stderr: String,
    },
    /// A remote file exceeds the caller's size limit.
    #[error("remote file {path} exceeds {max} bytes")]
    FileTooLarge {
        /// Path.
        path: String,
        /// Limit.
        max: u64,
    },
}

/// Quotes one word for a POSIX shell: `'...'` with each `'` written as `'\''`.
///
/// This is the only function that quotes for a shell; scripts and remote commands use it for
/// every word. The result is one word whatever the input (spaces, `$()`, backticks, `;`,
/// newlines): inside single quotes a POSIX shell interprets nothing but the closing quote.
///
/// # Errors
///
/// [`SshError::Unquotable`] if `arg` contains NUL, which no shell word can carry.
pub fn shell_quote(arg: &str) -> Result<String, SshError> {
    if arg.contains('\0') {
        return Err(SshError::Unquotable(arg.to_owned()));
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('\'');
    for c in arg.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    Ok(out)
}

/// A command line of quoted words, joined by spaces.
///
/// # Errors
///
/// As [`shell_quote`].
pub fn shell_join<S: AsRef<str>>(argv: &[S]) -> Result<String, SshError> {
    let words: Result<Vec<_>, _> = argv.iter().map(|a| shell_quote(a.as_ref())).collect();
    Ok(words?.join(" "))
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Remote user.
    pub user: String,
    /// Private key file; `None` tries the SSH agent (`SSH_AUTH_SOCK`), then `~/.ssh/id_ed25519`,
    /// `id_ecdsa` and `id_rsa`.
    pub key: Option<PathBuf>,
    /// known_hosts file.
    pub known_hosts: PathBuf,
    /// Record unknown host keys instead of refusing them (changed keys are always refused).
    pub accept_new: bool,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of each blocking SSH operation.
    pub op_timeout: Duration,
    /// Keepalive interval.
    pub keepalive: Duration,
    /// SSH connections a large transfer is spread over (1: only the session's own); see
    /// [`SshSession::upload`] and [`SshSession::open_read`].
    pub streams: usize,
}

impl SshTarget {
    /// `user@host:port` with `key` (`None`: the agent, then the default key files), strict
    /// checking against `known_hosts`, and the defaults of an empty `[ssh]` section: 2 minute
    /// operations, 15 s keepalive, [`DEFAULT_SSH_STREAMS`] connections per large transfer.
    ///
    /// [`DEFAULT_SSH_STREAMS`]: hpcs_core::config::DEFAULT_SSH_STREAMS
    #[must_use]
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        key: Option<PathBuf>,
        known_hosts: PathBuf,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            user: user.into(),
            key,
            known_hosts,
            accept_new: false,
            connect_timeout: hpcs_core::config::DEFAULT_SSH_CONNECT_TIMEOUT,
            op_timeout: Duration::from_secs(120),
            keepalive: Duration::from_secs(15),
            streams: hpcs_core::config::DEFAULT_SSH_STREAMS,
        }
    }

    /// A target from the client config's `[supercomputer]` and `[ssh]` sections; without a key
    /// the agent and the default key files are tried, and known_hosts defaults to
    /// `~/.ssh/known_hosts`.
    #[must_use]
    pub fn from_config(
        sc: &hpcs_core::config::SupercomputerConfig,
        ssh: &hpcs_core::config::SshConfig,
    ) -> Self {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
        let known_hosts = ssh
            .known_hosts
            .clone()
            .unwrap_or_else(|| home.join(".ssh/known_hosts"));
        Self {
            accept_new: ssh.accept_new_host_keys,
            connect_timeout: ssh.connect_timeout,
            streams: ssh.streams,
            ..Self::new(
                sc.address.clone(),
                ssh.port,
                sc.username.to_string(),
                ssh.key.clone(),
                known_hosts,
            )
        }
    }
}

/// Result of a remote command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status.
    pub status: i32,
    /// Stdout.
    pub stdout: Vec<u8>,
    /// Stderr.
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// Stdout as text (lossy).
    #[must_use]
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text (lossy, trimmed).
    #[must_use]
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_owned()
    }
}

/// An authenticated SSH session.
pub struct SshSession {
    session: ssh2::Session,
    target: SshTarget,
}

impl std::fmt::Debug for SshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSession")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

fn chan(op: impl Into<String>) -> impl FnOnce(ssh2::Error) -> SshError {
    let op = op.into();
    move |source| SshError::Channel { op, source }
}

fn io_err(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> SshError {
    let op = op.into();
    move |source| SshError::Io { op, source }
}

impl SshSession {
    /// Connects, checks the host key, and authenticates with the key file.
    ///
    /// # Errors
    ///
    /// [`SshError::Connect`], [`SshError::Handshake`], [`SshError::UnknownHostKey`],
    /// [`SshError::HostKeyMismatch`], [`SshError::KnownHostsFile`], [`SshError::Auth`].
    pub fn connect(target: &SshTarget) -> Result<Self, SshError> {
        let connect_err = |source| SshError::Connect {
            host: target.host.clone(),
            port: target.port,
            source,
        };
        let addrs: Vec<_> = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(connect_err)?
            .collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, target.connect_timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or_else(|| connect_err(last))?;
        let mut session = ssh2::Session::new().map_err(|source| SshError::Handshake {
            host: target.host.clone(),
            port: target.port,
            source,
        })?;
        session.set_tcp_stream(tcp);
        session.set_timeout(u32::try_from(target.op_timeout.as_millis()).unwrap_or(u32::MAX));
        session.handshake().map_err(|source| SshError::Handshake {
            host: target.host.clone(),
            port: target.port,
            source,
        })?;
        check_host_key(&session, target)?;
        authenticate(&session, target)?;
        session.set_keepalive(
            false,
            u32::try_from(target.keepalive.as_secs()).unwrap_or(15),
        );
        Ok(Self {
            session,
            target: target.clone(),
        })
    }

    /// The target this session is connected to.
    #[must_use]
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// Runs `argv` on the remote side (each word quoted by [`shell_quote`]) and collects its
    /// output, up to [`EXEC_OUTPUT_CAP`] per stream.
    ///
    /// # Errors
    ///
    /// [`SshError::Unquotable`], [`SshError::Channel`], [`SshError::OutputTooLarge`].
    pub fn exec<S: AsRef<str>>(&self, argv: &[S]) -> Result<ExecOutput, SshError> {
        let command = shell_join(argv)?;
        let _ = self.session.keepalive_send();
        let mut ch = self
            .session
            .channel_session()
            .map_err(chan(format!("open a channel for {command}")))?;
        ch.exec(&command).map_err(chan(format!("run {command}")))?;
        let stdout = read_capped(&mut ch, &command)?;
        let stderr = read_capped(&mut ch.stderr(), &command)?;
        ch.wait_close()
            .map_err(chan(format!("close the channel of {command}")))?;
        let status = ch
            .exit_status()
            .map_err(chan(format!("read the exit status of {command}")))?;
        Ok(ExecOutput {
            status,
            stdout,
            stderr,
        })
    }

    /// Like [`SshSession::exec`], but a non-zero exit status is an error carrying stderr.
    ///
    /// # Errors
    ///
    /// As [`SshSession::exec`], and [`SshError::Remote`].
    pub fn exec_ok<S: AsRef<str>>(&self, argv: &[S]) -> Result<ExecOutput, SshError> {
        let out = self.exec(argv)?;
        if out.status != 0 {
            return Err(SshError::Remote {
                command: shell_join(argv)?,
                status: out.status,
                stderr: out.stderr_text(),
            });
        }
        Ok(out)
    }

    /// Is `program` on the remote PATH?
    ///
    /// # Errors
    ///
    /// As [`SshSession::exec`].
    pub fn has_command(&self, program: &str) -> Result<bool, SshError> {
        // `command -v` is a shell builtin; run it through `sh -c` with the name as $1.
        let out = self.exec(&["sh", "-c", "command -v \"$1\" >/dev/null", "sh", program])?;
        Ok(out.status == 0)
    }

    fn sftp(&self) -> Result<ssh2::Sftp, SshError> {
        self.session.sftp().map_err(chan("start sftp"))
    }

    /// Uploads `reader` to `remote` with `mode`: written to a temporary name in the same
    /// directory, then renamed into place, so `remote` never holds a partial file. `progress`
    /// gets the byte count so far.
    ///
    /// Sources longer than two [`SFTP_IO_SIZE`] blocks are spread over
    /// [`SshTarget::streams`] connections (module `parallel`); the others go over this session.
    ///
    /// # Errors
    ///
    /// [`SshError::Channel`], [`SshError::Io`].
    pub fn upload<R: Read>(
        &self,
        mut reader: R,
        remote: &str,
        mode: i32,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, SshError> {
        let sftp = self.sftp()?;
        let path = Path::new(remote);
        let name = path
            .file_name()
            .map_or_else(|| remote.to_owned(), |n| n.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(".{name}.{}.partial", std::process::id()));
        let result = (|| {
            let mut file = sftp
                .open_mode(
                    &tmp,
                    ssh2::OpenFlags::WRITE | ssh2::OpenFlags::CREATE | ssh2::OpenFlags::EXCLUSIVE,
                    mode,
                    ssh2::OpenType::File,
                )
                .map_err(chan(format!("create {}", tmp.display())))?;
            let read_err = || io_err(format!("read the data for {remote}"));
            let mut first = vec![0u8; SFTP_IO_SIZE];
            let n = read_full(&mut reader, &mut first).map_err(read_err())?;
            let mut pending = vec![(first, n)];
            if self.target.streams > 1 && n == SFTP_IO_SIZE {
                let mut second = vec![0u8; SFTP_IO_SIZE];
                let m = read_full(&mut reader, &mut second).map_err(read_err())?;
                pending.push((second, m));
            }
            let extra = match pending.last() {
                Some((_, m)) if pending.len() == 2 && *m > 0 => {
                    parallel::connect_more(&self.target, self.target.streams - 1)
                }
                _ => Vec::new(),
            };
            let total = if extra.is_empty() {
                let mut total = 0u64;
                let mut write = |buf: &[u8], total: &mut u64| {
                    file.write_all(buf)
                        .map_err(io_err(format!("write {}", tmp.display())))?;
                    *total += buf.len() as u64;
                    progress(*total);
                    Ok::<_, SshError>(())
                };
                for (buf, n) in pending.iter().filter(|(_, n)| *n > 0) {
                    write(&buf[..*n], &mut total)?;
                }
                let mut buf = pending.swap_remove(0).0;
                loop {
                    let n = read_full(&mut reader, &mut buf).map_err(read_err())?;
                    if n == 0 {
                        break;
                    }
                    write(&buf[..n], &mut total)?;
                }
                total
            } else {
                parallel::upload(&mut file, &extra, &tmp, &mut reader, pending, &mut progress)?
            };
            drop(extra);
            file.fsync().ok();
            drop(file);
            // SFTP v3 (OpenSSH) rename refuses an existing target; rename(2) through `mv -T`
            // replaces it atomically.
            if sftp.rename(&tmp, path, None).is_err() {
                let tmp = tmp.to_string_lossy();
                self.exec_ok(&["mv", "-f", "-T", "--", &tmp, remote])?;
            }
            Ok(total)
        })();
        if result.is_err() {
            let _ = sftp.unlink(&tmp);
        }
        result
    }

    /// Streams `remote` into `writer`, returning the byte count.
    ///
    /// # Errors
    ///
    /// [`SshError::Channel`], [`SshError::Io`].
    pub fn download<W: Write>(&self, remote: &str, mut writer: W) -> Result<u64, SshError> {
        let mut file = self.open_read(remote)?;
        // Whole blocks: libssh2 gets `SFTP_IO_SIZE` reads (`io::copy` would hand it 8 KiB and
        // leave it 32 KiB of read-ahead), and the writer gets few, large writes.
        let mut buf = vec![0u8; SFTP_IO_SIZE];
        let mut total = 0u64;
        loop {
            let n = read_full(&mut file, &mut buf).map_err(io_err(format!("download {remote}")))?;
            if n == 0 {
                return Ok(total);
            }
            writer
                .write_all(&buf[..n])
                .map_err(io_err(format!("download {remote}")))?;
            total += n as u64;
        }
    }

    /// Opens `remote` for streaming reads.
    ///
    /// Files of at least two [`SFTP_IO_SIZE`] blocks are read over [`SshTarget::streams`]
    /// connections (module `parallel`), each fetching every n-th block, and returned in order.
    ///
    /// # Errors
    ///
    /// [`SshError::Channel`].
    pub fn open_read(&self, remote: &str) -> Result<RemoteFile, SshError> {
        let mut file = self
            .sftp()?
            .open(Path::new(remote))
            .map_err(chan(format!("open {remote}")))?;
        let path = remote.to_owned();
        if self.target.streams > 1 {
            let size = file
                .stat()
                .map_err(chan(format!("stat {remote}")))?
                .size
                .unwrap_or(0);
            if size >= 2 * SFTP_IO_SIZE as u64 {
                let extra = parallel::connect_more(&self.target, self.target.streams - 1);
                if !extra.is_empty() {
                    let reader = parallel::ParallelReader::start(file, extra, remote)?;
                    return Ok(RemoteFile {
                        file: Source::Parallel(reader),
                        path,
                    });
                }
            }
        }
        Ok(RemoteFile {
            file: Source::Single(std::io::BufReader::with_capacity(SFTP_IO_SIZE, file)),
            path,
        })
    }

    /// Metadata of `remote` (symlinks are followed, as `stat(2)`); `None` if it does not exist.
    ///
    /// # Errors
    ///
    /// [`SshError::Channel`] other than for a missing file.
    pub fn stat(&self, remote: &str) -> Result<Option<RemoteStat>, SshError> {
        match self.sftp()?.stat(Path::new(remote)) {
            Ok(st) => Ok(Some(RemoteStat {
                size: st.size.unwrap_or(0),
                uid: st.uid,
                mode: st.perm.unwrap_or(0),
            })),
            Err(e) if is_no_such_file(&e) => Ok(None),
            Err(e) => Err(chan(format!("stat {remote}"))(e)),
        }
    }

    /// The numeric uid of the remote account (`id -u`).
    ///
    /// # Errors
    ///
    /// As [`SshSession::exec_ok`]; [`SshError::Remote`] if the output is not a number.
    pub fn remote_uid(&self) -> Result<u32, SshError> {
        let out = self.exec_ok(&["id", "-u"])?;
        let text = out.stdout_text();
        text.trim().parse().map_err(|_| SshError::Remote {
            command: "'id' '-u'".into(),
            status: 0,
            stderr: format!("unexpected output {text:?}"),
        })
    }

    /// Sends a keepalive message now; long polls call this between commands.
    ///
    /// # Errors
    ///
    /// [`SshError::Channel`] if the connection is gone.
    pub fn keepalive(&self) -> Result<(), SshError> {
        self.session
            .keepalive_send()
            .map(|_| ())
            .map_err(chan("send a keepalive"))
    }

    /// Reads a small remote file whole, refusing more than `max` bytes.
    ///
    /// # Errors
    ///
    /// [`SshError::FileTooLarge`], and as [`SshSession::download`].
    pub fn read_small(&self, remote: &str, max: u64) -> Result<Vec<u8>, SshError> {
        let sftp = self.sftp()?;
        let file = sftp
            .open(Path::new(remote))
            .map_err(chan(format!("open {remote}")))?;
        let mut out = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut out)
            .map_err(io_err(format!("read {remote}")))?;
        if out.len() as u64 > max {
            return Err(SshError::FileTooLarge {
                path: remote.to_owned(),
                max,
            });
        }
        Ok(out)
    }

    /// Reads `remote` from byte `offset` to its current end, at most `max` bytes; a missing
    /// file reads as empty. Used to follow a growing log.
    ///
    /// # Errors
    ///
    /// [`SshError::Channel`] (other than a missing file), [`SshError::Io`].
    pub fn read_from(&self, remote: &str, offset: u64, max: u64) -> Result<Vec<u8>, SshError> {
        use std::io::Seek as _;
        let sftp = self.sftp()?;
        let mut file = match sftp.open(Path::new(remote)) {
            Ok(f) => f,
            Err(e) if is_no_such_file(&e) => return Ok(Vec::new()),
            Err(e) => return Err(chan(format!("open {remote}"))(e)),
        };
        file.seek(std::io::SeekFrom::Start(offset))
            .map_err(io_err(format!("seek {remote}")))?;
        let mut out = Vec::new();
        file.take(max)
            .read_to_end(&mut out)
            .map_err(io_err(format!("read {remote}")))?;
        Ok(out)
    }

    /// Size of a remote file.
    ///
    /// # Errors
    ///
    /// [`SshError::Channel`].
    pub fn file_size(&self, remote: &str) -> Result<u64, SshError> {
        let st = self
            .sftp()?
            .stat(Path::new(remote))
            .map_err(chan(format!("stat {remote}")))?;
        Ok(st.size.unwrap_or(0))
    }

    /// Creates a remote directory (and parents) with `mkdir -p -m MODE`.
    ///
    /// # Errors
    ///
    /// As [`SshSession::exec_ok`].
    pub fn mkdir_p(&self, remote: &str, mode: u32) -> Result<(), SshError> {
        self.exec_ok(&["mkdir", "-p", "-m", &format!("{mode:o}"), "--", remote])?;
        Ok(())
    }

    /// sha256 of a remote file, computed remotely by `sha256sum`.
    ///
    /// # Errors
    ///
    /// As [`SshSession::exec_ok`]; [`SshError::Remote`] if the output is not a digest.
    pub fn sha256(&self, remote: &str) -> Result<Sha256Digest, SshError> {
        let argv = ["sha256sum", "--", remote];
        let out = self.exec_ok(&argv)?;
        let text = out.stdout_text();
        let hex = text.split_whitespace().next().unwrap_or("");
        // sha256sum escapes names with backslashes by prefixing the digest with '\'.
        let hex = hex.strip_prefix('\\').unwrap_or(hex);
        hex.parse().map_err(|_| SshError::Remote {
            command: shell_join(&argv).unwrap_or_default(),
            status: 0,
            stderr: format!("unexpected output {text:?}"),
        })
    }
}

/// A remote file opened for reading; implements [`Read`].
///
/// Reads go to libssh2 in [`SFTP_IO_SIZE`] pieces whatever the caller's buffer size, so the
/// read-ahead stays deep for callers that read in small pieces (the age decryptor reads 64 KiB).
pub struct RemoteFile {
    file: Source,
    path: String,
}

enum Source {
    Single(std::io::BufReader<ssh2::File>),
    Parallel(parallel::ParallelReader),
}

impl std::fmt::Debug for RemoteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Read for RemoteFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.file {
            Source::Single(file) => file.read(buf),
            Source::Parallel(reader) => reader.read(buf),
        }
    }
}

/// What [`SshSession::stat`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteStat {
    /// Size in bytes.
    pub size: u64,
    /// Owner uid, if the server reported it.
    pub uid: Option<u32>,
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
}

impl RemoteStat {
    /// Is it a regular file?
    #[must_use]
    pub fn is_file(&self) -> bool {
        self.mode & 0o170_000 == 0o100_000
    }

    /// Is it a directory?
    #[must_use]
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170_000 == 0o040_000
    }

    /// Permission bits (`0o7777`).
    #[must_use]
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// `LIBSSH2_FX_NO_SUCH_FILE`.
fn is_no_such_file(e: &ssh2::Error) -> bool {
    matches!(e.code(), ssh2::ErrorCode::SFTP(2))
}

/// Key authentication: the configured key file, or the agent and then the default key files.
fn authenticate(session: &ssh2::Session, target: &SshTarget) -> Result<(), SshError> {
    let mut tried = Vec::new();
    let mut last = None;
    let candidates: Vec<PathBuf> = match &target.key {
        Some(key) => vec![key.clone()],
        None => {
            if std::env::var_os("SSH_AUTH_SOCK").is_some() {
                tried.push("the SSH agent".to_owned());
                match session.userauth_agent(&target.user) {
                    Ok(()) if session.authenticated() => return Ok(()),
                    Ok(()) => {}
                    Err(e) => last = Some(e),
                }
            }
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
            ["id_ed25519", "id_ecdsa", "id_rsa"]
                .iter()
                .map(|n| home.join(".ssh").join(n))
                .filter(|p| p.exists())
                .collect()
        }
    };
    for key in candidates {
        tried.push(key.display().to_string());
        match session.userauth_pubkey_file(&target.user, None, &key, None) {
            Ok(()) if session.authenticated() => return Ok(()),
            Ok(()) => {}
            Err(e) => last = Some(e),
        }
    }
    if tried.is_empty() {
        tried.push("no key: no [ssh] key, no SSH agent, no ~/.ssh/id_* file".to_owned());
    }
    Err(SshError::Auth {
        user: target.user.clone(),
        host: target.host.clone(),
        port: target.port,
        tried: tried.join(", "),
        source: last.unwrap_or_else(|| {
            ssh2::Error::new(
                ssh2::ErrorCode::Session(-18),
                "no authentication method succeeded",
            )
        }),
    })
}

/// Reads until `buf` is full or the reader is at its end; the count is short only at the end.
fn read_full<R: Read + ?Sized>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn read_capped(reader: &mut impl Read, command: &str) -> Result<Vec<u8>, SshError> {
    let mut out = Vec::new();
    reader
        .take(EXEC_OUTPUT_CAP as u64 + 1)
        .read_to_end(&mut out)
        .map_err(io_err(format!("read the output of {command}")))?;
    if out.len() > EXEC_OUTPUT_CAP {
        return Err(SshError::OutputTooLarge {
            command: command.to_owned(),
            cap: EXEC_OUTPUT_CAP,
        });
    }
    Ok(out)
}

fn check_host_key(session: &ssh2::Session, target: &SshTarget) -> Result<(), SshError> {
    let kh_err = |op, source| SshError::KnownHostsFile {
        op,
        path: target.known_hosts.clone(),
        source,
    };
    let mut kh = session
        .known_hosts()
        .map_err(|source| kh_err("initialise", source))?;
    if target.known_hosts.exists() {
        kh.read_file(&target.known_hosts, ssh2::KnownHostFileKind::OpenSSH)
            .map_err(|source| kh_err("read", source))?;
    }
    let Some((key, key_type)) = session.host_key() else {
        return Err(SshError::UnknownHostKey {
            host: target.host.clone(),
            port: target.port,
            known_hosts: target.known_hosts.clone(),
        });
    };
    match kh.check_port(&target.host, target.port, key) {
        ssh2::CheckResult::Match => Ok(()),
        ssh2::CheckResult::Mismatch => Err(SshError::HostKeyMismatch {
            host: target.host.clone(),
            port: target.port,
            known_hosts: target.known_hosts.clone(),
        }),
        ssh2::CheckResult::NotFound | ssh2::CheckResult::Failure if target.accept_new => {
            let host = if target.port == 22 {
                target.host.clone()
            } else {
                format!("[{}]:{}", target.host, target.port)
            };
            let format = match key_type {
                ssh2::HostKeyType::Rsa => ssh2::KnownHostKeyFormat::SshRsa,
                ssh2::HostKeyType::Dss => ssh2::KnownHostKeyFormat::SshDss,
                ssh2::HostKeyType::Ecdsa256 => ssh2::KnownHostKeyFormat::Ecdsa256,
                ssh2::HostKeyType::Ecdsa384 => ssh2::KnownHostKeyFormat::Ecdsa384,
                ssh2::HostKeyType::Ecdsa521 => ssh2::KnownHostKeyFormat::Ecdsa521,
                ssh2::HostKeyType::Ed25519 => ssh2::KnownHostKeyFormat::Ed25519,
                ssh2::HostKeyType::Unknown => ssh2::KnownHostKeyFormat::Unknown,
            };
            kh.add(&host, key, "added by hpcs", format)
                .map_err(|source| kh_err("update", source))?;
            kh.write_file(&target.known_hosts, ssh2::KnownHostFileKind::OpenSSH)
                .map_err(|source| kh_err("write", source))?;
            Ok(())
        }
        ssh2::CheckResult::NotFound | ssh2::CheckResult::Failure => Err(SshError::UnknownHostKey {
            host: target.host.clone(),
            port: target.port,
            known_hosts: target.known_hosts.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("", "''")]
    #[case("plain", "'plain'")]
    #[case("it's", "'it'\\''s'")]
    #[case("$(id) `id` ; rm -rf ~\nx", "'$(id) `id` ; rm -rf ~\nx'")]
    #[case("''", "''\\'''\\'''")]
    fn quotes(#[case] input: &str, #[case] want: &str) {
        assert_eq!(shell_quote(input).unwrap(), want);
    }

    /// A reader that hands out at most 3 bytes per call, like a pipe or a socket may.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(3).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn read_full_fills_the_buffer_until_the_end() {
        let data: Vec<u8> = (0..=255).collect();
        let mut r = Trickle(&data);
        let mut buf = [0u8; 100];
        assert_eq!(read_full(&mut r, &mut buf).unwrap(), 100);
        assert_eq!(buf[..], data[..100]);
        assert_eq!(read_full(&mut r, &mut buf).unwrap(), 100);
        assert_eq!(buf[..], data[100..200]);
        assert_eq!(read_full(&mut r, &mut buf).unwrap(), 56);
        assert_eq!(buf[..56], data[200..]);
        assert_eq!(read_full(&mut r, &mut buf).unwrap(), 0);
    }

    #[test]
    fn nul_is_refused() {
        assert!(matches!(shell_quote("a\0b"), Err(SshError::Unquotable(_))));
    }

    /// The local `sh` reads each quoted word back byte for byte.
    #[test]
    fn round_trips_through_sh() {
        let args = [
            "a b",
            "'",
            "$(touch /nonexistent-hpcs)",
            "`id`",
            "x\ny",
            ";",
            "\\",
            "\"",
            "",
            "é ☃",
        ];
        let script = format!("printf '%s\\0' {}", shell_join(&args).unwrap());
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        let got: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
        let want: Vec<&[u8]> = args
            .iter()
            .map(|a| a.as_bytes())
            .chain([&b""[..]])
            .collect();
        assert_eq!(got, want);
    }
}
