//! A workload's pid namespace: its first process (pid 1, the *init*) and the *relay* that
//! stands for the workload in the node's namespace.
//!
//! `unshare(CLONE_NEWPID)` leaves the caller where it is; its next child is pid 1 of the new
//! namespace, which the kernel treats as an init: it gets no signal it has no handler for
//! (from inside the namespace; from outside, SIGKILL and SIGSTOP still reach it), orphans of
//! the namespace are reparented to it, and when it exits the kernel kills everything else in
//! the namespace. A workload run as pid 1 would ignore SIGTERM and pile up zombies, so the
//! node's child — the process the node knows by pid and pidfd, which has entered the other
//! namespaces — forks twice, without an `exec` in between:
//!
//! ```text
//! node ── relay: the node's child, in the node's pid namespace (the pid the node knows)
//!           └── init: pid 1, mounts the namespace's /proc, reaps every orphan
//!                 └── workload: pid 2, returns into the pre_exec hook, then the `exec`
//! ```
//!
//! - The **init** waits for every child; when the workload ends it writes the workload's raw
//!   wait status down a pipe to the relay and exits, and the kernel kills whatever the
//!   workload left behind. So a workload never leaves anything running after it ends.
//! - The **relay** reads that status, waits for the init (so that when the node sees the
//!   relay end, the namespace is empty), and ends the same way: the same exit code, or the
//!   same signal re-raised with its default action, so the node reads `exit status: 3` or
//!   `signal: 9 (SIGKILL)` exactly as when the workload was its child. If the init died
//!   without a word (killed), the relay ends as the init did.
//! - **Signals.** The node signals the process group, which all three share (the workload
//!   unless it left it): SIGTERM and friends reach the workload directly, while the relay and
//!   the init catch every signal with a handler that does nothing (a handler, not `SIG_IGN`,
//!   which `exec` would pass on), so a group signal never ends them before the workload.
//!   SIGKILL ends them, and the init's end ends the namespace: the kill path needs no help.
//!   A workload that left the group (`setsid`) still gets the node's SIGTERM: the init
//!   forwards it. Fault signals (SIGSEGV, …) are not caught, so a bug in these few lines
//!   still ends the process instead of looping.
//! - **Death.** The init gets SIGKILL when the relay dies (`PR_SET_PDEATHSIG`), and the relay
//!   when the node dies if the confinement asks for it; the init checks the relay is still
//!   there after asking, through the pipe (a pipe with no reader polls `POLLERR`).
//! - **Descriptors.** `std`'s spawn reads a close-on-exec pipe until EOF to learn whether the
//!   `exec` worked, so the relay and the init *close* every descriptor they inherited (stdio
//!   included: a reader of the workload's output sees EOF when the workload is done) but
//!   their end of the status pipe. The workload keeps them, so an `exec` error still
//!   reaches the node.
//! - **Memory and privilege.** Both helpers are copies of the node made by `fork`; they touch
//!   nothing but their stacks, and mark themselves not dumpable, so no core dump of them is
//!   ever written and the workload (another user, or the same user without capabilities in
//!   the user namespace) may not read their memory or environment through `/proc`.
//!
//! Everything here runs between `fork` and `exec` in a multi-threaded program: raw,
//! async-signal-safe system calls only (`fork`, `waitpid`, `sigaction`, `sigprocmask`,
//! `read`, `write`, `poll`, `mount`, `prctl`, `kill`, `_exit`), no allocation, no locks.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

/// The workload's pid in its namespace, for the init's SIGTERM handler (0 until forked).
static WORKLOAD: AtomicI32 = AtomicI32::new(0);

/// The highest signal number (`SIGRTMAX` on Linux).
const LAST_SIGNAL: libc::c_int = 64;

/// Whether the relay and the init catch `signal`. Not the ones that cannot be caught, not the
/// faults a bug of theirs would raise (a handler that returns would run the faulting
/// instruction again, forever), not SIGCHLD (its default, to ignore, is what a waiter
/// wants), and not the two real-time signals glibc keeps for itself.
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

