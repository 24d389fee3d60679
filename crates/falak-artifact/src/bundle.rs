//! Code bundles: tar archives, optionally gzip-compressed (detected by the gzip magic bytes).
//!
//! [`pack`] turns a directory into a deterministic gzip-compressed tar (entries sorted, mtime 0,
//! uid/gid 0, mode 0644 or 0755 by the executable bit), so packing the same tree twice gives the
//! same artifact id; an existing `.tar`, `.tar.gz` or `.tgz` file is validated and returned as
//! is. [`unpack`] extracts into a hidden sibling of the destination and renames it into place.
//!
//! Every entry of every archive, packed or unpacked, goes through one checker:
//! relative paths without `..`, no hard links, devices or fifos, no entry under a symlink or a
//! file, symlinks that stay inside the bundle, and the limits below.
//!
//! **Invariant:** a destination directory that [`unpack`] created is complete: it appears by one
//! rename. A failed unpack leaves nothing behind.
//!
//! A symlink's target must be relative, with `..` only at its start, climbing no higher than the
//! bundle root. `..` after a name is refused even when it would resolve inside lexically: the
//! name may itself be a symlink (`d/s -> ..` makes `d/s/..` the root's parent).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use tar::EntryType;

use crate::budget::{Bounded, Budget};
use crate::staging::Staging;

