//! Executors: how a node runs the task attempts it won.
//!
//! The node builds a [`TaskSpec`] for each attempt and hands it to an [`Executor`]:
//! [`Executor::prepare`] (optional: create the working directory, later fetch artifacts),
//! [`Executor::start`], then the returned [`Running`] handle to [`Running::wait`] for the
//! [`Exit`], [`Running::stop`] it, or read its [`Running::stats`]; [`Executor::read_log`]
//! reads the attempt's `stdout.log` / `stderr.log` while it runs and after.
//!
//! - [`ProcessExecutor`] runs an attempt as a sandboxed host process group: its own user,
//!   no_new_privs, rlimits, a seccomp filter, Landlock, its own network namespace and cgroup,
//!   a private working directory, only stdio descriptors (`falak_sandbox` does the
//!   confining; [`ProcessConfig::sandboxed`] detects what the host allows).
//! - [`fake::RecordingExecutor`] runs nothing: it records calls and ends attempts as scripted,
//!   on `tokio::time`, for the node's and the simulation's tests.
//! - [`workload`]: the one way the node starts any process — task attempts, function
//!   zygotes, instances and `exec` commands, dependency builds: [`workload::WorkloadSandbox`]
//!   (what the host allows, the confinement builder, cgroup naming and teardown) and
//!   [`workload::launch`]. `falak-function` asks it; it never spawns itself.
//!   A spec with a [`ContainerTask`] runs as a container: the process is an OCI runtime
//!   ([`ContainerRuntime`], `runc` or `crun`) running the attempt's bundle in the foreground,
//!   in the same session, cgroup and monitor as a process (`container.rs`). The [`Sandbox`]
//!   seam is where per-attempt isolation (cgroups) plugs into the process executor.
//!
//! **Boundary:** this crate knows nothing of Raft, gossip or the ledger; it depends only on
//! `falak-core`'s vocabulary and `falak-sandbox`. Linux only: it relies on `/proc`, `prctl` and Linux rlimits.
//! See `docs/design/executor.md`.

mod clock;
pub mod code;
mod container;
pub mod disk;
mod executor;
mod exit;
pub mod fake;
mod log;
mod process;
mod sandbox;
mod task;
pub mod workload;

pub use container::{
    Bundle, ContainerProcess, ContainerRuntime, ContainerTask, ReadOnlyMount, RuntimeUnavailable, write_bundle,
};
pub use disk::{DiskConfig, DiskReserve};
pub use executor::{Executor, PrepareError, Running, StartError};
pub use exit::{Exit, ExitReason, Stats, signal_name};
pub use falak_sandbox::{
    CgroupVersion, Controller, LookupUserError, NOBODY, Namespaces, Network, RunAs, SandboxReport, WorkloadUsers,
};
pub use log::{LogChunk, MAX_LOG_READ_BYTES, ReadLogError, Stream, read_log};
pub use process::{DEFAULT_PATH, ProcessConfig, ProcessExecutor, TMP_DIR};
pub use sandbox::{CgroupSandbox, NoSandbox, Sandbox, SandboxError, SandboxGroup, SandboxSetup};
pub use task::{DEFAULT_MAX_PIDS, InvalidSpecError, Limits, MAX_OUTPUT_TAIL_BYTES, TaskSpec};
