//! Disk limits of a deployment's instances on this node (`resources.disk`, per instance).
//!
//! Every process of the deployment has `RLIMIT_FSIZE` at the limit ([`file_size_rlimit`]), and
//! every [`CHECK_EVERY`] the deployment measures each live instance's private directory
//! (`run/i<N>.tmp`, its `TMPDIR` and, as another user, its `HOME`): an instance over the limit
//! is replaced like a crashed one, with an `instance_failed` event naming the limit. The
//! deployment's log, which all its processes append to, is cut to its tail once it passes half
//! the limit, so it neither fills the disk nor trips `RLIMIT_FSIZE`. Under the node's disk
//! reserve no instance starts ([`below_reserve`]).
//!
//! Files an instance leaves in `run/` itself, outside its own directory, are not counted (the
//! instances of a deployment share that directory and its user); the reserve still bounds them.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use falak_exec::disk::{KEPT_LOG_BYTES, cut_to_tail, measure};
use falak_function::pool::InstanceId;
use falak_sandbox::Rlimit;

/// How often a deployment measures its instances.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The rlimit every process of a deployment with `limit_bytes` gets.
pub(super) fn file_size_rlimit(limit_bytes: u64) -> (Rlimit, u64) {
    (Rlimit::FileSize, limit_bytes)
}

/// Why an instance over its limit is replaced.
pub(super) fn reason(limit_bytes: u64) -> String {
    format!("killed by its disk limit ({limit_bytes} bytes): its files grew past resources.disk")
}

/// The instances (pool id, private dir) whose directory holds more than `limit_bytes` or
/// cannot be measured; and the log cut when over half the limit. Blocking.
pub(super) fn over_limit(instances: Vec<(InstanceId, PathBuf)>, limit_bytes: u64, log: &Path) -> Vec<InstanceId> {
    let over = instances
        .into_iter()
        .filter(|(_, dir)| measure(dir).map_or(true, |usage| usage.bytes > limit_bytes))
        .map(|(id, _)| id)
        .collect();
    cut_log(log, limit_bytes);
    over
}

fn cut_log(log: &Path, limit_bytes: u64) {
    let Ok(file) = File::options().read(true).write(true).custom_flags(libc::O_NOFOLLOW).open(log) else { return };
    let big = file.metadata().is_ok_and(|m| m.len() > limit_bytes / 2);
    if big && let Err(error) = cut_to_tail(&file, KEPT_LOG_BYTES.min(limit_bytes / 4)) {
        tracing::warn!(%error, log = %log.display(), "cannot cut a deployment's log");
    }
}

/// Why no instance may start now: the node's disk is under its reserve. Blocking.
pub(super) fn below_reserve(reserve: Option<&falak_exec::DiskReserve>) -> Option<String> {
    reserve?.check().err().map(|below| below.to_string())
}
