//! The one clock. Everything else gets `now` passed in.

use std::time::{SystemTime, UNIX_EPOCH};

use falak_core::Millis;

/// Milliseconds since the Unix epoch: the `now` carried by ledger commands.
#[allow(clippy::disallowed_methods, reason = "this module is the node's one clock")]
pub fn now_millis() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}

/// A monotonic instant for measuring durations inside the daemon.
#[allow(clippy::disallowed_methods, reason = "this module is the node's one clock")]
pub fn instant() -> std::time::Instant {
    std::time::Instant::now()
}

/// Wall-clock time, for certificate validity.
#[allow(clippy::disallowed_methods, reason = "this module is the node's one clock")]
pub fn system_now() -> SystemTime {
    SystemTime::now()
}
