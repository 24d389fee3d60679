//! The disk side of an attempt's monitor: measure its working directory every
//! `DiskConfig::check_every` and say when the attempt must stop for disk.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use std::pin::Pin;

use tokio::task::JoinHandle;
use tokio::time::{Duration, Sleep, sleep};

use crate::disk::{DirUsage, DiskBook, DiskConfig, DiskReserve, FsSpace, MeasureError, measure};
use crate::executor::StartError;
use crate::exit::ExitReason;
use crate::log::Stream;
use crate::task::{Limits, TaskSpec};

/// A walk that fails this many times in a row stops the attempt: once may be a race with the
/// task (a directory replaced mid-walk), three times is a directory the node cannot measure.
const FAILED_WALKS_TO_STOP: u32 = 3;

/// Once the attempt's processes are gone: whether it ended for disk without the watch saying
/// so, and if it ended for disk either way, give back what it used
/// ([`shrink_after_disk_stop`](crate::disk::shrink_after_disk_stop)). Blocking.
///
/// `stopped` is why the monitor ended it, `failed` whether its main process did not exit 0.
/// A file that reached `RLIMIT_FSIZE` got the kernel's `SIGXFSZ`, perhaps in a child whose
/// parent then exited with 153; when that limit is the disk limit, one last walk that finds the
/// directory at its limit says the attempt ended for disk as surely as a walk would have.
pub(super) fn settle(
    stopped: Option<&ExitReason>,
    failed: bool,
    limits: &Limits,
    workdir: &Path,
    logs: &[File; 2],
) -> Option<ExitReason> {
    let found = match (stopped, limits.disk_bytes) {
        (
            Some(ExitReason::DiskLimit { .. } | ExitReason::DiskUnmeasurable { .. } | ExitReason::DiskReserve { .. }),
            _,
        ) => None,
        (None, Some(limit_bytes))
            if failed
                && limits.file_size_limit() == Some(limit_bytes)
                && measure(workdir).is_ok_and(|usage| usage.bytes >= limit_bytes) =>
        {
            Some(ExitReason::DiskLimit { limit_bytes })
        }
        _ => return None,
    };
    let [stdout, stderr] = logs;
    crate::disk::shrink_after_disk_stop(
        workdir,
        &[(Stream::Stdout.file_name(), stdout), (Stream::Stderr.file_name(), stderr)],
    );
    found
}

/// Refuse to start an attempt while the node's disk is under its reserve.
pub(super) async fn check_reserve(spec: &TaskSpec, config: &DiskConfig) -> Result<(), StartError> {
    let Some(reserve) = config.reserve.clone() else { return Ok(()) };
    let checked = tokio::task::spawn_blocking(move || reserve.check()).await;
    // The blocking task panicked: start, as without a reserve; the monitor's checks still run.
    checked.unwrap_or(Ok(())).map_err(|source| StartError::DiskReserve { task_id: spec.task_id.clone(), source })
}

/// One attempt's disk accounting, owned by its monitor. Leaves the executor's book when
/// dropped.
pub(super) struct DiskWatch {
    workdir: PathBuf,
    limit_bytes: u64,
    check_every: Duration,
    reserve: Option<DiskReserve>,
    book: DiskBook,
    key: u64,
    /// Until the next walk; kept, like a walk in flight, across cancelled calls of
    /// [`DiskWatch::over`].
    next: Pin<Box<Sleep>>,
    walking: Option<JoinHandle<Walked>>,
    failed_walks: u32,
}

struct Walked {
    usage: Result<DirUsage, MeasureError>,
    /// The reserve's filesystem, when there is a reserve.
    space: Option<io::Result<FsSpace>>,
    /// How long the walk took: a fact about the host, measured on the executor's clock.
    took: Duration,
}

impl DiskWatch {
    /// The watch of `spec`'s attempt, when it has a disk limit.
    pub(super) fn new(spec: &TaskSpec, config: &DiskConfig) -> Option<DiskWatch> {
        let limit_bytes = spec.limits.disk_bytes?;
        let book = config.book.clone();
        let key = book.enter();
        Some(DiskWatch {
            workdir: spec.workdir.clone(),
            limit_bytes,
            check_every: config.check_every,
            reserve: config.reserve.clone(),
            book,
            key,
            next: Box::pin(sleep(config.check_every)),
            walking: None,
            failed_walks: 0,
        })
    }

    /// Resolves when the attempt must stop for disk, with the reason. Cancel safe: a walk in
    /// flight is picked up by the next call, and the schedule is kept.
    pub(super) async fn over(&mut self) -> ExitReason {
        loop {
            if self.walking.is_none() {
                self.next.as_mut().await;
                let workdir = self.workdir.clone();
                let reserve = self.reserve.as_ref().map(|r| r.path.clone());
                self.walking = Some(tokio::task::spawn_blocking(move || {
                    let began = crate::clock::monotonic_now();
                    let usage = measure(&workdir);
                    let space = reserve.map(|path| FsSpace::of(&path));
                    Walked { usage, space, took: crate::clock::monotonic_now().saturating_duration_since(began) }
                }));
            }
            let walked = self.walking.as_mut().expect("a walk is in flight").await;
            self.walking = None;
            // A walk that takes long spaces the next one out: at most a fifth of a core.
            let took = walked.as_ref().map_or(Duration::ZERO, |w| w.took);
            self.next = Box::pin(sleep(self.check_every.max(took.saturating_mul(4))));
            // The blocking task panicked: measure again at the next turn.
            let Ok(walked) = walked else { continue };
            if let Some(reason) = self.judge(walked) {
                return reason;
            }
        }
    }

    fn judge(&mut self, walked: Walked) -> Option<ExitReason> {
        let usage = match walked.usage {
            Ok(usage) => usage,
            Err(error) => {
                self.failed_walks += 1;
                let limit_bytes = self.limit_bytes;
                return (self.failed_walks >= FAILED_WALKS_TO_STOP || !matches!(error, MeasureError::Read { .. }))
                    .then(|| ExitReason::DiskUnmeasurable { limit_bytes, reason: error.to_string() });
            }
        };
        self.failed_walks = 0;
        if usage.bytes > self.limit_bytes {
            return Some(ExitReason::DiskLimit { limit_bytes: self.limit_bytes });
        }
        self.book.record(self.key, usage.bytes);
        let (Some(reserve), Some(Ok(space))) = (&self.reserve, walked.space) else { return None };
        (space.free_bytes < reserve.bytes && self.book.largest_grower() == Some(self.key))
            .then_some(ExitReason::DiskReserve { reserve_bytes: reserve.bytes, free_bytes: space.free_bytes })
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        self.book.leave(self.key);
    }
}
