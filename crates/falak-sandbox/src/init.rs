//! A workload's pid namespace: its first process (pid 1, the *init*) and the *relay* that
//! stands for the workload in the node's namespace.
//!
//! `unshare(CLONE_NEWPID)` leaves the caller where it is; its next child is pid 1 of the new
//! namespace, which the kernel treats as an init: it gets no signal it has no handler for
//! (from inside the namespace; from outside, SIGKILL and SIGSTOP still reach it), orphans of
//! the namespace are reparented to it, and when it exits the kernel kills everything else in
//! the namespace. A workload run as pid 1 would ignore SIGTERM and pile up zombies, so the
//! node's child — the process the node knows by pid and pidfd, which has entered the other
//! namespaces — makes two children, without an `exec` in between:
//!
//! ```text
//! node ── relay: the node's child, in the node's pid namespace (the pid the node knows)
//!           ├── init: pid 1, reaps every orphan
//!           └── workload: pid 2, mounts the namespace's /proc, returns into the pre_exec
//!               hook, then the `exec`
//! ```
//!
//! - The **relay** waits for the workload, its own child; when it ends, the relay kills the
//!   init, which makes the kernel kill whatever the workload left behind, waits for it (so
//!   that when the node sees the relay end, the namespace is empty), and ends the same way as
//!   the workload: the same exit code, or the same signal re-raised with its default action,
//!   so the node reads `exit status: 3` or `signal: 9 (SIGKILL)` exactly as when the workload
//!   was its child. The workload's parent is outside its namespace, so it sees a parent pid of
//!   0, not 1 (a common test for "my parent died").
//! - The **init** reaps the orphans the workload leaves until the relay ends it, waiting for
//!   SIGCHLD with `sigwaitinfo`.
//! - **Signals.** The node signals the process group, which all three share (the workload
//!   unless it left it): SIGTERM and friends reach the workload directly. The relay and the
//!   init keep every signal blocked, so none of them ends either before the workload (the init,
//!   as any pid 1, would ignore them anyway); they take the ones they want with `sigwaitinfo`,
//!   change no disposition (so the workload starts with the node's, as `std` left them) and
//!   install no handler. SIGKILL, which nothing blocks, ends the relay, and the init with it
//!   (`PR_SET_PDEATHSIG`), which ends the namespace: the kill path needs no help. A workload
//!   that left the group (`setsid`) still gets the node's SIGTERM: the relay forwards it.
//! - **Death.** The init gets SIGKILL when the relay dies, and the relay when the node dies if
//!   the confinement asks for it; the init checks, through a pidfd of the relay, that the
//!   relay is still there after asking.
//! - **Descriptors.** `std`'s spawn reads a close-on-exec pipe until EOF to learn whether the
//!   `exec` worked, so the relay and the init *close* every descriptor they inherited (stdio
//!   included: a reader of the workload's output sees EOF when the workload is done). The
//!   workload keeps them, so an `exec` error still reaches the node.
//! - **Memory and privilege.** The relay is the copy of the node that `std` forked; the init
//!   shares its memory (`CLONE_VM`, on a stack of its own) rather than copying its page tables
//!   again, so a start costs one fork more than without a pid namespace (the workload's), not
//!   two. Neither touches more than its stack, and they are not dumpable, so no core dump of
//!   them is ever written and the workload (another user, or the same user without
//!   capabilities in the user namespace) may not read their memory or environment through
//!   `/proc`.
//!
//! Everything here runs between `fork` and `exec` in a multi-threaded program: raw,
//! async-signal-safe system calls only (`fork`, `clone`, `waitpid`, `sigaction`,
//! `sigprocmask`, `sigwaitinfo`, `poll`, `mount`, `prctl`, `kill`, `_exit`), no allocation,
//! no locks.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

/// A pidfd of the relay, for the init to check the relay is still there.
static RELAY: AtomicI32 = AtomicI32::new(-1);

const INIT_STACK_BYTES: usize = 64 << 10;

/// The init's stack: the init shares the relay's memory (`CLONE_VM`), so it may not run on
/// the relay's stack. Only the init ever touches it.
#[repr(C, align(16))]
struct InitStack([u8; INIT_STACK_BYTES]);
static mut INIT_STACK: InitStack = InitStack([0; INIT_STACK_BYTES]);