/// Largest bundle as stored: the archive bytes, compressed or not (64 MiB).
pub const MAX_BUNDLE_BYTES: u64 = 64 << 20;
/// Largest total size of the files a bundle unpacks to (512 MiB).
pub const MAX_UNPACKED_BYTES: u64 = 512 << 20;
/// Most entries in a bundle, counting directories implied by paths.
pub const MAX_ENTRIES: usize = 20_000;
/// Longest entry path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Room allowed per entry for its header, padding and extension records (long names, PAX),
/// so a hostile "long name" cannot make the tar reader buffer gigabytes.
const HEADER_ALLOWANCE: u64 = 16 << 10;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Why a bundle could not be packed or unpacked. When unpacking, nothing is left behind.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}: {source}")]
    Input {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} cannot be packed: pack accepts a directory or a .tar, .tar.gz or .tgz file")]
    UnsupportedInput { path: PathBuf },
    #[error("bundle of {size} bytes exceeds the limit of {limit} bytes; make it smaller")]
    TooLarge { size: u64, limit: u64 },
    #[error("entry {entry:?} brings the unpacked size past the limit of {limit} bytes")]
    UnpackedTooLarge { entry: String, limit: u64 },
    #[error("entry {entry:?} is past the limit of {limit} entries (implied directories count)")]
    TooManyEntries { entry: String, limit: usize },
    #[error("entry path {entry:?} is {len} bytes, over the limit of {limit} bytes")]
    PathTooLong { entry: String, len: usize, limit: usize },
    #[error("entry {entry:?} has an absolute path; bundle paths must be relative")]
    AbsolutePath { entry: String },
    #[error("entry {entry:?} has a `..` component; bundle paths may not climb out")]
    ParentComponent { entry: String },
    #[error("entry {entry:?} has an empty path")]
    EmptyPath { entry: String },
    #[error("entry {entry:?} is a hard link; bundles may not contain hard links, copy the file instead")]
    HardLink { entry: String },
    #[error(
        "symlink {entry:?} points to {target:?}, outside the bundle; a link must be relative, with `..` \
         only at its start, and not climb above the bundle root"
    )]
    SymlinkEscapes { entry: String, target: String },
    #[error("entry {entry:?} is a {kind}; bundles hold only files, directories and symlinks")]
    UnsupportedEntry { entry: String, kind: &'static str },
    #[error("entry {entry:?} lies under {parent:?}, which is a file or a symlink, not a directory")]
    UnderNonDirectory { entry: String, parent: String },
    #[error("entry {entry:?} appears twice")]
    Duplicate { entry: String },
    #[error("the header after entry {after:?} is larger than {limit} bytes")]
    OversizeHeader { after: String, limit: u64 },
    #[error("not a tar archive ({reason}); a bundle is a tar archive, optionally gzip-compressed")]
    NotAnArchive { reason: String },
    #[error("the archive is corrupt after entry {after:?}: {reason}")]
    Corrupt { after: String, reason: String },
    #[error("cannot pack {path}: {source}")]
    Pack {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot unpack into {path}: {source}; nothing was left behind")]
    Unpack {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What [`unpack`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackReport {
    pub dest: PathBuf,
    /// True when `dest` already existed and was left as is (nothing was read or written).
    pub already_present: bool,
    /// Archive entries extracted (0 when already present).
    pub entries: usize,
    /// Bytes of file content written (0 when already present).
    pub bytes: u64,
}

/// Pack `path` into a bundle: a directory is archived deterministically (skipping `.git`), an
/// existing `.tar`, `.tar.gz` or `.tgz` file is validated and returned unchanged.
pub fn pack(path: &Path) -> Result<Vec<u8>, BundleError> {
    let meta = fs::metadata(path).map_err(|source| BundleError::Input { path: path.to_owned(), source })?;
    if meta.is_dir() {
        return pack_dir(path);
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if !meta.is_file() || ![".tar", ".tar.gz", ".tgz"].iter().any(|ext| name.ends_with(ext)) {
        return Err(BundleError::UnsupportedInput { path: path.to_owned() });
    }
    if meta.len() > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge { size: meta.len(), limit: MAX_BUNDLE_BYTES });
    }
    let bytes = fs::read(path).map_err(|source| BundleError::Input { path: path.to_owned(), source })?;
    validate(&bytes)?;
    Ok(bytes)
}

/// Check every entry of a bundle as [`unpack`] would, without writing anything.
pub fn validate(bytes: &[u8]) -> Result<(), BundleError> {
    for_each_entry(bytes, |entry, reader| {
        // Reading the content proves the archive is not truncated.
        io::copy(reader, &mut io::sink())
            .map(drop)
            .map_err(|e| BundleError::Corrupt { after: display(&entry.path), reason: e.to_string() })
    })
    .map(drop)
}

/// Extract a bundle into `dest`, which appears complete or not at all. If `dest` exists it is
/// left as is: callers unpack each content id into its own directory, so it is the same tree.
pub fn unpack(bytes: &[u8], dest: &Path) -> Result<UnpackReport, BundleError> {
    let present = || UnpackReport { dest: dest.to_owned(), already_present: true, entries: 0, bytes: 0 };
    let fail = unpack_failed;
    if fs::symlink_metadata(dest).is_ok() {
        return if dest.is_dir() {
            Ok(present())
        } else {
            Err(fail(dest)(io::Error::new(io::ErrorKind::AlreadyExists, "it exists and is not a directory")))
        };
    }
    let staging = Staging::beside(dest).map_err(fail(dest))?;
    let (entries, bytes) = for_each_entry(bytes, |entry, reader| write_entry(&staging.path, entry, reader))?;
    fs::set_permissions(&staging.path, fs::Permissions::from_mode(0o755)).map_err(fail(&staging.path))?;
    if let Err(e) = fs::rename(&staging.path, dest) {
        // Another unpack of the same content won the race: its tree is the same.
        return if dest.is_dir() { Ok(present()) } else { Err(fail(dest)(e)) };
    }
    staging.keep();
    Ok(UnpackReport { dest: dest.to_owned(), already_present: false, entries, bytes })
}

/// One checked entry: a normalized relative path and what it is.
struct Entry {
    path: PathBuf,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File { executable: bool, size: u64 },
    Symlink { target: PathBuf },
}

fn write_entry(root: &Path, entry: &Entry, reader: &mut dyn Read) -> Result<(), BundleError> {
    // The checker guarantees no ancestor is a symlink or a file, and the staging directory is
    // ours, so creating parents cannot be redirected outside it.
    let path = root.join(&entry.path);
    let fail = unpack_failed(&path);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(unpack_failed(parent))?;
    }
    match &entry.kind {
        Kind::Dir => fs::create_dir_all(&path)
            .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o755)))
            .map_err(fail),
        Kind::File { executable, size } => {
            // `create_new` refuses an existing path, symlinks included.
            let mut file = OpenOptions::new().write(true).create_new(true).open(&path).map_err(unpack_failed(&path))?;
            copy_content(reader, &mut file, *size, &entry.path, &path)?;
            file.set_permissions(fs::Permissions::from_mode(if *executable { 0o755 } else { 0o644 })).map_err(fail)
        }
        Kind::Symlink { target } => std::os::unix::fs::symlink(target, &path).map_err(fail),
    }
}