/// Fork the init and the workload out of the process that has just unshared a pid namespace
/// (the *relay*). Returns `Ok` only in the workload; the relay and the init never return.
/// `parent_death`: `(signal, the node's pid)` for the relay, as
/// [`Confinement::parent_death_signal`](crate::Confinement::parent_death_signal).
/// `fd_scan_limit`: how far to close descriptors one by one where `close_range` is missing.
///
/// An error before the first fork is the relay's (the caller reports it through `std`'s error
/// pipe, as any failed step); an error in the init (mounting `/proc`, forking) is reported the
/// same way by the init, and the relay then ends as the init did.
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
        // arrives meanwhile waits instead of finding the wrong one (or none).
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut original: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        check(libc::sigprocmask(libc::SIG_SETMASK, &all, &mut original))?;
        let ignored = catch_all(on_signal).inspect_err(|_| {
            libc::sigprocmask(libc::SIG_SETMASK, &original, std::ptr::null_mut());
        })?;
        let mut status_pipe = [-1; 2];
        if libc::pipe2(status_pipe.as_mut_ptr(), libc::O_CLOEXEC) == -1 {
            let error = io::Error::last_os_error();
            restore(ignored, &original);
            return Err(error);
        }
        let [status_read, status_write] = status_pipe;
        let init = libc::fork();
        if init == -1 {
            let error = io::Error::last_os_error();
            libc::close(status_read);
            libc::close(status_write);
            restore(ignored, &original);
            return Err(error);
        }
        if init > 0 {
            close_all_but(status_read, fd_scan_limit);
            libc::sigprocmask(libc::SIG_SETMASK, &original, std::ptr::null_mut());
            relay(init, status_read);
        }
        // The init: pid 1 of the new namespace.
        libc::close(status_read);
        set_parent_death(libc::SIGKILL as libc::c_ulong)?;
        let mut relay_gone = libc::pollfd { fd: status_write, events: 0, revents: 0 };
        if libc::poll(&mut relay_gone, 1, 0) == 1 && relay_gone.revents & libc::POLLERR != 0 {
            libc::_exit(1);
        }
        let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        check(libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), proc_flags, std::ptr::null()))?;
        handle(libc::SIGTERM, forward_to_workload)?;
        let workload = libc::fork();
        if workload == -1 {
            return Err(io::Error::last_os_error());
        }
        if workload > 0 {
            WORKLOAD.store(workload, Ordering::Relaxed);
            close_all_but(status_write, fd_scan_limit);
            libc::sigprocmask(libc::SIG_SETMASK, &original, std::ptr::null_mut());
            init_loop(workload, status_write);
        }
        // The workload: back to the dispositions and mask it came with, then on to `exec`.
        libc::close(status_write);
        restore(ignored, &original);
    }
    Ok(())
}

/// The relay's life: wait for the workload's status from the init, wait for the init, end
/// the same way.
///
/// # Safety
/// Raw system calls only; never returns.
unsafe fn relay(init: libc::pid_t, status_read: libc::c_int) -> ! {
    // SAFETY (whole function): reads into and waits with locals.
    unsafe {
        let mut status: libc::c_int = 0;
        let wanted = std::mem::size_of::<libc::c_int>();
        let mut got = 0;
        while got < wanted {
            let n = libc::read(status_read, (&raw mut status).cast::<u8>().add(got).cast(), wanted - got);
            if n > 0 {
                got += n as usize;
            } else if n == 0 || *libc::__errno_location() != libc::EINTR {
                break;
            }
        }
        let mut init_status: libc::c_int = 0;
        while libc::waitpid(init, &mut init_status, 0) == -1 && *libc::__errno_location() == libc::EINTR {}
        end_as(if got == wanted { status } else { init_status })
    }
}

/// The init's life: reap every child; when the workload is among them, pass its status on and
/// exit, which takes the rest of the namespace with it.
///
/// # Safety
/// Raw system calls only; never returns.
unsafe fn init_loop(workload: libc::pid_t, status_write: libc::c_int) -> ! {
    // SAFETY (whole function): waits and writes with locals.
    unsafe {
        loop {
            let mut status: libc::c_int = 0;
            let pid = libc::waitpid(-1, &mut status, 0);
            if pid == workload {
                let bytes = std::mem::size_of::<libc::c_int>();
                while libc::write(status_write, (&raw const status).cast(), bytes) == -1
                    && *libc::__errno_location() == libc::EINTR
                {}
                libc::_exit(0);
            }
            if pid == -1 && *libc::__errno_location() != libc::EINTR {
                // No child left, and none was the workload: cannot happen, but never spin.
                libc::_exit(1);
            }
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

/// The relay's and the init's answer to a signal: nothing (it reached the workload too).
extern "C" fn on_signal(_: libc::c_int) {}

/// The init's answer to SIGTERM: pass it on to a workload that left the node's process group
/// (which the group's signal no longer reaches). One still in it has the signal already.
extern "C" fn forward_to_workload(signal: libc::c_int) {
    let workload = WORKLOAD.load(Ordering::Relaxed);
    // SAFETY: getpgid and kill take plain integers; errno is put back for the interrupted code.
    unsafe {
        let errno = *libc::__errno_location();
        // The node's process group has no number in this namespace: 0 means still in it.
        if workload > 0 && libc::getpgid(workload) > 0 {
            libc::kill(workload, signal);
        }
        *libc::__errno_location() = errno;
    }
}

/// Close every descriptor but `keep`.
///
/// # Safety
/// Raw system calls only, on descriptors this process no longer needs.
unsafe fn close_all_but(keep: libc::c_int, fd_scan_limit: libc::c_int) {
    let keep = keep as libc::c_uint;
    // SAFETY: close_range takes plain integers; a descriptor closed twice fails harmlessly.
    unsafe {
        let below =
            keep == 0 || libc::syscall(libc::SYS_close_range, 0 as libc::c_uint, keep - 1, 0 as libc::c_uint) == 0;
        let above = libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0 as libc::c_uint) == 0;
        if below && above {
            return;
        }
        // Older kernels (before 5.9): one at a time (EBADF for the unused ones).
        for fd in (0..fd_scan_limit).filter(|fd| *fd as libc::c_uint != keep) {
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
