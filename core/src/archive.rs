//! Deterministic tar packing and safe unpacking of directory trees.
//!
//! data-prep packs input directories with [`pack_dir`]; the node runtime unpacks data sets and
//! job-prep unpacks job outputs with [`unpack_safe`]. Archives are untrusted on the way in: the
//! output of a job was produced by the application and travelled through shared storage.
//!
//! # Packing
//!
//! [`pack_dir`] writes a tar stream of a directory's contents that depends only on the tree's
//! names, contents, symlink targets and executable bits: entries in byte order of their names
//! (depth first, each directory before its contents), relative names without `./`, uid and gid 0,
//! no user or group names, a fixed mtime ([`PACK_MTIME`]), modes normalised to `0755` (directories
//! and executables) or `0644`. Symlinks are stored as symlinks and never followed; a symlink whose
//! target is absolute or resolves outside the tree is refused, as are FIFOs, sockets and devices.
//! Hard links are stored as separate regular files. Files are streamed, never read whole.
//!
//! # Unpacking
//!
//! [`unpack_safe`] refuses, naming the entry:
//! - absolute names and names with `..` components;
//! - devices, FIFOs, sparse files and any other type than directory, regular file, symlink and
//!   hard link;
//! - symlinks whose target is absolute or resolves outside the destination, checked against what
//!   is actually on disk (earlier symlinks included) when the link is created;
//! - hard links to anything but a regular file already unpacked inside the destination;
//! - entries that would replace an existing non-directory, or be written through a symlink.
//!
//! It never follows a symlink while writing: symlinks are created only after every other entry
//! has been written (as GNU tar does), each parent of every entry is checked to be a real
//! directory, and files are created with `O_CREAT|O_EXCL`, which does not follow a final
//! symlink. A symlink target may contain `..` only where every component before it already
//! exists, so a link created later cannot turn an accepted target into an escape.
//!
//! Modes: setuid, setgid and sticky bits are dropped, group and other never get write access,
//! the owner always gets read and write (and search on directories); the process umask applies
//! on top. Ownership and times are not restored.
//!
//! These checks assume nobody else writes into the destination while it is being unpacked (it
//! is a directory the caller owns, typically freshly created with mode 0700).

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// mtime of every packed entry: fixed (the tar crate's deterministic value) rather than 0, which
/// some tar implementations warn about.
pub const PACK_MTIME: u64 = 1_153_704_088;

/// How many symlinks one target may pass through before it is refused (as the kernel's limit).
const MAX_SYMLINK_HOPS: u32 = 40;

/// Mode of directories that an archive implies but does not list.
const IMPLIED_DIR_MODE: u32 = 0o700;

