//! The seam where resource isolation beyond rlimits plugs into the process executor.
//!
//! [`CgroupSandbox`] gives each attempt its own cgroup (`falak_sandbox::cgroup`): memory, cpu
//! and pids limits from [`Limits`](crate::Limits), the child joins it before `exec` (no window
//! in which an early `fork` escapes), stop and cleanup kill everything in it — also processes
//! that left the process group — and the exit says when the kernel killed the task for its
//! memory limit. [`NoSandbox`] is for hosts without usable cgroups and for tests.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use falak_sandbox::{CgroupLimits, Cgroups, WorkloadCgroup};

use crate::task::TaskSpec;

/// Isolation around one task attempt, set up before its process starts.
pub trait Sandbox: Send + Sync + fmt::Debug {
    /// Prepare isolation for `spec`. Called in the node before the task's process exists; on
    /// an error nothing is left behind and the task is not started. Blocking.
    fn setup(&self, spec: &TaskSpec) -> Result<SandboxSetup, SandboxError>;
}

/// What the child process must do, before `exec`, to enter the sandbox, and the handle on it.
#[derive(Debug)]
pub struct SandboxSetup {
    /// Files, open for writing, to which the child writes `0` before `exec` — every
    /// `cgroup.procs` of the attempt's cgroup, so the task starts inside it. Closed in the node
    /// after the start.
    pub join: Vec<OwnedFd>,
    pub group: Arc<dyn SandboxGroup>,
}

/// Every process of one attempt, as the sandbox sees them. Methods block (they read and write
/// control files); the monitor calls them off the async threads.
pub trait SandboxGroup: Send + Sync + fmt::Debug {
    /// SIGKILL every process of the attempt, including those that left its process group.
    fn kill(&self);

    /// The memory limit, when the kernel killed a process of the attempt for going over it.
    fn memory_kill(&self) -> Option<u64>;

    /// `(live processes, memory in use)`, when the sandbox counts them.
    fn usage(&self) -> Option<(u32, Option<u64>)>;

    /// Kill what is left and remove the group. Called after the main process was reaped (or
    /// when its start failed); later calls do nothing.
    fn teardown(&self);

    /// The group's cgroup as a path from the root of the cgroup v2 hierarchy, when it is a v2
    /// cgroup (an OCI runtime is told it; on v1 the runtime joins the group instead).
    fn unified_path(&self) -> Option<String> {
        None
    }
}

/// Why a sandbox could not be set up; the task was not started.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct SandboxError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// No isolation beyond what the process executor applies to every task (see
/// `docs/design/executor.md`): no cgroup, so no memory, cpu or pids limit, and a process that
/// leaves the task's process group escapes stop and cleanup.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSandbox;

impl Sandbox for NoSandbox {
    fn setup(&self, _spec: &TaskSpec) -> Result<SandboxSetup, SandboxError> {
        Ok(SandboxSetup { join: Vec::new(), group: Arc::new(NoGroup) })
    }
}

#[derive(Debug)]
struct NoGroup;

impl SandboxGroup for NoGroup {
    fn kill(&self) {}
    fn memory_kill(&self) -> Option<u64> {
        None
    }
    fn usage(&self) -> Option<(u32, Option<u64>)> {
        None
    }
    fn teardown(&self) {}
}

/// One cgroup per attempt under the node's scope.
#[derive(Debug, Clone)]
pub struct CgroupSandbox {
    cgroups: Cgroups,
}

impl CgroupSandbox {
    pub fn new(cgroups: Cgroups) -> CgroupSandbox {
        CgroupSandbox { cgroups }
    }

    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    /// The name of `spec`'s cgroup under the node's scope, named as every workload process's
    /// ([`crate::workload::cgroup_name`]): task and attempt, and a hash of the working
    /// directory, so two executors sharing a scope (tests) never collide.
    pub fn cgroup_name(spec: &TaskSpec) -> String {
        crate::workload::cgroup_name(&format!("{}-{}", spec.task_id, spec.attempt), "", &spec.workdir)
    }
}

impl Sandbox for CgroupSandbox {
    fn setup(&self, spec: &TaskSpec) -> Result<SandboxSetup, SandboxError> {
        let limits = CgroupLimits {
            memory_bytes: spec.limits.memory_bytes,
            cpu_millis: spec.limits.cpu_millis,
            max_pids: spec.limits.max_pids,
        };
        let error = |e: falak_sandbox::CgroupError| SandboxError { what: e.what, path: e.path, source: e.source };
        let cgroup = self.cgroups.create(&Self::cgroup_name(spec), &limits).map_err(error)?;
        let join = match cgroup.join_files() {
            Ok(join) => join,
            Err(e) => {
                let _ = cgroup.remove();
                return Err(error(e));
            }
        };
        Ok(SandboxSetup { join, group: Arc::new(CgroupGroup { cgroup, removed: AtomicBool::new(false) }) })
    }
}

/// Removes its cgroup on `teardown`, or when dropped without one: a `start` future dropped
/// between the setup and the fork must not leave the cgroup behind.
#[derive(Debug)]
struct CgroupGroup {
    cgroup: WorkloadCgroup,
    removed: AtomicBool,
}

impl SandboxGroup for CgroupGroup {
    fn kill(&self) {
        if let Err(error) = self.cgroup.kill_all() {
            tracing::warn!(%error, "cannot kill every process of a task's cgroup");
        }
    }

    fn memory_kill(&self) -> Option<u64> {
        self.cgroup.memory_kill()
    }

    fn usage(&self) -> Option<(u32, Option<u64>)> {
        let usage = self.cgroup.usage();
        Some((usage.processes, usage.memory_bytes))
    }

    fn teardown(&self) {
        if self.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(error) = self.cgroup.remove() {
            tracing::warn!(%error, "cannot remove a task's cgroup");
        }
    }

    fn unified_path(&self) -> Option<String> {
        self.cgroup.unified_path()
    }
}

impl Drop for CgroupGroup {
    fn drop(&mut self) {
        self.teardown();
    }
}
