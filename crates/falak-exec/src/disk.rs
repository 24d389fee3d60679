//! Disk accounting: how much a working directory holds, how much room its filesystem has,
//! and the node's reserve.
//!
//! There is no quota to lean on (ext4 without project quotas, a node that may not be root),
//! so the process executor measures: each attempt's working directory is walked every
//! [`DiskConfig::check_every`] ([`measure`]: blocks actually allocated, `st_blocks × 512`,
//! without following symlinks, a hard-linked file once, bounded by [`MAX_WALK_ENTRIES`] and
//! [`MAX_WALK_DEPTH`]), and an attempt that grows past `Limits::disk_bytes` is stopped.
//! `RLIMIT_FSIZE` at the same limit stops a single file between two walks. The node's
//! [`DiskReserve`] is free space kept on the data dir's filesystem for the ledger
//! ([`FsSpace::of`] is `statvfs`): under it the executor starts nothing and stops the attempt
//! using the most disk among those still growing. `docs/design/executor.md` has the rules.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use falak_core::resources::format_bytes;

/// The most entries (files, directories, links) one walk looks at. A working directory with
/// more cannot be measured, and its attempt is stopped
/// ([`ExitReason::DiskUnmeasurable`](crate::ExitReason::DiskUnmeasurable)): empty files cost
/// inodes, which the ledger needs as much as blocks.
pub const MAX_WALK_ENTRIES: u64 = 1_000_000;
/// The deepest directory one walk enters, the working directory being level 0.
pub const MAX_WALK_DEPTH: usize = 256;
/// How often each attempt's working directory is measured unless the node says otherwise.
pub const DEFAULT_CHECK_EVERY: Duration = Duration::from_millis(250);
/// The node's reserve unless its config names one: 1 GiB or 5% of the filesystem, whichever is
/// smaller ([`DiskReserve::default_bytes`]).
pub const DEFAULT_RESERVE_BYTES: u64 = 1 << 30;
/// How much of each log an attempt stopped for disk keeps ([`shrink_after_disk_stop`]).
pub const KEPT_LOG_BYTES: u64 = 1 << 20;

/// What a walk of a directory found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirUsage {
    /// Bytes of disk allocated to everything under the directory, itself included.
    pub bytes: u64,
    /// Entries looked at, the directory itself included.
    pub entries: u64,
}

/// Why a directory could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("it holds more than {max} files and directories")]
    TooManyEntries { max: u64 },
    #[error("it nests directories deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// Walk `dir` and add up the disk its entries use: `st_blocks × 512` of every file, directory
/// and link (sparse holes cost nothing, a hard-linked file counts once). Symlinks are not
/// followed; entries that vanish during the walk are skipped. Blocking.
///
/// The walk reads a directory the task may be changing: a task that moves files around while
/// it runs can make one walk miss them, never hide them for good, and a directory swapped for
/// a symlink between two steps is followed once, which can only make the task look larger.
pub fn measure(dir: &Path) -> Result<DirUsage, MeasureError> {
    let mut usage = DirUsage::default();
    let mut linked: HashSet<(u64, u64)> = HashSet::new();
    match fs::symlink_metadata(dir) {
        Ok(meta) => usage.bytes = meta.blocks().saturating_mul(512),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(usage),
        Err(source) => return Err(MeasureError::Read { path: dir.to_owned(), source }),
    }
    usage.entries = 1;
    let mut pending = vec![(dir.to_owned(), 0usize)];
    while let Some((path, depth)) = pending.pop() {
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if vanished(&e) => continue,
            Err(source) => return Err(MeasureError::Read { path, source }),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if vanished(&e) => continue,
                Err(source) => return Err(MeasureError::Read { path: path.clone(), source }),
            };
            usage.entries += 1;
            if usage.entries > MAX_WALK_ENTRIES {
                return Err(MeasureError::TooManyEntries { max: MAX_WALK_ENTRIES });
            }
            let child = entry.path();
            // `DirEntry::metadata` is an `lstat`: a symlink is measured, not followed.
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if vanished(&e) => continue,
                Err(source) => return Err(MeasureError::Read { path: child, source }),
            };
            if meta.is_dir() {
                if depth + 1 > MAX_WALK_DEPTH {
                    return Err(MeasureError::TooDeep { max: MAX_WALK_DEPTH });
                }
                pending.push((child, depth + 1));
            } else if meta.nlink() > 1 && !linked.insert((meta.dev(), meta.ino())) {
                continue;
            }
            usage.bytes = usage.bytes.saturating_add(meta.blocks().saturating_mul(512));
        }
    }
    Ok(usage)
}

/// Whether `error` says the entry went away or changed kind under the walk (a race with the
/// task, not a reason to give up).
fn vanished(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
        || error.raw_os_error() == Some(libc::ELOOP)
}

