//! The on-disk content-addressed store: one file per blob, named by its hash — BLAKE3 for
//! Falak's artifacts, SHA-256 for OCI image blobs ([`BlobId`]).
//!
//! Layout: `<dir>/blobs/<64 hex chars>` (BLAKE3) and `<dir>/blobs/sha256/<64 hex chars>`. A blob is written to a temporary file in `blobs/`
//! (named `.tmp-…`), fsynced, renamed into place and the directory fsynced, so a blob file that
//! exists is complete. Temporary files left by a crash are removed by [`ArtifactStore::open`].
//!
//! A blob's modification time is its "last used" time: [`ArtifactStore::touch`] sets it to a
//! time the caller passes in, and [`ArtifactStore::gc`] evicts by it. The store never reads the
//! clock.
//!
//! **Invariant:** a file named `blobs/<id>` holds bytes whose BLAKE3 hash is `id` (and one named
//! `blobs/sha256/<hex>` bytes whose SHA-256 digest is that), unless the disk was tampered with; [`ArtifactStore::verify`] detects that.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use falak_core::ArtifactId;

use crate::id::{BlobId, HashKind, Hasher};

/// The largest artifact the store accepts (256 MiB).
pub const MAX_ARTIFACT_BYTES: u64 = 256 << 20;

/// Prefix of temporary files in `blobs/`; never a valid artifact id, so listings skip them.
const TEMP_PREFIX: &str = ".tmp-";
/// Where OCI blobs live under `blobs/`, named by the hex of their SHA-256 digest.
const SHA256_DIR: &str = "sha256";

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the artifact store at {path}: {source}; check that the directory is writable")]
pub struct OpenStoreError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Why an artifact was not stored. Nothing is stored when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("blob of {size} bytes exceeds the limit of {limit} bytes; nothing was stored")]
    TooLarge { size: u64, limit: u64 },
    #[error("bytes hash to {actual}, not the expected blob {expected}; nothing was stored")]
    HashMismatch { expected: BlobId, actual: BlobId },
    #[error("writing to the artifact store failed at {path}: {source}; nothing was stored")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why an artifact could not be read (or its metadata changed).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("artifact {0} is not in the store; fetch it first")]
    NotFound(BlobId),
    #[error("range at offset {offset} is past the end of artifact {id} ({size} bytes)")]
    OutOfRange { id: BlobId, offset: u64, size: u64 },
    #[error("artifact {id} is larger than the limit of {limit} bytes for reading it whole; read it by its path")]
    TooLarge { id: BlobId, limit: u64 },
    #[error("reading artifact {id} failed: {source}")]
    Io {
        id: BlobId,
        #[source]
        source: io::Error,
    },
}

/// Why [`ArtifactStore::verify`] failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("artifact {id} is corrupt on disk: its bytes hash to {actual}; remove it and fetch it again")]
    Corrupt { id: BlobId, actual: BlobId },
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Why listing or collecting the store failed. Blobs removed before the failure stay removed.
#[derive(Debug, thiserror::Error)]
#[error("cannot list the artifact store at {path}: {source}")]
pub struct ListError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// One stored blob, as [`ArtifactStore::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub id: BlobId,
    pub size: u64,
    /// The last time the blob was put or [touched](ArtifactStore::touch).
    pub last_used: SystemTime,
}

/// What one [`ArtifactStore::gc`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Removed because they were unused for at least `min_unused`.
    pub removed_unused: Vec<BlobId>,
    /// Removed, least recently used first, to bring the store under `max_total_bytes`.
    pub removed_for_space: Vec<BlobId>,
    pub freed_bytes: u64,
    /// Bytes still stored after the pass; above the cap only when kept blobs alone exceed it.
    pub remaining_bytes: u64,
    /// Blobs that could not be removed, with the reason; they count as remaining.
    pub failed: Vec<(BlobId, String)>,
}

/// A directory of blobs named by their hash. Safe to share between threads; all methods
/// do blocking file IO, so async callers run them in `spawn_blocking`.
#[derive(Debug)]
pub struct ArtifactStore {
    blobs: PathBuf,
}

