//! The task's output files, and reading them back without trusting their contents' owner.
//!
//! Output goes to `stdout.log` and `stderr.log` in the attempt's working directory rather than
//! through pipes, so a task that writes gigabytes can neither block on a full pipe nor make the
//! node buffer it. The directory belongs to the task's user, who may replace a log with a
//! symlink to a file only root can read, a hard link, or a FIFO that would block a reader. So
//! logs are opened with `O_NOFOLLOW | O_NONBLOCK` and must be regular files with one link.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The most bytes one `read_log` call returns, whatever it asks for.
pub const MAX_LOG_READ_BYTES: usize = 1 << 20;

/// One of a task's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The file the stream is written to, inside the attempt's working directory.
    pub const fn file_name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout.log",
            Stream::Stderr => "stderr.log",
        }
    }
}

/// A piece of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// Raw bytes: a chunk may end inside a UTF-8 character.
    pub data: Vec<u8>,
    /// Where `data` starts in the log.
    pub offset: u64,
    /// Pass as `offset` to read what follows (equal to `size` when the reader is caught up).
    pub next_offset: u64,
    /// The log's size when it was read; a running task's log keeps growing.
    pub size: u64,
}

/// Why a log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadLogError {
    #[error("no {file} in {workdir}: the attempt never started here or its files were removed")]
    NotFound { workdir: PathBuf, file: &'static str },
    #[error("refusing to read {path}: it is not a regular file with a single link (the task replaced its log)")]
    NotARegularFile { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Read a log of the attempt in `workdir`: from `offset` when given, else its last
/// `max_bytes`. Blocking; [`crate::Executor::read_log`] runs it off the async threads.
pub fn read_log(
    workdir: &Path,
    stream: Stream,
    offset: Option<u64>,
    max_bytes: usize,
) -> Result<LogChunk, ReadLogError> {
    let path = workdir.join(stream.file_name());
    let io_error = |source| ReadLogError::Io { path: path.clone(), source };
    let file = match open_log(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ReadLogError::NotFound { workdir: workdir.to_owned(), file: stream.file_name() });
        }
        // ELOOP is what O_NOFOLLOW gives for a symlink.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(ReadLogError::NotARegularFile { path }),
        Err(e) => return Err(io_error(e)),
    };
    let meta = file.metadata().map_err(io_error)?;
    if !meta.file_type().is_file() || meta.nlink() != 1 {
        return Err(ReadLogError::NotARegularFile { path });
    }
    let size = meta.len();
    let (start, end) = chunk_range(size, offset, max_bytes);
    let data = read_range(&file, start, end).map_err(io_error)?;
    let next_offset = start + data.len() as u64;
    Ok(LogChunk { data, offset: start, next_offset, size })
}

/// The byte range a read of a log of `size` bytes covers.
pub(crate) fn chunk_range(size: u64, offset: Option<u64>, max_bytes: usize) -> (u64, u64) {
    let max_bytes = max_bytes.min(MAX_LOG_READ_BYTES) as u64;
    let start = match offset {
        Some(offset) => offset.min(size),
        None => size.saturating_sub(max_bytes),
    };
    (start, size.min(start + max_bytes))
}

/// Open a log for reading without following a symlink or blocking on a FIFO.
pub(crate) fn open_log(path: &Path) -> io::Result<File> {
    File::options().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)
}

/// The last `max_bytes` of an open log as text: invalid UTF-8 replaced, a character cut at the
/// start dropped, and never more than `max_bytes` bytes.
pub(crate) fn tail_text(file: &File, max_bytes: usize) -> io::Result<String> {
    if max_bytes == 0 {
        return Ok(String::new());
    }
    let size = file.metadata()?.len();
    let data = read_range(file, size.saturating_sub(max_bytes as u64), size)?;
    // A tail that starts mid-character would begin with a replacement character: skip the
    // continuation bytes (at most three) instead.
    let skip = data.iter().take(3).take_while(|b| (**b & 0b1100_0000) == 0b1000_0000).count();
    let text = String::from_utf8_lossy(&data[skip..]);
    // Replacement characters are wider than the bytes they replace, so cut again.
    Ok(falak_core::job::tail(&text, max_bytes))
}

fn read_range(file: &File, start: u64, end: u64) -> io::Result<Vec<u8>> {
    let mut data = vec![0u8; end.saturating_sub(start) as usize];
    let mut filled = 0;
    while filled < data.len() {
        match file.read_at(&mut data[filled..], start + filled as u64) {
            Ok(0) => break, // Truncated under us: return what is there.
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    data.truncate(filled);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workdir_with(stdout: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stdout.log"), stdout).unwrap();
        dir
    }

    #[test]
    fn reads_from_an_offset_and_the_tail() {
        let dir = workdir_with(b"0123456789");
        let chunk = read_log(dir.path(), Stream::Stdout, Some(2), 3).unwrap();
        assert_eq!((chunk.data.as_slice(), chunk.offset, chunk.next_offset, chunk.size), (&b"234"[..], 2, 5, 10));
        let tail = read_log(dir.path(), Stream::Stdout, None, 4).unwrap();
        assert_eq!((tail.data.as_slice(), tail.offset, tail.next_offset), (&b"6789"[..], 6, 10));
        let past_end = read_log(dir.path(), Stream::Stdout, Some(99), 4).unwrap();
        assert_eq!((past_end.data.len(), past_end.next_offset), (0, 10));
    }

    #[test]
    fn a_missing_log_says_so() {
        let dir = workdir_with(b"");
        let err = read_log(dir.path(), Stream::Stderr, None, 10).unwrap_err();
        assert!(matches!(err, ReadLogError::NotFound { file: "stderr.log", .. }), "{err}");
    }

    #[test]
    fn a_log_replaced_by_a_symlink_or_hard_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root only").unwrap();
        std::os::unix::fs::symlink(&secret, dir.path().join("stdout.log")).unwrap();
        std::fs::hard_link(&secret, dir.path().join("stderr.log")).unwrap();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let err = read_log(dir.path(), stream, None, 100).unwrap_err();
            assert!(matches!(err, ReadLogError::NotARegularFile { .. }), "{err}");
        }
    }

    #[test]
    fn a_log_replaced_by_a_fifo_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = std::ffi::CString::new(dir.path().join("stdout.log").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let err = read_log(dir.path(), Stream::Stdout, None, 100).unwrap_err();
        assert!(matches!(err, ReadLogError::NotARegularFile { .. }), "{err}");
    }

    #[test]
    fn tail_text_cuts_on_a_character_boundary() {
        let dir = workdir_with("aé€z".as_bytes()); // 1 + 2 + 3 + 1 bytes
        let file = File::open(dir.path().join("stdout.log")).unwrap();
        assert_eq!(tail_text(&file, 4).unwrap(), "€z");
        assert_eq!(tail_text(&file, 3).unwrap(), "z"); // starts inside the euro sign
        assert_eq!(tail_text(&file, 100).unwrap(), "aé€z");
        assert_eq!(tail_text(&file, 0).unwrap(), "");
    }
}
