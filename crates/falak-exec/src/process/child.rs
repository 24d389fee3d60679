//! What the forked child does to itself between `fork` and `exec`.
//!
//! Everything is decided in the node before the fork ([`ChildSetup::new`]); the child only
//! makes raw system calls ([`ChildSetup::apply`]), because after a fork in a multi-threaded
//! process only async-signal-safe functions may run: no allocation, no locks, no logging.
//!
//! By the time `apply` runs, the standard library has already set up stdio and entered the
//! working directory — as root, so the workdir's parents need not be searchable by the
//! task's user.

use std::io;
use std::os::fd::RawFd;

use crate::task::{Limits, RunAs};

#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// How far the fallback for kernels without `close_range` (before 5.11) scans for open
/// descriptors.
const FD_SCAN_LIMIT: libc::rlim_t = 65_536;

/// The child's setup, computed in the node.
#[derive(Debug, Clone)]
pub(super) struct ChildSetup {
    rlimits: Vec<(Resource, libc::rlim_t)>,
    switch_to: Option<RunAs>,
    join: Option<RawFd>,
    fd_scan_limit: libc::rlim_t,
}

impl ChildSetup {
    /// `switch_to` is the user to become (the node must be root); `join` a file to write `0`
    /// to, from the sandbox.
    pub(super) fn new(limits: &Limits, switch_to: Option<RunAs>, join: Option<RawFd>, node_is_root: bool) -> Self {
        let wanted: [(Resource, Option<u64>); 5] = [
            // Core dumps could fill the disk and would hold the task's memory in a file.
            (libc::RLIMIT_CORE, Some(0)),
            (libc::RLIMIT_NOFILE, limits.max_open_files),
            (libc::RLIMIT_NPROC, limits.max_processes),
            (libc::RLIMIT_FSIZE, limits.max_file_bytes),
            (libc::RLIMIT_AS, limits.address_space_bytes),
        ];
        let rlimits = wanted
            .into_iter()
            .filter_map(|(resource, value)| {
                let value = value?;
                // Only root may raise a hard limit: an unprivileged node gets what it can give.
                let value = if node_is_root { value } else { value.min(current_limit(resource).rlim_max) };
                Some((resource, value))
            })
            .collect();
        let fd_scan_limit = current_limit(libc::RLIMIT_NOFILE).rlim_cur.min(FD_SCAN_LIMIT);
        ChildSetup { rlimits, switch_to, join, fd_scan_limit }
    }

    /// Runs in the child after `fork`, before `exec`. The order matters: a new session first
    /// (so stop and timeout reach every process the task makes), limits and the sandbox while
    /// still root, then the user switch, then no_new_privs, and the descriptor sweep last so
    /// nothing opened above survives.
    pub(super) fn apply(&self) -> io::Result<()> {
        // SAFETY (whole function): only raw system calls through libc, on values owned by
        // `self` or on the stack; none allocates or takes a lock, so all are safe between
        // fork and exec.
        unsafe {
            // A new session and process group with id = our pid, detached from any terminal.
            check(libc::setsid())?;
            for &(resource, value) in &self.rlimits {
                let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
                check(libc::setrlimit(resource, &limit))?;
            }
            if let Some(fd) = self.join {
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                if written != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(user) = self.switch_to {
                // Supplementary groups first: once we are not root we may not change them.
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(user.gid))?;
                check(libc::setuid(user.uid))?;
            }
            // Neither setuid binaries nor file capabilities can give the task more privilege.
            // prctl is variadic and the kernel reads whole `unsigned long`s: pass exactly those.
            let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero))?;
            self.close_inherited_fds();
        }
        Ok(())
    }

    /// Mark every descriptor above stderr close-on-exec, so the task gets only 0, 1 and 2 even
    /// if some library in the node opened one without `O_CLOEXEC`. Marking rather than closing
    /// keeps the standard library's exec-error pipe working, so a failed `exec` still reports
    /// its errno to the node.
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
        for fd in 3..self.fd_scan_limit as RawFd {
            // SAFETY: as above; F_SETFD on a closed descriptor fails harmlessly.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
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
    fn core_dumps_are_always_off_and_unset_limits_are_left_alone() {
        let limits = Limits { max_open_files: None, ..Limits::default() };
        let setup = ChildSetup::new(&limits, None, None, true);
        assert_eq!(setup.rlimits, vec![(libc::RLIMIT_CORE, 0)]);
    }

    #[test]
    fn an_unprivileged_node_cannot_raise_a_hard_limit() {
        let hard = current_limit(libc::RLIMIT_NOFILE).rlim_max;
        let limits = Limits { max_open_files: Some(u64::MAX - 1), ..Limits::default() };
        let setup = ChildSetup::new(&limits, None, None, false);
        assert!(setup.rlimits.contains(&(libc::RLIMIT_NOFILE, hard)));
    }
}