impl ArtifactStore {
    /// Open (creating if needed) the store under `dir`, removing temporary files a crash left.
    ///
    /// Only one `ArtifactStore` may be open per directory: opening removes every temporary file,
    /// including those of another store still writing.
    pub fn open(dir: impl AsRef<Path>) -> Result<ArtifactStore, OpenStoreError> {
        let blobs = dir.as_ref().join("blobs");
        let fail = |source| OpenStoreError { path: blobs.clone(), source };
        fs::create_dir_all(blobs.join(SHA256_DIR)).map_err(fail)?;
        for entry in fs::read_dir(&blobs).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                tracing::info!(path = %entry.path().display(), "removing a temporary file left by a crash");
                fs::remove_file(entry.path()).map_err(fail)?;
            }
        }
        Ok(ArtifactStore { blobs })
    }

    /// The directory holding the blobs.
    pub fn blobs_dir(&self) -> &Path {
        &self.blobs
    }

    /// Store `bytes` as an artifact (BLAKE3), returning its id. Storing the same bytes again
    /// writes nothing.
    pub fn put(&self, bytes: &[u8]) -> Result<ArtifactId, PutError> {
        check_size(bytes.len() as u64, crate::store::MAX_ARTIFACT_BYTES)?;
        let id = ArtifactId(*blake3::hash(bytes).as_bytes());
        self.put_hashed(id.into(), bytes)?;
        Ok(id)
    }

    /// Store `bytes` only if they hash to `expected` (with `expected`'s hash); otherwise store
    /// nothing.
    pub fn put_expecting(&self, expected: impl Into<BlobId>, bytes: &[u8]) -> Result<(), PutError> {
        let expected = expected.into();
        check_size(bytes.len() as u64, expected.max_bytes())?;
        let mut hasher = Hasher::new(expected.kind());
        hasher.update(bytes);
        let actual = hasher.finalize();
        if actual != expected {
            return Err(PutError::HashMismatch { expected, actual });
        }
        self.put_hashed(actual, bytes)
    }

    fn put_hashed(&self, id: BlobId, bytes: &[u8]) -> Result<(), PutError> {
        // A blob of the right size is complete (it was renamed into place); one of another
        // size was damaged and is replaced.
        if self.size(id).ok() == Some(bytes.len() as u64) {
            return Ok(());
        }
        let mut writer = self.writer_for(id.kind())?;
        writer.write(bytes)?;
        writer.commit_expecting(id)
    }

    /// Start writing an artifact (BLAKE3) whose id is known only at the end (a fetch in
    /// chunks).
    pub fn writer(&self) -> Result<BlobWriter, PutError> {
        self.writer_for(HashKind::Blake3)
    }

    /// Start writing a blob named by a hash of `kind`, known only at the end.
    pub fn writer_for(&self, kind: HashKind) -> Result<BlobWriter, PutError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = self.blobs.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(BlobWriter {
                        blobs: self.blobs.clone(),
                        file,
                        path,
                        hasher: Hasher::new(kind),
                        limit: match kind {
                            HashKind::Blake3 => MAX_ARTIFACT_BYTES,
                            HashKind::Sha256 => crate::id::MAX_OCI_BLOB_BYTES,
                        },
                        written: 0,
                        committed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(PutError::Io { path, source }),
            }
        }
    }

    pub fn contains(&self, id: impl Into<BlobId>) -> bool {
        self.blob_path(id.into()).is_file()
    }

    /// Where the blob of `id` lives, if it is stored.
    pub fn path(&self, id: impl Into<BlobId>) -> Option<PathBuf> {
        let path = self.blob_path(id.into());
        path.is_file().then_some(path)
    }

    /// The whole blob, up to [`MAX_ARTIFACT_BYTES`] (larger ones are read by their path).
    pub fn read(&self, id: impl Into<BlobId>) -> Result<Bytes, ReadError> {
        let id = id.into();
        let size = self.size(id)?;
        if size > MAX_ARTIFACT_BYTES {
            return Err(ReadError::TooLarge { id, limit: MAX_ARTIFACT_BYTES });
        }
        self.read_range(id, 0, size)
    }

    /// Up to `len` bytes from `offset`; fewer when the artifact ends first. An offset equal to
    /// the size gives an empty range; a larger one is an error.
    pub fn read_range(&self, id: impl Into<BlobId>, offset: u64, len: u64) -> Result<Bytes, ReadError> {
        let id = id.into();
        let mut file = self.open_blob(id)?;
        let io = |source| ReadError::Io { id, source };
        let size = file.metadata().map_err(io)?.len();
        if offset > size {
            return Err(ReadError::OutOfRange { id, offset, size });
        }
        let len = len.min(size - offset).min(MAX_ARTIFACT_BYTES);
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        // `len` is at most MAX_ARTIFACT_BYTES, so it fits in usize on every supported target.
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(len).read_to_end(&mut buf).map_err(io)?;
        Ok(Bytes::from(buf))
    }

    pub fn size(&self, id: impl Into<BlobId>) -> Result<u64, ReadError> {
        let id = id.into();
        match fs::metadata(self.blob_path(id)) {
            Ok(meta) if meta.is_file() => Ok(meta.len()),
            Ok(_) => Err(ReadError::NotFound(id)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ReadError::NotFound(id)),
            Err(source) => Err(ReadError::Io { id, source }),
        }
    }

    /// Every stored blob, sorted by id. Files that are not blobs are ignored.
    pub fn list(&self) -> Result<Vec<BlobInfo>, ListError> {
        let mut out = Vec::new();
        self.list_dir(&self.blobs, |name| name.parse::<ArtifactId>().ok().map(BlobId::Blake3), &mut out)?;
        let sha256 = self.blobs.join(SHA256_DIR);
        let parse = |name: &str| format!("sha256:{name}").parse().ok().map(BlobId::Sha256);
        self.list_dir(&sha256, parse, &mut out)?;
        out.sort_by_key(|blob| blob.id);
        Ok(out)
    }

    fn list_dir(
        &self,
        dir: &Path,
        parse: impl Fn(&str) -> Option<BlobId>,
        out: &mut Vec<BlobInfo>,
    ) -> Result<(), ListError> {
        let fail = |source| ListError { path: dir.to_owned(), source };
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(fail(e)),
        };
        for entry in entries {
            let entry = entry.map_err(fail)?;
            let Some(id) = entry.file_name().to_str().and_then(&parse) else {
                continue;
            };
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Removed by a concurrent gc between the listing and now.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(fail(source)),
            };
            if meta.is_file() {
                out.push(BlobInfo { id, size: meta.len(), last_used: meta.modified().map_err(fail)? });
            }
        }
        Ok(())
    }

    /// Mark `id` as used at `when` (the caller's clock), protecting it from gc for a while.
    pub fn touch(&self, id: impl Into<BlobId>, when: SystemTime) -> Result<(), ReadError> {
        let id = id.into();
        // Setting explicit times needs ownership of the file, not write access to it.
        self.open_blob(id)?.set_modified(when).map_err(|source| ReadError::Io { id, source })
    }

    /// Re-hash the stored bytes of `id` and compare them with the id.
    pub fn verify(&self, id: impl Into<BlobId>) -> Result<(), VerifyError> {
        let id = id.into();
        let mut file = self.open_blob(id)?;
        let mut hasher = Hasher::new(id.kind());
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf).map_err(|source| ReadError::Io { id, source })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let actual = hasher.finalize();
        if actual != id {
            return Err(VerifyError::Corrupt { id, actual });
        }
        Ok(())
    }

    /// Remove the blob of `id`. Removing a blob that is not stored is not an error.
    pub fn remove(&self, id: impl Into<BlobId>) -> Result<(), ReadError> {
        let id = id.into();
        match fs::remove_file(self.blob_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ReadError::Io { id, source: e }),
            _ => Ok(()),
        }
    }

    /// Remove blobs not in `keep`: first those unused for at least `min_unused` before `now`,
    /// then, while the store holds more than `max_total_bytes`, the least recently used.
    /// Kept blobs are never removed, even when they alone exceed the cap.
    ///
    /// A blob being written concurrently is not yet listed, so it is safe; a blob read
    /// concurrently stays readable through an open file handle. A blob about to be used must
    /// be in `keep` (or freshly touched) to be sure it survives.
    pub fn gc(
        &self,
        keep: &BTreeSet<BlobId>,
        now: SystemTime,
        min_unused: Duration,
        max_total_bytes: u64,
    ) -> Result<GcReport, ListError> {
        let mut report = GcReport::default();
        let mut total: u64 = 0;
        let mut candidates = Vec::new();
        for blob in self.list()? {
            total += blob.size;
            if !keep.contains(&blob.id) {
                candidates.push(blob);
            }
        }
        // Least recently used first; ties broken by id so a pass is deterministic.
        candidates.sort_by_key(|blob| (blob.last_used, blob.id));
        let mut survivors = Vec::new();
        for blob in candidates {
            // A last-used time in the future (clock skew) counts as just used.
            let unused = now.duration_since(blob.last_used).unwrap_or(Duration::ZERO);
            if unused < min_unused {
                survivors.push(blob);
            } else if self.gc_remove(&blob, &mut report) {
                total -= blob.size;
                report.removed_unused.push(blob.id);
            }
        }
        for blob in survivors {
            if total <= max_total_bytes {
                break;
            }
            if self.gc_remove(&blob, &mut report) {
                total -= blob.size;
                report.removed_for_space.push(blob.id);
            }
        }
        report.remaining_bytes = total;
        Ok(report)
    }

    fn gc_remove(&self, blob: &BlobInfo, report: &mut GcReport) -> bool {
        match self.remove(blob.id) {
            Ok(()) => {
                report.freed_bytes += blob.size;
                true
            }
            Err(e) => {
                tracing::warn!(artifact = %blob.id, error = %e, "gc could not remove a blob");
                report.failed.push((blob.id, e.to_string()));
                false
            }
        }
    }

    /// Where the blob of `id` lives or would live.
    pub(crate) fn blob_path(&self, id: BlobId) -> PathBuf {
        match id {
            BlobId::Blake3(id) => self.blobs.join(id.to_string()),
            BlobId::Sha256(digest) => self.blobs.join(SHA256_DIR).join(digest.hex()),
        }
    }

    fn open_blob(&self, id: BlobId) -> Result<File, ReadError> {
        File::open(self.blob_path(id)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ReadError::NotFound(id),
            _ => ReadError::Io { id, source: e },
        })
    }
}

