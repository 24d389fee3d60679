//! The executor's one clock: how long a real process has been running.
//!
//! Timers (timeouts, stop grace) use `tokio::time` so they follow the runtime; only the
//! duration of a host process is measured here, because it is a fact about the host, not
//! about any test's paused clock. The recording fake measures with `tokio::time` instead.

use std::time::Instant;

/// A monotonic instant, for [`Exit::duration`](crate::Exit::duration) of a host process.
#[allow(clippy::disallowed_methods, reason = "the process executor measures how long a host process ran")]
pub(crate) fn monotonic_now() -> Instant {
    Instant::now()
}
