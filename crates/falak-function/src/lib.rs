//! The function host: runtime hosts, zygote snapshots, instances and the instance pool.
//!
//! The node drives a deployment in three steps: [`prepare`] checks the bundle, builds the
//! virtualenv and writes the Python runtime host into the work dir; [`Zygote::start`] (python)
//! imports the handler once; [`Zygote::fork`] or [`spawn`] (cold) gives an [`Instance`] that
//! answers HTTP requests over its Unix socket (a `container` instance is run by the node's OCI
//! runtime: `container`). `docs/design/runtime-host.md` is the protocol.
//! Every process is started by `falak_exec::workload`, confined as [`WorkloadSandbox`] says
//! (the node's defaults: the function's own user, seccomp, Landlock, mount and network
//! namespaces, a cgroup per instance, rlimits); this crate never spawns a process itself.
//!
//! **Boundary:** this crate asks `falak_exec::workload` to start processes and talks HTTP to them; it never reads the ledger
//! and never decides how many instances run (that is [`pool`] and the node).

mod client;
mod container;
mod error;
mod exec;
mod instance;
pub mod pool;
mod prepare;
mod sandbox;
mod spawn;
mod venv;
mod zygote;

pub use container::{CONTAINER_SOCKET_DIR, remove_leftovers as remove_leftover_containers};
pub use error::{InstanceError, PrepareError, StartError};
pub use falak_exec::DEFAULT_MAX_PIDS;
pub use falak_exec::workload::{DEFAULT_RLIMITS, WorkloadSandbox, unreachable_by};
pub use falak_sandbox::{CgroupLimits, HostSandbox, Namespaces, Network, RunAs, View, WorkloadUsers};
pub use instance::{Instance, StartKind, StartTimings};
pub use prepare::{ContainerHost, DEFAULT_START_TIMEOUT, HostSpec, Prepared, prepare};
pub use sandbox::network;
pub use spawn::spawn;
pub use zygote::Zygote;

/// The error type of [`BoxBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request and response bodies: streams of [`bytes::Bytes`], never buffered whole.
pub type BoxBody = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;

/// The Python runtime host (`runtime/host.py`), shipped inside the binary.
const RUNTIME_HOST: &str = include_str!("../runtime/host.py");

/// The source of the Python runtime host that [`prepare`] writes into each work dir.
pub fn runtime_host_source() -> &'static str {
    RUNTIME_HOST
}
