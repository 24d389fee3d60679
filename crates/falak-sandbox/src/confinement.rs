//! What a workload's child process does to itself between `fork` and `exec`.
//!
//! Everything is decided and opened in the node, before the fork, into a [`Confinement`]; the
//! child only makes raw system calls ([`Confinement::apply`]), because after a fork in a
//! multi-threaded process only async-signal-safe functions may run: no allocation, no locks,
//! no logging.
//!
//! The order, and why:
//!
//! 1. `setsid` — a new session and process group, so signals to the group reach every process
//!    the workload makes (that stays in it) and it has no controlling terminal (or, with
//!    [`Confinement::own_process_group`], only `setpgid(0, 0)`);
//!    then, for an OCI runtime only, a mount namespace of its own holding its container's
//!    writable layer ([`crate::overlay`]);
//! 2. the namespaces ([`crate::namespaces`]): `unshare` (with a user namespace and its id maps
//!    when the node is not root), the file system view (hidden dirs, exposed ones), `lo` up
//!    for [`Network::None`](crate::Network::None), then `chdir` into the working directory
//!    through the new mounts — needs `CAP_SYS_ADMIN`, so still root (or the user namespace's
//!    creator);
//! 3. with a pid namespace ([`crate::init`]): the parent-death signal, if asked for; then this
//!    process stays behind as the *relay* the node knows, with two children: the namespace's
//!    init (pid 1, which reaps orphans) and the workload (pid 2), which mounts the namespace's
//!    `/proc` over the host's — after the view's mounts, which bind through the host's
//!    `/proc/self/fd`, and while it has the capabilities step 2 needed — and alone goes on to
//!    the steps below;
//! 4. join the cgroups — write `0` to each `cgroup.procs` while still root (they are
//!    root-owned; an unprivileged node's delegated ones are its own), before the workload can
//!    fork; the relay and the init stay out, so the cgroup's pids limit, process count, memory
//!    and OOM kills are the workload's alone, as without a pid namespace;
//! 5. rlimits — the workload's alone too (`RLIMIT_NPROC` counts every process of its user,
//!    the helpers included), while still root, which alone may raise a hard limit;
//! 6. `setgroups(0)`, `setgid`, `setuid` — drop to the workload's user (unless a user
//!    namespace already maps it); then the parent-death signal, if asked for and not given to
//!    the relay in step 3 (a change of user clears it);
//! 7. `PR_SET_NO_NEW_PRIVS` — setuid binaries and file capabilities give nothing;
//! 8. Landlock `restrict_self` — needs no_new_privs;
//! 9. mark every descriptor above stderr close-on-exec — the workload gets only what it was
//!    given, whatever the node left open (the cgroup and Landlock descriptors included) — except
//!    the ones [`Confinement::keep_fd`] names;
//! 10. the seccomp filter, last: the steps above need system calls it refuses (`unshare`,
//!     `setgroups` of another user, …). Then the standard library calls `execve`.
//!
//! By the time `apply` runs, the standard library has set up stdio and entered the working
//! directory — as root, so the directory's parents need not be searchable by the workload's
//! user.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::landlock::LandlockRuleset;
use crate::overlay::PrivateOverlay;
use crate::seccomp::SeccompFilter;
use crate::user::RunAs;
use crate::{init, namespaces};

#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// How far the fallback for kernels without `close_range` (before 5.11) scans for open
/// descriptors.
const FD_SCAN_LIMIT: libc::rlim_t = 65_536;

/// A resource limit the child sets on itself (soft = hard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rlimit {
    /// `RLIMIT_CORE`: core file size.
    Core,
    /// `RLIMIT_NOFILE`: open descriptors per process.
    OpenFiles,
    /// `RLIMIT_NPROC`: processes of the *user*.
    Processes,
    /// `RLIMIT_FSIZE`: the largest file the process may write.
    FileSize,
    /// `RLIMIT_AS`: address space.
    AddressSpace,
}

impl Rlimit {
    fn resource(self) -> Resource {
        match self {
            Rlimit::Core => libc::RLIMIT_CORE,
            Rlimit::OpenFiles => libc::RLIMIT_NOFILE,
            Rlimit::Processes => libc::RLIMIT_NPROC,
            Rlimit::FileSize => libc::RLIMIT_FSIZE,
            Rlimit::AddressSpace => libc::RLIMIT_AS,
        }
    }
}

/// The confinement of one workload process, built in the node and applied by its child.
#[derive(Debug)]
pub struct Confinement {
    session: Session,
    /// `(signal, the node's pid)`: die with the node.
    parent_death: Option<(libc::c_int, libc::pid_t)>,
    keep_fds: Vec<RawFd>,
    rlimits: Vec<(Resource, libc::rlim_t)>,
    cgroup_joins: Vec<OwnedFd>,
    isolation: Option<namespaces::Prepared>,
    overlay: Option<PrivateOverlay>,
    run_as: Option<RunAs>,
    landlock: Option<LandlockRuleset>,
    seccomp: Option<Arc<SeccompFilter>>,
    fd_scan_limit: libc::c_int,
}

