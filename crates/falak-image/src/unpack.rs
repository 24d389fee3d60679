//! Root filesystems unpacked from an image's layers, as the OCI image spec's "Applying
//! Changesets" says: layers in order, each entry replacing what an earlier one left at its path
//! (a directory over a directory merges), whiteouts (`.wh.NAME`, `.wh..wh..opq`) removing what
//! lower layers made.
//!
//! Layers are hostile input. Entry names are relative, without `..`; every path an entry
//! writes, links or removes is resolved by the kernel inside the root (`openat2` with
//! `RESOLVE_IN_ROOT`), or one component at a time below a directory resolved that way, so
//! symlinks resolve as they would in the container: `evil -> /tmp/x` makes `evil/f` the root's
//! `tmp/x/f`. The final component is created or removed relative to its parent directory's
//! descriptor and never followed. Nothing falls back to joining paths in user space: without
//! `openat2` (Linux 5.6) [`unpack_layers`] refuses to run.
//!
//! **Invariant:** nothing a layer holds is written, linked, chowned or removed outside the root.
//!
//! **Invariant:** `dest` appears complete, by one rename of a hidden sibling, or not at all. A
//! failed unpack leaves nothing behind.
//!
//! Symlink targets are kept as written (absolute ones too: the container resolves them in its
//! own root), but a relative target that climbs above the root from the link's directory is
//! refused. Hard link targets are root-relative paths without `..`. Devices and fifos are
//! skipped: the container runtime provides `/dev`. Ownership is restored only when running as
//! root; otherwise setuid and setgid bits are dropped. A hard link shares its target's owner and
//! mode. Directories get their mode once every layer is written, so that a read-only one still
//! receives its children. Modification times and extended attributes (file capabilities
//! included) are not restored.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use std::path::{Component, Path, PathBuf};

use falak_artifact::budget::{Bounded, Budget};
use falak_artifact::staging::Staging;
use flate2::read::MultiGzDecoder;
use rustix::fs::{AtFlags, CWD, FileType, Gid, Mode, OFlags, RenameFlags, ResolveFlags, Uid};
use rustix::io::Errno;
use tar::EntryType;

mod entry;
mod fs_ops;

use entry::*;
use fs_ops::*;

/// The layer media types [`unpack_layers`] accepts. Compression is told by the content: gzip
/// by its magic bytes, plain tar otherwise.
pub const LAYER_MEDIA_TYPES: [&str; 5] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

/// Longest entry name or link target, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Room allowed per entry for its header, padding and extension records (long names, PAX), so
/// a hostile "long name" cannot make the tar reader buffer gigabytes.
const HEADER_ALLOWANCE: u64 = 64 << 10;
/// Symlinks followed while creating one entry's missing parents (Linux's own limit).
const MAX_LINK_FOLLOWS: usize = 40;
/// Deepest directory tree removed or cleared, one open descriptor per level. A path of
/// `MAX_PATH_BYTES` has at most 2048 components; real images stay far below this.
const MAX_TREE_DEPTH: usize = 1024;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";

/// One layer of an image: its media type as the manifest says and its blob on disk.
#[derive(Debug, Clone, Copy)]
pub struct LayerFile<'a> {
    pub media_type: &'a str,
    pub path: &'a Path,
}

/// What an image may unpack to, summed over all its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Total size of the files, as their headers announce them.
    pub max_bytes: u64,
    /// Total tar entries, whiteouts and skipped devices included.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    /// 8 GiB of file bytes, a million entries.
    fn default() -> Self {
        UnpackLimits { max_bytes: 8 << 30, max_entries: 1_000_000 }
    }
}

/// What [`unpack_layers`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Tar entries read over all layers (0 when already present).
    pub entries: u64,
    /// Bytes of file content written (0 when already present).
    pub bytes: u64,
    /// Character and block devices and fifos left out.
    pub skipped_devices: u64,
    /// True when `dest` already existed and was left as is (nothing was read or written).
    pub already_present: bool,
}

