//! How a task attempt ended, and what a running one is using.

use std::time::Duration;

use falak_core::job::TaskReport;

/// The end of one task attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub reason: ExitReason,
    /// The exit code when the task's main process exited on its own.
    pub code: Option<i32>,
    /// The signal that killed the task's main process, if one did.
    pub signal: Option<i32>,
    /// From start to exit, as measured by the executor.
    pub duration: Duration,
    /// The last `output_tail_bytes` of stdout and stderr (lossy UTF-8, cut on a character
    /// boundary); the whole output stays in the attempt's log files.
    pub stdout_tail: String,
    pub stderr_tail: String,
}

/// Why a task attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The task's main process exited or was killed by a signal nobody in Falak sent.
    Exited,
    /// The spec's timeout passed; the executor killed the whole task.
    TimedOut(Duration),
    /// [`Running::stop`](crate::Running::stop) ended it.
    Stopped,
    /// The kernel killed the task (some of its processes, the main one among them) because
    /// its cgroup went over its memory limit, in bytes.
    MemoryLimit { limit_bytes: u64 },
    /// The executor stopped the task because its working directory (logs included) grew past
    /// its disk limit ([`Limits::disk_bytes`](crate::Limits::disk_bytes)), in bytes; or the
    /// kernel did, when one file reached it (`RLIMIT_FSIZE`, `SIGXFSZ`).
    DiskLimit { limit_bytes: u64 },
    /// The executor stopped the task because its working directory could not be measured
    /// against its disk limit: too many entries, too deep, or unreadable to the node
    /// ([`disk::measure`](crate::disk::measure)).
    DiskUnmeasurable { limit_bytes: u64, reason: String },
    /// The executor stopped the task because the node's free disk went under its reserve
    /// while this task was the largest still growing (`disk::DiskReserve`).
    DiskReserve { reserve_bytes: u64, free_bytes: u64 },
    /// The task never ran. The process executor reports start failures as a
    /// [`StartError`](crate::StartError) instead; backends that learn of a failure only after
    /// `start` returned (a container whose init fails) report it here.
    FailedToStart(String),
    /// The executor lost track of the task and cannot say how it ended.
    Lost(String),
}

impl Exit {
    /// An attempt that never ran, e.g. from a [`StartError`](crate::StartError), so the node
    /// can turn every outcome into a report the same way.
    pub fn failed_to_start(error: impl std::fmt::Display) -> Exit {
        Exit::without_output(ExitReason::FailedToStart(error.to_string()))
    }

    pub(crate) fn without_output(reason: ExitReason) -> Exit {
        Exit {
            reason,
            code: None,
            signal: None,
            duration: Duration::ZERO,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
        }
    }

    /// The task exited on its own with code 0.
    pub fn succeeded(&self) -> bool {
        self.reason == ExitReason::Exited && self.code == Some(0)
    }

    /// Why the attempt did not run to a normal exit, in words for the task's record; `None`
    /// when it exited with a code (zero or not: the code says it all).
    pub fn error(&self) -> Option<String> {
        match &self.reason {
            ExitReason::Exited => self.signal.map(|s| format!("killed by signal {}", signal_name(s))),
            ExitReason::TimedOut(after) => Some(format!("timed out after {} and was killed", humantime_secs(*after))),
            ExitReason::Stopped => Some("stopped by the node".to_owned()),
            ExitReason::MemoryLimit { limit_bytes } => {
                Some(format!("killed by its memory limit ({limit_bytes} bytes)"))
            }
            ExitReason::DiskLimit { limit_bytes } => Some(format!(
                "killed by its disk limit ({limit_bytes} bytes): its working directory grew past resources.disk"
            )),
            ExitReason::DiskUnmeasurable { limit_bytes, reason } => Some(format!(
                "killed by its disk limit ({limit_bytes} bytes): its working directory cannot be measured against \
                 resources.disk: {reason}"
            )),
            ExitReason::DiskReserve { reserve_bytes, free_bytes } => Some(format!(
                "killed to keep the node's disk reserve: {free_bytes} bytes were free, under the {reserve_bytes} \
                 the node keeps for its ledger, and this task was the largest still writing"
            )),
            ExitReason::FailedToStart(message) => Some(format!("failed to start: {message}")),
            ExitReason::Lost(message) => Some(format!("lost: {message}")),
        }
    }

