//! The `Executor` trait every backend implements, the handle to a running task and the errors
//! of preparing and starting one.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::exit::{Exit, ExitReason, Stats};
use crate::log::{LogChunk, ReadLogError, Stream};
use crate::sandbox::SandboxError;
use crate::task::{InvalidSpecError, TaskSpec};

/// Runs task attempts on this node: processes today, containers and function instances later.
///
/// Object safe: the node holds an `Arc<dyn Executor>` per capsule kind. Every method may be
/// called concurrently for different attempts.
pub trait Executor: Send + Sync + 'static {
    /// A short name for logs and metrics: `process`, `fake`, later `container`, `function`.
    fn kind(&self) -> &'static str;

    /// Get ready to start `spec`: validate it, create its working directory and (in later
    /// backends) fetch its artifact or build its snapshot. Optional — `start` does whatever
    /// `prepare` would have — but lets the node do slow work before it reports the task
    /// starting. Idempotent.
    fn prepare<'a>(&'a self, spec: &'a TaskSpec) -> BoxFuture<'a, Result<(), PrepareError>>;

    /// Start the attempt. On `Ok` the task is running and the handle is the only way to wait
    /// for it or stop it; on `Err` nothing is running.
    fn start(&self, spec: TaskSpec) -> BoxFuture<'_, Result<Arc<dyn Running>, StartError>>;

    /// Read one of the logs of the attempt that ran in `workdir` (running or exited): from
    /// `offset` when given, otherwise the last `max_bytes`. At most `max_bytes`
    /// (capped at [`MAX_LOG_READ_BYTES`](crate::MAX_LOG_READ_BYTES)) are returned.
    fn read_log<'a>(
        &'a self,
        workdir: &'a Path,
        stream: Stream,
        offset: Option<u64>,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<LogChunk, ReadLogError>>;
}

/// A started task attempt.
///
/// Shared (`Arc`): one holder may wait while another stops. Dropping every handle does not
/// stop the task: its timeout still applies and its exit is still collected, so a forgotten
/// handle never leaves a zombie or an unbounded process behind.
pub trait Running: Send + Sync + fmt::Debug {
    /// The spec's task id.
    fn task_id(&self) -> &str;

    /// The attempt number.
    fn attempt(&self) -> u32;

    /// The task's main process id, which is also its process group id, when it is a host
    /// process.
    fn pid(&self) -> Option<u32>;

    /// Wait for the attempt to end. Cancel safe, and every call returns the same `Exit`.
    fn wait(&self) -> BoxFuture<'_, Exit>;

    /// The exit, if the attempt has ended.
    fn try_exit(&self) -> Option<Exit>;

    /// Ask the whole task to stop: SIGTERM to every process, SIGKILL to whatever is left after
    /// `grace`, then wait for the exit (reason `Stopped`, unless it had already ended). The
    /// escalation runs even if this future is dropped; stopping an ended task only returns
    /// its exit.
    fn stop(&self, grace: Duration) -> BoxFuture<'_, Exit>;

    /// What the task is using now.
    fn stats(&self) -> BoxFuture<'_, Stats>;
}

/// Why an attempt could not be prepared; nothing is running, and a working directory may have
/// been created.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    InvalidSpec(#[from] InvalidSpecError),
    #[error(
        "cannot create the working directory {path} for task {task_id}: {source}; check the node's data directory is writable"
    )]
    Workdir { task_id: String, path: PathBuf, source: io::Error },
    #[error(
        "cannot run task {task_id} as uid {uid}: the node runs as uid {node_uid} and only root can switch users; run the node as root or leave run_as unset"
    )]
    RunAs { task_id: String, uid: u32, node_uid: u32 },
    #[error("cannot copy the capsule's code from {path} into the working directory of task {task_id}: {source}")]
    Code { task_id: String, path: PathBuf, source: io::Error },
    /// A backend-specific failure (artifact fetch, snapshot build, a scripted failure in the fake).
    #[error("cannot prepare task {task_id}: {message}")]
    Backend { task_id: String, message: String },
}

/// Why an attempt did not start; nothing of it is running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// The program is not in the task's `PATH` (or, for a path, does not exist).
    #[error(
        "cannot start task {task_id}: command {program:?}: no such file or directory (searched PATH={path}); check the capsule's command"
    )]
    CommandNotFound { task_id: String, program: String, path: String },
    #[error(
        "cannot start task {task_id}: command {program:?}: permission denied for uid {uid}; make it executable and readable by that user"
    )]
    PermissionDenied { task_id: String, program: String, uid: u32 },
    #[error("cannot write the stdin or log files of task {task_id} in {path}: {source}")]
    Files { task_id: String, path: PathBuf, source: io::Error },
    #[error("cannot set up the sandbox of task {task_id}: {source}")]
    Sandbox { task_id: String, source: SandboxError },
    /// The task asked for no network, and this node cannot give it a network namespace.
    #[error(
        "cannot start task {task_id} without network: this node can create no namespaces, not even a user namespace (the node's log says why at start); allow unprivileged user namespaces or run the node as root, or give the task the host's network"
    )]
    Network { task_id: String },
    /// The node's disk is under its reserve; it starts nothing until there is room again.
    #[error("cannot start task {task_id}: {source}")]
    DiskReserve { task_id: String, source: crate::disk::BelowReserveError },
    #[error("cannot start task {task_id}: command {program:?}: {source}")]
    Spawn { task_id: String, program: String, source: io::Error },
    /// A backend-specific failure (a scripted failure in the fake, later runc's error).
    #[error("cannot start task {task_id}: {message}")]
    Backend { task_id: String, message: String },
}

/// The shared end of an attempt: set once by its monitor, read by any number of waiters.
#[derive(Debug, Clone)]
pub(crate) struct ExitWatch(watch::Receiver<Option<Exit>>);

impl ExitWatch {
    pub(crate) fn channel() -> (watch::Sender<Option<Exit>>, ExitWatch) {
        let (tx, rx) = watch::channel(None);
        (tx, ExitWatch(rx))
    }

    /// Cancel safe: each call waits on its own clone of the receiver.
    pub(crate) async fn wait(&self) -> Exit {
        let mut rx = self.0.clone();
        let exit = match rx.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone(),
            // The monitor is gone without a word: only a panic in it does that.
            Err(_) => None,
        };
        exit.unwrap_or_else(lost)
    }

    pub(crate) fn get(&self) -> Option<Exit> {
        self.0.borrow().clone()
    }
}

fn lost() -> Exit {
    Exit::without_output(ExitReason::Lost("the executor's monitor of the task ended without an exit status".into()))
}