/// Copy exactly `size` bytes, telling a short or broken archive (corrupt) from a failing disk.
fn copy_content(
    reader: &mut dyn Read,
    file: &mut fs::File,
    size: u64,
    entry: &Path,
    path: &Path,
) -> Result<(), BundleError> {
    let corrupt = |reason: String| BundleError::Corrupt { after: display(entry), reason };
    let mut buf = vec![0u8; 64 << 10];
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) => return Err(corrupt(format!("the archive ends {left} bytes before the end of this file"))),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt(e.to_string())),
        };
        file.write_all(&buf[..n]).map_err(unpack_failed(path))?;
        left -= n as u64;
    }
    Ok(())
}

/// Walk a bundle's entries, checking each and handing it to `visit` with its content. Returns
/// the number of entries and the total file bytes.
fn for_each_entry(
    bytes: &[u8],
    mut visit: impl FnMut(&Entry, &mut dyn Read) -> Result<(), BundleError>,
) -> Result<(usize, u64), BundleError> {
    let size = bytes.len() as u64;
    if size > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge { size, limit: MAX_BUNDLE_BYTES });
    }
    if bytes.is_empty() {
        return Err(BundleError::NotAnArchive { reason: "the input is empty".into() });
    }
    let gzip = bytes.starts_with(&GZIP_MAGIC);
    let inner: Box<dyn Read + '_> = if gzip { Box::new(GzDecoder::new(bytes)) } else { Box::new(bytes) };
    let budget = Budget::new(HEADER_ALLOWANCE);
    let mut archive = tar::Archive::new(Bounded::new(inner, budget.clone(), "the archive's"));
    let mut checker = Checker::default();
    let broken = |checker: &Checker, e: io::Error| match &checker.last {
        _ if budget.exceeded() => {
            BundleError::OversizeHeader { after: checker.last.clone().unwrap_or_default(), limit: HEADER_ALLOWANCE }
        }
        None if gzip => BundleError::NotAnArchive { reason: format!("gzip data holds no tar archive: {e}") },
        None => BundleError::NotAnArchive { reason: e.to_string() },
        Some(after) => BundleError::Corrupt { after: after.clone(), reason: e.to_string() },
    };
    let entries = archive.entries().map_err(|e| broken(&checker, e))?;
    for raw in entries {
        let mut raw = raw.map_err(|e| broken(&checker, e))?;
        budget.allow(HEADER_ALLOWANCE);
        let Some(entry) = checker.check(&raw)? else {
            // Skipped content (a PAX global header) gets a header's allowance, no more.
            budget.allow(raw.size().min(HEADER_ALLOWANCE));
            continue;
        };
        let name = display(&entry.path);
        if let Kind::File { size, .. } = entry.kind {
            budget.allow(size);
        }
        visit(&entry, &mut raw)?;
        checker.last = Some(name);
    }
    Ok((checker.entries, checker.bytes))
}

/// The rules every entry must pass, and what earlier entries made of the tree.
#[derive(Default)]
struct Checker {
    entries: usize,
    bytes: u64,
    /// Every path the archive creates, implied parent directories included.
    seen: BTreeMap<PathBuf, Kind>,
    /// The last entry accepted, for error messages.
    last: Option<String>,
}