/// Room on one filesystem, as `statvfs` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// Bytes an unprivileged process may still allocate (`f_bavail × f_frsize`, what `df`
    /// shows as available).
    pub free_bytes: u64,
    /// The filesystem's size (`f_blocks × f_frsize`).
    pub total_bytes: u64,
}

impl FsSpace {
    /// The filesystem holding `path`. Blocking (one system call).
    pub fn of(path: &Path) -> io::Result<FsSpace> {
        let mut bytes = path.as_os_str().as_bytes().to_vec();
        bytes.push(0);
        let c_path = std::ffi::CStr::from_bytes_with_nul(&bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path contains a NUL byte"))?;
        let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c_path` is a NUL-terminated string that outlives the call, and `stat` points
        // to writable memory the size of a `statvfs`, which the call fills on success.
        if unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: statvfs returned 0, so it initialized `stat`.
        let stat = unsafe { stat.assume_init() };
        let unit = stat.f_frsize;
        Ok(FsSpace { free_bytes: stat.f_bavail.saturating_mul(unit), total_bytes: stat.f_blocks.saturating_mul(unit) })
    }
}

/// Free space the node keeps on its data dir's filesystem so that the ledger can always
/// commit. Under it the executor starts no attempt ([`StartError::DiskReserve`](crate::StartError::DiskReserve))
/// and stops the attempt using the most disk among those still growing
/// ([`ExitReason::DiskReserve`](crate::ExitReason::DiskReserve)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskReserve {
    /// A path on the filesystem to keep free (the node's data dir).
    pub path: PathBuf,
    pub bytes: u64,
}

impl DiskReserve {
    /// The reserve when the node's config names none: [`DEFAULT_RESERVE_BYTES`] or 5% of the
    /// filesystem, whichever is smaller (a small disk is not reserved whole).
    pub fn default_bytes(space: FsSpace) -> u64 {
        DEFAULT_RESERVE_BYTES.min(space.total_bytes / 20)
    }

    /// `Ok` when the filesystem has at least the reserve free. A filesystem that cannot be
    /// asked (`statvfs` failing on the node's own data dir) is logged and counts as roomy: the
    /// reserve never stops a node on a guess. Blocking (one system call).
    pub fn check(&self) -> Result<(), BelowReserveError> {
        match FsSpace::of(&self.path) {
            Ok(space) if space.free_bytes < self.bytes => Err(BelowReserveError {
                path: self.path.clone(),
                reserve_bytes: self.bytes,
                free_bytes: space.free_bytes,
            }),
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::warn!(%error, path = %self.path.display(), "cannot tell how much disk is free; ignoring the reserve");
                Ok(())
            }
        }
    }
}

/// The node's filesystem has less free space than its reserve; nothing was started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this node's disk is under its reserve: {} free on the filesystem of {}, less than the {} it keeps for its \
     ledger; free space there (finished attempts' working directories are under its tasks dir) or lower \
     `disk_reserve` in the node's config",
    format_bytes(*free_bytes),
    path.display(),
    format_bytes(*reserve_bytes)
)]
pub struct BelowReserveError {
    pub path: PathBuf,
    pub reserve_bytes: u64,
    pub free_bytes: u64,
}

/// The process executor's disk accounting settings.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// How often each attempt's working directory is measured (at least; a walk that takes
    /// long spaces the next one out to four times its duration, so the walks take at most a
    /// fifth of a core per attempt).
    pub check_every: Duration,
    /// The node's reserve; `None` keeps none.
    pub reserve: Option<DiskReserve>,
    /// What the attempts of this executor measured last: the reserve stops the largest
    /// grower. Clones share it.
    pub(crate) book: DiskBook,
}

impl DiskConfig {
    pub fn new(check_every: Duration, reserve: Option<DiskReserve>) -> DiskConfig {
        DiskConfig { check_every, reserve, book: Default::default() }
    }
}

impl Default for DiskConfig {
    /// Measured every [`DEFAULT_CHECK_EVERY`], no reserve.
    fn default() -> Self {
        DiskConfig::new(DEFAULT_CHECK_EVERY, None)
    }
}

/// Growth between two measurements below this does not make an attempt a grower, so one that
/// only wrote its first log lines is not the one the reserve stops.
const GROWTH_SLACK: u64 = 64 << 10;

/// The last measurement of every attempt being measured, shared by their monitors.
#[derive(Debug, Clone, Default)]
pub(crate) struct DiskBook(Arc<Mutex<Book>>);

#[derive(Debug, Default)]
struct Book {
    next_key: u64,
    /// Bytes used and whether they grew at the last measurement, by attempt.
    attempts: BTreeMap<u64, (u64, bool)>,
}

impl DiskBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new attempt's key, listed as using nothing.
    pub(crate) fn enter(&self) -> u64 {
        let mut book = self.lock();
        book.next_key += 1;
        let key = book.next_key;
        book.attempts.insert(key, (0, false));
        key
    }

    /// Record a measurement of `key`.
    pub(crate) fn record(&self, key: u64, bytes: u64) {
        let mut book = self.lock();
        if let Some(entry) = book.attempts.get_mut(&key) {
            *entry = (bytes, bytes > entry.0.saturating_add(GROWTH_SLACK));
        }
    }

    /// The attempt using the most disk among those that grew at their last measurement (the
    /// lowest key among equals).
    pub(crate) fn largest_grower(&self) -> Option<u64> {
        let book = self.lock();
        let growers = book.attempts.iter().filter(|(_, (_, growing))| *growing);
        growers.max_by_key(|(key, (bytes, _))| (*bytes, std::cmp::Reverse(**key))).map(|(key, _)| *key)
    }

    pub(crate) fn leave(&self, key: u64) {
        self.lock().attempts.remove(&key);
    }
}

/// Once an attempt stopped for disk has exited, give back what it used: remove everything in
/// its working directory but its logs, and cut each log to its last [`KEPT_LOG_BYTES`] (its
/// tails are already in its `Exit`). `logs` are the node's own handles on `stdout.log` and
/// `stderr.log`; an entry of that name that is not the node's file (the task replaced it) is
/// removed like any other. Nothing else would free the space: working directories outlive
/// their attempts. Blocking; failures are logged.
pub fn shrink_after_disk_stop(workdir: &Path, logs: &[(&str, &File)]) {
    let entries = match fs::read_dir(workdir) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(%error, dir = %workdir.display(), "cannot empty the working directory of an attempt stopped for disk");
            return;
        }
    };
    let ours = |name: &std::ffi::OsStr, meta: &fs::Metadata| {
        logs.iter().any(|(log, file)| {
            name == *log && file.metadata().is_ok_and(|f| f.dev() == meta.dev() && f.ino() == meta.ino())
        })
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if ours(&entry.file_name(), &meta) {
            continue;
        }
        // `remove_dir_all` does not follow symlinks, even when the task swaps them in meanwhile.
        let removed = if meta.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        if let Err(error) = removed
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(%error, path = %path.display(), "cannot remove a file of an attempt stopped for disk");
        }
    }
    for (name, file) in logs {
        if let Err(error) = cut_to_tail(file, KEPT_LOG_BYTES) {
            tracing::warn!(%error, log = name, dir = %workdir.display(), "cannot cut the log of an attempt stopped for disk");
        }
    }
}

/// Move the last `keep` bytes of `file` to its start and cut it there. Lines a writer appends
/// meanwhile may be lost; a writer with `O_APPEND` goes on at the new end. Blocking.
pub fn cut_to_tail(file: &File, keep: u64) -> io::Result<()> {
    let size = file.metadata()?.len();
    if size <= keep {
        return Ok(());
    }
    let mut tail = vec![0; keep as usize];
    file.read_exact_at(&mut tail, size - keep)?;
    file.write_all_at(&tail, 0)?;
    file.set_len(keep)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn write(path: &Path, bytes: usize) {
        fs::write(path, vec![7u8; bytes]).unwrap();
    }

    #[test]
    fn the_walk_counts_allocated_blocks_of_everything_under_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let empty = measure(dir.path()).unwrap();
        assert_eq!(empty.entries, 1);
        fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
        write(&dir.path().join("one"), 1 << 20);
        write(&dir.path().join("a/b/c/two"), 2 << 20);
        let usage = measure(dir.path()).unwrap();
        assert_eq!(usage.entries, 6);
        // Three MiB of data plus a few blocks for the directories.
        assert!(usage.bytes >= 3 << 20 && usage.bytes < (3 << 20) + (64 << 10), "{usage:?}");
    }

    #[test]
    fn the_walk_does_not_follow_symlinks_and_counts_hard_links_once() {
        let outside = tempfile::tempdir().unwrap();
        write(&outside.path().join("big"), 4 << 20);
        let dir = tempfile::tempdir().unwrap();
        symlink(outside.path(), dir.path().join("to-dir")).unwrap();
        symlink(outside.path().join("big"), dir.path().join("to-file")).unwrap();
        let links = measure(dir.path()).unwrap();
        assert!(links.bytes < 64 << 10, "symlinks are not followed: {links:?}");

        write(&dir.path().join("data"), 1 << 20);
        for i in 0..5 {
            fs::hard_link(dir.path().join("data"), dir.path().join(format!("link{i}"))).unwrap();
        }
        let linked = measure(dir.path()).unwrap();
        assert!(linked.bytes >= 1 << 20 && linked.bytes < (1 << 20) + (64 << 10), "{linked:?}");
    }

    #[test]
    fn sparse_files_cost_what_they_allocate() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("sparse")).unwrap();
        file.set_len(1 << 40).unwrap();
        assert!(measure(dir.path()).unwrap().bytes < 64 << 10);
    }

    #[test]
    fn a_directory_deeper_than_the_walk_goes_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut path = dir.path().to_owned();
        for _ in 0..=MAX_WALK_DEPTH {
            path.push("d");
        }
        fs::create_dir_all(&path).unwrap();
        let error = measure(dir.path()).unwrap_err();
        assert_eq!(error.to_string(), "it nests directories deeper than 256 levels");
        assert!(measure(&dir.path().join("d")).is_ok(), "one level less is measured");
    }

    #[test]
    fn a_missing_directory_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(measure(&dir.path().join("gone")).unwrap(), DirUsage::default());
    }

    #[test]
    fn statvfs_sees_the_filesystem_and_the_default_reserve_is_the_smaller_of_1gib_and_5_percent() {
        let dir = tempfile::tempdir().unwrap();
        let space = FsSpace::of(dir.path()).unwrap();
        assert!(space.total_bytes > 0 && space.free_bytes <= space.total_bytes, "{space:?}");
        let gib = 1 << 30;
        assert_eq!(DiskReserve::default_bytes(FsSpace { free_bytes: 0, total_bytes: 100 * gib }), gib);
        assert_eq!(DiskReserve::default_bytes(FsSpace { free_bytes: 0, total_bytes: 10 * gib }), gib / 2);
        assert!(FsSpace::of(&dir.path().join("gone")).is_err());
    }

    #[test]
    fn the_reserve_check_names_the_reserve_the_free_space_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let space = FsSpace::of(dir.path()).unwrap();
        let roomy = DiskReserve { path: dir.path().to_owned(), bytes: 0 };
        assert!(roomy.check().is_ok());
        let greedy = DiskReserve { path: dir.path().to_owned(), bytes: space.total_bytes + 1 };
        let error = greedy.check().unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("this node's disk is under its reserve: "), "{text}");
        assert!(text.contains(&format!("free on the filesystem of {}", dir.path().display())), "{text}");
        assert!(text.contains(&format!("less than the {} it keeps", format_bytes(space.total_bytes + 1))), "{text}");
        assert!(text.ends_with("or lower `disk_reserve` in the node's config"), "{text}");
    }

    #[test]
    fn the_reserve_picks_the_largest_attempt_among_those_still_growing() {
        let book = DiskBook::default();
        let (idle, small, large) = (book.enter(), book.enter(), book.enter());
        assert_eq!(book.largest_grower(), None);
        book.record(idle, 8 << 10); // a fresh working directory: not growth
        book.record(small, 10 << 20);
        book.record(large, 500 << 20);
        assert_eq!(book.largest_grower(), Some(large));
        book.record(large, 500 << 20); // stopped writing
        assert_eq!(book.largest_grower(), Some(small));
        book.leave(small);
        assert_eq!(book.largest_grower(), None);
        book.record(idle, 900 << 20);
        assert_eq!(book.largest_grower(), Some(idle));
    }

    #[test]
    fn shrinking_keeps_only_the_nodes_logs_cut_to_their_tails() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        let stdout = File::options().read(true).write(true).create_new(true).open(work.join("stdout.log")).unwrap();
        stdout.write_all_at(&vec![b'x'; 3 << 20], 0).unwrap();
        stdout.write_all_at(b"THE END", 3 << 20).unwrap();
        // The task replaced stderr.log with a file of its own.
        let stderr = File::options().read(true).write(true).create_new(true).open(work.join("stderr.log")).unwrap();
        fs::remove_file(work.join("stderr.log")).unwrap();
        write(&work.join("stderr.log"), 1 << 20);
        fs::create_dir_all(work.join("tmp/deep")).unwrap();
        write(&work.join("tmp/deep/f"), 1 << 20);
        write(&work.join("f1"), 1 << 20);
        symlink("/etc", work.join("etc")).unwrap();

        shrink_after_disk_stop(work, &[("stdout.log", &stdout), ("stderr.log", &stderr)]);
        let mut left: Vec<String> =
            fs::read_dir(work).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["stdout.log"]);
        let kept = fs::read(work.join("stdout.log")).unwrap();
        assert_eq!(kept.len() as u64, KEPT_LOG_BYTES);
        assert!(kept.ends_with(b"xxTHE END"));
        assert!(Path::new("/etc").is_dir(), "the symlink was removed, not followed");
    }
}
