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
//! - The **init** reaps the orphans the workload leaves until the relay ends it. It keeps
//!   every signal blocked and waits for SIGCHLD with `sigwaitinfo`: as the namespace's init it
//!   gets no other signal from outside but SIGKILL and SIGSTOP, and none at all from inside.
//! - **Signals.** The node signals the process group, which all three share (the workload
//!   unless it left it): SIGTERM and friends reach the workload directly, while the relay
//!   catches every signal with a handler that does nothing (a handler, not `SIG_IGN`, which
//!   `exec` would pass on), so a group signal never ends it before the workload. SIGKILL ends
//!   it, and the init with it (`PR_SET_PDEATHSIG`), which ends the namespace: the kill path
//!   needs no help. A workload that left the group (`setsid`) still gets the node's SIGTERM:
//!   the relay forwards it. Fault signals (SIGSEGV, …) are not caught, so a bug in these few
//!   lines still ends the process instead of looping.
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

/// The workload's pid, for the relay's SIGTERM handler (0 until forked).
static WORKLOAD: AtomicI32 = AtomicI32::new(0);

/// A pidfd of the relay, for the init to check the relay is still there.
static RELAY: AtomicI32 = AtomicI32::new(-1);

const INIT_STACK_BYTES: usize = 64 << 10;

/// The init's stack: the init shares the relay's memory (`CLONE_VM`), so it may not run on
/// the relay's stack. Only the init ever touches it.
#[repr(C, align(16))]
struct InitStack([u8; INIT_STACK_BYTES]);
static mut INIT_STACK: InitStack = InitStack([0; INIT_STACK_BYTES]);

/// The highest signal number (`SIGRTMAX` on Linux).
const LAST_SIGNAL: libc::c_int = 64;

/// Whether the relay catches `signal`. Not the ones that cannot be caught, not the faults a
/// bug of its own would raise (a handler that returns would run the faulting instruction
/// again, forever), not SIGCHLD (its default, to ignore, is what a waiter wants), and not the
/// two real-time signals glibc keeps for itself.
fn caught(signal: libc::c_int) -> bool {
    !matches!(
        signal,
        libc::SIGKILL
            | libc::SIGSTOP
            | libc::SIGSEGV
            | libc::SIGBUS
            | libc::SIGILL
            | libc::SIGFPE
            | libc::SIGTRAP
            | libc::SIGSYS
            | libc::SIGCHLD
            | 32
            | 33
    )
}

/// Make the init and fork the workload out of the process that has just unshared a pid
/// namespace (the *relay*). Returns `Ok` only in the workload, once it has mounted its namespace's
/// `/proc`; the relay and the init never return. `parent_death`: `(signal, the node's pid)`
/// for the relay, as [`Confinement::parent_death_signal`](crate::Confinement::parent_death_signal).
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
    // atomic; the handlers installed are async-signal-safe.
    unsafe {
        if let Some((signal, parent)) = parent_death {
            set_parent_death(signal as libc::c_ulong)?;
            // The node may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        prctl(libc::PR_SET_DUMPABLE, 0)?;
        // Blocked from here until each process has the handlers it needs: a signal that
        // arrives meanwhile waits instead of finding the wrong one (or none). The init keeps
        // them blocked for good.
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
        // relay reads errno only where a call could fail with EINTR, which its SA_RESTART
        // handlers rule out, or to report an error.)
        let stack = (&raw mut INIT_STACK).cast::<u8>().add(INIT_STACK_BYTES);
        let init = libc::clone(init_entry, stack.cast(), libc::CLONE_VM | libc::SIGCHLD, std::ptr::null_mut());
        let forked = if init == -1 { Err(io::Error::last_os_error()) } else { Ok(()) };
        libc::close(relay);
        let ready = forked.and_then(|()| {
            let ignored = catch_all(on_signal)?;
            handle(libc::SIGTERM, forward_to_workload)?;
            Ok(ignored)
        });
        let ignored = match ready {
            Ok(ignored) => ignored,
            Err(error) => {
                end_init(init);
                libc::sigprocmask(libc::SIG_SETMASK, &original, std::ptr::null_mut());
                return Err(error);
            }
        };
        let workload = libc::fork();
        if workload == -1 {
            let error = io::Error::last_os_error();
            end_init(init);
            restore(ignored, &original);
            return Err(error);
        }
        if workload > 0 {
            WORKLOAD.store(workload, Ordering::Relaxed);
            close_all(fd_scan_limit);
            libc::sigprocmask(libc::SIG_SETMASK, &original, std::ptr::null_mut());
            relay_life(init, workload);
        }
        // The workload, pid 2: its namespace's /proc, while it has the capabilities the mounts
        // needed; then back to the dispositions and mask it came with, and on to `exec`.
        let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        check(libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), proc_flags, std::ptr::null()))?;
        restore(ignored, &original);
    }
    Ok(())
}