impl Default for Confinement {
    fn default() -> Self {
        Confinement::new()
    }
}

impl Confinement {
    /// The floor every workload gets: a new session, no_new_privs and only stdio descriptors;
    /// the node's namespaces (until [`Confinement::isolation`] says otherwise) and user.
    pub fn new() -> Confinement {
        Confinement {
            session: Session::New,
            parent_death: None,
            keep_fds: Vec::new(),
            rlimits: Vec::new(),
            cgroup_joins: Vec::new(),
            isolation: None,
            overlay: None,
            run_as: None,
            landlock: None,
            seccomp: None,
            fd_scan_limit: fd_scan_limit(),
        }
    }

    /// A process group of its own (`setpgid(0, 0)`) in the node's session, instead of a new
    /// session.
    pub fn own_process_group(mut self) -> Self {
        self.session = Session::Group;
        self
    }

    /// Get `signal` when the thread that forked this process exits, and fail with `ESRCH` if
    /// the node (`parent`, its pid) is already gone by then.
    pub fn parent_death_signal(mut self, signal: libc::c_int, parent: libc::pid_t) -> Self {
        self.parent_death = Some((signal, parent));
        self
    }

    /// Let descriptor `fd` through to the program (the sweep marks every other one
    /// close-on-exec). The caller keeps it open until after the spawn.
    pub fn keep_fd(mut self, fd: RawFd) -> Self {
        self.keep_fds.push(fd);
        self
    }