/// Errors of packing and unpacking.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// A local file or directory operation failed.
    #[error("failed to {op} {path}")]
    Io {
        /// The operation (`read`, `create`, `open`, ...).
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The directory to pack is not a directory.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The tree to pack holds a file type that cannot be archived safely.
    #[error(
        "cannot pack {path}: it is a {kind}; only regular files, directories and symlinks are packed"
    )]
    SpecialFile {
        /// The file.
        path: PathBuf,
        /// `FIFO`, `socket`, `character device`, `block device`.
        kind: &'static str,
    },
    /// A symlink in the tree to pack points outside the tree (or is absolute).
    #[error("cannot pack symlink {path} -> {target}: {reason}")]
    PackSymlink {
        /// The symlink.
        path: PathBuf,
        /// Its target.
        target: PathBuf,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A file changed size while it was being packed.
    #[error("{path} changed while it was being packed")]
    FileChanged {
        /// The file.
        path: PathBuf,
    },
    /// Writing the tar stream failed.
    #[error("failed to write the archive")]
    Write {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading the tar stream failed or it is malformed.
    #[error("failed to read the archive")]
    Read {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An entry's name is absolute, contains `..` or is otherwise unusable.
    #[error("archive entry {entry:?} refused: {reason}")]
    UnsafePath {
        /// The entry name as stored.
        entry: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An entry has a type that is never unpacked.
    #[error("archive entry {entry:?} refused: {kind} entries are not unpacked")]
    UnsupportedEntry {
        /// The entry name.
        entry: String,
        /// The entry type.
        kind: String,
    },
    /// A symlink entry's target is absolute or leaves the destination.
    #[error("archive entry {entry:?} refused: symlink target {target:?} {reason}")]
    UnsafeSymlink {
        /// The entry name.
        entry: String,
        /// The link target as stored.
        target: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A hard link entry does not point to a regular file already unpacked.
    #[error("archive entry {entry:?} refused: hard link target {target:?} {reason}")]
    UnsafeHardlink {
        /// The entry name.
        entry: String,
        /// The link target as stored.
        target: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An entry would replace something that already exists.
    #[error("archive entry {entry:?} refused: {path} already exists")]
    Exists {
        /// The entry name.
        entry: String,
        /// The existing path.
        path: PathBuf,
    },
    /// An entry would be written through a symlink or below a non-directory.
    #[error("archive entry {entry:?} refused: {path} is not a directory")]
    NotADirectoryParent {
        /// The entry name.
        entry: String,
        /// The offending parent.
        path: PathBuf,
    },
}

/// What [`pack_dir`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackSummary {
    /// Entries written (directories, files and symlinks; the root is not an entry).
    pub entries: u64,
    /// Bytes of file content packed.
    pub file_bytes: u64,
}

/// What [`unpack_safe`] created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnpackSummary {
    /// Entries unpacked.
    pub entries: u64,
    /// Bytes of file content written.
    pub file_bytes: u64,
}

// ---------------------------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------------------------

/// Writes a deterministic tar stream of the contents of `dir` to `writer` (see the module docs)
/// and finishes the archive. Pass `&mut w` to keep the writer.
///
/// # Errors
///
/// [`ArchiveError::NotADirectory`], [`ArchiveError::SpecialFile`],
/// [`ArchiveError::PackSymlink`], [`ArchiveError::FileChanged`], [`ArchiveError::Io`] naming the
/// file, or [`ArchiveError::Write`].
pub fn pack_dir<W: Write>(dir: &Path, writer: W) -> Result<PackSummary, ArchiveError> {
    let meta = fs::metadata(dir).map_err(io_err("read", dir))?;
    if !meta.is_dir() {
        return Err(ArchiveError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let mut builder = tar::Builder::new(writer);
    let mut summary = PackSummary::default();
    pack_children(&mut builder, dir, &mut Vec::new(), &mut summary)?;
    builder
        .into_inner()
        .map_err(|source| ArchiveError::Write { source })?
        .flush()
        .map_err(|source| ArchiveError::Write { source })?;
    Ok(summary)
}

fn pack_children<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    rel: &mut Vec<OsString>,
    summary: &mut PackSummary,
) -> Result<(), ArchiveError> {
    let here = join_rel(root, rel);
    let mut names: Vec<OsString> = fs::read_dir(&here)
        .map_err(io_err("read directory", &here))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err("read directory", &here))?;
    names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    for name in names {
        rel.push(name);
        let path = join_rel(root, rel);
        let name_in_archive = rel.iter().collect::<PathBuf>();
        let meta = fs::symlink_metadata(&path).map_err(io_err("read", &path))?;
        let ft = meta.file_type();
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(PACK_MTIME);
        if ft.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder
                .append_data(&mut header, &name_in_archive, io::empty())
                .map_err(|source| ArchiveError::Write { source })?;
            summary.entries += 1;
            pack_children(builder, root, rel, summary)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err("read symlink", &path))?;
            if let Err(reason) = check_link_target(root, rel, &target) {
                return Err(ArchiveError::PackSymlink {
                    path,
                    target,
                    reason,
                });
            }
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder
                .append_link(&mut header, &name_in_archive, &target)
                .map_err(|source| ArchiveError::Write { source })?;
            summary.entries += 1;
        } else if ft.is_file() {
            summary.file_bytes += pack_file(builder, &path, &name_in_archive, &meta, header)?;
            summary.entries += 1;
        } else {
            return Err(ArchiveError::SpecialFile {
                path,
                kind: special_kind(&ft),
            });
        }
        rel.pop();
    }
    Ok(())
}

fn pack_file<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    lstat: &fs::Metadata,
    mut header: tar::Header,
) -> Result<u64, ArchiveError> {
    // Opened without following a symlink swapped in since the lstat; the fstat below catches a
    // different file swapped in at the same name.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err("open", path))?;
    let fstat = file.metadata().map_err(io_err("read", path))?;
    if !fstat.is_file() || fstat.ino() != lstat.ino() || fstat.dev() != lstat.dev() {
        return Err(ArchiveError::FileChanged {
            path: path.to_owned(),
        });
    }
    let size = fstat.len();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(if fstat.mode() & 0o100 != 0 {
        0o755
    } else {
        0o644
    });
    header.set_size(size);
    let mut counted = CountingReader {
        inner: file.take(size),
        count: 0,
        error: None,
    };
    let appended = builder.append_data(&mut header, name, &mut counted);
    if let Some(source) = counted.error.take() {
        return Err(ArchiveError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        });
    }
    appended.map_err(|source| ArchiveError::Write { source })?;
    let file = counted.inner.into_inner();
    let now = file.metadata().map_err(io_err("read", path))?.len();
    if counted.count != size || now != size {
        return Err(ArchiveError::FileChanged {
            path: path.to_owned(),
        });
    }
    Ok(size)
}

/// Counts bytes and remembers a read error, so that a failing source file is reported as a read
/// of that file rather than as a failed archive write.
struct CountingReader<R> {
    inner: R,
    count: u64,
    error: Option<io::Error>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.error = Some(e);
                Err(copy)
            }
        }
    }
}

