//! The seam where resource isolation beyond rlimits plugs into the process executor.
//!
//! Today only [`NoSandbox`] exists. A cgroup v2 implementation (a later issue) creates one
//! cgroup per attempt with `cpu.max` and `memory.max` from [`Limits`](crate::Limits), hands
//! back its `cgroup.procs` so the child joins it before `exec` (no window in which an early
//! `fork` escapes), and on teardown kills whatever is left with `cgroup.kill` and removes it.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use crate::task::TaskSpec;

/// Isolation around one task attempt, set up before its process starts and torn down after
/// its process group is gone.
pub trait Sandbox: Send + Sync + fmt::Debug {
    /// Prepare isolation for `spec`. Called in the node before the task's process exists; an
    /// error fails the start and the executor calls [`Sandbox::teardown`].
    fn setup(&self, spec: &TaskSpec) -> Result<SandboxSetup, SandboxError>;

    /// Release what `setup` made: kill what is left in it, remove it. Called once the task's
    /// main process has been reaped and its process group killed. Must tolerate a `setup` that
    /// failed half way.
    fn teardown(&self, spec: &TaskSpec);
}

/// What the child process must do, before `exec`, to enter the sandbox.
#[derive(Debug, Default)]
pub struct SandboxSetup {
    /// A file, open for writing, to which the child writes `0` before `exec` — a cgroup's
    /// `cgroup.procs`, so the task starts inside it. Closed in the node after the start.
    pub join: Option<OwnedFd>,
}

/// Why a sandbox could not be set up; the task was not started.
#[derive(Debug, thiserror::Error)]
#[error("{what} at {path}: {source}")]
pub struct SandboxError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// No isolation beyond what the process executor always applies (its own user, process group,
/// rlimits, no_new_privs, a private working directory, only stdio file descriptors).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSandbox;

impl Sandbox for NoSandbox {
    fn setup(&self, _spec: &TaskSpec) -> Result<SandboxSetup, SandboxError> {
        Ok(SandboxSetup::default())
    }

    fn teardown(&self, _spec: &TaskSpec) {}
}
