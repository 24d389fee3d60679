//! OS confinement of workload processes: what keeps a task or a function instance inside its
//! share of the node.
//!
//! The pieces, each usable alone and composed by a [`Confinement`] in the order its module doc
//! gives:
//!
//! - [`user`]: the unprivileged user workloads run as (`nobody` when the node is root);
//! - [`confinement`]: what the child does to itself between `fork` and `exec` — new session,
//!   rlimits, cgroup join, namespaces (and a pid namespace's init), user switch, no_new_privs, Landlock, descriptor
//!   sweep, seccomp — all prepared in the node, applied with async-signal-safe system calls;
//! - [`seccomp`]: the system-call allowlist, Docker's default profile made stricter;
//! - [`cgroup`]: one cgroup per workload (v2, or v1 per controller) with memory, cpu and pids
//!   limits, the kill that reaches every process, and memory-kill detection;
//! - [`landlock`]: writes only inside the workload's directory, where the kernel has Landlock;
//! - [`namespaces`]: the workload's own mount, pid, network and (on an unprivileged node) user
//!   namespaces: the node's data dir, keys and home hidden, its own directory bound back;
//! - `init`: the pid namespace's init (pid 1: its `/proc`, reaping) and the relay that ends
//!   the way the workload ended;
//! - [`overlay`]: a container's writable layer, mounted in a mount namespace of the OCI
//!   runtime's own;
//! - [`network`]: a private network namespace, so the node's own ports are out of reach;
//! - [`HostSandbox`]: what this host allows, detected once, and the [`SandboxReport`] the node
//!   logs and exposes.
//!
//! **Boundary:** depends on no workspace crate; knows nothing of tasks, functions or the
//! ledger. Linux only.

pub mod cgroup;
pub mod confinement;
mod init;
pub mod landlock;
pub mod namespaces;
pub mod network;
pub mod overlay;
mod report;
pub mod seccomp;
pub mod user;

pub use cgroup::{
    CgroupError, CgroupLimits, CgroupUnavailable, CgroupUsage, CgroupVersion, Cgroups, Controller, WorkloadCgroup,
};
pub use confinement::{Confinement, Rlimit};
pub use landlock::{LandlockError, LandlockRuleset};
pub use namespaces::{Exposure, Isolation, Namespaces, View};
pub use network::Network;
pub use overlay::{PrivateOverlay, overlay_works};
pub use report::{HostSandbox, SandboxReport};
pub use seccomp::{SeccompError, SeccompFilter};
pub use user::{LookupUserError, NOBODY, RunAs, WorkloadUsers};