fn special_kind(ft: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

// ---------------------------------------------------------------------------------------------
// Symlink targets
// ---------------------------------------------------------------------------------------------

/// Checks that a symlink at `link` (components relative to `root`) with `target` resolves inside
/// `root`, following symlinks that exist under `root` now. A `..` is only accepted while every
/// component before it exists on disk: a missing component could later become a symlink.
fn check_link_target(root: &Path, link: &[OsString], target: &Path) -> Result<(), &'static str> {
    if target.as_os_str().is_empty() {
        return Err("is empty");
    }
    let mut stack: Vec<OsString> = link[..link.len().saturating_sub(1)].to_vec();
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, target)?;
    let mut hops = 0u32;
    let mut missing = false;
    while let Some(c) = pending.pop() {
        if c == ".." {
            if missing {
                return Err("uses `..` after a path that does not exist");
            }
            if stack.pop().is_none() {
                return Err("points outside the tree");
            }
            continue;
        }
        stack.push(c);
        if missing {
            continue;
        }
        let here = join_rel(root, &stack);
        match fs::symlink_metadata(&here) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing = true,
            Err(_) => return Err("cannot be resolved"),
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err("passes through too many symlinks");
                }
                let next = fs::read_link(&here).map_err(|_| "cannot be resolved")?;
                stack.pop();
                push_components(&mut pending, &next)?;
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Pushes the components of `target` onto `pending` so that popping yields them in order, with
/// `.` dropped; an absolute target is refused.
fn push_components(pending: &mut Vec<OsString>, target: &Path) -> Result<(), &'static str> {
    let mut parts = Vec::new();
    for c in target.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => return Err("is absolute"),
            Component::CurDir => {}
            Component::ParentDir => parts.push(OsString::from("..")),
            Component::Normal(n) => parts.push(n.to_owned()),
        }
    }
    pending.extend(parts.into_iter().rev());
    Ok(())
}

fn join_rel(root: &Path, rel: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(rel);
    p
}

// ---------------------------------------------------------------------------------------------
// Unpacking
// ---------------------------------------------------------------------------------------------

/// Unpacks the tar stream `reader` into `dest` (created with mode 0700 if missing), refusing
/// anything unsafe (see the module docs). On error, what was unpacked so far stays in `dest` for
/// the caller to remove.
///
/// # Errors
///
/// [`ArchiveError::Read`] for a malformed stream, [`ArchiveError::UnsafePath`],
/// [`ArchiveError::UnsupportedEntry`], [`ArchiveError::UnsafeSymlink`],
/// [`ArchiveError::UnsafeHardlink`], [`ArchiveError::Exists`],
/// [`ArchiveError::NotADirectoryParent`], or [`ArchiveError::Io`] naming the path.
pub fn unpack_safe<R: Read>(reader: R, dest: &Path) -> Result<UnpackSummary, ArchiveError> {
    match fs::metadata(dest) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ArchiveError::NotADirectory {
                path: dest.to_owned(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dest)
            .map_err(io_err("create", dest))?,
        Err(e) => return Err(io_err("read", dest)(e)),
    }
    let mut archive = tar::Archive::new(reader);
    let mut summary = UnpackSummary::default();
    let mut symlinks: Vec<(String, Vec<OsString>, PathBuf)> = Vec::new();
    let read_err = |source| ArchiveError::Read { source };
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            // Extension records the reader has already applied (or global ones we ignore).
            continue;
        }
        let rel = safe_rel(&shown, &entry.path().map_err(read_err)?)?;
        let mode = entry.header().mode().map_err(read_err)?;
        match kind {
            tar::EntryType::Directory => {
                if rel.is_empty() {
                    // `./`: the destination itself, which keeps its own mode.
                    continue;
                }
                make_parents(dest, &rel, &shown)?;
                let path = join_rel(dest, &rel);
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(ArchiveError::Exists { entry: shown, path }),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
                        .mode(dir_mode(mode))
                        .create(&path)
                        .map_err(io_err("create", &path))?,
                    Err(e) => return Err(io_err("read", &path)(e)),
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let path = new_leaf(dest, &rel, &shown)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(file_mode(mode))
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| exists_or(e, &shown, &path, "create"))?;
                let n = copy_entry(&mut entry, &mut file, &path)?;
                summary.file_bytes += n;
            }
            tar::EntryType::Link => {
                let path = new_leaf(dest, &rel, &shown)?;
                let target_shown = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let target = entry.link_name().map_err(read_err)?.unwrap_or_default();
                let hard_err = |reason| ArchiveError::UnsafeHardlink {
                    entry: shown.clone(),
                    target: target_shown.clone(),
                    reason,
                };
                let target_rel = safe_rel(&target_shown, &target).map_err(|_| {
                    hard_err("is absolute, contains `..` or is not a name inside the archive")
                })?;
                if target_rel.is_empty() {
                    return Err(hard_err("is the destination itself"));
                }
                check_parents(dest, &target_rel, &shown)?;
                let src = join_rel(dest, &target_rel);
                match fs::symlink_metadata(&src) {
                    Ok(m) if m.is_file() => {}
                    Ok(_) => return Err(hard_err("is not a regular file")),
                    Err(_) => return Err(hard_err("has not been unpacked")),
                }
                // link(2) does not follow a symlink at `src`, and `src` was just checked anyway.
                fs::hard_link(&src, &path).map_err(|e| exists_or(e, &shown, &path, "link"))?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(read_err)?.unwrap_or_default();
                if rel.is_empty() {
                    return Err(ArchiveError::UnsafePath {
                        entry: shown,
                        reason: "a symlink cannot replace the destination",
                    });
                }
                symlinks.push((shown, rel, target.into_owned()));
                continue;
            }
            other => {
                return Err(ArchiveError::UnsupportedEntry {
                    entry: shown,
                    kind: entry_kind_name(other),
                });
            }
        }
        summary.entries += 1;
    }
    // Symlinks last, so nothing above was written through one of them.
    for (shown, rel, target) in symlinks {
        let path = new_leaf(dest, &rel, &shown)?;
        if let Err(reason) = check_link_target(dest, &rel, &target) {
            return Err(ArchiveError::UnsafeSymlink {
                entry: shown,
                target: target.to_string_lossy().into_owned(),
                reason,
            });
        }
        std::os::unix::fs::symlink(&target, &path)
            .map_err(|e| exists_or(e, &shown, &path, "create symlink"))?;
        summary.entries += 1;
    }
    Ok(summary)
}

