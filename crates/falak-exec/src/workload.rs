//! Every process the node starts goes through here: task attempts (through
//! [`ProcessExecutor`](crate::ProcessExecutor)), function zygotes and instances, `exec`
//! commands and dependency builds (through `falak-function`, which asks and never spawns).
//!
//! - [`sandbox`]: what the host allows ([`WorkloadSandbox`]), the one confinement builder, one
//!   cgroup per process tree named one way, and its teardown ([`Enclosure`]);
//! - [`process`]: starting a confined process ([`launch`]) and watching any process, ours or a
//!   zygote's child, through a pidfd ([`Process`]); stop is SIGTERM to the group, SIGKILL after
//!   the grace, then the enclosure kills what is left in the cgroup.

pub mod process;
pub mod sandbox;

pub use process::{INHERITED_ENV, Launch, Launched, Process, ProcessExit, append_log, arg, launch};
pub use sandbox::{
    DEFAULT_RLIMITS, Enclosure, Made, Plan, WorkloadSandbox, blocking_directory, cgroup_name, private_dir,
    unreachable_by, user_may_access,
};
