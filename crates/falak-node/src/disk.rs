//! The node's disk reserve: free space kept on the data dir's filesystem so that the ledger
//! can always commit, whatever its tasks write.
//!
//! The executor enforces it per attempt (`falak_exec::disk`): it starts nothing under the
//! reserve and stops the attempt growing most when free space drops under it. The main loop
//! checks it every [`CHECK_EVERY`] and, while the disk is under it, claims no new tasks, so
//! other nodes take them instead of this node failing them one by one.

use std::path::Path;
use std::time::Duration;

use falak_core::resources::format_bytes;
use falak_exec::DiskReserve;
use falak_exec::disk::FsSpace;

/// How often the main loop checks the reserve.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The reserve on `data_dir`'s filesystem: `configured` bytes, else the default for the
/// filesystem's size (1 GiB or 5% of it, whichever is smaller). Logs what it chose, and warns
/// when the disk is under it already. Blocking (one `statvfs`).
pub fn reserve(data_dir: &Path, configured: Option<u64>) -> DiskReserve {
    let space = FsSpace::of(data_dir);
    let bytes = match (configured, &space) {
        (Some(bytes), _) => bytes,
        (None, Ok(space)) => DiskReserve::default_bytes(*space),
        (None, Err(_)) => falak_exec::disk::DEFAULT_RESERVE_BYTES,
    };
    let reserve = DiskReserve { path: data_dir.to_owned(), bytes };
    match space {
        Ok(space) => tracing::info!(
            reserve = %format_bytes(bytes),
            free = %format_bytes(space.free_bytes),
            size = %format_bytes(space.total_bytes),
            "disk reserve kept for the ledger on the data dir's filesystem"
        ),
        Err(error) => tracing::warn!(%error, dir = %data_dir.display(), "cannot read the data dir's filesystem size"),
    }
    if let Err(below) = reserve.check() {
        tracing::warn!(error = %below, "taking no work until there is room");
    }
    reserve
}