/// The components of an entry name, refusing absolute names and `..`; `.` components are
/// dropped, so `./` is the empty (root) name.
fn safe_rel(shown: &str, path: &Path) -> Result<Vec<OsString>, ArchiveError> {
    let unsafe_path = |reason| ArchiveError::UnsafePath {
        entry: shown.to_owned(),
        reason,
    };
    if path.as_os_str().is_empty() {
        return Err(unsafe_path("empty name"));
    }
    let mut rel = Vec::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => return Err(unsafe_path("absolute name")),
            Component::ParentDir => return Err(unsafe_path("name contains `..`")),
            Component::CurDir => {}
            Component::Normal(n) => rel.push(n.to_owned()),
        }
    }
    Ok(rel)
}

/// Checks every parent of `rel` below `dest` is a real directory (not a symlink).
fn check_parents(dest: &Path, rel: &[OsString], shown: &str) -> Result<(), ArchiveError> {
    let mut p = dest.to_path_buf();
    for c in &rel[..rel.len().saturating_sub(1)] {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ArchiveError::NotADirectoryParent {
                    entry: shown.to_owned(),
                    path: p,
                });
            }
            Err(e) => return Err(io_err("read", &p)(e)),
        }
    }
    Ok(())
}

/// Creates the missing parents of `rel` below `dest` (mode [`IMPLIED_DIR_MODE`]), refusing to
/// pass through anything that is not a real directory.
fn make_parents(dest: &Path, rel: &[OsString], shown: &str) -> Result<(), ArchiveError> {
    let mut p = dest.to_path_buf();
    for c in &rel[..rel.len().saturating_sub(1)] {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ArchiveError::NotADirectoryParent {
                    entry: shown.to_owned(),
                    path: p,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
                .mode(IMPLIED_DIR_MODE)
                .create(&p)
                .map_err(io_err("create", &p))?,
            Err(e) => return Err(io_err("read", &p)(e)),
        }
    }
    Ok(())
}

/// Prepares the parents of a non-directory entry and returns its path, which must not exist.
fn new_leaf(dest: &Path, rel: &[OsString], shown: &str) -> Result<PathBuf, ArchiveError> {
    if rel.is_empty() {
        return Err(ArchiveError::UnsafePath {
            entry: shown.to_owned(),
            reason: "a file cannot replace the destination",
        });
    }
    make_parents(dest, rel, shown)?;
    let path = join_rel(dest, rel);
    match fs::symlink_metadata(&path) {
        Ok(_) => Err(ArchiveError::Exists {
            entry: shown.to_owned(),
            path,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(path),
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

fn copy_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    file: &mut File,
    path: &Path,
) -> Result<u64, ArchiveError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(ArchiveError::Read { source }),
        };
        file.write_all(&buf[..n]).map_err(io_err("write", path))?;
        total += n as u64;
    }
    Ok(total)
}

fn exists_or(e: io::Error, shown: &str, path: &Path, op: &'static str) -> ArchiveError {
    if e.kind() == io::ErrorKind::AlreadyExists {
        ArchiveError::Exists {
            entry: shown.to_owned(),
            path: path.to_owned(),
        }
    } else {
        io_err(op, path)(e)
    }
}