/// The relay's life: wait for the workload, end its namespace, end the same way.
///
/// # Safety
/// Raw system calls only; never returns.
unsafe fn relay_life(init: libc::pid_t, workload: libc::pid_t) -> ! {
    // SAFETY (whole function): waits and signals with locals.
    unsafe {
        // An exit code of 1, should the wait fail (it cannot: the workload is our child).
        let mut status: libc::c_int = 1 << 8;
        while libc::waitpid(workload, &mut status, 0) == -1 && *libc::__errno_location() == libc::EINTR {}
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
    // SAFETY: kill and waitpid on our own child, with a local.
    unsafe {
        libc::kill(init, libc::SIGKILL);
        let mut status: libc::c_int = 0;
        while libc::waitpid(init, &mut status, 0) == -1 && *libc::__errno_location() == libc::EINTR {}
    }
}

/// The init's life: reap whatever is orphaned into the namespace, until the relay ends it.
/// Never returns.
extern "C" fn init_entry(_: *mut libc::c_void) -> libc::c_int {
    let relay = RELAY.load(Ordering::Relaxed);
    let fd_scan_limit = crate::confinement::fd_scan_limit();
    // SAFETY (whole function): raw system calls on locals; every signal is blocked.
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

/// Install `handler` for every [`caught`] signal; returns the set of those that were ignored
/// (`SIG_IGN`) before, as bits, for [`restore`].
///
/// # Safety
/// Raw system calls only.
unsafe fn catch_all(handler: extern "C" fn(libc::c_int)) -> io::Result<u64> {
    let mut ignored = 0u64;
    for signal in (1..=LAST_SIGNAL).filter(|s| caught(*s)) {
        // SAFETY: sigaction with actions on this stack frame.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN {
                ignored |= 1 << (signal - 1);
            }
            handle(signal, handler)?;
        }
    }
    Ok(ignored)
}

/// Every [`caught`] signal back to its default, or `SIG_IGN` where `ignored` says, and the
/// signal mask back to `mask`. The workload's first step: after it, a signal that waited is
/// delivered as it would have been to the workload's program.
///
/// # Safety
/// Raw system calls only.
unsafe fn restore(ignored: u64, mask: &libc::sigset_t) {
    for signal in (1..=LAST_SIGNAL).filter(|s| caught(*s)) {
        // SAFETY: sigaction and sigprocmask with values on this stack frame.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = if ignored & (1 << (signal - 1)) != 0 { libc::SIG_IGN } else { libc::SIG_DFL };
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    // SAFETY: as above.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) };
}

/// # Safety
/// Raw system calls only.
unsafe fn handle(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    // SAFETY: sigaction with an action on this stack frame; SA_RESTART so the helpers' waits
    // and reads carry on after a signal.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigfillset(&mut action.sa_mask);
        check(libc::sigaction(signal, &action, std::ptr::null_mut()))
    }
}

/// The relay's answer to a signal: nothing (it reached the workload too).
extern "C" fn on_signal(_: libc::c_int) {}

/// The relay's answer to SIGTERM: pass it on to a workload that left the relay's process
/// group (which the group's signal no longer reaches). One still in it has it already.
extern "C" fn forward_to_workload(signal: libc::c_int) {
    let workload = WORKLOAD.load(Ordering::Relaxed);
    // SAFETY: getpgid, getpgrp and kill take plain integers; errno is put back for the
    // interrupted code.
    unsafe {
        let errno = *libc::__errno_location();
        if workload > 0 && libc::getpgid(workload) != libc::getpgrp() {
            libc::kill(workload, signal);
        }
        *libc::__errno_location() = errno;
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
