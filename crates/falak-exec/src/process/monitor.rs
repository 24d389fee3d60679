//! One tokio task per running attempt: it owns the child, enforces the timeout, escalates
//! stops, kills what is left of the group when the main process ends, reads the tails and
//! publishes the `Exit`.
//!
//! Owning all of this in one place is what makes `wait` and `stop` cancel safe and the
//! handles droppable: the callers only send requests and watch for the result.

use std::fs::File;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::time::sleep_until;

use super::disk_watch::{self, DiskWatch};
use super::procfs;
use crate::clock::monotonic_now;
use crate::executor::{ExitWatch, Running};
use crate::exit::{Exit, ExitReason, Stats};
use crate::log::tail_text;
use crate::sandbox::SandboxGroup;
use crate::task::TaskSpec;

/// What the monitor takes over from `start`.
pub(super) struct Monitored {
    pub child: Child,
    pub spec: TaskSpec,
    pub started: Instant,
    /// The node's handles on stdout.log and stderr.log, for the tails: they still read the
    /// task's output if the task unlinked or replaced the files.
    pub logs: [File; 2],
    pub timeout_grace: Duration,
    /// Every process of the attempt, as its sandbox (cgroup) sees them.
    pub group: Arc<dyn SandboxGroup>,
    /// Measures the working directory, when the attempt has a disk limit.
    pub disk: Option<DiskWatch>,
}

/// The handle `ProcessExecutor::start` returns.
#[derive(Debug)]
pub(super) struct ProcessRunning {
    task_id: String,
    attempt: u32,
    pid: u32,
    started: Instant,
    /// Stop requests, by grace period.
    stop: mpsc::UnboundedSender<Duration>,
    exit: ExitWatch,
    group: Arc<dyn SandboxGroup>,
}

impl ProcessRunning {
    pub(super) fn spawn(monitored: Monitored) -> Arc<ProcessRunning> {
        let (stop_tx, stop_rx) = mpsc::unbounded_channel();
        let (exit_tx, exit) = ExitWatch::channel();
        // The pid is there until the child is reaped, which only the monitor does.
        let pid = monitored.child.id().unwrap_or_default();
        let running = Arc::new(ProcessRunning {
            task_id: monitored.spec.task_id.clone(),
            attempt: monitored.spec.attempt,
            pid,
            started: monitored.started,
            stop: stop_tx,
            exit,
            group: monitored.group.clone(),
        });
        tracing::debug!(task = %running.task_id, attempt = running.attempt, pid, "task started");
        // The guard is made here, not inside the task: a runtime shutting down before the task
        // is first polled drops the future, and with it the guard, which kills the group.
        let guard = KillGroupOnDrop { pgid: Some(pid), group: Some(monitored.group.clone()) };
        tokio::spawn(monitor(monitored, pid, stop_rx, exit_tx, guard));
        running
    }
}

impl Running for ProcessRunning {
    fn task_id(&self) -> &str {
        &self.task_id
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn wait(&self) -> BoxFuture<'_, Exit> {
        Box::pin(self.exit.wait())
    }

    fn try_exit(&self) -> Option<Exit> {
        self.exit.get()
    }

    fn stop(&self, grace: Duration) -> BoxFuture<'_, Exit> {
        // After the exit the monitor is gone and the request goes nowhere, as it should.
        let _ = self.stop.send(grace);
        Box::pin(self.exit.wait())
    }

    fn stats(&self) -> BoxFuture<'_, Stats> {
        Box::pin(async move {
            if let Some(exit) = self.exit.get() {
                return Stats { elapsed: exit.duration, rss_bytes: None, processes: Some(0) };
            }
            let elapsed = monotonic_now().saturating_duration_since(self.started);
            let (pgid, group) = (self.pid, self.group.clone());
            let usage = tokio::task::spawn_blocking(move || {
                // The cgroup counts every process, also those that left the process group.
                group.usage().unwrap_or_else(|| {
                    let usage = procfs::group_usage(pgid);
                    (usage.processes, Some(usage.rss_bytes))
                })
            })
            .await
            .ok();
            Stats { elapsed, rss_bytes: usage.and_then(|u| u.1), processes: usage.map(|u| u.0) }
        })
    }
}

