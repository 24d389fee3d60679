//! What this host lets the sandbox enforce, found once at startup.

use std::fmt;
use std::sync::Arc;

use crate::cgroup::{CgroupVersion, Cgroups, Controller};
use crate::landlock;
use crate::namespaces::Namespaces;
use crate::seccomp::SeccompFilter;

/// The confinement tools this host offers, ready to build each workload's
/// [`Confinement`](crate::Confinement) from.
#[derive(Debug, Clone)]
pub struct HostSandbox {
    /// The compiled workload filter (`None` only if it failed to compile, which is a bug).
    pub seccomp: Option<Arc<SeccompFilter>>,
    /// The node's cgroup scope, when any controller is usable.
    pub cgroups: Option<Cgroups>,
    /// The kernel's Landlock ABI, when it has Landlock.
    pub landlock_abi: Option<u32>,
    /// How the node gives workloads namespaces of their own (mount, network, and user when
    /// the node is not root).
    pub namespaces: Namespaces,
    /// Whether workloads also get a pid namespace with a `/proc` of their own.
    pub pid_namespaces: bool,
    /// Whether the node may give workloads a network namespace of their own.
    pub network_namespaces: bool,
    /// Whether the node is root, and so can run workloads as another user.
    pub can_switch_users: bool,
    pub report: SandboxReport,
}

/// What is enforced on this host, for the node to log and expose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxReport {
    pub seccomp: bool,
    pub cgroups: Option<CgroupVersion>,
    /// The controllers in use (on v1 the freezer too).
    pub cgroup_controllers: Vec<Controller>,
    /// The kernel's Landlock ABI version, when Landlock is enforced.
    pub landlock: Option<u32>,
    pub namespaces: Namespaces,
    /// Whether workloads get a pid namespace (and see only their own processes in `/proc`).
    pub pid_namespaces: bool,
    pub network_namespaces: bool,
    /// Whether workloads run as another user than the node's (the node is root).
    pub unprivileged_user: bool,
    /// What the host does not allow, in words, each worth a warning.
    pub missing: Vec<String>,
}

impl HostSandbox {
    /// Probe the host. With `cgroup_scope`, find or make the node's cgroup scope (a name
    /// unique to the node on this host, e.g. its id); without, use no cgroups. Blocking (it
    /// forks a probe and writes under `/sys/fs/cgroup`); call it once at startup. Logs a
    /// warning for each missing piece.
    pub fn detect(cgroup_scope: Option<&str>) -> HostSandbox {
        let mut missing = Vec::new();
        let seccomp = match SeccompFilter::workload_default() {
            Ok(filter) => Some(Arc::new(filter)),
            Err(e) => {
                missing.push(format!("seccomp: {e}"));
                None
            }
        };
        let cgroups = match cgroup_scope.map(Cgroups::detect) {
            Some(Ok(cgroups)) => {
                for controller in cgroups.missing() {
                    missing.push(format!(
                        "cgroups: the {controller} controller is not available to the node, so workloads' {controller} is not limited"
                    ));
                }
                Some(cgroups)
            }
            Some(Err(e)) => {
                missing.push(format!(
                    "cgroups: {e}; workloads run without memory, cpu and pids limits, and a process that leaves its process group escapes stop"
                ));
                None
            }
            None => None,
        };
        let landlock_abi = landlock::abi_version();
        if landlock_abi.is_none() {
            missing.push(
                "Landlock: unsupported by this kernel; workloads are kept out of other files by their user and file permissions only"
                    .into(),
            );
        }
        let (namespaces, why_not) = Namespaces::probe();
        if let Some(e) = why_not {
            missing.push(format!(
                "namespaces: cannot create them ({e}), not even in a user namespace; workloads see the node's files \
                 (Landlock limits their reads) and network, so this node takes no capsule with network \"none\" (the \
                 default; the node says so in its record, and a job or service of one is refused when no other \
                 node can run it), and function instances share its network. {}",
                namespace_advice(&e)
            ));
        }
        let pid_namespaces = match namespaces.probe_pid() {
            Ok(()) => true,
            Err(_) if namespaces == Namespaces::Unavailable => false,
            Err(e) => {
                missing.push(format!(
                    "pid namespaces: cannot mount a /proc of their own ({e}); workloads see every process of the \
                     host in /proc, and a process a workload leaves behind is ended by its cgroup or process group only"
                ));
                false
            }
        };
        let network_namespaces = namespaces != Namespaces::Unavailable;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let can_switch_users = unsafe { libc::geteuid() } == 0;
        if !can_switch_users {
            missing.push(
                "user: the node is not root, so every workload's uid maps to the node's own; workloads are kept \
                 apart by their namespaces and Landlock, not by file ownership"
                    .into(),
            );
        }
        for line in &missing {
            tracing::warn!("sandbox: {line}");
        }
        let report = SandboxReport {
            seccomp: seccomp.is_some(),
            cgroups: cgroups.as_ref().map(Cgroups::version),
            cgroup_controllers: cgroups.as_ref().map(Cgroups::controllers).unwrap_or_default(),
            landlock: landlock_abi,
            namespaces,
            pid_namespaces,
            network_namespaces,
            unprivileged_user: can_switch_users,
            missing,
        };
        tracing::info!("sandbox: {report}");
        HostSandbox {
            seccomp,
            cgroups,
            landlock_abi,
            namespaces,
            pid_namespaces,
            network_namespaces,
            can_switch_users,
            report,
        }
    }
}

/// What to change so that the node can create namespaces, after `error` from the probe.
fn namespace_advice(error: &std::io::Error) -> String {
    let limit = if error.raw_os_error() == Some(libc::ENOSPC) {
        "A namespace limit is reached or 0 (ENOSPC): raise user.max_user_namespaces, user.max_mnt_namespaces and \
         user.max_net_namespaces (sysctl, in every user namespace the node runs in). "
    } else {
        ""
    };
    format!(
        "{limit}Allow unprivileged user namespaces (sysctl user.max_user_namespaces above 0, and where they \
         exist kernel.unprivileged_userns_clone=1 and kernel.apparmor_restrict_unprivileged_userns=0), or run the \
         node as root, then restart it; or set network: host in capsules that may share the node's network"
    )
}

impl fmt::Display for SandboxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |b: bool| if b { "on" } else { "off" };
        write!(f, "seccomp {}, cgroups ", on(self.seccomp))?;
        match self.cgroups {
            Some(version) => {
                let names: Vec<&str> = self.cgroup_controllers.iter().map(|c| c.name()).collect();
                write!(f, "{version} ({})", names.join(" "))?;
            }
            None => f.write_str("off")?,
        }
        match self.landlock {
            Some(abi) => write!(f, ", Landlock ABI {abi}")?,
            None => f.write_str(", Landlock unsupported")?,
        }
        let users = match (self.unprivileged_user, self.namespaces) {
            (true, _) => "own uids",
            (false, Namespaces::User) => "own uids mapped to the node's",
            (false, _) => "the node's",
        };
        write!(f, ", namespaces {}", self.namespaces.name())?;
        if self.namespaces != Namespaces::Unavailable {
            f.write_str(if self.pid_namespaces { " (pid too)" } else { " (no pid)" })?;
        }
        write!(f, ", workload users: {users}")
    }
}