    /// The ledger's view of this exit.
    pub fn to_report(&self) -> TaskReport {
        TaskReport {
            exit_code: self.code,
            error: self.error(),
            duration_ms: self.duration.as_millis().min(u128::from(u64::MAX)) as u64,
            stdout_tail: self.stdout_tail.clone(),
            stderr_tail: self.stderr_tail.clone(),
        }
    }
}

/// What a running task is using.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    /// Since the task started (up to its exit, once it has exited).
    pub elapsed: Duration,
    /// Memory in use: charged to the task's cgroup when it has one (page cache included),
    /// else resident memory summed over its process group; `None` when the executor cannot see.
    pub rss_bytes: Option<u64>,
    /// How many live processes the task has (0 once it has exited).
    pub processes: Option<u32>,
}

/// `SIGKILL (9)` for the signals tasks meet, the number for the rest.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return signal.to_string(),
    };
    format!("{name} ({signal})")
}

fn humantime_secs(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) { format!("{}s", millis / 1000) } else { format!("{}ms", millis) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(reason: ExitReason, code: Option<i32>, signal: Option<i32>) -> Exit {
        Exit { code, signal, ..Exit::without_output(reason) }
    }

    #[test]
    fn error_says_why_an_attempt_did_not_exit_normally() {
        assert_eq!(exit(ExitReason::Exited, Some(0), None).error(), None);
        assert_eq!(exit(ExitReason::Exited, Some(3), None).error(), None);
        assert_eq!(exit(ExitReason::Exited, None, Some(9)).error().unwrap(), "killed by signal SIGKILL (9)");
        assert_eq!(
            exit(ExitReason::TimedOut(Duration::from_secs(5)), None, Some(15)).error().unwrap(),
            "timed out after 5s and was killed"
        );
        assert_eq!(
            exit(ExitReason::TimedOut(Duration::from_millis(250)), None, Some(9)).error().unwrap(),
            "timed out after 250ms and was killed"
        );
        assert_eq!(Exit::failed_to_start("no such file").error().unwrap(), "failed to start: no such file");
        assert_eq!(
            exit(ExitReason::MemoryLimit { limit_bytes: 64 << 20 }, None, Some(9)).error().unwrap(),
            "killed by its memory limit (67108864 bytes)"
        );
        assert_eq!(
            exit(ExitReason::DiskLimit { limit_bytes: 32 << 20 }, None, Some(9)).error().unwrap(),
            "killed by its disk limit (33554432 bytes): its working directory grew past resources.disk"
        );
        assert_eq!(
            exit(
                ExitReason::DiskUnmeasurable {
                    limit_bytes: 1 << 20,
                    reason: "it holds more than 1000000 files and directories".into()
                },
                None,
                Some(9)
            )
            .error()
            .unwrap(),
            "killed by its disk limit (1048576 bytes): its working directory cannot be measured against \
             resources.disk: it holds more than 1000000 files and directories"
        );
        assert_eq!(
            exit(ExitReason::DiskReserve { reserve_bytes: 1 << 30, free_bytes: 1000 }, None, Some(9)).error().unwrap(),
            "killed to keep the node's disk reserve: 1000 bytes were free, under the 1073741824 the node keeps for \
             its ledger, and this task was the largest still writing"
        );
    }

    #[test]
    fn report_carries_code_error_and_tails() {
        let mut exit = exit(ExitReason::Exited, Some(0), None);
        exit.duration = Duration::from_millis(1500);
        exit.stdout_tail = "out".into();
        let report = exit.to_report();
        assert!(report.succeeded());
        assert_eq!(report.duration_ms, 1500);
        assert_eq!(report.stdout_tail, "out");
    }
}