/// Why an image's layers could not be unpacked. `layer` is the index in the list given,
/// from 0. Whatever the error, `dest` was not created and no staging directory is left behind.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(
        "layer {layer} has media type {media_type:?}, which cannot be unpacked (tar and tar+gzip layers can; \
         zstd is not supported yet); nothing was written"
    )]
    UnsupportedMediaType { layer: usize, media_type: String },
    #[error(
        "the kernel has no openat2 (Linux 5.6 or later has it), without which image layers cannot be unpacked \
         safely; nothing was left behind"
    )]
    KernelTooOld,
    #[error("cannot read layer {layer} at {path}: {source}")]
    ReadLayer {
        layer: usize,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer} is not a tar archive: {reason}")]
    NotAnArchive { layer: usize, reason: String },
    #[error("layer {layer} is corrupt after entry {after:?}: {reason}")]
    Corrupt { layer: usize, after: String, reason: String },
    #[error("layer {layer}: the header after entry {after:?} is larger than {limit} bytes")]
    OversizeHeader { layer: usize, after: String, limit: u64 },
    #[error("entry {entry:?} in layer {layer} is past the limit of {limit} entries")]
    TooManyEntries { layer: usize, entry: String, limit: u64 },
    #[error("entry {entry:?} in layer {layer} brings the image's file bytes past the limit of {limit}")]
    TooManyBytes { layer: usize, entry: String, limit: u64 },
    #[error("entry {entry:?} in layer {layer} has a name or link of {len} bytes, over the limit of {limit}")]
    PathTooLong { layer: usize, entry: String, len: usize, limit: usize },
    #[error("entry {entry:?} in layer {layer} has an absolute path; refusing an entry that escapes the root")]
    AbsolutePath { layer: usize, entry: String },
    #[error("entry {entry:?} in layer {layer} has a `..` component; refusing an entry that escapes the root")]
    ParentComponent { layer: usize, entry: String },
    #[error("entry {entry:?} in layer {layer} names the root but is not a directory")]
    RootNotDirectory { layer: usize, entry: String },
    #[error("symlink {entry:?} in layer {layer} points to {target:?}, which climbs above the root")]
    LinkEscapes { layer: usize, entry: String, target: String },
    #[error("hard link {entry:?} in layer {layer} points to {target:?}, which escapes the root")]
    HardLinkEscapes { layer: usize, entry: String, target: String },
    #[error("hard link {entry:?} in layer {layer} points to {target:?}, which does not exist or is a directory")]
    HardLinkTargetMissing { layer: usize, entry: String, target: String },
    #[error("whiteout {entry:?} in layer {layer} names no entry that could be removed")]
    InvalidWhiteout { layer: usize, entry: String },
    #[error("entry {entry:?} in layer {layer} is a {kind}, which cannot be unpacked")]
    UnsupportedEntry { layer: usize, entry: String, kind: String },
    #[error("entry {entry:?} in layer {layer} has a bad header: {reason}")]
    BadHeader { layer: usize, entry: String, reason: String },
    #[error("entry {entry:?} in layer {layer} lies under a path that is not a directory")]
    UnderNonDirectory { layer: usize, entry: String },
    #[error("cannot unpack entry {entry:?} of layer {layer}: {source}; nothing was left behind")]
    Write {
        layer: usize,
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot unpack into {path}: {source}; nothing was left behind")]
    Staging {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Apply `layers` in order into the directory `dest`, which appears complete or not at all. If
/// `dest` exists it is left as is: callers name it by the image's manifest digest, so it is the
/// same tree. Blocking: it reads every layer and writes the whole tree.
pub fn unpack_layers(
    layers: &[LayerFile<'_>],
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackReport, UnpackError> {
    let present = || UnpackReport { already_present: true, ..UnpackReport::default() };
    if fs::symlink_metadata(dest).is_ok() {
        return if dest.is_dir() {
            Ok(present())
        } else {
            Err(staging_failed(dest)(io::Error::new(io::ErrorKind::AlreadyExists, "it exists and is not a directory")))
        };
    }
    for (layer, file) in layers.iter().enumerate() {
        if !LAYER_MEDIA_TYPES.contains(&file.media_type) {
            return Err(UnpackError::UnsupportedMediaType { layer, media_type: file.media_type.to_owned() });
        }
    }
    let staging = Staging::beside(dest).map_err(staging_failed(dest))?;
    let root = rustix::fs::open(&staging.path, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
        .map_err(|e| staging_failed(&staging.path)(e.into()))?;
    match open_in_root(root.as_fd(), Path::new("")) {
        Ok(_) => {}
        Err(Errno::NOSYS) => return Err(UnpackError::KernelTooOld),
        Err(e) => return Err(staging_failed(&staging.path)(e.into())),
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let privileged = unsafe { libc::geteuid() } == 0;
    let mut unpacker = Unpacker {
        root,
        limits: *limits,
        privileged,
        report: UnpackReport::default(),
        dirs: BTreeMap::from([(PathBuf::new(), DirMeta { mode: 0o755, owner: None, layer: 0 })]),
        created: HashSet::new(),
        layer: 0,
    };
    for (index, layer) in layers.iter().enumerate() {
        unpacker.unpack_layer(index, layer)?;
    }
    unpacker.finish_dirs()?;
    let report = unpacker.report;
    drop(unpacker.root);
    if let Err(e) = rename_no_replace(&staging.path, dest) {
        // Another unpack of the same image won the race: its tree is the same.
        return if dest.is_dir() { Ok(present()) } else { Err(staging_failed(dest)(e)) };
    }
    staging.keep();
    tracing::debug!(dest = %dest.display(), entries = report.entries, bytes = report.bytes, "unpacked image layers");
    Ok(report)
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

/// (device, inode) of a directory.
type DirId = (u64, u64);

/// A directory's metadata from its entry, applied once everything is written: a directory
/// made read-only must still receive its children, from this layer or a later one.
struct DirMeta {
    mode: u32,
    owner: Option<(u32, u32)>,
    layer: usize,
}

struct Unpacker {
    /// The staging directory, the root every path is resolved in.
    root: OwnedFd,
    limits: UnpackLimits,
    /// Running as root: restore ownership and setuid/setgid bits.
    privileged: bool,
    report: UnpackReport,
    /// Directory entries by their path in the layer, the root's under the empty path.
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// What the current layer made, as (parent directory, name): whiteouts spare these.
    created: HashSet<(DirId, Vec<u8>)>,
    /// Index of the layer being unpacked, for error messages.
    layer: usize,
}

/// What an entry makes.
enum Kind {
    Dir,
    File {
        size: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// The root-relative target, and as written for error messages.
    HardLink {
        target: PathBuf,
        written: String,
    },
}

impl Unpacker {
    fn unpack_layer(&mut self, index: usize, layer: &LayerFile<'_>) -> Result<(), UnpackError> {
        self.layer = index;
        self.created.clear();
        let read_failed = |source| UnpackError::ReadLayer { layer: index, path: layer.path.to_owned(), source };
        let mut reader = BufReader::new(File::open(layer.path).map_err(read_failed)?);
        let gzip = reader.fill_buf().map_err(read_failed)?.starts_with(&GZIP_MAGIC);
        let inner: Box<dyn Read> = if gzip { Box::new(MultiGzDecoder::new(reader)) } else { Box::new(reader) };
        let budget = Budget::new(HEADER_ALLOWANCE);
        let mut archive = tar::Archive::new(Bounded::new(inner, budget.clone(), "the layer's"));
        let mut last: Option<String> = None;
        let broken = |last: &Option<String>, e: io::Error| match last {
            _ if budget.exceeded() => UnpackError::OversizeHeader {
                layer: index,
                after: last.clone().unwrap_or_default(),
                limit: HEADER_ALLOWANCE,
            },
            None if gzip => UnpackError::NotAnArchive { layer: index, reason: format!("gzip data holds no tar: {e}") },
            None => UnpackError::NotAnArchive { layer: index, reason: e.to_string() },
            Some(after) => UnpackError::Corrupt { layer: index, after: after.clone(), reason: e.to_string() },
        };
        let entries = archive.entries().map_err(|e| broken(&last, e))?;
        for raw in entries {
            let mut raw = raw.map_err(|e| broken(&last, e))?;
            let entry = String::from_utf8_lossy(&raw.path_bytes()).into_owned();
            let content = self.count(&raw, &entry)?;
            // The content this entry announces (checked against the limits above) and the
            // next header may be read, no more.
            budget.allow_from_here(content.saturating_add(HEADER_ALLOWANCE));
            self.unpack_entry(&mut raw, &entry)?;
            last = Some(entry);
        }
        Ok(())
    }

    /// Count the entry against the limits before any of its content is read; returns the
    /// content bytes it may bring.
    fn count<R: Read>(&mut self, raw: &tar::Entry<'_, R>, entry: &str) -> Result<u64, UnpackError> {
        let (layer, limits) = (self.layer, self.limits);
        self.report.entries += 1;
        if self.report.entries > limits.max_entries {
            return Err(UnpackError::TooManyEntries { layer, entry: entry.into(), limit: limits.max_entries });
        }
        if !matches!(raw.header().entry_type(), EntryType::Regular | EntryType::Continuous) {
            return Ok(0);
        }
        self.report.bytes = self.report.bytes.saturating_add(raw.size());
        if self.report.bytes > limits.max_bytes {
            return Err(UnpackError::TooManyBytes { layer, entry: entry.into(), limit: limits.max_bytes });
        }
        Ok(raw.size())
    }

    fn unpack_entry<R: Read>(&mut self, raw: &mut tar::Entry<'_, R>, entry: &str) -> Result<(), UnpackError> {
        let layer = self.layer;
        let entry_type = raw.header().entry_type();
        if entry_type == EntryType::XGlobalHeader {
            return Ok(());
        }
        let path = normalize(&raw.path_bytes(), layer, entry)?;
        let name = path.file_name().map(|name| name.as_bytes().to_vec());
        if let Some(name) = name.as_deref().filter(|name| name.starts_with(WHITEOUT_PREFIX)) {
            return self.whiteout(&path, name, entry);
        }
        let kind = match entry_type {
            EntryType::Regular | EntryType::Continuous => Kind::File { size: raw.size() },
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink { target: link_target(raw, &path, layer, entry)? },
            EntryType::Link => {
                let (target, written) = hard_link_target(raw, layer, entry)?;
                Kind::HardLink { target, written }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo if name.is_some() => {
                self.report.skipped_devices += 1;
                return Ok(());
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(UnpackError::RootNotDirectory { layer, entry: entry.into() });
            }
            other => return Err(UnpackError::UnsupportedEntry { layer, entry: entry.into(), kind: describe(other) }),
        };
        let header = raw.header();
        let bad = |e: io::Error| UnpackError::BadHeader { layer, entry: entry.into(), reason: e.to_string() };
        let mode = header.mode().map_err(bad)? & if self.privileged { 0o7777 } else { 0o1777 };
        let owner = if self.privileged {
            Some((
                id(header.uid().map_err(bad)?, "uid", layer, entry)?,
                id(header.gid().map_err(bad)?, "gid", layer, entry)?,
            ))
        } else {
            None
        };
        let Some(name) = name else {
            // The root itself: only its metadata.
            return match kind {
                Kind::Dir => {
                    self.dirs.insert(path, DirMeta { mode, owner, layer });
                    Ok(())
                }
                _ => Err(UnpackError::RootNotDirectory { layer, entry: entry.into() }),
            };
        };
        let write = |e: io::Error| UnpackError::Write { layer, entry: entry.into(), source: e };
        let parent_path = path.parent().unwrap_or(Path::new(""));
        let parent = self.open_dir_creating(parent_path).map_err(|e| match e {
            Errno::NOTDIR => UnpackError::UnderNonDirectory { layer, entry: entry.into() },
            e => write(e.into()),
        })?;
        let parent_id = dir_id(parent.as_fd()).map_err(|e| write(e.into()))?;
        match kind {
            Kind::Dir => {
                let existing = rustix::fs::statat(&parent, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW);
                match existing.map(|st| FileType::from_raw_mode(st.st_mode)) {
                    Ok(FileType::Directory) => {}
                    Ok(_) | Err(Errno::NOENT) => {
                        self.remove(parent.as_fd(), &name, &path).map_err(write)?;
                        rustix::fs::mkdirat(&parent, name.as_slice(), Mode::from_raw_mode(0o755))
                            .map_err(|e| write(e.into()))?;
                    }
                    Err(e) => return Err(write(e.into())),
                }
                self.dirs.insert(path.clone(), DirMeta { mode, owner, layer });
            }
            Kind::File { size } => {
                self.remove(parent.as_fd(), &name, &path).map_err(write)?;
                let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(&parent, name.as_slice(), flags, Mode::from_raw_mode(0o600))
                    .map_err(|e| write(e.into()))?;
                let mut file = File::from(fd);
                copy_content(raw, &mut file, size, layer, entry)?;
                if let Some((uid, gid)) = owner {
                    rustix::fs::fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                        .map_err(|e| write(e.into()))?;
                }
                rustix::fs::fchmod(&file, Mode::from_raw_mode(mode)).map_err(|e| write(e.into()))?;
            }
            Kind::Symlink { target } => {
                self.remove(parent.as_fd(), &name, &path).map_err(write)?;
                rustix::fs::symlinkat(target.as_slice(), &parent, name.as_slice()).map_err(|e| write(e.into()))?;
                if let Some((uid, gid)) = owner {
                    let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
                    rustix::fs::chownat(&parent, name.as_slice(), uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| write(e.into()))?;
                }
            }
            Kind::HardLink { target, .. } if target == path => {}
            Kind::HardLink { target, written } => {
                self.hard_link(parent.as_fd(), &name, &path, &target, &written, entry)?;
            }
        }
        self.created.insert((parent_id, name));
        Ok(())
    }

    /// Link `name` in `parent` to `target`, a root-relative path resolved inside the root
    /// whose final component is not followed.
    fn hard_link(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &Path,
        target: &Path,
        written: &str,
        entry: &str,
    ) -> Result<(), UnpackError> {
        let layer = self.layer;
        let write = |e: io::Error| UnpackError::Write { layer, entry: entry.into(), source: e };
        let missing = || UnpackError::HardLinkTargetMissing { layer, entry: entry.into(), target: written.to_owned() };
        let Some(target_name) = target.file_name() else { return Err(missing()) };
        let target_parent = match open_in_root(self.root.as_fd(), target.parent().unwrap_or(Path::new(""))) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Err(missing()),
            Err(e) => return Err(write(e.into())),
        };
        match rustix::fs::statat(&target_parent, target_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {}
            Ok(_) | Err(Errno::NOENT) => return Err(missing()),
            Err(e) => return Err(write(e.into())),
        }
        self.remove(parent, name, path).map_err(write)?;
        rustix::fs::linkat(&target_parent, target_name, parent, name, AtFlags::empty()).map_err(|e| match e {
            Errno::NOENT => missing(),
            e => write(e.into()),
        })
    }

    /// Apply a whiteout: `.wh.NAME` removes NAME, `.wh..wh..opq` everything lower layers put in
    /// its directory. A whiteout of something missing does nothing.
    fn whiteout(&mut self, path: &Path, name: &[u8], entry: &str) -> Result<(), UnpackError> {
        let layer = self.layer;
        let write = |e: io::Error| UnpackError::Write { layer, entry: entry.into(), source: e };
        let parent_path = path.parent().unwrap_or(Path::new(""));
        let parent = match open_in_root(self.root.as_fd(), parent_path) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(write(e.into())),
        };
        if name == OPAQUE_WHITEOUT {
            return self.clear_lower(parent, parent_path).map_err(write);
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        if target.starts_with(WHITEOUT_PREFIX) {
            // Other `.wh..wh.` names are aufs bookkeeping (hard link directories and the like).
            return Ok(());
        }
        if matches!(target, b"" | b"." | b"..") {
            return Err(UnpackError::InvalidWhiteout { layer, entry: entry.into() });
        }
        // A whiteout hides only what lower layers made.
        if self.created.contains(&(dir_id(parent.as_fd()).map_err(|e| write(e.into()))?, target.to_vec())) {
            return Ok(());
        }
        self.remove(parent.as_fd(), target, &parent_path.join(OsStr::from_bytes(target))).map_err(write)
    }

    /// Remove every child of `dir` that lower layers made, descending into the directories this
    /// layer made or merged into.
    fn clear_lower(&mut self, dir: OwnedFd, path: &Path) -> io::Result<()> {
        struct Level {
            id: DirId,
            children: Vec<Vec<u8>>,
            path: PathBuf,
            dir: OwnedFd,
        }
        let level = |dir: OwnedFd, path: PathBuf| -> io::Result<Level> {
            Ok(Level { id: dir_id(dir.as_fd())?, children: list(dir.as_fd())?, path, dir })
        };
        let mut stack = vec![level(dir, path.to_owned())?];
        while let Some(mut top) = stack.pop() {
            let Some(child) = top.children.pop() else { continue };
            let child_path = top.path.join(OsStr::from_bytes(&child));
            if !self.created.contains(&(top.id, child.clone())) {
                self.remove(top.dir.as_fd(), &child, &child_path)?;
                stack.push(top);
                continue;
            }
            let st = match rustix::fs::statat(&top.dir, child.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => {
                    stack.push(top);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                stack.push(top);
                continue;
            }
            if stack.len() + 1 >= MAX_TREE_DEPTH {
                return Err(too_deep());
            }
            let fd = rustix::fs::openat(&top.dir, child.as_slice(), DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())?;
            stack.push(top);
            stack.push(level(fd, child_path)?);
        }
        Ok(())
    }

    /// Remove `name` in `parent` (a whole tree for a directory) and forget the directory
    /// entries recorded under its `path`. A missing entry is fine.
    fn remove(&mut self, parent: BorrowedFd<'_>, name: &[u8], path: &Path) -> io::Result<()> {
        let doomed: Vec<PathBuf> = self
            .dirs
            .range(path.to_owned()..)
            .take_while(|(p, _)| p.starts_with(path))
            .map(|(p, _)| p.clone())
            .collect();
        for dir in doomed {
            self.dirs.remove(&dir);
        }
        remove_tree(parent, name)
    }

    /// Open the directory at `path`, resolved inside the root, creating what is missing (mode
    /// 0755) the way the kernel would resolve it: through symlinks, absolute ones from the root.
    fn open_dir_creating(&mut self, path: &Path) -> rustix::io::Result<OwnedFd> {
        match open_in_root(self.root.as_fd(), path) {
            Err(Errno::NOENT) => {}
            result => return result,
        }
        // Some component is missing, maybe behind a dangling symlink: walk one component at a
        // time. `base` is a path the kernel resolves, inside the root, to the directory `dir`.
        let mut dir = open_in_root(self.root.as_fd(), Path::new(""))?;
        let mut base = PathBuf::new();
        let mut rest = components_reversed(path.as_os_str().as_bytes());
        let mut follows = 0;
        while let Some(name) = rest.pop() {
            match name.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    base.push("..");
                    dir = open_in_root(self.root.as_fd(), &base)?;
                    continue;
                }
                _ => {}
            }
            match rustix::fs::statat(&dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => {
                        dir = rustix::fs::openat(&dir, name.as_slice(), DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())?;
                        base.push(OsStr::from_bytes(&name));
                    }
                    FileType::Symlink => {
                        follows += 1;
                        if follows > MAX_LINK_FOLLOWS {
                            return Err(Errno::LOOP);
                        }
                        let target = rustix::fs::readlinkat(&dir, name.as_slice(), Vec::new())?;
                        if target.as_bytes().starts_with(b"/") {
                            dir = open_in_root(self.root.as_fd(), Path::new(""))?;
                            base = PathBuf::new();
                        }
                        rest.extend(components_reversed(target.as_bytes()));
                    }
                    _ => return Err(Errno::NOTDIR),
                },
                Err(Errno::NOENT) => {
                    rustix::fs::mkdirat(&dir, name.as_slice(), Mode::from_raw_mode(0o755))?;
                    self.created.insert((dir_id(dir.as_fd())?, name.clone()));
                    let child = rustix::fs::openat(&dir, name.as_slice(), DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())?;
                    // The mode of an implied directory does not depend on the umask.
                    rustix::fs::fchmod(&child, Mode::from_raw_mode(0o755))?;
                    dir = child;
                    base.push(OsStr::from_bytes(&name));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(dir)
    }

    /// Give directories their entries' owner and mode, deepest first so that a parent made
    /// read-only does not stop its children's. A directory since removed or replaced is skipped.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let mut dirs: Vec<(PathBuf, DirMeta)> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (path, meta) in dirs {
            let write = |e: Errno| UnpackError::Write {
                layer: meta.layer,
                entry: if path.as_os_str().is_empty() { ".".into() } else { path.to_string_lossy().into_owned() },
                source: e.into(),
            };
            let dir = match (path.parent(), path.file_name()) {
                (Some(parent), Some(name)) => {
                    let opened = open_in_root(self.root.as_fd(), parent).and_then(|parent| {
                        rustix::fs::openat(&parent, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
                    });
                    match opened {
                        Ok(dir) => dir,
                        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::ACCESS) => continue,
                        Err(e) => return Err(write(e)),
                    }
                }
                _ => open_in_root(self.root.as_fd(), Path::new("")).map_err(write)?,
            };
            if let Some((uid, gid)) = meta.owner {
                rustix::fs::fchown(&dir, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(write)?;
            }
            rustix::fs::fchmod(&dir, Mode::from_raw_mode(meta.mode)).map_err(write)?;
        }
        Ok(())
    }
}

fn staging_failed(path: &Path) -> impl FnOnce(io::Error) -> UnpackError {
    move |source| UnpackError::Staging { path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_or_refused() {
        assert_eq!(normalize(b"./a/./b/", 0, "").unwrap(), PathBuf::from("a/b"));
        assert_eq!(normalize(b"./", 0, "").unwrap(), PathBuf::new());
        assert!(matches!(normalize(b"a/../b", 0, ""), Err(UnpackError::ParentComponent { .. })));
        assert!(matches!(normalize(b"/a", 0, ""), Err(UnpackError::AbsolutePath { .. })));
        let long = vec![b'a'; MAX_PATH_BYTES + 1];
        assert!(matches!(normalize(&long, 0, ""), Err(UnpackError::PathTooLong { .. })));
    }

    #[test]
    fn components_pop_in_order() {
        let mut stack = components_reversed(b"/a//b/../c/");
        let popped: Vec<Vec<u8>> = std::iter::from_fn(|| stack.pop()).collect();
        assert_eq!(popped, [b"a".to_vec(), b"b".to_vec(), b"..".to_vec(), b"c".to_vec()]);
    }
}