/// Make the init and fork the workload out of the process that has just unshared a pid
/// namespace (the *relay*). Returns `Ok` only in the workload, once it has mounted its
/// namespace's `/proc`; the relay and the init never return. `parent_death`: `(signal, the
/// node's pid)` for the relay, as
/// [`Confinement::parent_death_signal`](crate::Confinement::parent_death_signal).
/// `fd_scan_limit`: how far to close descriptors one by one where `close_range` is missing.
///
/// An error before the workload's fork is the relay's, and one in the workload (mounting
/// `/proc`) the workload's: either way the caller reports it through `std`'s error pipe, as
/// any failed step, and the relay ends as the workload did.
///
/// # Safety
/// Only in a child between `fork` and `exec`, right after `unshare(CLONE_NEWPID)` with a mount
/// namespace of its own; `std`'s child code must be what runs when this returns.
pub(crate) unsafe fn split(
    parent_death: Option<(libc::c_int, libc::pid_t)>,
    fd_scan_limit: libc::c_int,
) -> io::Result<()> {
    // SAFETY (whole function): raw system calls on values on this stack frame and the static
    // atomic.
    unsafe {
        if let Some((signal, parent)) = parent_death {
            set_parent_death(signal as libc::c_ulong)?;
            // The node may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        prctl(libc::PR_SET_DUMPABLE, 0)?;
        // Blocked from here on in the relay and the init; the workload unblocks them before
        // anything else, and then gets whatever waited for it.
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut original: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        check(libc::sigprocmask(libc::SIG_SETMASK, &all, &mut original))?;
        let relay = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0 as libc::c_uint) as libc::c_int;
        if relay == -1 {
            let error = io::Error::last_os_error();
            libc::sigprocmask(libc::SIG_SETMASK, &original, std::ptr::null_mut());
            return Err(error);
        }
        RELAY.store(relay, Ordering::Relaxed);
        // The init shares the relay's memory instead of copying its page tables: it runs on
        // a stack of its own and touches nothing else. (Its failed system calls write errno,
        // which it shares with the relay too, having no thread-local storage of its own: the
        // relay reads errno only to report an error before the workload starts.)
        let stack = (&raw mut INIT_STACK).cast::<u8>().add(INIT_STACK_BYTES);
        let init = libc::clone(init_entry, stack.cast(), libc::CLONE_VM | libc::SIGCHLD, std::ptr::null_mut());
        let cloned = if init == -1 { Err(io::Error::last_os_error()) } else { Ok(()) };
        libc::close(relay);
        let workload = match cloned {
            Ok(()) => libc::fork(),
            Err(_) => -1,
        };
        if workload == -1 {
            let error = cloned.err().unwrap_or_else(io::Error::last_os_error);
            end_init(init);
            libc::sigprocmask(libc::SIG_SETMASK, &original, std::ptr::null_mut());
            return Err(error);
        }
        if workload > 0 {
            close_all(fd_scan_limit);
            relay_life(init, workload);
        }
        // The workload, pid 2: the signal mask it came with, then its namespace's /proc while
        // it has the capabilities the mounts needed, and on to `exec`.
        libc::sigprocmask(libc::SIG_SETMASK, &original, std::ptr::null_mut());
        let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        check(libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), proc_flags, std::ptr::null()))?;
    }
    Ok(())
}

/// The relay's life: wait for the workload, passing on SIGTERM if it left the relay's process
/// group (which the group's signal no longer reaches); then end its namespace and end the
/// same way. Every signal is blocked: SIGCHLD and SIGTERM wait for `sigwaitinfo`.
///
/// # Safety
/// Raw system calls only; never returns.
unsafe fn relay_life(init: libc::pid_t, workload: libc::pid_t) -> ! {
    // SAFETY (whole function): waits and signals with locals.
    unsafe {
        let mut wanted: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut wanted);
        libc::sigaddset(&mut wanted, libc::SIGCHLD);
        libc::sigaddset(&mut wanted, libc::SIGTERM);
        let status = loop {
            let mut status: libc::c_int = 0;
            match libc::waitpid(workload, &mut status, libc::WNOHANG) {
                0 => {}
                // An exit code of 1, should the wait fail (it cannot: the workload is our
                // child).
                pid if pid != workload => break 1 << 8,
                _ => break status,
            }
            // A SIGCHLD that comes between the wait and here waits, blocked, for this call.
            if libc::sigwaitinfo(&wanted, std::ptr::null_mut()) == libc::SIGTERM
                && libc::getpgid(workload) != libc::getpgrp()
            {
                libc::kill(workload, libc::SIGTERM);
            }
        };
        end_init(init);
        end_as(status)
    }
}