async fn monitor(
    mut monitored: Monitored,
    pgid: u32,
    mut stop_rx: mpsc::UnboundedReceiver<Duration>,
    exit_tx: watch::Sender<Option<Exit>>,
    mut guard: KillGroupOnDrop,
) {
    // If the runtime drops this task (the node is shutting down), `guard` takes the task down
    // with it: a task nobody watches would run on unaccounted while its lease moves elsewhere.
    let timeout = monitored.spec.timeout;
    let timeout_at = timeout.map(|t| tokio::time::Instant::now() + t);
    // Why we are ending the task, once we are; `None` while it runs on its own.
    let mut ending: Option<ExitReason> = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut stop_open = true;
    let mut disk = monitored.disk.take();
    let status = loop {
        tokio::select! {
            status = monitored.child.wait() => break status,
            () = sleep_until(timeout_at.unwrap_or_else(far_future)), if ending.is_none() && timeout_at.is_some() => {
                ending = timeout.map(ExitReason::TimedOut);
                terminate(pgid, &mut kill_at, monitored.timeout_grace);
            }
            () = sleep_until(kill_at.unwrap_or_else(far_future)), if kill_at.is_some() => {
                signal_group(pgid, libc::SIGKILL);
                // And whatever left the group: the cgroup holds it still.
                let group = monitored.group.clone();
                tokio::task::spawn_blocking(move || group.kill());
                kill_at = None;
            }
            reason = over_disk(&mut disk), if ending.is_none() && disk.is_some() => {
                tracing::info!(task = %monitored.spec.task_id, pid = pgid, ?reason, "stopping a task for disk");
                ending = Some(reason);
                // At once: every second of grace is more disk.
                terminate(pgid, &mut kill_at, Duration::ZERO);
            }
            request = stop_rx.recv(), if stop_open => match request {
                Some(grace) => {
                    ending.get_or_insert(ExitReason::Stopped);
                    terminate(pgid, &mut kill_at, grace);
                }
                // Every handle is gone: the task runs on, still under its timeout.
                None => stop_open = false,
            },
        }
    };
    // The main process is gone, but what it started may not be: a task leaves nothing behind.
    // While any member lives the kernel cannot reuse the group id, so this reaches only the
    // task's processes; if none is left, reuse would need the pid counter to wrap around in
    // the microseconds since the reap. The cgroup's teardown below reaches the rest, also
    // processes that left the group.
    signal_group(pgid, libc::SIGKILL);
    guard.pgid = None;
    let duration = monotonic_now().saturating_duration_since(monitored.started);

    drop(disk);

    let Monitored { spec, logs, group, .. } = monitored;
    guard.group = None;
    let tail_bytes = spec.output_tail_bytes;
    let failed = status.as_ref().is_ok_and(|s| !s.success());
    let (stopped, limits, workdir) = (ending.clone(), spec.limits, spec.workdir);
    let task_id = spec.task_id;
    let finished = tokio::task::spawn_blocking(move || {
        // Read before the teardown removes the counters.
        let memory_kill = group.memory_kill();
        group.teardown();
        let stdout_tail = tail_or_note(&logs[0], tail_bytes);
        let stderr_tail = tail_or_note(&logs[1], tail_bytes);
        // The kernel's memory kill says why by itself.
        let failed = failed && memory_kill.is_none();
        let disk = disk_watch::settle(stopped.as_ref(), failed, &limits, &workdir, &logs);
        (memory_kill, stdout_tail, stderr_tail, disk)
    })
    .await;
    let (memory_kill, stdout_tail, stderr_tail, disk) = finished.unwrap_or_default();
    let ending = ending.or(disk);
    let exit = match status {
        Ok(status) => Exit {
            // The kernel's OOM killer sends SIGKILL: without this the task's record would only
            // say "killed by signal SIGKILL".
            reason: match (ending, memory_kill) {
                (Some(ending), _) => ending,
                (None, Some(limit_bytes)) if !status.success() => ExitReason::MemoryLimit { limit_bytes },
                (None, _) => ExitReason::Exited,
            },
            code: status.code(),
            signal: status.signal(),
            duration,
            stdout_tail,
            stderr_tail,
        },
        Err(e) => Exit {
            duration,
            ..Exit::without_output(ExitReason::Lost(format!("cannot wait for the task's process: {e}")))
        },
    };
    tracing::debug!(task = %task_id, pid = pgid, reason = ?exit.reason, code = ?exit.code, signal = ?exit.signal, "task exited");
    exit_tx.send_replace(Some(exit));
}

/// Kills the group, and tears its sandbox down, when dropped while still armed.
struct KillGroupOnDrop {
    pgid: Option<u32>,
    group: Option<Arc<dyn SandboxGroup>>,
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            signal_group(pgid, libc::SIGKILL);
        }
        // Blocking, but only while the runtime shuts down, and briefly: a few control files.
        if let Some(group) = self.group.take() {
            group.teardown();
        }
    }
}

/// SIGTERM the group now; SIGKILL it after `grace` (or sooner if a kill is already due).
fn terminate(pgid: u32, kill_at: &mut Option<tokio::time::Instant>, grace: Duration) {
    signal_group(pgid, libc::SIGTERM);
    let at = tokio::time::Instant::now() + grace;
    *kill_at = Some(kill_at.map_or(at, |due| due.min(at)));
}

/// Signal every process in the group. A group that is already gone is not an error.
fn signal_group(pgid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else { return };
    if pgid <= 1 {
        // Never signal "every process" (0 is our own group; 1 is init's): a bug upstream.
        debug_assert!(false, "refusing to signal process group {pgid}");
        return;
    }
    // SAFETY: killpg takes plain integers; the worst it can do is fail.
    if unsafe { libc::killpg(pgid, signal) } == -1 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(pgid, signal, %error, "cannot signal a task's process group");
        }
    }
}

fn tail_or_note(file: &File, max_bytes: usize) -> String {
    tail_text(file, max_bytes).unwrap_or_else(|e| format!("(cannot read the output: {e})"))
}

/// The disk watch's verdict, or never when there is no watch.
async fn over_disk(disk: &mut Option<DiskWatch>) -> ExitReason {
    match disk {
        Some(watch) => watch.over().await,
        None => std::future::pending().await,
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}