fn write_failed(path: &Path) -> impl FnOnce(io::Error) -> PutError {
    move |source| PutError::Io { path: path.to_owned(), source }
}

fn check_size(size: u64, limit: u64) -> Result<(), PutError> {
    if size > limit {
        return Err(PutError::TooLarge { size, limit });
    }
    Ok(())
}

/// A blob being written: bytes go to a temporary file and are hashed on the way. Dropping it
/// without committing removes the temporary file.
#[derive(Debug)]
pub struct BlobWriter {
    blobs: PathBuf,
    file: File,
    path: PathBuf,
    hasher: Hasher,
    /// The most bytes a blob of the writer's kind may hold.
    limit: u64,
    written: u64,
    committed: bool,
}

impl BlobWriter {
    /// Append `bytes`, refusing to grow past the limit of its kind ([`BlobId::max_bytes`]).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), PutError> {
        check_size(self.written + bytes.len() as u64, self.limit)?;
        self.file.write_all(bytes).map_err(|source| PutError::Io { path: self.path.clone(), source })?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Store the blob under the hash of what was written (local content, e.g. an archive
    /// being imported, whose name nobody announced) and return that name.
    pub fn commit(self) -> Result<BlobId, PutError> {
        let id = self.hasher.clone().finalize();
        self.commit_expecting(id)?;
        Ok(id)
    }

    /// Store the blob if its bytes hash to `expected`; otherwise discard it.
    pub fn commit_expecting(mut self, expected: impl Into<BlobId>) -> Result<(), PutError> {
        let expected = expected.into();
        let actual = self.hasher.clone().finalize();
        if actual != expected {
            return Err(PutError::HashMismatch { expected, actual });
        }
        let io = write_failed;
        self.file.sync_all().map_err(io(&self.path))?;
        let (dir, target) = match actual {
            BlobId::Blake3(id) => (self.blobs.clone(), self.blobs.join(id.to_string())),
            BlobId::Sha256(digest) => (self.blobs.join(SHA256_DIR), self.blobs.join(SHA256_DIR).join(digest.hex())),
        };
        fs::rename(&self.path, &target).map_err(io(&target))?;
        self.committed = true;
        // The rename is durable only once the directory is synced.
        File::open(&dir).and_then(|dir| dir.sync_all()).map_err(io(&dir))?;
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_removes_temporary_files_left_by_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let writer = store.writer().unwrap();
        let temp = writer.path.clone();
        std::mem::forget(writer);
        assert!(temp.exists());
        let id = store.put(b"kept").unwrap();
        drop(store);
        let store = ArtifactStore::open(dir.path()).unwrap();
        assert!(!temp.exists(), "a crash's temporary file survived open");
        assert_eq!(store.read(id).unwrap().as_ref(), b"kept");
    }

    #[test]
    fn a_dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let mut writer = store.writer().unwrap();
        writer.write(b"half").unwrap();
        drop(writer);
        assert_eq!(fs::read_dir(store.blobs_dir()).unwrap().flatten().filter(|e| e.path().is_file()).count(), 0);
    }

    #[test]
    fn a_writer_commits_only_the_expected_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let id = ArtifactId(*blake3::hash(b"abcdef").as_bytes());
        let mut writer = store.writer().unwrap();
        writer.write(b"abc").unwrap();
        writer.write(b"xyz").unwrap();
        assert!(matches!(writer.commit_expecting(id), Err(PutError::HashMismatch { .. })));
        assert!(!store.contains(id));
        assert_eq!(fs::read_dir(store.blobs_dir()).unwrap().flatten().filter(|e| e.path().is_file()).count(), 0);
        let mut writer = store.writer().unwrap();
        writer.write(b"abc").unwrap();
        writer.write(b"def").unwrap();
        writer.commit_expecting(id).unwrap();
        assert_eq!(store.read(id).unwrap().as_ref(), b"abcdef");
    }
}