    /// Set these limits (soft and hard). A node that is not root cannot raise a hard limit,
    /// so it gets the lower of the wish and its own hard limit.
    pub fn rlimits(self, limits: &[(Rlimit, u64)]) -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let node_is_root = unsafe { libc::geteuid() } == 0;
        self.rlimits_as(limits, node_is_root)
    }

    fn rlimits_as(mut self, limits: &[(Rlimit, u64)], node_is_root: bool) -> Self {
        for &(limit, value) in limits {
            let resource = limit.resource();
            let value = if node_is_root { value } else { value.min(current_limit(resource).rlim_max) };
            self.rlimits.retain(|(r, _)| *r != resource);
            self.rlimits.push((resource, value));
        }
        self
    }

    /// Join these cgroups: each an open `cgroup.procs`
    /// ([`WorkloadCgroup::join_files`](crate::cgroup::WorkloadCgroup::join_files)).
    pub fn join_cgroups(mut self, joins: Vec<OwnedFd>) -> Self {
        self.cgroup_joins = joins;
        self
    }

    /// The namespaces to enter, prepared by [`namespaces::Isolation::prepare`].
    pub fn isolation(mut self, isolation: namespaces::Prepared) -> Self {
        self.isolation = Some(isolation);
        self
    }

    /// Mount this overlay in a mount namespace of the process's own, right after the session
    /// step (for an OCI runtime, which makes every other namespace itself; needs root).
    pub fn private_overlay(mut self, overlay: PrivateOverlay) -> Self {
        self.overlay = Some(overlay);
        self
    }

    /// Become this user (the node must be root); `None` stays the node's user. Ignored when
    /// the isolation maps the user in a user namespace.
    pub fn run_as(mut self, user: Option<RunAs>) -> Self {
        self.run_as = user;
        self
    }

    pub fn landlock(mut self, ruleset: Option<LandlockRuleset>) -> Self {
        self.landlock = ruleset;
        self
    }

    pub fn seccomp(mut self, filter: Option<Arc<SeccompFilter>>) -> Self {
        self.seccomp = filter;
        self
    }

    /// Whether this confinement will make a network namespace.
    pub fn private_network(&self) -> bool {
        self.isolation.as_ref().is_some_and(namespaces::Prepared::private_network)
    }

    /// Apply the confinement to the calling process, in the order the module doc gives.
    ///
    /// # Safety
    /// Only in a child between `fork` and `exec` (as a `pre_exec` hook): it changes the
    /// process's user, limits and system-call filter for good, and marks descriptors it does
    /// not own close-on-exec. It makes only async-signal-safe system calls and allocates
    /// nothing.
    pub unsafe fn apply(&self) -> io::Result<()> {
        // SAFETY (whole function): only raw system calls through libc, on values owned by
        // `self` or on the stack; none allocates or takes a lock.
        unsafe {
            match self.session {
                Session::New => check(libc::setsid())?,
                Session::Group => check(libc::setpgid(0, 0))?,
            }
            if let Some(overlay) = &self.overlay {
                overlay.apply()?;
            }
            let mut parent_death = self.parent_death;
            if let Some(isolation) = &self.isolation {
                isolation.enter()?;
                if isolation.pid_namespace() {
                    // Returns only in the workload; the relay took the parent-death signal.
                    init::split(parent_death.take(), self.fd_scan_limit)?;
                }
            }
            for join in &self.cgroup_joins {
                if libc::write(join.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            for &(resource, value) in &self.rlimits {
                let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
                check(libc::setrlimit(resource, &limit))?;
            }
            let mapped = self.isolation.as_ref().is_some_and(namespaces::Prepared::maps_user);
            if let Some(user) = self.run_as.filter(|_| !mapped) {
                // Supplementary groups first: once we are not root we may not change them.
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(user.gid))?;
                check(libc::setuid(user.uid))?;
            }
            if let Some((signal, parent)) = parent_death {
                let (signal, zero): (libc::c_ulong, libc::c_ulong) = (signal as libc::c_ulong, 0);
                check(libc::prctl(libc::PR_SET_PDEATHSIG, signal, zero, zero, zero))?;
                // The node may have died between fork and prctl: then nobody would kill us.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            // prctl is variadic and the kernel reads whole `unsigned long`s: pass exactly those.
            let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero))?;
            if let Some(ruleset) = &self.landlock {
                ruleset.restrict_self()?;
            }
            self.close_inherited_fds();
            for &fd in &self.keep_fds {
                check(libc::fcntl(fd, libc::F_SETFD, 0))?;
            }
            if let Some(filter) = &self.seccomp {
                filter.apply()?;
            }
        }
        Ok(())
    }

    /// Mark every descriptor above stderr close-on-exec. Marking rather than closing keeps the
    /// standard library's exec-error pipe working, so a failed `exec` still reports its errno.
    ///
    /// # Safety
    /// Only between fork and exec (it makes raw system calls on descriptors it does not own).
    unsafe fn close_inherited_fds(&self) {
        let (first, last): (libc::c_uint, libc::c_uint) = (3, libc::c_uint::MAX);
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags; it closes nothing.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, libc::CLOSE_RANGE_CLOEXEC) };
        if rc == 0 {
            return;
        }
        // Older kernels: set the flag one descriptor at a time (EBADF for the unused ones).
        for fd in 3..self.fd_scan_limit {
            // SAFETY: as above; F_SETFD on a closed descriptor fails harmlessly.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Session {
    New,
    Group,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// How far a sweep of descriptors one at a time goes (for kernels without `close_range`):
/// the open-files limit, at most [`FD_SCAN_LIMIT`].
pub(crate) fn fd_scan_limit() -> libc::c_int {
    current_limit(libc::RLIMIT_NOFILE).rlim_cur.min(FD_SCAN_LIMIT) as libc::c_int
}

fn current_limit(resource: Resource) -> libc::rlimit {
    let mut limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: getrlimit writes one rlimit to a valid pointer; on failure `limit` keeps its
    // initial value.
    unsafe { libc::getrlimit(resource, &mut limit) };
    limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_limit_replaces_an_earlier_one() {
        let confinement = Confinement::new().rlimits_as(&[(Rlimit::Core, 0), (Rlimit::Core, 5)], true);
        assert_eq!(confinement.rlimits, vec![(libc::RLIMIT_CORE, 5)]);
    }

    #[test]
    fn only_kept_descriptors_reach_the_program() {
        use std::os::unix::process::CommandExt;
        let kept = std::fs::File::open("/dev/null").unwrap();
        let dropped = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: dup of our own descriptor, without close-on-exec, closed below.
        let leaked = unsafe { libc::dup(dropped.as_raw_fd()) };
        let confinement = Confinement::new()
            .own_process_group()
            .keep_fd(kept.as_raw_fd())
            .parent_death_signal(libc::SIGKILL, std::process::id() as libc::pid_t);
        let mut command = std::process::Command::new("/bin/sh");
        // `$$` is the shell itself: `ls` would see its own directory handle in /proc/self/fd.
        command.args(["-c", "ls /proc/$$/fd"]);
        // SAFETY: `apply` is async-signal-safe.
        unsafe { command.pre_exec(move || confinement.apply()) };
        let output = command.output().unwrap();
        // SAFETY: closes the descriptor dup returned above.
        unsafe { libc::close(leaked) };
        assert_eq!(String::from_utf8_lossy(&output.stdout), format!("0\n1\n2\n{}\n", kept.as_raw_fd()), "{output:?}");
    }

    #[test]
    fn an_unprivileged_node_cannot_raise_a_hard_limit() {
        let hard = current_limit(libc::RLIMIT_NOFILE).rlim_max;
        let confinement = Confinement::new().rlimits_as(&[(Rlimit::OpenFiles, u64::MAX - 1)], false);
        assert!(confinement.rlimits.contains(&(libc::RLIMIT_NOFILE, hard)));
    }
}