/// File mode: no setuid/setgid/sticky, no write for group and other, owner read and write.
fn file_mode(mode: u32) -> u32 {
    (mode & 0o755) | 0o600
}

/// Directory mode: as [`file_mode`], and the owner may always list and enter it.
fn dir_mode(mode: u32) -> u32 {
    (mode & 0o755) | 0o700
}

fn entry_kind_name(kind: tar::EntryType) -> String {
    match kind {
        tar::EntryType::Char => "character device".into(),
        tar::EntryType::Block => "block device".into(),
        tar::EntryType::Fifo => "FIFO".into(),
        tar::EntryType::GNUSparse => "sparse file".into(),
        tar::EntryType::GNULongName | tar::EntryType::GNULongLink => "GNU long name".into(),
        other => format!("type {:?}", other.as_byte() as char),
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError {
    let path = path.to_owned();
    move |source| ArchiveError::Io { op, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use rstest::rstest;

    /// One raw tar entry, written byte by byte so that names the tar crate's builder refuses
    /// (absolute, `..`) can be crafted.
    enum Raw<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Kind(&'a str, tar::EntryType),
        /// A GNU long-name record followed by a file entry with a short placeholder name.
        LongName(&'a str, &'a [u8]),
        /// A PAX record setting `path`, followed by a file entry with a short placeholder name.
        PaxPath(&'a str, &'a [u8]),
    }

    fn header(name: &[u8], kind: tar::EntryType, link: &[u8], size: u64, mode: u32) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(PACK_MTIME);
        if kind == tar::EntryType::GNUSparse {
            // A well-formed sparse header, so the refusal comes from our type check.
            h.as_gnu_mut().unwrap().set_real_size(0);
        }
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn data(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(bytes);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn craft(entries: &[Raw<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            match e {
                Raw::File(name, body, mode) => {
                    out.extend(header(
                        name.as_bytes(),
                        tar::EntryType::Regular,
                        b"",
                        body.len() as u64,
                        *mode,
                    ));
                    data(&mut out, body);
                }
                Raw::Dir(name) => {
                    out.extend(header(
                        name.as_bytes(),
                        tar::EntryType::Directory,
                        b"",
                        0,
                        0o755,
                    ));
                }
                Raw::Symlink(name, target) => out.extend(header(
                    name.as_bytes(),
                    tar::EntryType::Symlink,
                    target.as_bytes(),
                    0,
                    0o777,
                )),
                Raw::Hardlink(name, target) => out.extend(header(
                    name.as_bytes(),
                    tar::EntryType::Link,
                    target.as_bytes(),
                    0,
                    0o644,
                )),
                Raw::Kind(name, kind) => out.extend(header(name.as_bytes(), *kind, b"", 0, 0o644)),
                Raw::LongName(name, body) => {
                    let mut long = name.as_bytes().to_vec();
                    long.push(0);
                    out.extend(header(
                        b"././@LongLink",
                        tar::EntryType::GNULongName,
                        b"",
                        long.len() as u64,
                        0o644,
                    ));
                    data(&mut out, &long);
                    out.extend(header(
                        b"placeholder",
                        tar::EntryType::Regular,
                        b"",
                        body.len() as u64,
                        0o644,
                    ));
                    data(&mut out, body);
                }
                Raw::PaxPath(name, body) => {
                    let rec = format!(" path={name}\n");
                    let rec = format!("{}{rec}", rec.len() + (rec.len() + 2).to_string().len());
                    out.extend(header(
                        b"PaxHeaders/x",
                        tar::EntryType::XHeader,
                        b"",
                        rec.len() as u64,
                        0o644,
                    ));
                    data(&mut out, rec.as_bytes());
                    out.extend(header(
                        b"placeholder",
                        tar::EntryType::Regular,
                        b"",
                        body.len() as u64,
                        0o644,
                    ));
                    data(&mut out, body);
                }
            }
        }
        out.extend([0u8; 1024]);
        out
    }

    /// A name longer than a tar header's 100 bytes, so it travels in a GNU long-name record.
    const LONG_UP: &str = concat!(
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/",
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb/",
        "../../../outside/evil"
    );

    /// A scratch area with `dest/` to unpack into and a sibling `outside/` that must stay empty.
    struct Scratch {
        _dir: tempfile::TempDir,
        dest: PathBuf,
        outside: PathBuf,
    }

    fn scratch() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        let outside = dir.path().join("outside");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&outside).unwrap();
        Scratch {
            _dir: dir,
            dest,
            outside,
        }
    }

    fn unpack(s: &Scratch, entries: &[Raw<'_>]) -> Result<UnpackSummary, ArchiveError> {
        let tar = craft(entries);
        unpack_safe(tar.as_slice(), &s.dest)
    }

    fn assert_outside_untouched(s: &Scratch) {
        assert_eq!(
            fs::read_dir(&s.outside).unwrap().count(),
            0,
            "wrote outside dest"
        );
    }

    #[rstest]
    #[case::absolute(vec![Raw::File("/etc/evil", b"x", 0o644)], "absolute name")]
    #[case::parent(vec![Raw::File("../evil", b"x", 0o644)], "`..`")]
    #[case::parent_inside(vec![Raw::File("a/../../evil", b"x", 0o644)], "`..`")]
    #[case::parent_dir(vec![Raw::Dir("a/../..")], "`..`")]
    #[case::long_name_parent(vec![Raw::LongName(LONG_UP, b"x")], "`..`")]
    #[case::pax_path_parent(vec![Raw::PaxPath("../../outside/evil", b"x")], "`..`")]
    #[case::pax_path_absolute(vec![Raw::PaxPath("/tmp/evil", b"x")], "absolute name")]
    #[case::symlink_absolute(vec![Raw::Symlink("l", "/etc")], "is absolute")]
    #[case::symlink_up(vec![Raw::Symlink("l", "../outside")], "points outside")]
    #[case::symlink_up_nested(vec![Raw::Dir("a"), Raw::Symlink("a/l", "../../outside")], "points outside")]
    #[case::symlink_chain(
        vec![Raw::Symlink("here", "."), Raw::Symlink("up", "here/..")],
        "points outside"
    )]
    #[case::symlink_chain_reordered(
        vec![Raw::Symlink("up", "here/.."), Raw::Symlink("here", ".")],
        "does not exist"
    )]
    #[case::symlink_through_deep_chain(
        vec![
            Raw::Dir("d"),
            Raw::Symlink("d/self", "."),
            Raw::Symlink("d/x", "self/self/self/../.."),
        ],
        "points outside"
    )]
    #[case::symlink_loop(
        vec![Raw::Symlink("a", "b"), Raw::Symlink("b", "a"), Raw::Symlink("c", "a/x")],
        "too many symlinks"
    )]
    #[case::hardlink_absolute(vec![Raw::Hardlink("h", "/etc/passwd")], "hard link target")]
    #[case::hardlink_up(vec![Raw::Hardlink("h", "../outside/x")], "hard link target")]
    #[case::hardlink_missing(vec![Raw::Hardlink("h", "nope")], "has not been unpacked")]
    #[case::hardlink_to_dir(vec![Raw::Dir("d"), Raw::Hardlink("h", "d")], "not a regular file")]
    #[case::char_device(vec![Raw::Kind("tty", tar::EntryType::Char)], "character device")]
    #[case::block_device(vec![Raw::Kind("sda", tar::EntryType::Block)], "block device")]
    #[case::fifo(vec![Raw::Kind("p", tar::EntryType::Fifo)], "FIFO")]
    #[case::sparse(vec![Raw::Kind("s", tar::EntryType::GNUSparse)], "sparse file")]
    #[case::duplicate_file(
        vec![Raw::File("a", b"1", 0o644), Raw::File("a", b"2", 0o644)],
        "already exists"
    )]
    #[case::file_then_dir(vec![Raw::File("a", b"1", 0o644), Raw::Dir("a")], "already exists")]
    #[case::below_a_file(
        vec![Raw::File("a", b"1", 0o644), Raw::File("a/b", b"2", 0o644)],
        "is not a directory"
    )]
    #[case::file_under_symlink(
        vec![Raw::Symlink("d", "../outside"), Raw::File("d/evil", b"x", 0o644)],
        "already exists"
    )]
    #[case::file_replacing_root(vec![Raw::File("./", b"x", 0o644)], "cannot replace")]
    fn refuses_malicious_archives(#[case] entries: Vec<Raw<'_>>, #[case] message: &str) {
        let s = scratch();
        let err = unpack(&s, &entries).unwrap_err();
        let text = format!("{err}: {:?}", std::error::Error::source(&err));
        assert!(text.contains(message), "{text:?} lacks {message:?}");
        assert_outside_untouched(&s);
    }

    #[test]
    fn never_writes_through_an_existing_symlink_in_dest() {
        let s = scratch();
        std::os::unix::fs::symlink(&s.outside, s.dest.join("link")).unwrap();
        let err = unpack(&s, &[Raw::File("link/evil", b"x", 0o644)]).unwrap_err();
        assert!(
            matches!(err, ArchiveError::NotADirectoryParent { .. }),
            "{err}"
        );
        let err = unpack(&s, &[Raw::File("link", b"x", 0o644)]).unwrap_err();
        assert!(matches!(err, ArchiveError::Exists { .. }), "{err}");
        let err = unpack(&s, &[Raw::Dir("link")]).unwrap_err();
        assert!(matches!(err, ArchiveError::Exists { .. }), "{err}");
        assert_outside_untouched(&s);
    }

    #[test]
    fn sanitises_modes() {
        let s = scratch();
        unpack(
            &s,
            &[
                Raw::File("suid", b"x", 0o4777),
                Raw::File("locked", b"x", 0o000),
                Raw::Dir("sticky"),
            ],
        )
        .unwrap();
        let mode = |n: &str| fs::metadata(s.dest.join(n)).unwrap().permissions().mode() & 0o7777;
        // The umask may remove more, never add.
        assert_eq!(mode("suid") & !0o755, 0);
        assert_eq!(mode("suid") & 0o600, 0o600);
        assert_eq!(mode("locked") & 0o600, 0o600);
        assert_eq!(mode("sticky") & 0o700, 0o700);
    }

    #[test]
    fn accepts_links_that_stay_inside() {
        let s = scratch();
        let summary = unpack(
            &s,
            &[
                Raw::Dir("a"),
                Raw::File("a/f", b"data", 0o644),
                Raw::Symlink("a/up", "../b/g"),
                Raw::Symlink("top", "a/f"),
                Raw::Symlink("dangling", "not/there/yet"),
                Raw::Symlink("self", "."),
                Raw::Symlink("through", "self/a/f"),
                Raw::Hardlink("hard", "a/f"),
                Raw::File("b/g", b"implied parent", 0o644),
            ],
        )
        .unwrap();
        assert_eq!(summary.entries, 9);
        assert_eq!(fs::read(s.dest.join("top")).unwrap(), b"data");
        assert_eq!(fs::read(s.dest.join("through")).unwrap(), b"data");
        assert_eq!(fs::read(s.dest.join("a/up")).unwrap(), b"implied parent");
        assert_eq!(fs::read(s.dest.join("hard")).unwrap(), b"data");
        assert_eq!(
            fs::read_link(s.dest.join("dangling")).unwrap(),
            Path::new("not/there/yet")
        );
    }

    /// A tree with everything `pack_dir` supports; returns its root.
    fn sample_tree(root: &Path) {
        fs::create_dir_all(root.join("sub/deeper")).unwrap();
        fs::create_dir_all(root.join("empty-dir")).unwrap();
        fs::write(root.join("a.txt"), b"alpha\n").unwrap();
        fs::write(root.join("empty"), b"").unwrap();
        fs::write(root.join("sub/deeper/b.bin"), vec![7u8; 300_000]).unwrap();
        fs::write(root.join("run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(root.join("private"), b"p").unwrap();
        fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o600)).unwrap();
        let long = "n".repeat(120);
        fs::write(root.join("sub").join(&long), b"long name").unwrap();
        fs::write(root.join("sub/é ☃ 'q' $(x)"), b"odd name").unwrap();
        std::os::unix::fs::symlink("../a.txt", root.join("sub/link-up")).unwrap();
        std::os::unix::fs::symlink("deeper/b.bin", root.join("sub/link-down")).unwrap();
        std::os::unix::fs::symlink(format!("sub/{long}"), root.join("link-long")).unwrap();
        std::os::unix::fs::symlink("missing", root.join("dangling")).unwrap();
    }

    /// `(relative path, kind, content or target, executable)` of every entry below `root`.
    fn listing(root: &Path) -> Vec<(PathBuf, &'static str, Vec<u8>, bool)> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for e in fs::read_dir(root.join(&rel)).unwrap() {
                let e = e.unwrap();
                let r = rel.join(e.file_name());
                let m = fs::symlink_metadata(e.path()).unwrap();
                if m.is_dir() {
                    out.push((r.clone(), "dir", Vec::new(), false));
                    stack.push(r);
                } else if m.file_type().is_symlink() {
                    let t = fs::read_link(e.path()).unwrap();
                    out.push((
                        r,
                        "symlink",
                        t.as_os_str().as_encoded_bytes().to_vec(),
                        false,
                    ));
                } else {
                    let exec = m.permissions().mode() & 0o100 != 0;
                    out.push((r, "file", fs::read(e.path()).unwrap(), exec));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn round_trips_a_tree() {
        let src = tempfile::tempdir().unwrap();
        sample_tree(src.path());
        let mut tar = Vec::new();
        let summary = pack_dir(src.path(), &mut tar).unwrap();
        assert_eq!(summary.entries, 14);
        assert_eq!(summary.file_bytes, 6 + 300_000 + 10 + 1 + 9 + 8);
        let s = scratch();
        let un = unpack_safe(tar.as_slice(), &s.dest).unwrap();
        assert_eq!(un.entries, summary.entries);
        assert_eq!(un.file_bytes, summary.file_bytes);
        assert_eq!(listing(src.path()), listing(&s.dest));
    }

    #[test]
    fn packing_is_deterministic() {
        let a = tempfile::tempdir().unwrap();
        sample_tree(a.path());
        let b = tempfile::tempdir().unwrap();
        sample_tree(b.path());
        // Different times, owners' bits and creation order must not matter.
        fs::set_permissions(b.path().join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        pack_dir(a.path(), &mut ta).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        fs::write(b.path().join("empty"), b"").unwrap();
        pack_dir(b.path(), &mut tb).unwrap();
        assert!(ta == tb, "two packs of equal trees differ");

        let mut ar = tar::Archive::new(ta.as_slice());
        let mut names = Vec::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(h.uid().unwrap(), 0);
            assert_eq!(h.gid().unwrap(), 0);
            assert_eq!(h.mtime().unwrap(), PACK_MTIME);
            assert_eq!(h.username().unwrap(), Some(""));
            names.push(e.path().unwrap().into_owned());
        }
        assert_eq!(names[0], Path::new("a.txt"));
        assert!(names.iter().all(|n| n.is_relative() && !n.starts_with(".")));
        let sub = names.iter().position(|n| n == Path::new("sub")).unwrap();
        assert!(names[sub + 1].starts_with("sub"));
    }

    #[rstest]
    #[case::absolute("/etc/passwd", "is absolute")]
    #[case::up("../outside", "points outside the tree")]
    #[case::up_nested("sub/../../x", "points outside the tree")]
    #[case::through_self_link("self/..", "points outside the tree")]
    #[case::dangling_then_up("missing/../..", "does not exist")]
    fn pack_refuses_escaping_symlinks(#[case] target: &str, #[case] message: &str) {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(".", src.path().join("self")).unwrap();
        std::os::unix::fs::symlink(target, src.path().join("zz-link")).unwrap();
        let err = pack_dir(src.path(), io::sink()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("zz-link") && text.contains(message), "{text}");
    }

    #[test]
    fn pack_refuses_special_files_naming_them() {
        let src = tempfile::tempdir().unwrap();
        let sock = src.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = pack_dir(src.path(), io::sink()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot pack {}: it is a socket; only regular files, directories and symlinks are packed",
                sock.display()
            )
        );

        let src = tempfile::tempdir().unwrap();
        let fifo = src.path().join("fifo");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(ok.success());
        let err = pack_dir(src.path(), io::sink()).unwrap_err();
        assert!(
            matches!(err, ArchiveError::SpecialFile { kind: "FIFO", ref path } if *path == fifo)
        );
    }

    #[test]
    fn pack_refuses_a_file_as_root() {
        let src = tempfile::tempdir().unwrap();
        let f = src.path().join("f");
        fs::write(&f, b"x").unwrap();
        assert!(matches!(
            pack_dir(&f, io::sink()),
            Err(ArchiveError::NotADirectory { .. })
        ));
    }

    /// The node runtime seals outputs with the tar crate's `append_dir_all(".", dir)`, which
    /// writes a `./` root entry; that must unpack.
    #[test]
    fn unpacks_a_tar_crate_append_dir_all_archive() {
        let src = tempfile::tempdir().unwrap();
        sample_tree(src.path());
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        b.mode(tar::HeaderMode::Deterministic);
        b.append_dir_all(".", src.path()).unwrap();
        let tar = b.into_inner().unwrap();
        let s = scratch();
        unpack_safe(tar.as_slice(), &s.dest).unwrap();
        assert_eq!(listing(src.path()), listing(&s.dest));
    }

    #[test]
    fn creates_a_missing_dest_private() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("new/out");
        unpack_safe(craft(&[Raw::File("x", b"1", 0o644)]).as_slice(), &dest).unwrap();
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o077,
            0,
            "dest must be private"
        );
    }

    #[test]
    fn truncated_archive_is_a_read_error() {
        let tar = craft(&[Raw::File("x", &[1u8; 2000], 0o644)]);
        let s = scratch();
        let err = unpack_safe(&tar[..1000], &s.dest).unwrap_err();
        assert!(matches!(err, ArchiveError::Read { .. }), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        #[test]
        fn round_trip_random_trees(
            files in proptest::collection::btree_map(
                "[a-z]{1,3}(/[a-z]{1,3}){0,2}",
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000),
                1..12,
            )
        ) {
            let src = tempfile::tempdir().unwrap();
            for (name, body) in &files {
                let p = src.path().join(name);
                // A name may be the directory of another one, or below another file: skip those.
                if fs::create_dir_all(p.parent().unwrap()).is_ok() && !p.is_dir() {
                    fs::write(&p, body).unwrap();
                }
            }
            let mut tar = Vec::new();
            let packed = pack_dir(src.path(), &mut tar);
            proptest::prop_assume!(packed.is_ok());
            let s = scratch();
            unpack_safe(tar.as_slice(), &s.dest).unwrap();
            proptest::prop_assert_eq!(listing(src.path()), listing(&s.dest));
        }
    }
}