/// Kill the init, which kills everything left in its namespace, and wait until it is gone.
///
/// # Safety
/// Raw system calls only.
unsafe fn end_init(init: libc::pid_t) {
    if init <= 0 {
        return;
    }
    // SAFETY: kill and waitpid on our own child, with a local. Every signal is blocked, so
    // the wait is never interrupted.
    unsafe {
        libc::kill(init, libc::SIGKILL);
        let mut status: libc::c_int = 0;
        libc::waitpid(init, &mut status, 0);
    }
}

/// The init's life: reap whatever is orphaned into the namespace, until the relay ends it.
/// Never returns.
extern "C" fn init_entry(_: *mut libc::c_void) -> libc::c_int {
    let relay = RELAY.load(Ordering::Relaxed);
    let fd_scan_limit = crate::confinement::fd_scan_limit();
    // SAFETY (whole function): raw system calls on locals; every signal is blocked (as the
    // namespace's init it would get none but SIGKILL and SIGSTOP from outside anyway).
    unsafe {
        if set_parent_death(libc::SIGKILL as libc::c_ulong).is_err() {
            libc::_exit(1);
        }
        // The relay may have died before we asked to die with it: then nobody would kill us.
        let mut gone = libc::pollfd { fd: relay, events: libc::POLLIN, revents: 0 };
        if libc::poll(&mut gone, 1, 0) != 0 {
            libc::_exit(1);
        }
        close_all(fd_scan_limit);
        let mut child_ended: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut child_ended);
        libc::sigaddset(&mut child_ended, libc::SIGCHLD);
        loop {
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) > 0 {}
            libc::sigwaitinfo(&child_ended, std::ptr::null_mut());
        }
    }
}

/// Exit the way `status` (a `waitpid` status) says a process ended.
///
/// # Safety
/// Raw system calls only; never returns.
unsafe fn end_as(status: libc::c_int) -> ! {
    // SAFETY (whole function): signal calls on locals, then _exit.
    unsafe {
        if libc::WIFSIGNALED(status) {
            let signal = libc::WTERMSIG(status);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &action, std::ptr::null_mut());
            let mut just: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut just);
            libc::sigaddset(&mut just, signal);
            libc::sigprocmask(libc::SIG_UNBLOCK, &just, std::ptr::null_mut());
            libc::kill(libc::getpid(), signal);
            // Only a signal whose default is not to end the process gets here.
            libc::_exit(128 + signal);
        }
        libc::_exit(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 1 })
    }
}

/// Close every descriptor.
///
/// # Safety
/// Raw system calls only, in a process that needs no descriptor any more.
unsafe fn close_all(fd_scan_limit: libc::c_int) {
    // SAFETY: close_range and close take plain integers; closing a closed descriptor fails
    // harmlessly.
    unsafe {
        let (from, to): (libc::c_uint, libc::c_uint) = (0, libc::c_uint::MAX);
        if libc::syscall(libc::SYS_close_range, from, to, 0 as libc::c_uint) == 0 {
            return;
        }
        // Older kernels (before 5.9): one at a time (EBADF for the unused ones).
        for fd in 0..fd_scan_limit {
            libc::close(fd);
        }
    }
}

/// # Safety
/// Raw system calls only.
unsafe fn set_parent_death(signal: libc::c_ulong) -> io::Result<()> {
    // SAFETY: prctl with integers.
    unsafe { prctl(libc::PR_SET_PDEATHSIG, signal) }
}

/// # Safety
/// Raw system calls only.
unsafe fn prctl(option: libc::c_int, value: libc::c_ulong) -> io::Result<()> {
    // prctl is variadic and the kernel reads whole `unsigned long`s: pass exactly those.
    let zero: libc::c_ulong = 0;
    // SAFETY: prctl with integers.
    check(unsafe { libc::prctl(option, value, zero, zero, zero) })
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