impl Checker {
    /// The entry, checked; `None` for entries that create nothing (the root, PAX globals).
    fn check<R: Read>(&mut self, raw: &tar::Entry<'_, R>) -> Result<Option<Entry>, BundleError> {
        let raw_path = raw.path_bytes();
        let entry = String::from_utf8_lossy(&raw_path).into_owned();
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(BundleError::TooManyEntries { entry, limit: MAX_ENTRIES });
        }
        let entry_type = raw.header().entry_type();
        if entry_type == EntryType::XGlobalHeader {
            return Ok(None);
        }
        let path = normalize(&raw_path, &entry)?;
        let kind = match entry_type {
            EntryType::Regular | EntryType::Continuous => {
                let mode = raw.header().mode().map_err(|e| corrupt(&entry, e))?;
                Kind::File { executable: mode & 0o111 != 0, size: raw.size() }
            }
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => {
                let target = raw.link_name_bytes().unwrap_or_default();
                Kind::Symlink { target: check_link_target(&path, &target, &entry)? }
            }
            EntryType::Link => return Err(BundleError::HardLink { entry }),
            EntryType::Char | EntryType::Block => return Err(BundleError::UnsupportedEntry { entry, kind: "device" }),
            EntryType::Fifo => return Err(BundleError::UnsupportedEntry { entry, kind: "fifo" }),
            _ => return Err(BundleError::UnsupportedEntry { entry, kind: "special tar entry (sparse, volume, ...)" }),
        };
        if path.as_os_str().is_empty() {
            return if kind == Kind::Dir { Ok(None) } else { Err(BundleError::EmptyPath { entry }) };
        }
        self.record(&path, &kind, &entry)?;
        if let Kind::File { size, .. } = kind {
            self.bytes = self.bytes.saturating_add(size);
            if self.bytes > MAX_UNPACKED_BYTES {
                return Err(BundleError::UnpackedTooLarge { entry, limit: MAX_UNPACKED_BYTES });
            }
        }
        Ok(Some(Entry { path, kind }))
    }

    /// Remember `path` and its implied parents, refusing paths under files or symlinks and
    /// repeated paths (only a directory may be named twice).
    fn record(&mut self, path: &Path, kind: &Kind, entry: &str) -> Result<(), BundleError> {
        let parents: Vec<&Path> = path.ancestors().skip(1).filter(|p| !p.as_os_str().is_empty()).collect();
        for parent in parents.into_iter().rev() {
            match self.seen.get(parent) {
                Some(Kind::Dir) => {}
                Some(_) => return Err(BundleError::UnderNonDirectory { entry: entry.into(), parent: display(parent) }),
                None => self.insert(parent.to_owned(), Kind::Dir, entry)?,
            }
        }
        match self.seen.get(path) {
            Some(Kind::Dir) if *kind == Kind::Dir => Ok(()),
            Some(_) => Err(BundleError::Duplicate { entry: entry.into() }),
            None => self.insert(path.to_owned(), kind.clone(), entry),
        }
    }

    fn insert(&mut self, path: PathBuf, kind: Kind, entry: &str) -> Result<(), BundleError> {
        if self.seen.len() >= MAX_ENTRIES {
            return Err(BundleError::TooManyEntries { entry: entry.into(), limit: MAX_ENTRIES });
        }
        self.seen.insert(path, kind);
        Ok(())
    }
}

/// The entry's path without `.` components, refusing absolute paths and `..`.
fn normalize(raw: &[u8], entry: &str) -> Result<PathBuf, BundleError> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(BundleError::PathTooLong { entry: entry.into(), len: raw.len(), limit: MAX_PATH_BYTES });
    }
    let mut out = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err(BundleError::ParentComponent { entry: entry.into() }),
            Component::RootDir | Component::Prefix(_) => return Err(BundleError::AbsolutePath { entry: entry.into() }),
        }
    }
    Ok(out)
}

/// A symlink target is accepted when it is relative, has `..` only at its start, and climbs no
/// higher than the root from the link's directory (see the module documentation for why).
fn check_link_target(link: &Path, target: &[u8], entry: &str) -> Result<PathBuf, BundleError> {
    let escapes =
        || BundleError::SymlinkEscapes { entry: entry.into(), target: String::from_utf8_lossy(target).into() };
    if target.is_empty() || target.len() > MAX_PATH_BYTES {
        return Err(escapes());
    }
    let depth = link.components().count().saturating_sub(1);
    let (mut climbs, mut descended) = (0usize, false);
    for component in Path::new(OsStr::from_bytes(target)).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir if !descended => climbs += 1,
            Component::Normal(_) => descended = true,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(escapes()),
        }
    }
    if climbs > depth {
        return Err(escapes());
    }
    Ok(PathBuf::from(OsStr::from_bytes(target)))
}

fn unpack_failed(path: &Path) -> impl FnOnce(io::Error) -> BundleError {
    move |source| BundleError::Unpack { path: path.to_owned(), source }
}

fn pack_failed(path: &Path) -> impl FnOnce(io::Error) -> BundleError {
    move |source| BundleError::Pack { path: path.to_owned(), source }
}

fn corrupt(entry: &str, e: io::Error) -> BundleError {
    BundleError::Corrupt { after: entry.into(), reason: e.to_string() }
}

fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Archive a directory deterministically: depth-first, names sorted bytewise, `.git` skipped.
fn pack_dir(root: &Path) -> Result<Vec<u8>, BundleError> {
    let mut found = Vec::new();
    let mut total = 0u64;
    collect(root, Path::new(""), &mut found, &mut total)?;
    let fail = pack_failed;
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (path, kind) in &found {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        match kind {
            Kind::Dir => {
                header.set_entry_type(EntryType::Directory);
                header.set_mode(0o755);
                builder.append_data(&mut header, path, io::empty()).map_err(fail(path))?;
            }
            Kind::File { executable, .. } => {
                let source = root.join(path);
                let bytes = fs::read(&source).map_err(fail(&source))?;
                header.set_entry_type(EntryType::Regular);
                header.set_mode(if *executable { 0o755 } else { 0o644 });
                header.set_size(bytes.len() as u64);
                builder.append_data(&mut header, path, bytes.as_slice()).map_err(fail(path))?;
            }
            Kind::Symlink { target } => {
                header.set_entry_type(EntryType::Symlink);
                header.set_mode(0o777);
                builder.append_link(&mut header, path, target).map_err(fail(path))?;
            }
        }
    }
    let out = builder.into_inner().and_then(GzEncoder::finish).map_err(fail(root))?;
    // The same checks as unpack: pack never produces a bundle that unpack refuses (a file
    // that grew while being read still meets the limits here).
    validate(&out)?;
    Ok(out)
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, Kind)>, total: &mut u64) -> Result<(), BundleError> {
    let dir = root.join(rel);
    let fail = pack_failed;
    let mut names = fs::read_dir(&dir)
        .and_then(|entries| entries.map(|e| e.map(|e| e.file_name())).collect::<io::Result<Vec<_>>>())
        .map_err(fail(&dir))?;
    names.sort();
    for name in names.into_iter().filter(|name| name != ".git") {
        let path = rel.join(&name);
        let entry = display(&path);
        let len = path.as_os_str().len();
        if len > MAX_PATH_BYTES {
            return Err(BundleError::PathTooLong { entry, len, limit: MAX_PATH_BYTES });
        }
        if out.len() >= MAX_ENTRIES {
            return Err(BundleError::TooManyEntries { entry, limit: MAX_ENTRIES });
        }
        let source = root.join(&path);
        let meta = fs::symlink_metadata(&source).map_err(fail(&source))?;
        let file_type = meta.file_type();
        if file_type.is_dir() {
            out.push((path.clone(), Kind::Dir));
            collect(root, &path, out, total)?;
        } else if file_type.is_file() {
            *total += meta.len();
            if *total > MAX_UNPACKED_BYTES {
                return Err(BundleError::UnpackedTooLarge { entry, limit: MAX_UNPACKED_BYTES });
            }
            out.push((path, Kind::File { executable: meta.permissions().mode() & 0o111 != 0, size: meta.len() }));
        } else if file_type.is_symlink() {
            let target = fs::read_link(&source).map_err(fail(&source))?;
            let target = check_link_target(&path, target.as_os_str().as_bytes(), &entry)?;
            out.push((path, Kind::Symlink { target }));
        } else {
            return Err(BundleError::UnsupportedEntry { entry, kind: "socket, fifo or device" });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(link: &str, target: &str) -> bool {
        check_link_target(Path::new(link), target.as_bytes(), link).is_ok()
    }

    #[test]
    fn link_targets_stay_inside_the_bundle() {
        assert!(target("a", "b"));
        assert!(target("a", "./b/c"));
        assert!(target("d/a", "../b"));
        assert!(target("d/e/a", "../../b/c"));
        assert!(!target("a", "../x"));
        assert!(!target("d/a", "../../x"));
        assert!(!target("a", "/etc"));
        assert!(!target("a", ""));
        // Lexically inside, but `s` may be a symlink to `..`.
        assert!(!target("a", "d/s/.."));
    }

    #[test]
    fn paths_are_normalized_or_refused() {
        assert_eq!(normalize(b"./a/./b", "").unwrap(), PathBuf::from("a/b"));
        assert!(matches!(normalize(b"a/../b", ""), Err(BundleError::ParentComponent { .. })));
        assert!(matches!(normalize(b"/a", ""), Err(BundleError::AbsolutePath { .. })));
        let long = vec![b'a'; MAX_PATH_BYTES + 1];
        assert!(matches!(normalize(&long, ""), Err(BundleError::PathTooLong { .. })));
    }
}
